"""Hostile upload files, shared by the decoder tests (tests/interop) and the HTTP tests
(tests/migration): each is a file a client could send, with the answer it must get.

Every file targets the model :data:`SPEC` (regression, ``[4, 3, 1]``, relu), so that
what passes the decoders' own checks would otherwise map.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from app.interop.safetensors import encode

SPEC: dict[str, Any] = {"name": "m", "task": "regression", "input_dim": 4, "output_dim": 1, "hidden": [3]}
#: ``ImportedNetwork.check_against`` / ``codec.from_tensors`` arguments of :data:`SPEC`
MAP_ARGS: dict[str, Any] = {"task": "regression", "activation": "relu", "input_dim": 4, "output_dim": 1, "n_layers": 2}


@dataclass
class Hostile:
    """One hostile file: its bytes and the problem it must be answered with."""

    id: str
    data: bytes
    status: int
    needle: str  # a part of the problem's detail naming what is wrong
    extra: dict[str, Any] = field(default_factory=dict)  # more fields of the problem body


# --------------------------------------------------------------------------- safetensors
def good_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "layers.0.weight": rng.normal(size=(3, 4)).astype(np.float32),
        "layers.0.bias": rng.normal(size=3).astype(np.float32),
        "layers.1.weight": rng.normal(size=(1, 3)).astype(np.float32),
        "layers.1.bias": rng.normal(size=1).astype(np.float32),
    }


def good_safetensors(seed: int = 0) -> bytes:
    return encode(good_tensors(seed))


def st_bytes(header: dict[str, Any] | bytes, body: bytes = b"") -> bytes:
    """A safetensors file of a raw header (a dict, or JSON text as is) and data."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + body


def _entry(dtype: str, shape: list[Any], a: int, b: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [a, b]}


def _renamed(old: str, new: str) -> bytes:
    t = good_tensors()
    t[new] = t.pop(old)
    return st_bytes(_header_of(t), b"".join(np.ascontiguousarray(v).tobytes() for v in t.values()))


def _header_of(t: dict[str, np.ndarray]) -> dict[str, Any]:
    head, pos = {}, 0
    for k, v in t.items():
        head[k] = _entry({np.float32: "F32", np.int8: "I8"}[v.dtype.type], list(v.shape), pos, pos + v.nbytes)
        pos += v.nbytes
    return head


def _quantized(zero_point: np.ndarray) -> bytes:
    t = good_tensors()
    t["layers.0.weight"] = np.ones((3, 4), np.int8)
    t["layers.0.weight_scale"] = np.full(3, 0.5, np.float32)
    t["layers.0.weight_zero_point"] = zero_point
    return encode(t, "quantized")


