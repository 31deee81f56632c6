"""Verification of the ``torch`` and ``npz`` exports, the way their consumers read them.

ONNX exports are verified by :func:`app.interop.export.verify_onnx` (checker + ONNX
Runtime). The two other targets are checked here without PyTorch (a test extra):

``torch``
    the safetensors bytes are loaded again (:func:`safetensors.numpy.load`), the
    architecture JSON is read back from ``__metadata__["architecture"]``, and
    :func:`sequential_forward` runs the described ``nn.Sequential`` in numpy with
    the state dict's tensors, consuming every tensor exactly once (like
    ``load_state_dict(strict=True)``);

``npz``
    ``numpy.load(..., allow_pickle=False)`` reads the archive, the arrays must be
    float32 and shaped as the architecture says, and the same forward runs on
    ``layers.{k}.weight`` / ``layers.{k}.bias`` for the k-th ``Linear``.

Both then compare with ``Network.forward`` on probe inputs with
:func:`app.interop.export.compare_outputs`; a failure raises
:class:`~app.interop.export.ExportVerificationError` (``stage`` ``"reload"``,
``"contract"`` or ``"compare"``) with the evidence.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from safetensors.numpy import load as safetensors_load

from app.engine.nn.network import F32, Network, activate, output_link
from app.interop.export import ARCHITECTURE_FORMAT, DEFAULT_ATOL, DEFAULT_RTOL, ExportVerificationError, compare_outputs

_ACTS = {"ReLU": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid"}


def sequential_forward(
    modules: list[dict[str, Any]],
    tensors: Mapping[str, np.ndarray],
    X: np.ndarray,
    name_of: Callable[[int, int], str],
) -> np.ndarray:
    """Run the ``nn.Sequential`` described by ``modules`` on ``X`` [N, in] in float32.

    ``name_of(module_index, linear_index)`` gives the tensor-name prefix of a
    ``Linear`` (``"0"`` → ``0.weight``; ``"layers.0"`` → ``layers.0.weight``).
    Every tensor of ``tensors`` must be used exactly once, with the shape the module
    declares, else :class:`ExportVerificationError` (``stage="contract"``).
    """
    a = np.asarray(X, dtype=F32)
    used: set[str] = set()
    n_linear = 0
    for k, mod in enumerate(modules):
        kind = mod.get("type")
        if mod.get("index") != k:
            raise ExportVerificationError("contract", f"module {k} has index {mod.get('index')!r}")
        if kind == "Linear":
            prefix = name_of(k, n_linear)
            n_linear += 1
            wname, bname = f"{prefix}.weight", f"{prefix}.bias"
            if wname not in tensors or bname not in tensors or not mod.get("bias", True):
                raise ExportVerificationError("contract", f"module {k} (Linear) has no {wname} / {bname}")
            W, b = tensors[wname], tensors[bname]
            want = (int(mod["out_features"]), int(mod["in_features"]))
            if W.dtype != F32 or b.dtype != F32 or W.shape != want or b.shape != (want[0],):
                raise ExportVerificationError(
                    "contract",
                    f"module {k} (Linear {want[1]}→{want[0]}): {wname} {W.dtype}{list(W.shape)}, "
                    f"{bname} {b.dtype}{list(b.shape)}",
                )
            used.update((wname, bname))
            z = a @ W.T
            z += b
            a = z
        elif kind in _ACTS:
            a = activate(_ACTS[kind], a)
        elif kind == "Softmax":
            if mod.get("dim") not in (1, -1):
                raise ExportVerificationError("contract", f"module {k}: Softmax over dim {mod.get('dim')!r}")
            a = output_link("multiclass", a)
        else:
            raise ExportVerificationError("contract", f"module {k}: unexpected module type {kind!r}")
    extra = sorted(set(tensors) - used)
    if extra:
        raise ExportVerificationError("contract", f"tensors not used by any module: {extra}", {"unexpected": extra})
    return a


def _check_arch(arch: Any, net: Network) -> list[dict[str, Any]]:
    if not isinstance(arch, dict) or arch.get("format") != ARCHITECTURE_FORMAT:
        raise ExportVerificationError("contract", f"architecture is not {ARCHITECTURE_FORMAT!r}")
    if (arch.get("task"), arch.get("input_dim"), arch.get("output_dim")) != (net.task, net.input_dim, net.output_dim):
        raise ExportVerificationError(
            "contract",
            "architecture describes a different network",
            {"found": [arch.get("task"), arch.get("input_dim"), arch.get("output_dim")]},
        )
    modules = arch.get("modules")
    if not isinstance(modules, list):
        raise ExportVerificationError("contract", "architecture has no module list")
    return modules


def _report(
    got: np.ndarray, net: Network, probes: np.ndarray, atol: float, rtol: float, runtime: str
) -> dict[str, Any]:
    ok, evidence = compare_outputs(got, net.forward(probes), atol=atol, rtol=rtol)
    if not ok:
        raise ExportVerificationError(
            "compare",
            f"the reloaded export differs from Steward's outputs beyond atol={atol}, rtol={rtol} "
            f"(max |error| {evidence.get('max_abs_error')})",
            evidence,
        )
    return {
        "ok": True,
        "max_abs_error": evidence["max_abs_error"],
        "tolerance": {"atol": atol, "rtol": rtol},
        "n_probes": int(probes.shape[0]),
        "runtime": runtime,
    }


def verify_torch_state(
    data: bytes, net: Network, probes: np.ndarray, *, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL
) -> dict[str, Any]:
    """Reload a :func:`~app.interop.export.to_torch_state` file and compare its forward
    with ``net.forward(probes)``. Returns ``{"ok", "max_abs_error", "tolerance",
    "n_probes", "runtime"}``; raises :class:`ExportVerificationError`."""
    try:
        tensors = safetensors_load(bytes(data))
        (n,) = struct.unpack("<Q", data[:8])
        arch = json.loads(json.loads(data[8 : 8 + n])["__metadata__"]["architecture"])
    except Exception as e:  # any reload failure is the evidence
        raise ExportVerificationError(
            "reload", f"cannot reload the safetensors file: {e}", {"error": type(e).__name__}
        ) from e
    modules = _check_arch(arch, net)
    probes = np.ascontiguousarray(probes, dtype=F32)
    got = sequential_forward(modules, tensors, probes, lambda k, _i: str(k))
    return _report(got, net, probes, atol, rtol, "numpy (safetensors reload, nn.Sequential names)")


def verify_npz(
    data: bytes, net: Network, probes: np.ndarray, *, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL
) -> dict[str, Any]:
    """Reload a :func:`~app.interop.export.to_npz` archive with ``allow_pickle=False`` and
    compare its forward with ``net.forward(probes)`` (same answer as
    :func:`verify_torch_state`)."""
    try:
        with np.load(io.BytesIO(bytes(data)), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        arch = json.loads(str(arrays.pop("architecture")))
    except Exception as e:  # any reload failure is the evidence
        raise ExportVerificationError(
            "reload", f"cannot reload the npz archive: {e}", {"error": type(e).__name__}
        ) from e
    modules = _check_arch(arch, net)
    probes = np.ascontiguousarray(probes, dtype=F32)
    got = sequential_forward(modules, arrays, probes, lambda _k, i: f"layers.{i}")
    return _report(got, net, probes, atol, rtol, "numpy (np.load allow_pickle=False)")
