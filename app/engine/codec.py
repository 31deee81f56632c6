"""Network <-> named tensors (the wire layout of API.md), with strict checks.

Dense layout, ``L`` layers, ``i = 0 .. L-1`` input side first::

    layers.{i}.weight   float32 [out_i, in_i]
    layers.{i}.bias     float32 [out_i]

``in_0 = input_dim``, ``out_{L-1} = output_dim`` and ``in_{i+1} = out_i`` (hidden
widths may be smaller than the model spec's after neuron pruning).
"""

from __future__ import annotations

import re

import numpy as np

from app.engine.compress import sparse
from app.engine.errors import TensorError
from app.engine.nn.network import F32, Network

__all__ = ["TensorError", "decode_stored", "dequantize", "describe", "from_tensors", "to_tensors"]


#: one name per tensor: ASCII digits without leading zeros (``layers.01`` or ``layers.١`` would
#: alias ``layers.0``; ``\Z``, not ``$``, which also matches before a trailing newline)
_NAME = re.compile(r"^layers\.(0|[1-9][0-9]{0,8})\.(weight|bias|weight_scale|weight_zero_point)\Z")


def to_tensors(net: Network) -> dict[str, np.ndarray]:
    """Dense float32 tensors of ``net`` in the API layout (contiguous arrays)."""
    out: dict[str, np.ndarray] = {}
    for i, (W, b) in enumerate(zip(net.weights, net.biases, strict=True)):
        out[f"layers.{i}.weight"] = np.ascontiguousarray(W, dtype=F32)
        out[f"layers.{i}.bias"] = np.ascontiguousarray(b, dtype=F32)
    return out


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None) -> np.ndarray:
    """``(q − zero_point) · scale`` as float32; scale / zero point are ``[out]`` or ``[]``."""
    qf = q.astype(F32)
    s = np.asarray(scale, dtype=F32)
    if zero_point is not None:
        zp = np.asarray(zero_point, dtype=F32)
        if zp.ndim == 1:
            zp = zp[:, None]
        qf -= zp
    if s.ndim == 1:
        s = s[:, None]
    qf *= s
    return qf


def _whole_in_range(values: np.ndarray, dtype: np.dtype) -> bool:
    """Every entry of a numeric ``values`` is a whole number that ``dtype`` (an integer type) holds."""
    if values.dtype.kind not in "biuf":
        return False
    info = np.iinfo(dtype)
    v = values.astype(np.float64)
    whole = bool(np.isfinite(v).all()) and bool((v == np.round(v)).all())
    return whole and info.min <= float(v.min(initial=0)) and float(v.max(initial=0)) <= info.max