def safetensors_cases() -> list[Hostile]:
    dup = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    return [
        Hostile("shape-overflows", st_bytes({"w": _entry("F32", [2**70], 0, 4)}, b"\0" * 4), 400, "'w'"),
        Hostile("shape-product-wraps-int64", st_bytes({"w": _entry("F32", [2**32, 2**32], 0, 0)}), 400, "'w'"),
        Hostile("nested-arrays", st_bytes(b"[" * 100_000), 400, "nests too deeply"),
        Hostile("nested-objects", st_bytes(b'{"a":' * 100_000), 400, "nests too deeply"),
        Hostile("duplicate-key", st_bytes(dup, b"\0" * 4), 400, "'w' twice", {"errors": [{"loc": ["body", "w"]}]}),
        Hostile(
            "duplicate-key-inside-entry",
            st_bytes(b'{"w":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4),
            400,
            "'dtype' twice",
        ),
        Hostile("bool-shape", st_bytes({"w": _entry("F32", [True], 0, 4)}, b"\0" * 4), 400, "'w': malformed shape"),
        Hostile("float-offsets", st_bytes({"w": _entry("F32", [1], 0, 4.0)}, b"\0" * 4), 400, "'w': malformed"),
        Hostile("bfloat16", st_bytes({"w": _entry("BF16", [1], 0, 2)}, b"\0" * 2), 422, "BF16"),
        Hostile("missing-shape", st_bytes({"w": {"dtype": "F32", "data_offsets": [0, 4]}}, b"\0" * 4), 400, "'w'"),
        Hostile("index-leading-zero", _renamed("layers.0.bias", "layers.00.bias"), 422, "layers.00.bias"),
        Hostile("index-5000-digits", _renamed("layers.1.bias", "layers." + "9" * 5000 + ".bias"), 422, "99999"),
        Hostile("index-unicode-digit", _renamed("layers.0.bias", "layers.\u0660.bias"), 422, "layers.\u0660.bias"),
        Hostile("name-trailing-newline", _renamed("layers.0.bias", "layers.0.bias\n"), 422, "layers.0.bias\n"),
        Hostile(
            "zero-point-out-of-range",
            _quantized(np.full(3, 1e30, np.float32)),
            422,
            "layers.0.weight_zero_point",
        ),
        Hostile("zero-point-not-whole", _quantized(np.full(3, 0.5, np.float32)), 422, "layers.0.weight_zero_point"),
    ]


# --------------------------------------------------------------------------- ONNX
def A(value: Any, name: str) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def dense_onnx(
    w_nodes: list[onnx.NodeProto] | tuple[()] = (),
    inits: list[TensorProto] | tuple[()] = (),
    *,
    w_name: str = "W",
    dims_in: tuple[Any, ...] = ("N", 4),
    opset: int = 17,
) -> bytes:
    """``x [N, 4] → Gemm(x, W, b, transB=1) → Relu → Gemm(·, W2, b2, transB=1) → y``,
    with ``W`` given by ``inits`` or computed by the constant expression ``w_nodes``."""
    fixed = [
        A(np.zeros(3, np.float32), "b"),
        A(np.ones((1, 3), np.float32), "W2"),
        A(np.zeros(1, np.float32), "b2"),
    ]
    nodes = [
        *w_nodes,
        helper.make_node("Gemm", ["x", w_name, "b"], ["h"], name="g0", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "W2", "b2"], ["y"], name="g1", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "hostile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims_in))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        [*inits, *fixed],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model.SerializeToString()


def _w0(shape: tuple[int, ...] = (4, 3), dtype: Any = np.float32) -> TensorProto:
    return A(np.ones(shape, dtype), "W0")


def _op(op: str, inputs: list[str], name: str, **attrs: Any) -> onnx.NodeProto:
    return helper.make_node(op, inputs, ["W"], name=name, **attrs)


def _cast_chain(n: int) -> bytes:
    """A 1 MB weight cast to double and back ``n`` times (``n`` even): every cast allocates anew."""
    types = (TensorProto.DOUBLE, TensorProto.FLOAT)
    nodes = [
        helper.make_node("Cast", [f"c{i}"], [f"c{i + 1}" if i < n - 1 else "W"], name=f"cast{i}", to=types[i % 2])
        for i in range(n)
    ]
    return dense_onnx(nodes, [A(np.ones((65536, 4), np.float32), "c0")])


def _too_many_nodes() -> bytes:
    nodes = [helper.make_node("Identity", [f"i{k}"], [f"i{k + 1}"], name=f"id{k}") for k in range(10_001)]
    nodes.append(helper.make_node("Identity", ["i10001"], ["W"], name="last"))
    return dense_onnx(nodes, [A(np.ones((3, 4), np.float32), "i0")])


def onnx_cases() -> list[Hostile]:
    def op_problem(op: str, node: str) -> dict[str, Any]:
        return {"operator": op, "node": node, "errors": [{"loc": ["body", f"node:{node}"]}]}

    i64 = np.int64
    return [
        Hostile(
            "transpose-repeated-perm",
            dense_onnx([_op("Transpose", ["W0"], "tp", perm=[0, 0])], [_w0()]),
            422,
            "perm [0, 0] is not a permutation",
            op_problem("Transpose", "tp"),
        ),
        Hostile(
            "transpose-perm-out-of-range",
            dense_onnx([_op("Transpose", ["W0"], "tp", perm=[0, 5])], [_w0()]),
            422,
            "perm [0, 5]",
            op_problem("Transpose", "tp"),
        ),
        Hostile(
            "reshape-incompatible",
            dense_onnx([_op("Reshape", ["W0", "s"], "rs")], [_w0(), A(np.array([5, 5], i64), "s")]),
            422,
            "cannot reshape [4, 3] (12 values) into [5, 5]",
            op_problem("Reshape", "rs"),
        ),
        Hostile(
            "reshape-huge-dims",
            dense_onnx([_op("Reshape", ["W0", "s"], "rs")], [_w0(), A(np.array([2**62, 2**62], i64), "s")]),
            422,
            "cannot reshape",
            op_problem("Reshape", "rs"),
        ),
        Hostile(
            "reshape-two-inferred",
            dense_onnx([_op("Reshape", ["W0", "s"], "rs")], [_w0(), A(np.array([-1, -1], i64), "s")]),
            422,
            "negative dimensions",
            op_problem("Reshape", "rs"),
        ),
        Hostile(
            "reshape-float-shape",
            dense_onnx([_op("Reshape", ["W0", "s"], "rs")], [_w0(), A(np.array([3.0, 4.0]), "s")]),
            422,
            "must be integers",
            op_problem("Reshape", "rs"),
        ),
        Hostile(
            "cast-unknown-type",
            dense_onnx([_op("Cast", ["W0"], "c", to=999)], [_w0((3, 4))]),
            422,
            "Cast to unknown type 999",
            op_problem("Cast", "c"),
        ),
        Hostile(
            "cast-to-string",
            dense_onnx([_op("Cast", ["W0"], "c", to=TensorProto.STRING)], [_w0((3, 4))]),
            422,
            "Cast to STRING",
            op_problem("Cast", "c"),
        ),
        Hostile(
            "squeeze-missing-axis",
            dense_onnx([_op("Squeeze", ["W0", "ax"], "sq")], [_w0((3, 4)), A(np.array([0], i64), "ax")]),
            422,
            "not all of size 1",
            op_problem("Squeeze", "sq"),
        ),
        Hostile(
            "squeeze-axis-out-of-range",
            dense_onnx([_op("Squeeze", ["W0", "ax"], "sq")], [_w0((3, 4)), A(np.array([7], i64), "ax")]),
            422,
            "out of range",
            op_problem("Squeeze", "sq"),
        ),
        Hostile(
            "squeeze-attribute-axis-opset-11",
            dense_onnx([_op("Squeeze", ["W0"], "sq", axes=[5])], [_w0((3, 4))], opset=11),
            422,
            "out of range",
            op_problem("Squeeze", "sq"),
        ),
        Hostile(
            "unsqueeze-repeated-axis",
            dense_onnx([_op("Unsqueeze", ["W0", "ax"], "us")], [_w0((3, 4)), A(np.array([0, 0], i64), "ax")]),
            422,
            "twice",
            op_problem("Unsqueeze", "us"),
        ),
        Hostile(
            "dequantize-scale-does-not-broadcast",
            dense_onnx(
                [_op("DequantizeLinear", ["q", "s", "z"], "dq", axis=0)],
                [A(np.ones((3, 4), np.int8), "q"), A(np.ones(5, np.float32), "s"), A(np.zeros(5, np.int8), "z")],
            ),
            422,
            "scale of length 5 does not match axis 0",
            op_problem("DequantizeLinear", "dq"),
        ),
        Hostile(
            "dequantize-2d-scale",
            dense_onnx(
                [_op("DequantizeLinear", ["q", "s"], "dq")],
                [A(np.ones((3, 4), np.int8), "q"), A(np.ones((2, 2), np.float32), "s")],
            ),
            422,
            "scale of shape [2, 2]",
            op_problem("DequantizeLinear", "dq"),
        ),
        Hostile(
            "string-initializer-as-weight",
            dense_onnx([], [A(np.array([["a"] * 4] * 3, dtype=object), "W")]),
            422,
            "input 1: initializer 'W' is a string tensor; a weight must be numeric",
            op_problem("Gemm", "g0"),
        ),
        Hostile(
            "nan-weight",
            dense_onnx([], [A(np.full((3, 4), np.nan, np.float32), "W")]),
            422,
            "NaN or infinite",
            {"node": "g0"},
        ),
        Hostile(
            "weight-beyond-float32",
            dense_onnx([], [A(np.full((3, 4), 1e300), "W")]),
            422,
            "NaN or infinite",
            {"node": "g0"},
        ),
        Hostile(
            "negative-input-dim",
            dense_onnx([], [A(np.ones((3, 4), np.float32), "W")], dims_in=("N", -4)),
            422,
            "dimensions [None, -4]",
        ),
        Hostile(
            "huge-fixed-batch",
            dense_onnx([], [A(np.ones((3, 4), np.float32), "W")], dims_in=(10**9, 4)),
            422,
            "fixes the batch size at 1000000000",
        ),
        Hostile("too-many-nodes", _too_many_nodes(), 422, "10005 nodes; a dense network needs far fewer"),
        Hostile("constants-expand-past-the-budget", _cast_chain(120), 413, "expand the file's tensors"),
    ]


def onnx_bases() -> list[bytes]:
    """Valid files of :data:`SPEC` to mutate: Steward's float, QDQ and float16 exports and a
    graph whose weight is a constant expression of every kind the importer evaluates."""
    from app.engine.nn.network import init_network
    from app.interop.export import to_onnx
    from tests.interop.test_export import quantized_version

    net = init_network("regression", "relu", 4, 1, [3], 0)
    qnet, qtensors = quantized_version(net)
    half = {f"layers.{i}.weight": w.astype(np.float16) for i, w in enumerate(net.weights)}
    hnet = net.copy()
    hnet.weights = [w.astype(np.float32) for w in half.values()]
    expr = dense_onnx(
        [
            helper.make_node("Constant", [], ["s"], name="shape", value=A(np.array([1, 4, 3], np.int64), "sv")),
            helper.make_node("Reshape", ["q", "s"], ["q3"], name="rs"),
            helper.make_node("DequantizeLinear", ["q3", "sc", "zp"], ["d"], name="dq"),
            helper.make_node("Squeeze", ["d", "ax"], ["e"], name="sq"),
            helper.make_node("Cast", ["e"], ["f"], name="cast", to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["f", "ax"], ["g"], name="us"),
            helper.make_node("Squeeze", ["g", "ax"], ["t"], name="sq2"),
            helper.make_node("Transpose", ["t"], ["W"], name="tp", perm=[1, 0]),
        ],
        [
            A(np.arange(12, dtype=np.int8).reshape(4, 3), "q"),
            A(np.float32(0.1), "sc"),
            A(np.int8(2), "zp"),
            A(np.array([0], np.int64), "ax"),
        ],
    )
    return [
        to_onnx(net, name="m", version=1),
        to_onnx(qnet, name="m", version=2, quantized=qtensors),
        to_onnx(hnet, name="m", version=3, quantized=half),
        expr,
    ]


# --------------------------------------------------------------------------- the import paths
def spec_model() -> Any:
    """A transient (unsaved) model row of :data:`SPEC` for the version service."""
    from app.core.tables import Model

    return Model(task="regression", activation="relu", input_dim=4, output_dim=1, hidden=[3])


def import_safetensors(versions: Any, data: bytes) -> Any:
    """What ``POST /versions`` does with a safetensors body before its transaction."""
    return versions.decode_safetensors(spec_model(), data)


PROBES = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)


def import_onnx(data: bytes, max_bytes: int = 64 << 20) -> Any:
    """What ``POST /versions`` does with an ONNX body: parse, map onto :data:`SPEC`, verify."""
    from app.interop.onnx_import import from_onnx, verify_import

    imported = from_onnx(data, max_bytes=max_bytes)
    net = imported.check_against(**MAP_ARGS)
    return verify_import(data, imported, net, PROBES)


def assert_names_the_problem(body: dict[str, Any], case: Hostile) -> None:
    """A problem body is ``case``'s: status, the sentence, and the extra fields."""
    assert body["status"] == case.status, body
    assert case.needle in body["detail"], body
    for key, want in case.extra.items():
        if key == "errors":
            locs = [e["loc"] for e in body.get("errors") or []]
            for w in want:
                assert w["loc"] in locs, body
        else:
            assert body.get(key) == want, body
