"""safetensors at the edge: Steward's canonical writer, a reader of stored blobs, and a
strict decoder of untrusted uploads.

The stored blob is a canonical safetensors file whose ``__metadata__`` holds no
per-version data, so the same parameters always have the same sha256 (an import of
a downloaded file reproduces its source's sha256): :func:`write_safetensors` writes
the file itself, with sorted metadata keys and a fixed tensor order (the safetensors
library orders metadata keys at random), straight from the arrays, never building a
large file in memory.
"""

from __future__ import annotations

import io
import json
import math
import struct
from collections.abc import Iterator
from typing import Any, BinaryIO

import numpy as np
import safetensors.numpy as stnp

from app.core.errors import BadRequest, Invalid, PayloadTooLarge, decoding

FORMAT = "steward/1"


# --------------------------------------------------------------------------- encoding
_ST_DTYPES = {
    np.dtype(np.float64): "F64",
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
    np.dtype(np.int16): "I16",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}
_CHUNK = 1 << 20


def safetensors_parts(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> tuple[bytes, list[np.ndarray]]:
    """``(header bytes, arrays in data order)`` of the safetensors file of ``tensors``.

    Deterministic: metadata keys sorted; tensors by item size (largest first, so every
    tensor stays aligned to its item size) then name; the JSON header padded with spaces
    to a multiple of 8 bytes, as the format asks.
    """
    names = sorted(tensors, key=lambda k: (-tensors[k].dtype.itemsize, k))
    header: dict[str, Any] = {"__metadata__": {k: metadata[k] for k in sorted(metadata)}}
    arrays: list[np.ndarray] = []
    offset = 0
    for name in names:
        a = np.asarray(tensors[name])
        if not a.flags.c_contiguous:
            a = np.ascontiguousarray(a)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        header[name] = {
            "dtype": _ST_DTYPES[a.dtype],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + a.nbytes],
        }
        offset += a.nbytes
        arrays.append(a)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head, arrays


def array_chunks(arrays: list[np.ndarray]) -> Iterator[memoryview]:
    for a in arrays:
        mv = a.reshape(-1).data.cast("B")
        for o in range(0, len(mv), _CHUNK):
            yield mv[o : o + _CHUNK]


