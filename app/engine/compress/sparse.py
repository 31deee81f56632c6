"""Sparse storage encoding of weight matrices: a row-wise bitmask plus the kept values.

A dense weight ``layers.{i}.weight`` [out, in] (any stored dtype: float32, float16, int8,
uint8) is replaced by three tensors::

    layers.{i}.weight.shape    int64 [2]                 (out, in)
    layers.{i}.weight.mask     uint8 [out, ⌈in / 8⌉]     np.packbits(W ≠ fill, axis=1)
    layers.{i}.weight.values   W.dtype [nnz]             W[W ≠ fill], row-major order

``fill`` is the value of a zero weight: ``0`` for float weights and symmetric int8, the zero
point (``layers.{i}.weight_zero_point``, [out] or []) for schemes that have one. Mask bits
are big-endian within a byte (``np.packbits`` default); the padding bits of each row's last
byte are 0. Every other tensor (biases, scales, zero points) is stored unchanged, so
``decode(encode(T)) == T`` exactly, except that a float ``−0.0`` weight comes back as ``+0.0``.

Size: ``out · ⌈in/8⌉ + nnz · itemsize + 16`` bytes instead of ``out · in · itemsize``; for
float32 that is smaller as soon as more than ~3 % of the entries are zero, and about half
the dense size at sparsity 0.5. :func:`encode` only encodes a weight when that saves at
least :data:`MIN_SAVING` bytes (the safetensors header entries of the two extra tensors).

Encoding and decoding work in row blocks: temporaries stay around a megabyte; the outputs
(the values, or the dense matrix) are the only allocations of the tensor's size.
"""

from __future__ import annotations

import re

import numpy as np

from app.engine.errors import TensorError

SHAPE, MASK, VALUES = ".weight.shape", ".weight.mask", ".weight.values"
#: Bytes an encoding must save to be used (covers the two extra safetensors header entries).
MIN_SAVING = 256
_BLOCK_ELEMS = 1 << 18
_SPARSE_NAME = re.compile(r"^layers\.(0|[1-9][0-9]{0,8})\.weight\.(shape|mask|values)\Z")
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
_VALUE_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.int8), np.dtype(np.uint8))


def is_sparse(tensors: dict[str, np.ndarray]) -> bool:
    """True when any weight of ``tensors`` is in the sparse encoding."""
    return any(_SPARSE_NAME.match(name) for name in tensors)


