"""Exports loaded by their real consumers: onnx.checker + ONNX Runtime, PyTorch, numpy.load."""

from __future__ import annotations

import ast
import io
import json
import struct
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from app.engine.codec import dequantize
from app.engine.nn.network import ACTIVATIONS, TASKS, Network, init_network
from app.interop import export
from app.interop.export import (
    ExportVerificationError,
    OpsetError,
    QuantizedTensorError,
    probe_inputs,
    to_npz,
    to_onnx,
    to_torch_state,
    verify_onnx,
)

OUT_DIM = {"regression": 3, "binary": 1, "multiclass": 5}


def make_net(task: str, activation: str, hidden: list[int] | None = None, input_dim: int = 9) -> Network:
    """A network with non-zero biases."""
    net = init_network(task, activation, input_dim, OUT_DIM[task], [12, 7] if hidden is None else hidden, 3)
    rng = np.random.default_rng(7)
    for b in net.biases:
        b[:] = rng.normal(0, 0.5, b.shape).astype(np.float32)
    return net


def ort_run(model_bytes: bytes, X: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return session.run(["output"], {"input": X.astype(np.float32)})[0]


def quantize_symmetric(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """API.md's symmetric int8 per channel: scale_c = max|W_c| / 127, q = clip(round(W / scale_c), −127, 127)."""
    scale = (np.abs(W).max(axis=1) / 127).astype(np.float32)
    q = np.clip(np.round(W / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def quantized_version(net: Network) -> tuple[Network, dict[str, np.ndarray]]:
    """(dequantized network, stored tensor set) as the quantize operation would store them."""
    tensors: dict[str, np.ndarray] = {}
    qnet = net.copy()
    for i, W in enumerate(net.weights):
        q, scale = quantize_symmetric(W)
        tensors[f"layers.{i}.weight"] = q
        tensors[f"layers.{i}.weight_scale"] = scale
        tensors[f"layers.{i}.bias"] = net.biases[i]
        qnet.weights[i] = dequantize(q, scale, None)
    return qnet, tensors


# --------------------------------------------------------------------------- ONNX, float
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("task", TASKS)
def test_float_export_matches_forward(task: str, activation: str) -> None:
    net = make_net(task, activation)
    model_bytes = to_onnx(net, name="churn", version=4)
    model = onnx.load_model_from_string(model_bytes)
    onnx.checker.check_model(model, full_check=True)
    X = probe_inputs(net.input_dim, np.random.default_rng(0), n=128)
    np.testing.assert_allclose(ort_run(model_bytes, X), net.forward(X), rtol=1e-5, atol=1e-6)
    report = verify_onnx(model_bytes, net, X)
    assert report["ok"] is True
    assert report["n_probes"] == 128
    assert report["max_abs_error"] <= 1e-5
    assert report["tolerance"] == {"atol": export.DEFAULT_ATOL, "rtol": export.DEFAULT_RTOL}


def test_onnx_contract_and_metadata() -> None:
    net = make_net("multiclass", "relu")
    model = onnx.load_model_from_string(to_onnx(net, name="digits", version=12, metadata={"run": "x"}))
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == "input" and out.name == "output"
    assert inp.type.tensor_type.elem_type == TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["N", 9]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["N", 5]
    props = {p.key: p.value for p in model.metadata_props}
    assert props["steward.model"] == "digits"
    assert props["steward.version"] == "12"
    assert props["steward.task"] == "multiclass"
    assert props["steward.activation"] == "relu"
    assert props["steward.weights"] == "float32"
    assert props["run"] == "x"
    assert model.producer_name == "steward"
    assert model.model_version == 12
    assert [o.version for o in model.opset_import] == [17]
    assert model.ir_version == onnx.helper.find_min_ir_version_for([model.opset_import[0]])
    assert [n.op_type for n in model.graph.node] == ["Gemm", "Relu", "Gemm", "Relu", "Gemm", "Softmax"]
    assert all(a.i == 1 for n in model.graph.node if n.op_type == "Gemm" for a in n.attribute)


@pytest.mark.parametrize("n", [1, 2, 257])
def test_dynamic_batch(n: int) -> None:
    net = make_net("binary", "tanh")
    model_bytes = to_onnx(net, name="m", version=1)
    X = np.random.default_rng(n).standard_normal((n, net.input_dim)).astype(np.float32)
    got = ort_run(model_bytes, X)
    assert got.shape == (n, 1)
    np.testing.assert_allclose(got, net.forward(X), rtol=1e-5, atol=1e-6)


def test_linear_model_without_hidden_layers() -> None:
    net = make_net("multiclass", "relu", hidden=[])
    model_bytes = to_onnx(net, name="softmax-regression", version=1)
    assert [n.op_type for n in onnx.load_model_from_string(model_bytes).graph.node] == ["Gemm", "Softmax"]
    assert verify_onnx(model_bytes, net, probe_inputs(9, np.random.default_rng(1)))["ok"]


@pytest.mark.parametrize("opset", list(export.SUPPORTED_OPSETS))
def test_every_supported_opset_runs(opset: int) -> None:
    net = make_net("multiclass", "sigmoid")
    qnet, tensors = quantized_version(net)
    X = probe_inputs(net.input_dim, np.random.default_rng(opset))
    for n, q in ((net, None), (qnet, tensors)):
        model_bytes = to_onnx(n, name="m", version=1, opset=opset, quantized=q)
        assert onnx.load_model_from_string(model_bytes).opset_import[0].version == opset
        assert verify_onnx(model_bytes, n, X)["ok"]


@pytest.mark.parametrize("opset", [0, 12, 22, 99, True, "17", 17.0])
def test_opset_out_of_range(opset: object) -> None:
    with pytest.raises(OpsetError, match=r"13\.\.21"):
        to_onnx(make_net("regression", "relu"), name="m", version=1, opset=opset)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- ONNX, pruned and quantized
def test_neuron_pruned_and_sparse_versions_export() -> None:
    net = make_net("multiclass", "relu", hidden=[5, 3])  # narrower than any spec: layers really shrink
    net.weights[0][np.abs(net.weights[0]) < 0.3] = 0.0  # unstructured sparsity
    model_bytes = to_onnx(net, name="m", version=9)
    model = onnx.load_model_from_string(model_bytes)
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    assert shapes["layers.0.weight"] == [5, 9]
    assert shapes["layers.1.weight"] == [3, 5]
    assert shapes["layers.2.weight"] == [5, 3]
    assert verify_onnx(model_bytes, net, probe_inputs(9, np.random.default_rng(2)))["ok"]


@pytest.mark.parametrize("task", TASKS)
def test_quantized_export_is_qdq_and_matches_dequantized_forward(task: str) -> None:
    net = make_net(task, "tanh")
    qnet, tensors = quantized_version(net)
    model_bytes = to_onnx(qnet, name="m", version=5, quantized=tensors)
    model = onnx.load_model_from_string(model_bytes)
    onnx.checker.check_model(model, full_check=True)
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == 3
    assert all(onnx.helper.get_attribute_value(n.attribute[0]) == 0 for n in dq)  # axis=0: per output row
    kinds = {t.name: t.data_type for t in model.graph.initializer}
    for i in range(3):
        assert kinds[f"layers.{i}.weight_quantized"] == TensorProto.INT8
        assert f"layers.{i}.weight" not in kinds  # no float copy of the weights
        np.testing.assert_array_equal(
            numpy_helper.to_array(next(t for t in model.graph.initializer if t.name.endswith(f"{i}.weight_quantized"))),
            tensors[f"layers.{i}.weight"],
        )
    assert {p.key: p.value for p in model.metadata_props}["steward.weights"] == "int8 qdq"
    X = probe_inputs(net.input_dim, np.random.default_rng(3), n=200)
    np.testing.assert_allclose(ort_run(model_bytes, X), qnet.forward(X), rtol=1e-5, atol=1e-6)
    assert verify_onnx(model_bytes, qnet, X)["ok"]


def test_quantized_file_is_much_smaller() -> None:
    net = init_network("multiclass", "relu", 64, 10, [128, 64], 0)
    qnet, tensors = quantized_version(net)
    float_size = len(to_onnx(net, name="m", version=1))
    q_size = len(to_onnx(qnet, name="m", version=2, quantized=tensors))
    assert q_size < 0.35 * float_size, (q_size, float_size)


def test_uint8_asymmetric_per_tensor_and_float16() -> None:
    net = make_net("regression", "sigmoid")
    W0, W1, W2 = net.weights
    lo, hi = float(W0.min()), float(W0.max())
    scale = np.float32((hi - lo) / 255)
    zp = np.uint8(round(-lo / scale))
    q0 = np.clip(np.round(W0 / scale) + zp, 0, 255).astype(np.uint8)
    tensors = {
        "layers.0.weight": q0,
        "layers.0.weight_scale": np.array(scale, dtype=np.float32),
        "layers.0.weight_zero_point": np.array(zp, dtype=np.uint8),
        "layers.1.weight": W1.astype(np.float16),
        "layers.2.weight": W2,  # a float32 layer stays float32
    }
    qnet = net.copy()
    qnet.weights[0] = dequantize(q0, tensors["layers.0.weight_scale"], tensors["layers.0.weight_zero_point"])
    qnet.weights[1] = W1.astype(np.float16).astype(np.float32)
    model_bytes = to_onnx(qnet, name="m", version=1, quantized=tensors)
    model = onnx.load_model_from_string(model_bytes)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("DequantizeLinear") == 1 and ops.count("Cast") == 1
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear")
    assert not dq.attribute  # per tensor: no axis
    assert {p.key: p.value for p in model.metadata_props}["steward.weights"] == "float16+float32+uint8 qdq"
    assert verify_onnx(model_bytes, qnet, probe_inputs(9, np.random.default_rng(4)))["ok"]


def test_quantized_tensors_must_match_the_network() -> None:
    net = make_net("binary", "relu")
    qnet, tensors = quantized_version(net)
    with pytest.raises(QuantizedTensorError, match=r"layers\.0\.weight: its dequantized value differs"):
        to_onnx(_perturbed(qnet), name="m", version=1, quantized=tensors)
    no_scale = {k: v for k, v in tensors.items() if k != "layers.1.weight_scale"}
    with pytest.raises(QuantizedTensorError, match=r"layers\.1\.weight_scale: an integer weight needs a scale"):
        to_onnx(qnet, name="m", version=1, quantized=no_scale)
    bad_zp = {**tensors, "layers.0.weight_zero_point": np.full(12, 300, dtype=np.int32)}
    with pytest.raises(QuantizedTensorError, match="weight_zero_point"):
        to_onnx(qnet, name="m", version=1, quantized=bad_zp)
    int16 = {**tensors, "layers.0.weight": tensors["layers.0.weight"].astype(np.int16)}
    with pytest.raises(QuantizedTensorError, match="only int8 and uint8"):
        to_onnx(qnet, name="m", version=1, quantized=int16)


def _perturbed(net: Network) -> Network:
    out = net.copy()
    out.weights[0][0, 0] += 0.5
    return out


# --------------------------------------------------------------------------- verification failures
def test_verification_rejects_a_file_that_differs() -> None:
    net = make_net("regression", "relu")
    model_bytes = to_onnx(net, name="m", version=1)
    X = probe_inputs(net.input_dim, np.random.default_rng(5))
    with pytest.raises(ExportVerificationError) as info:
        verify_onnx(model_bytes, _perturbed(net), X)
    err = info.value
    assert err.stage == "compare"
    assert err.evidence["max_abs_error"] > 1e-3
    assert set(err.evidence["worst"]) == {"probe", "column", "expected", "got"}
    assert err.evidence["tolerance"] == {"atol": export.DEFAULT_ATOL, "rtol": export.DEFAULT_RTOL}
    report = verify_onnx(model_bytes, _perturbed(net), X, raise_on_failure=False)
    assert report["ok"] is False and report["evidence"]["max_abs_error"] > 1e-3


def test_verification_stages() -> None:
    net = make_net("binary", "relu")
    X = probe_inputs(net.input_dim, np.random.default_rng(6))
    with pytest.raises(ExportVerificationError) as info:
        verify_onnx(b"not an onnx file", net, X)
    assert info.value.stage == "checker"
    other = make_net("binary", "relu", input_dim=4)
    with pytest.raises(ExportVerificationError) as info:
        verify_onnx(to_onnx(other, name="m", version=1), net, X)
    assert info.value.stage == "contract"
    assert info.value.evidence["found"]["inputs"] == [["input", TensorProto.FLOAT, ["N", 4]]]


# --------------------------------------------------------------------------- torch
_TORCH_MODULES = {"Linear", "ReLU", "Tanh", "Sigmoid", "Softmax"}


def build_sequential(arch: dict):
    """Rebuild the ``torch.nn.Sequential`` an exported architecture JSON describes."""
    import torch.nn as nn

    modules = []
    for k, m in enumerate(arch["modules"]):
        assert m["index"] == k and m["type"] in _TORCH_MODULES
        kwargs = {key: value for key, value in m.items() if key not in ("index", "type")}
        modules.append(getattr(nn, m["type"])(**kwargs))
    return nn.Sequential(*modules)


def safetensors_metadata(data: bytes) -> dict[str, str]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n])["__metadata__"]


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("task", TASKS)
def test_torch_state_loads_strict_and_matches_forward(task: str, activation: str) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import load as load_torch

    net = make_net(task, activation)
    data, arch = to_torch_state(net, name="churn", version=3)
    meta = safetensors_metadata(data)
    assert json.loads(meta["architecture"]) == arch
    assert (meta["model"], meta["version"], meta["task"]) == ("churn", "3", task)
    model = build_sequential(json.loads(meta["architecture"]))
    state = load_torch(data)
    assert sorted(state) == ["0.bias", "0.weight", "2.bias", "2.weight", "4.bias", "4.weight"]
    model.load_state_dict(state, strict=True)
    X = probe_inputs(net.input_dim, np.random.default_rng(8), n=100)
    with torch.no_grad():
        got = model(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(got, net.forward(X), rtol=1e-5, atol=1e-6)
    last = arch["modules"][-1]["type"]
    assert last == {"regression": "Linear", "binary": "Sigmoid", "multiclass": "Softmax"}[task]


def test_torch_state_of_a_quantized_pruned_version() -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import load as load_torch

    qnet, _ = quantized_version(make_net("multiclass", "relu", hidden=[4]))
    data, arch = to_torch_state(qnet)
    model = build_sequential(arch)
    model.load_state_dict(load_torch(data), strict=True)
    X = probe_inputs(qnet.input_dim, np.random.default_rng(9))
    with torch.no_grad():
        got = model(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(got, qnet.forward(X), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- npz
def test_npz_loads_without_pickle() -> None:
    net = make_net("binary", "sigmoid")
    with np.load(io.BytesIO(to_npz(net)), allow_pickle=False) as z:
        names = sorted(z.files)
        assert names == sorted(["architecture"] + [f"layers.{i}.{p}" for i in range(3) for p in ("weight", "bias")])
        for i in range(3):
            assert z[f"layers.{i}.weight"].dtype == np.float32
            np.testing.assert_array_equal(z[f"layers.{i}.weight"], net.weights[i])
            np.testing.assert_array_equal(z[f"layers.{i}.bias"], net.biases[i])
        arch = json.loads(str(z["architecture"]))
    assert arch["task"] == "binary" and arch["activation"] == "sigmoid"
    assert [m["type"] for m in arch["modules"]] == ["Linear", "Sigmoid", "Linear", "Sigmoid", "Linear", "Sigmoid"]


# --------------------------------------------------------------------------- misc
def test_probe_inputs() -> None:
    real = np.ones((3, 5), dtype=np.float32)
    P = probe_inputs(5, np.random.default_rng(0), n=10, real=real)
    assert P.shape == (13, 5) and P.dtype == np.float32
    np.testing.assert_array_equal(P[:3], real)
    np.testing.assert_array_equal(P, probe_inputs(5, np.random.default_rng(0), n=10, real=real))


@pytest.mark.parametrize("module", ["export.py", "onnx_import.py"])
def test_engine_imports_nothing_from_web_or_database(module: str) -> None:
    tree = ast.parse((Path(export.__file__).parent / module).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    bad = {m for m in imported if m.split(".")[:2] in (["app", "api"], ["app", "store"], ["app", "services"])}
    assert not bad