def write_safetensors(f: BinaryIO, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> int:
    """Write the safetensors file of ``tensors`` to the binary file ``f`` straight from the
    arrays (no copy of the tensors); returns the number of bytes written."""
    head, arrays = safetensors_parts(tensors, metadata)
    n = f.write(head)
    for chunk in array_chunks(arrays):
        n += f.write(chunk)
    return n


def encode(tensors: dict[str, np.ndarray], encoding: str = "dense") -> bytes:
    """Canonical safetensors bytes of a tensor set (no per-version metadata)."""
    buf = io.BytesIO()
    write_safetensors(buf, tensors, {"format": FORMAT, "encoding": encoding})
    return buf.getvalue()


def encode_to(path: Any, tensors: dict[str, np.ndarray], encoding: str = "dense") -> None:
    """Write :func:`encode`'s bytes to the file ``path`` (no copy of the tensors in memory)."""
    with open(path, "wb") as f:
        write_safetensors(f, tensors, {"format": FORMAT, "encoding": encoding})


def read_tensors(path: Any) -> dict[str, np.ndarray]:
    """Load a stored safetensors file with ``pread`` (peak memory: the tensors once; the
    default mmap backend keeps the mapped file resident too, twice the size at peak)."""
    try:
        return stnp.load_file(str(path), backend="pread")
    except TypeError:  # safetensors < 0.7 has no backend choice
        return stnp.load_file(str(path))


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads`` object hook: a JSON object naming a key twice is refused (the last
    one would silently win, and another reader may take the first)."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def read_header(data: bytes | memoryview, *, max_header: int) -> tuple[dict[str, Any], int]:
    """Parse and check a safetensors header without trusting it.

    Returns ``(header, data_start)``. Raises :class:`BadRequest` for anything that
    is not a well-formed safetensors file (too short, header not JSON, nested too
    deeply, a key given twice, offsets outside the file), :class:`PayloadTooLarge`
    for a header over ``max_header`` bytes — and nothing else (one boundary turns any
    other failure of the decoding into a 400).
    """
    with decoding("unreadable safetensors header"):
        return _read_header(data, max_header)


def _read_header(data: bytes | memoryview, max_header: int) -> tuple[dict[str, Any], int]:
    if len(data) < 8:
        raise BadRequest("not a safetensors file: shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", bytes(data[:8]))
    if 8 + n > len(data):
        raise BadRequest("not a safetensors file: header length points past the end of the body")
    if n > max_header:
        raise PayloadTooLarge(f"safetensors header of {n} bytes exceeds the limit of {max_header}")
    try:
        header = json.loads(bytes(data[8 : 8 + n]), object_pairs_hook=_unique_keys)
    except _DuplicateKey as e:
        raise BadRequest(
            f"safetensors header names {e.key!r} twice", errors=[{"loc": ["body", e.key], "msg": "duplicate key"}]
        ) from None
    except RecursionError:
        raise BadRequest("not a safetensors file: header JSON nests too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"not a safetensors file: header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise BadRequest("not a safetensors file: header is not a JSON object")
    return header, 8 + n


_DTYPES = {"F32": 4, "F16": 2, "I8": 1, "U8": 1, "BF16": 2, "F64": 8, "I16": 2, "I32": 4, "I64": 8, "BOOL": 1}
#: dtypes of the format that numpy cannot represent
_NO_NUMPY = {"BF16": "numpy has no bfloat16; send F32 or F16"}
_MAX_RANK = 8


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def decode_upload(data: bytes, *, max_header: int) -> dict[str, np.ndarray]:
    """Load an uploaded safetensors body into numpy arrays, after checking its header.

    Raises :class:`BadRequest` (400: not a well-formed file), :class:`PayloadTooLarge`
    (413) or :class:`Invalid` (422: a dtype Steward cannot hold), naming the tensor —
    and nothing else: any other failure of the decoding is a 400 too.
    """
    with decoding("unreadable safetensors file"):
        return _decode_upload(data, max_header)


def _decode_upload(data: bytes, max_header: int) -> dict[str, np.ndarray]:
    header, start = _read_header(data, max_header)
    body_len = len(data) - start
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise BadRequest("__metadata__ must map strings to strings")
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise BadRequest(f"tensor {name!r}: malformed header entry (expected dtype, shape and data_offsets)")
        dt, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dt, str):  # a list or an object is not hashable, let alone a dtype
            raise BadRequest(f"tensor {name!r}: malformed dtype")
        if dt not in _DTYPES:
            raise Invalid.at(["body", name], f"unsupported dtype {dt!r}")
        if dt in _NO_NUMPY:
            raise Invalid.at(["body", name], f"unsupported dtype {dt} ({_NO_NUMPY[dt]})")
        if not isinstance(shape, list) or len(shape) > _MAX_RANK or not all(_is_int(d) and d >= 0 for d in shape):
            raise BadRequest(f"tensor {name!r}: malformed shape (at most {_MAX_RANK} non-negative integers)")
        if not (isinstance(offs, list) and len(offs) == 2 and all(_is_int(o) for o in offs)):
            raise BadRequest(f"tensor {name!r}: malformed data_offsets")
        a, b = offs
        need = math.prod(shape) * _DTYPES[dt]  # exact: a count past int64 is only a large number
        if need > body_len:
            raise BadRequest(
                f"tensor {name!r}: shape {shape} of {dt} needs {need} bytes, the file holds {body_len} bytes of data"
            )
        if not 0 <= a <= b <= body_len or b - a != need:
            raise BadRequest(f"tensor {name!r}: data_offsets do not match its shape and the file size")
        spans.append((a, b))
    spans.sort()
    pos = 0
    for a, b in spans:
        if a != pos:
            raise BadRequest("safetensors tensors overlap or leave gaps")
        pos = b
    if pos != body_len:
        raise BadRequest("safetensors file has trailing bytes")
    try:
        return stnp.load(bytes(data))
    except Exception as e:  # the library's own checks, as a last line
        raise BadRequest(f"unreadable safetensors file: {e}") from None