def _rows(cols: int) -> int:
    return max(1, _BLOCK_ELEMS // max(1, cols))


def _fill(tensors: dict[str, np.ndarray], i: int, out: int, dtype: np.dtype) -> np.ndarray:
    """Fill value per row, shape [out, 1] (or [1, 1]) in ``dtype``: the zero point or 0."""
    zp = tensors.get(f"layers.{i}.weight_zero_point")
    if zp is None or not np.issubdtype(dtype, np.integer):
        return np.zeros((1, 1), dtype=dtype)
    zp = np.asarray(zp)
    if zp.shape not in ((), (out,)):
        raise TensorError(f"layers.{i}.weight_zero_point", f"expected shape [] or [{out}], got {list(zp.shape)}")
    return zp.astype(dtype).reshape(-1, 1)


def count_kept(W: np.ndarray, fill: np.ndarray | int = 0) -> int:
    """Entries of ``W`` [out, in] that differ from ``fill`` (scalar or [out, 1]), counted in
    row blocks (no temporary of ``W``'s size)."""
    fill = np.asarray(fill, dtype=W.dtype)
    fill = fill.reshape(-1, 1) if fill.ndim else fill.reshape(1, 1)
    rows = _rows(W.shape[1])
    n = 0
    for a in range(0, W.shape[0], rows):
        b = min(W.shape[0], a + rows)
        n += int(np.count_nonzero(W[a:b] != (fill[a:b] if fill.shape[0] > 1 else fill)))
    return n


def sparse_nbytes(W: np.ndarray, nnz: int) -> int:
    """Bytes of the encoded tensors (data only) for ``W`` [out, in] with ``nnz`` kept values."""
    out, cols = W.shape
    return int(out * ((cols + 7) // 8) + nnz * W.dtype.itemsize + 16)


def encode_weight(W: np.ndarray, fill: np.ndarray | int = 0) -> dict[str, np.ndarray]:
    """``{"shape", "mask", "values"}`` of one matrix ``W`` [out, in]; ``fill`` is a scalar or a
    per-row [out, 1] array (the zero point)."""
    W = np.ascontiguousarray(W)
    if W.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {list(W.shape)}")
    out, cols = W.shape
    fill = np.asarray(fill, dtype=W.dtype)
    fill = fill.reshape(-1, 1) if fill.ndim else fill.reshape(1, 1)
    rows = _rows(cols)
    mask = np.empty((out, (cols + 7) // 8), dtype=np.uint8)
    counts = np.empty(out, dtype=np.int64)
    nz_buf = np.empty((rows, cols), dtype=bool)
    for a in range(0, out, rows):  # pass 1: masks and counts
        b = min(out, a + rows)
        nz = nz_buf[: b - a]
        np.not_equal(W[a:b], fill[a:b] if fill.shape[0] > 1 else fill, out=nz)
        mask[a:b] = np.packbits(nz, axis=1)
        counts[a:b] = np.count_nonzero(nz, axis=1)
    values = np.empty(int(counts.sum()), dtype=W.dtype)
    offsets = np.concatenate(([0], np.cumsum(counts)))
    for a in range(0, out, rows):  # pass 2: the values, in row-major order
        b = min(out, a + rows)
        nz = nz_buf[: b - a]
        np.not_equal(W[a:b], fill[a:b] if fill.shape[0] > 1 else fill, out=nz)
        values[offsets[a] : offsets[b]] = W[a:b][nz]
    return {"shape": np.array([out, cols], dtype=np.int64), "mask": mask, "values": values}


def encode(tensors: dict[str, np.ndarray], *, min_saving: int = MIN_SAVING) -> dict[str, np.ndarray]:
    """Sparse-encode every ``layers.{i}.weight`` whose encoding is at least ``min_saving``
    bytes smaller; other tensors are passed through (same objects). Idempotent."""
    out: dict[str, np.ndarray] = {}
    for name, t in tensors.items():
        m = re.match(r"^layers\.(0|[1-9][0-9]{0,8})\.weight\Z", name)
        if not m or t.ndim != 2 or t.dtype not in _VALUE_DTYPES:
            out[name] = t
            continue
        i = int(m.group(1))
        fill = _fill(tensors, i, t.shape[0], t.dtype)
        nnz = count_kept(t, fill)
        if sparse_nbytes(t, nnz) + min_saving > t.nbytes:
            out[name] = t
            continue
        enc = encode_weight(t, fill)
        out[f"layers.{i}{SHAPE}"] = enc["shape"]
        out[f"layers.{i}{MASK}"] = enc["mask"]
        out[f"layers.{i}{VALUES}"] = enc["values"]
    return out


def decode_weight(
    shape: np.ndarray, mask: np.ndarray, values: np.ndarray, fill: np.ndarray | int = 0, *, loc: str = "weight"
) -> np.ndarray:
    """The dense matrix [out, in] of one encoded weight (see the module docstring); checks
    every invariant and raises :class:`~app.engine.codec.TensorError` naming ``loc``."""
    shape = np.asarray(shape)
    if shape.shape != (2,) or not np.issubdtype(shape.dtype, np.integer) or (shape < 1).any():
        raise TensorError(f"{loc}.shape", f"expected two positive integers, got {shape.tolist()}")
    out, cols = int(shape[0]), int(shape[1])
    width = (cols + 7) // 8
    if mask.dtype != np.uint8 or mask.shape != (out, width):
        raise TensorError(f"{loc}.mask", f"expected uint8 [{out}, {width}], got {mask.dtype} {list(mask.shape)}")
    if values.ndim != 1 or values.dtype not in _VALUE_DTYPES:
        got = f"{values.dtype} {list(values.shape)}"
        raise TensorError(f"{loc}.values", f"expected a 1-D float32/float16/int8/uint8 tensor, got {got}")
    if cols % 8 and (mask[:, -1] & np.uint8((1 << (8 - cols % 8)) - 1)).any():
        raise TensorError(f"{loc}.mask", "padding bits after the last column must be 0")
    counts = _POPCOUNT[mask].sum(axis=1, dtype=np.int64)
    offsets = np.concatenate(([0], np.cumsum(counts)))
    if int(offsets[-1]) != values.size:
        raise TensorError(f"{loc}.values", f"the mask selects {int(offsets[-1])} values, got {values.size}")
    fill = np.asarray(fill, dtype=values.dtype)
    fill = fill.reshape(-1, 1) if fill.ndim else fill.reshape(1, 1)
    W = np.empty((out, cols), dtype=values.dtype)
    rows = _rows(cols)
    for a in range(0, out, rows):
        b = min(out, a + rows)
        blk = W[a:b]
        blk[...] = fill[a:b] if fill.shape[0] > 1 else fill
        bits = np.unpackbits(mask[a:b], axis=1, count=cols).view(bool)
        blk[bits] = values[offsets[a] : offsets[b]]
    return W


def decode(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Dense API layout of ``tensors``: every encoded weight becomes ``layers.{i}.weight``;
    all other tensors are passed through (same objects). Raises
    :class:`~app.engine.codec.TensorError` for an incomplete or inconsistent encoding."""
    parts: dict[int, dict[str, np.ndarray]] = {}
    out: dict[str, np.ndarray] = {}
    for name, t in tensors.items():
        m = _SPARSE_NAME.match(name)
        if m:
            parts.setdefault(int(m.group(1)), {})[m.group(2)] = t
        else:
            out[name] = t
    for i in sorted(parts):
        loc = f"layers.{i}.weight"
        if loc in out:
            raise TensorError(loc, "given both dense and sparse-encoded")
        p = parts[i]
        for key in ("shape", "mask", "values"):
            if key not in p:
                raise TensorError(f"{loc}.{key}", "missing tensor of the sparse encoding")
        values = p["values"]
        shape = np.asarray(p["shape"])
        n_out = int(shape[0]) if shape.shape == (2,) and np.issubdtype(shape.dtype, np.integer) else 0
        fill = _fill(tensors, i, n_out, values.dtype) if values.dtype in _VALUE_DTYPES else 0
        out[loc] = decode_weight(shape, p["mask"], values, fill, loc=loc)
    return out


def stored_weight_info(tensors: dict[str, np.ndarray]) -> dict[int, tuple[np.dtype, int, int]]:
    """``{i: (dtype, size, nonzero)}`` for every weight, dense or encoded, without decoding:
    ``nonzero`` counts entries that differ from the fill (zero point or 0)."""
    info: dict[int, tuple[np.dtype, int, int]] = {}
    for name, t in tensors.items():
        m = _SPARSE_NAME.match(name)
        if m and m.group(2) == "values":
            i = int(m.group(1))
            shape = np.asarray(tensors.get(f"layers.{i}{SHAPE}", np.zeros(2, np.int64)))
            info[i] = (t.dtype, int(np.prod(shape)), int(t.size))
            continue
        m = re.match(r"^layers\.(0|[1-9][0-9]{0,8})\.weight\Z", name)
        if m:
            i = int(m.group(1))
            if t.ndim == 2 and np.issubdtype(t.dtype, np.integer):
                nz = count_kept(t, _fill(tensors, i, t.shape[0], t.dtype))
            else:
                nz = int(np.count_nonzero(t))
            info[i] = (t.dtype, int(t.size), nz)
    return info