def from_tensors(
    tensors: dict[str, np.ndarray],
    *,
    task: str,
    activation: str,
    input_dim: int,
    output_dim: int,
    n_layers: int,
) -> Network:
    """Check a tensor set against a model and build the (dequantized) float32 network.

    A writable float32 weight becomes the network's array as is (no copy); read-only,
    float16 and integer weights are converted into new arrays.

    Accepted: every layer has ``weight`` and ``bias``; a weight is float32, float16
    or an integer tensor with ``weight_scale`` (float32 ``[out]`` or ``[]``) and
    optionally ``weight_zero_point``. Raises :class:`TensorError` naming the first
    offending tensor (unknown name, missing tensor, wrong rank, shape or dtype,
    non-finite value).
    """
    layers: dict[int, dict[str, np.ndarray]] = {}
    for name in sorted(tensors):
        m = _NAME.match(name)
        if not m:
            raise TensorError(name, "unexpected tensor name (expected layers.{i}.weight / .bias)")
        i = int(m.group(1))
        if i >= n_layers:
            raise TensorError(name, f"the model has {n_layers} layers (0..{n_layers - 1})")
        layers.setdefault(i, {})[m.group(2)] = tensors[name]
    weights: list[np.ndarray] = []
    biases: list[np.ndarray] = []
    fan_in = input_dim
    for i in range(n_layers):
        parts = layers.get(i, {})
        for part in ("weight", "bias"):
            if part not in parts:
                raise TensorError(f"layers.{i}.{part}", "missing tensor")
        W, b = parts["weight"], parts["bias"]
        wname, bname = f"layers.{i}.weight", f"layers.{i}.bias"
        if W.ndim != 2:
            raise TensorError(wname, f"expected 2 dimensions [out, in], got shape {list(W.shape)}")
        out = output_dim if i == n_layers - 1 else int(W.shape[0])
        if W.shape != (out, fan_in) or out < 1:
            raise TensorError(wname, f"expected shape [{out}, {fan_in}], got {list(W.shape)}")
        if b.dtype != F32:
            raise TensorError(bname, f"expected float32, got {b.dtype}")
        if b.shape != (out,):
            raise TensorError(bname, f"expected shape [{out}], got {list(b.shape)}")
        if np.issubdtype(W.dtype, np.integer):
            if "weight_scale" not in parts:
                raise TensorError(f"layers.{i}.weight_scale", "an integer weight needs a scale")
            scale = parts["weight_scale"]
            zp = parts.get("weight_zero_point")
            for nm, t in (("weight_scale", scale), ("weight_zero_point", zp)):
                if t is None:
                    continue
                if t.shape not in ((), (out,)):
                    raise TensorError(f"layers.{i}.{nm}", f"expected shape [] or [{out}], got {list(t.shape)}")
            if zp is not None and not _whole_in_range(zp, W.dtype):
                raise TensorError(f"layers.{i}.weight_zero_point", f"expected whole numbers in the range of {W.dtype}")
            if scale.dtype != F32:
                raise TensorError(f"layers.{i}.weight_scale", f"expected float32, got {scale.dtype}")
            if not np.isfinite(scale).all() or (scale <= 0).any():
                raise TensorError(f"layers.{i}.weight_scale", "scales must be finite and positive")
            Wf = dequantize(W, scale, zp)
        elif W.dtype in (F32, np.float16):
            if "weight_scale" in parts or "weight_zero_point" in parts:
                raise TensorError(f"layers.{i}.weight_scale", "scale given for a float weight")
            # a writable float32 weight is used as is (no copy of the model); others are copied
            Wf = W.astype(F32, copy=not W.flags.writeable)
        else:
            raise TensorError(wname, f"expected float32, float16 or an integer type, got {W.dtype}")
        if not np.isfinite(Wf).all():
            raise TensorError(wname, "contains NaN or infinite values")
        if not np.isfinite(b).all():
            raise TensorError(bname, "contains NaN or infinite values")
        weights.append(np.ascontiguousarray(Wf))
        biases.append(np.ascontiguousarray(b))
        fan_in = out
    return Network(task, activation, weights, biases)


def decode_stored(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Dense API layout of a *stored* tensor set: weights kept in the sparse encoding of
    :mod:`app.engine.compress.sparse` (``layers.{i}.weight.mask`` / ``.values`` / ``.shape``) are
    expanded to ``layers.{i}.weight``; a dense set is returned unchanged (same object).
    Use before :func:`from_tensors` and before serving a download. Raises
    :class:`TensorError` for an inconsistent encoding."""
    return sparse.decode(tensors) if sparse.is_sparse(tensors) else tensors


def describe(tensors: dict[str, np.ndarray]) -> tuple[str, float]:
    """(dtype label, sparsity) of a tensor set, dense or sparse-encoded: the weights' storage
    dtype and the share of zero weight entries over all weight matrices (an integer weight
    with a ``weight_zero_point`` is zero where ``q == zero_point``)."""
    info = sparse.stored_weight_info(tensors)
    dtypes = {str(dtype) for dtype, _, _ in info.values()}
    total = sum(size for _, size, _ in info.values())
    zeros = total - sum(nz for _, _, nz in info.values())
    dtype = dtypes.pop() if len(dtypes) == 1 else ("mixed" if dtypes else "float32")
    return dtype, (zeros / total if total else 0.0)
