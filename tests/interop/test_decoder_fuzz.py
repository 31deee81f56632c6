"""Fuzzing the decoders of untrusted bytes: mutated valid files get a 4xx problem or are
imported — never another exception (a 500), never a hang.

The decoders are called directly, as ``POST /versions`` calls them
(:func:`~tests.interop.hostile_files.import_safetensors`: ``decode_upload`` then the
mapping onto the model; :func:`~tests.interop.hostile_files.import_onnx`: ``from_onnx``,
``check_against``, ``verify_import`` with ONNX Runtime). Runs are derandomized and
bounded (:data:`EXAMPLES` each), so CI sees the same cases every time;
tests/migration/test_hostile_imports.py sends a smaller number through HTTP.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import pytest
import safetensors.numpy as stnp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

from app.core.blobs import BlobStore
from app.core.errors import StewardError
from app.engine.compress import sparse
from app.interop.safetensors import encode
from app.registry.versions import NetworkCache, VersionService
from tests.interop.hostile_files import good_tensors, import_onnx, import_safetensors, onnx_bases

EXAMPLES = 200
#: a decoding that takes longer than this is a hang for these tiny files
SLOW_SECONDS = 20.0

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def four_xx_or_success(decode: Callable[[], Any]) -> str:
    """Run one decoding: it returns, or raises a problem below 500 — nothing else, in time."""
    start = time.monotonic()
    try:
        decode()
        outcome = "ok"
    except StewardError as e:
        assert 400 <= e.status < 500, f"{type(e).__name__} {e.status}: {e.detail}"
        assert e.detail
        outcome = str(e.status)
    assert time.monotonic() - start < SLOW_SECONDS, "the decoding hung"
    return outcome


# --------------------------------------------------------------------------- safetensors
def _safetensors_bases() -> list[bytes]:
    t = good_tensors()
    q = dict(t)
    q["layers.0.weight"] = np.arange(12, dtype=np.int8).reshape(3, 4)
    q["layers.0.weight_scale"] = np.full(3, 0.01, np.float32)
    q["layers.0.weight_zero_point"] = np.array([0, 1, -1], np.int8)
    s = dict(t)
    s["layers.0.weight"] = np.where(np.arange(12).reshape(3, 4) % 3 == 0, 0, t["layers.0.weight"]).astype(np.float32)
    return [encode(t), encode(q, "quantized"), encode(sparse.encode(s, min_saving=-(10**6)))]


ST_BASES = _safetensors_bases()
NAMES = [
    "layers.0.weight",
    "layers.0.bias",
    "layers.1.weight",
    "layers.1.bias",
    "layers.0.weight_scale",
    "layers.0.weight_zero_point",
    "layers.0.weight.mask",
    "layers.0.weight.values",
    "layers.0.weight.shape",
    "layers.00.bias",
    "layers.2.weight",
    "layers.0.bias\n",
    "__metadata__",
    "",
]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.sampled_from(["F32", "F16", "I8", "U8", "BF16", "F64", "I64", "BOOL", "U16", "F8_E4M3"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
small_ints = st.integers(min_value=-3, max_value=80) | st.integers(min_value=-(2**64), max_value=2**64)


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


@st.composite
def header_mutations(draw: st.DrawFn, base: bytes) -> bytes:
    header, body = _split(base)
    tensors = [k for k in header if k != "__metadata__"]
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["field", "element", "rename", "delete", "metadata", "nest", "body"]))
        name = draw(st.sampled_from(tensors)) if tensors else None
        if kind == "field" and name in header:
            key = draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))
            header[name][key] = draw(json_values)
        elif kind == "element" and name in header:
            key = draw(st.sampled_from(["shape", "data_offsets"]))
            seq = header[name].get(key)
            if isinstance(seq, list) and seq:
                seq[draw(st.integers(0, len(seq) - 1))] = draw(small_ints)
            else:
                header[name][key] = draw(st.lists(small_ints, max_size=3))
        elif kind == "rename" and name in header:
            new = draw(st.sampled_from(NAMES) | st.text(max_size=12))
            header[new] = header.pop(name)
        elif kind == "delete" and name in header:
            del header[name]
        elif kind == "metadata":
            header["__metadata__"] = draw(json_values)
        elif kind == "body":
            body = draw(st.binary(max_size=len(body) + 8))
    text = json.dumps(header).encode()
    if draw(st.integers(0, 7)) == 0:  # a key given twice, at the top or inside an entry
        inner = draw(st.booleans())
        text = text.replace(b'"dtype":', b'"dtype": "F32", "dtype":', 1) if inner else b'{"a": 1, "a": 2, ' + text[1:]
    if draw(st.integers(0, 9)) == 0:
        depth = draw(st.integers(1, 50_000))
        text = b'{"x": ' + b"[" * depth + b"]" * depth + b", " + text[1:]
    length = len(text) + (draw(st.sampled_from([-1, 1, 8, -(2**20), 2**63])) if draw(st.integers(0, 7)) == 0 else 0)
    return struct.pack("<Q", max(0, min(length, 2**64 - 1))) + text + body


@st.composite
def byte_mutations(draw: st.DrawFn, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 8))):
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] ^= draw(st.integers(1, 255))
    cut = draw(st.none() | st.integers(0, len(data)))
    out = bytes(data if cut is None else data[:cut])
    return out + draw(st.binary(max_size=16))


DTYPES = [np.float32, np.float16, np.float64, np.int8, np.uint8, np.int16, np.int32, np.int64, np.bool_]
SPECIAL = [np.nan, np.inf, -np.inf, 1e30, -1e30, 0.0, 0.5, 255.0, -129.0, 3e38]


@st.composite
def tensor_mutations(draw: st.DrawFn) -> bytes:
    """A well-formed file (written by the safetensors library) of mutated tensors: the
    header parses, so these reach the mapping onto the model."""
    tensors = dict(stnp.load(draw(st.sampled_from(ST_BASES))))
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(sorted(tensors) + NAMES[:9]))
        t = tensors.get(name, np.zeros(3, np.float32))
        kind = draw(st.sampled_from(["dtype", "shape", "value", "rename", "drop", "add"]))
        if kind == "dtype":
            with np.errstate(all="ignore"):
                tensors[name] = t.astype(draw(st.sampled_from(DTYPES)))
        elif kind == "shape":
            shape = draw(st.lists(st.integers(0, 5), max_size=3))
            tensors[name] = np.resize(t, shape).astype(t.dtype)
        elif kind == "value" and t.size:
            v = t.astype(np.float64)
            with np.errstate(all="ignore"):
                v.reshape(-1)[draw(st.integers(0, t.size - 1))] = draw(st.sampled_from(SPECIAL))
                tensors[name] = v.astype(t.dtype)
        elif kind == "rename" and name in tensors:
            tensors[draw(st.sampled_from(NAMES[:-2]) | st.text(min_size=1, max_size=12))] = tensors.pop(name)
        elif kind == "drop":
            tensors.pop(name, None)
        else:
            tensors[name] = t
    return stnp.save({k: np.ascontiguousarray(v) for k, v in tensors.items()})


def safetensors_files() -> st.SearchStrategy[bytes]:
    base = st.sampled_from(ST_BASES)
    return st.one_of(base.flatmap(header_mutations), base.flatmap(byte_mutations), tensor_mutations())


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    return VersionService(BlobStore(tmp_path_factory.mktemp("fuzz") / "blobs"), NetworkCache(), 1 << 20)


def test_safetensors_bases_import(versions) -> None:
    for data in ST_BASES:
        assert four_xx_or_success(lambda data=data: import_safetensors(versions, data)) == "ok"


def test_fuzzed_safetensors_is_a_4xx_or_imports(versions) -> None:
    seen: dict[str, int] = {}

    @FUZZ
    @given(data=safetensors_files())
    def check(data: bytes) -> None:
        outcome = four_xx_or_success(lambda: import_safetensors(versions, data))
        seen[outcome] = seen.get(outcome, 0) + 1

    check()
    assert {"400", "422"} <= set(seen), seen  # the mutations reach both the parser and the mapping


# --------------------------------------------------------------------------- ONNX
ONNX_BASES = [onnx.load_model_from_string(b) for b in onnx_bases()]
OPS = sorted(
    {
        "Constant", "Identity", "Cast", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "DequantizeLinear",
        "Gemm", "MatMul", "Add", "Relu", "Tanh", "Sigmoid", "Softmax", "Flatten", "ArgMax", "Concat", "Sub",
        "Gather", "Slice", "Expand", "Tile", "Conv", "Loop", "If", "Scan", "ZipMap", "NoSuchOp", "",
    }
)  # fmt: skip
ATTRS = ["perm", "axis", "axes", "to", "transA", "transB", "alpha", "beta", "allowzero", "block_size", "value_ints"]
int64s = st.integers(min_value=-(2**63), max_value=2**63 - 1)
attr_values = st.one_of(
    st.integers(-4, 70),
    int64s,
    st.lists(st.integers(-4, 8), max_size=5),
    st.lists(int64s, max_size=3),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.text(max_size=4),
)


def _names(model: onnx.ModelProto) -> list[str]:
    g = model.graph
    outputs = (o for n in g.node for o in n.output)
    return sorted({*(t.name for t in g.initializer), *outputs, *(i.name for i in g.input)})


@st.composite
def onnx_mutations(draw: st.DrawFn) -> bytes:
    model = onnx.ModelProto()
    model.CopyFrom(draw(st.sampled_from(ONNX_BASES)))
    g = model.graph
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["attr", "attr", "op_type", "dims", "data", "input", "graph_input", "node"]))
        node = g.node[draw(st.integers(0, len(g.node) - 1))] if g.node else None
        init = g.initializer[draw(st.integers(0, len(g.initializer) - 1))] if g.initializer else None
        if kind == "attr" and node is not None:
            name = draw(st.sampled_from([a.name for a in node.attribute] + ATTRS))
            try:
                attr = helper.make_attribute(name, draw(attr_values))
            except (ValueError, TypeError):  # an empty list has no type
                continue
            keep = [a for a in node.attribute if a.name != name]
            del node.attribute[:]
            node.attribute.extend([*keep, attr])
        elif kind == "op_type" and node is not None:
            node.op_type = draw(st.sampled_from(OPS))
        elif kind == "dims" and init is not None:
            del init.dims[:]
            init.dims.extend(draw(st.lists(st.integers(-2, 6) | st.integers(2**31, 2**62), max_size=4)))
        elif kind == "data" and init is not None:
            choice = draw(st.sampled_from(["type", "clear", "truncate", "floats"]))
            if choice == "type":
                init.data_type = draw(st.integers(0, 25))
            elif choice == "clear":
                init.ClearField("raw_data")
            elif choice == "truncate":
                init.raw_data = init.raw_data[: draw(st.integers(0, max(0, len(init.raw_data) - 1)))]
            else:
                init.ClearField("raw_data")
                init.float_data.extend(draw(st.lists(st.floats(allow_nan=True, width=32), max_size=16)))
        elif kind == "input" and node is not None and node.input:
            pos = draw(st.integers(0, len(node.input) - 1))
            node.input[pos] = draw(st.sampled_from([*_names(model), "", "nowhere"]))
        elif kind == "graph_input" and g.input:
            dims = g.input[0].type.tensor_type.shape.dim
            if dims:
                dims[draw(st.integers(0, len(dims) - 1))].dim_value = draw(st.integers(-5, 2**40))
        elif kind == "node" and node is not None:
            if draw(st.booleans()):
                g.node.remove(node)
            else:
                g.node.append(node)
    data = model.SerializeToString()
    if draw(st.integers(0, 5)) == 0:  # and a few byte flips of the protobuf itself
        flipped = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            flipped[draw(st.integers(0, len(flipped) - 1))] ^= draw(st.integers(1, 255))
        data = bytes(flipped)
    return data


def test_fuzzed_onnx_is_a_4xx_or_imports() -> None:
    seen: dict[str, int] = {}

    @FUZZ
    @given(data=onnx_mutations())
    def check(data: bytes) -> None:
        outcome = four_xx_or_success(lambda: import_onnx(data))
        seen[outcome] = seen.get(outcome, 0) + 1

    check()
    assert {"ok", "400", "422"} <= set(seen), seen


def test_onnx_mutation_helpers_keep_the_bases_valid() -> None:
    for model in ONNX_BASES:
        assert four_xx_or_success(lambda model=model: import_onnx(model.SerializeToString())) == "ok"
