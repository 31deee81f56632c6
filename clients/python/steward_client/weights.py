"""Version weights: the safetensors file ``GET …/weights`` answers, read with numpy alone
(the format: 8 bytes little-endian header length, a JSON header, raw tensors)."""

from __future__ import annotations

import json
import struct
from typing import Any

DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I8": "i1", "U8": "u1", "I16": "<i2", "I32": "<i4", "I64": "<i8"}


def read_safetensors(data: bytes) -> dict[str, Any]:
    """``{name: numpy array}`` of a safetensors file (needs numpy: ``steward-client[numpy]``)."""
    import numpy as np

    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out: dict[str, Any] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        lo, hi = info["data_offsets"]
        dtype = DTYPES[info["dtype"]]
        out[name] = np.frombuffer(data[base + lo : base + hi], dtype=dtype).reshape(info["shape"]).copy()
    return out


def metadata(data: bytes) -> dict[str, str]:
    (n,) = struct.unpack("<Q", data[:8])
    meta: dict[str, str] = json.loads(data[8 : 8 + n]).get("__metadata__", {})
    return meta
