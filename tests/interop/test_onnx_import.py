"""ONNX import: skl2onnx and torch.onnx.export round trips, Steward's own exports, bad files."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from app.engine.nn.network import ACTIVATIONS, Network, init_network, labels
from app.interop.export import probe_inputs, to_onnx
from app.interop.onnx_import import (
    ImportedNetwork,
    OnnxImportError,
    OnnxTooLargeError,
    OnnxVerificationError,
    from_onnx,
    verify_import,
)
from tests.interop.test_export import make_net, quantized_version

MAX = 16 * 2**20


def spec_of(imp: ImportedNetwork, task: str, activation: str) -> dict:
    return {
        "task": task,
        "activation": activation,
        "input_dim": imp.input_dim,
        "output_dim": 1 if task == "binary" else imp.output_dim,
        "n_layers": imp.n_layers,
    }


def import_and_verify(model_bytes: bytes, task: str, activation: str, probes: np.ndarray) -> Network:
    imp = from_onnx(model_bytes, max_bytes=MAX)
    net = imp.check_against(**spec_of(imp, task, activation))
    report = verify_import(model_bytes, imp, net, probes)
    assert report["ok"] is True and report["max_abs_error"] <= 1e-5
    return net


# --------------------------------------------------------------------------- skl2onnx
def _fit(model, X, y):
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(X, y)


def _skl2onnx(model, n_features: int, options=None) -> bytes:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(model, initial_types=[("input", FloatTensorType([None, n_features]))], options=options)
    return onx.SerializeToString()


@pytest.mark.parametrize("zipmap", [True, False])
def test_skl2onnx_digits_classifier_labels_equal_sklearn(zipmap: bool) -> None:
    pytest.importorskip("skl2onnx")
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    clf = _fit(MLPClassifier(hidden_layer_sizes=(32,), max_iter=150, random_state=0), X, y)
    options = None if zipmap else {id(clf): {"zipmap": False}}
    model_bytes = _skl2onnx(clf, 64, options)
    imp = from_onnx(model_bytes, max_bytes=MAX)
    assert imp.describe()["layers"] == [64, 32, 10]
    assert imp.hidden_activations == ["relu"] and imp.output_link == "softmax"
    assert imp.followed_output == (None if zipmap else "probabilities")
    net = imp.check_against(task="multiclass", activation="relu", input_dim=64, output_dim=10, n_layers=2)
    assert verify_import(model_bytes, imp, net, X[:300])["output_transform"] == "none"
    np.testing.assert_array_equal(labels("multiclass", net.forward(X)), clf.predict(X))
    np.testing.assert_allclose(net.forward(X), clf.predict_proba(X), atol=1e-5)


def test_skl2onnx_binary_classifier_labels_equal_sklearn() -> None:
    pytest.importorskip("skl2onnx")
    from sklearn.datasets import load_breast_cancer
    from sklearn.neural_network import MLPClassifier

    X, y = load_breast_cancer(return_X_y=True)
    X = ((X - X.mean(axis=0)) / X.std(axis=0)).astype(np.float32)
    clf = _fit(MLPClassifier(hidden_layer_sizes=(16, 8), activation="tanh", max_iter=300, random_state=0), X, y)
    model_bytes = _skl2onnx(clf, 30)
    imp = from_onnx(model_bytes, max_bytes=MAX)
    assert imp.output_link == "sigmoid" and imp.output_dim == 1
    assert imp.followed_output is None  # skl2onnx exposes [1 − p, p]; Steward follows p
    net = import_and_verify(model_bytes, "binary", "tanh", X)
    np.testing.assert_array_equal(labels("binary", net.forward(X)), clf.predict(X))
    np.testing.assert_allclose(net.forward(X)[:, 0], clf.predict_proba(X)[:, 1], atol=1e-5)


@pytest.mark.parametrize("n_targets", [1, 2])
def test_skl2onnx_regressor(n_targets: int) -> None:
    pytest.importorskip("skl2onnx")
    from sklearn.neural_network import MLPRegressor

    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 6)).astype(np.float32)
    Y = np.c_[X[:, 0] - X[:, 1], np.sin(X[:, 2])][:, :n_targets]
    reg = _fit(
        MLPRegressor(hidden_layer_sizes=(10,), activation="logistic", max_iter=100, random_state=0), X, Y.squeeze()
    )
    net = import_and_verify(_skl2onnx(reg, 6), "regression", "sigmoid", X)
    np.testing.assert_allclose(net.forward(X), reg.predict(X).reshape(200, -1), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- torch.onnx.export
def _torch_export(module, n_in: int, dynamic: bool = True) -> bytes:
    torch = pytest.importorskip("torch")
    buf = io.BytesIO()
    kwargs = {"dynamic_axes": {"input": {0: "N"}, "output": {0: "N"}}} if dynamic else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the legacy TorchScript exporter
            torch.onnx.export(
                module, (torch.zeros(3, n_in),), buf, input_names=["input"], output_names=["output"],
                dynamo=False, **kwargs,
            )  # fmt: skip
    except ModuleNotFoundError as e:  # e.g. onnxscript, needed by newer exporters
        pytest.skip(f"torch.onnx.export needs a package that is not installed: {e}")
    return buf.getvalue()


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_torch_sequential_round_trip(activation: str) -> None:
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    act = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}[activation]
    module = nn.Sequential(nn.Linear(8, 16), act(), nn.Linear(16, 6), act(), nn.Linear(6, 4), nn.Softmax(dim=1))
    model_bytes = _torch_export(module, 8)
    X = probe_inputs(8, np.random.default_rng(1))
    net = import_and_verify(model_bytes, "multiclass", activation, X)
    with torch.no_grad():
        expected = module(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(net.forward(X), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(net.weights[0], module[0].weight.detach().numpy())


def test_torch_logits_and_two_class_softmax_and_fixed_batch() -> None:
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(1)
    X = probe_inputs(5, np.random.default_rng(2), n=50)
    logits = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))  # trained with CrossEntropyLoss
    model_bytes = _torch_export(logits, 5, dynamic=False)  # batch fixed at 3: verification chunks
    imp = from_onnx(model_bytes, max_bytes=MAX)
    assert imp.fixed_batch == 3 and imp.output_link == "identity"
    net = imp.check_against(task="multiclass", activation="relu", input_dim=5, output_dim=3, n_layers=2)
    assert verify_import(model_bytes, imp, net, X)["output_transform"] == "softmax"
    with torch.no_grad():
        expected = torch.softmax(logits(torch.from_numpy(X)), dim=1).numpy()
    np.testing.assert_allclose(net.forward(X), expected, rtol=1e-5, atol=1e-6)

    two = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2), nn.Softmax(dim=1))
    model_bytes = _torch_export(two, 5)
    imp = from_onnx(model_bytes, max_bytes=MAX)
    net = imp.check_against(task="binary", activation="tanh", input_dim=5, output_dim=1, n_layers=2)
    assert net.weights[-1].shape == (1, 4)
    assert verify_import(model_bytes, imp, net, X)["output_transform"] == "softmax_column_1"
    with torch.no_grad():
        expected = two(torch.from_numpy(X)).numpy()[:, 1:2]
    np.testing.assert_allclose(net.forward(X), expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- Steward's own exports
@pytest.mark.parametrize("task", ["regression", "binary", "multiclass"])
def test_own_exports_round_trip_bit_exact(task: str) -> None:
    net = make_net(task, "tanh")
    qnet, tensors = quantized_version(net)
    for n, q in ((net, None), (qnet, tensors)):
        model_bytes = to_onnx(n, name="m", version=1, quantized=q, opset=13)
        imp = from_onnx(model_bytes, max_bytes=MAX)
        got = imp.check_against(task=task, activation="tanh", input_dim=9, output_dim=n.output_dim, n_layers=3)
        for a, b in zip(got.weights + got.biases, n.weights + n.biases, strict=True):
            np.testing.assert_array_equal(a, b)
        verify_import(model_bytes, imp, got, probe_inputs(9, np.random.default_rng(3)))


# --------------------------------------------------------------------------- bad input
def _model(nodes, inits, n_in=4, n_out=3, opset=17, inputs=None) -> bytes:
    graph = helper.make_graph(
        nodes,
        "g",
        inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n_out])],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString()


RNG = np.random.default_rng(0)
W1, B1 = RNG.standard_normal((5, 4)), RNG.standard_normal(5)
W2, B2 = RNG.standard_normal((3, 5)), RNG.standard_normal(3)


def _dense(extra_nodes=(), act="Relu", **kw) -> bytes:
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], name="fc1", transB=1),
        helper.make_node(act, ["h"], ["a"], name="act1"),
        helper.make_node("Gemm", ["a", "W2", "B2"], ["y"], name="fc2", transB=1),
        *extra_nodes,
    ]
    return _model(nodes, {"W1": W1, "B1": B1, "W2": W2, "B2": B2}, **kw)


def test_minimal_graph_and_gemm_variants() -> None:
    imp = from_onnx(_dense(), max_bytes=MAX)
    assert imp.describe()["layers"] == [4, 5, 3]
    np.testing.assert_array_equal(imp.weights[0], W1.astype(np.float32))
    # MatMul + Add (reversed operands), Gemm with transB=0 and alpha / beta folded
    nodes = [
        helper.make_node("MatMul", ["x", "W1t"], ["m"], name="mm"),
        helper.make_node("Add", ["B1", "m"], ["h"], name="add"),
        helper.make_node("Tanh", ["h"], ["a"]),
        helper.make_node("Gemm", ["a", "W2t", "B2"], ["y"], alpha=2.0, beta=0.5),
    ]
    model_bytes = _model(nodes, {"W1t": W1.T, "B1": B1[None, :], "W2t": W2.T, "B2": B2})
    imp = from_onnx(model_bytes, max_bytes=MAX)
    net = imp.check_against(task="regression", activation="tanh", input_dim=4, output_dim=3, n_layers=2)
    np.testing.assert_allclose(net.weights[1], 2 * W2, rtol=1e-6)
    np.testing.assert_allclose(net.biases[1], 0.5 * B2, rtol=1e-6)
    verify_import(model_bytes, imp, net, probe_inputs(4, np.random.default_rng(0)))


@pytest.mark.parametrize("data", [b"", b"garbage bytes, not protobuf \xff\xfe", b"\x08\x07" * 10])
def test_garbage_bytes(data: bytes) -> None:
    with pytest.raises(OnnxImportError) as info:
        from_onnx(data, max_bytes=MAX)
    assert info.value.loc == "body"


def test_too_large() -> None:
    data = _dense()
    with pytest.raises(OnnxTooLargeError, match=f"{len(data)} bytes, the limit is 100"):
        from_onnx(data, max_bytes=100)


def test_conv_is_named() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "K"], ["c"], name="conv1"),
        helper.make_node("Flatten", ["c"], ["f"]),
        helper.make_node("Gemm", ["f", "W", "B"], ["y"], transB=1),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])]
    model_bytes = _model(nodes, {"K": np.ones((2, 1, 3, 3)), "W": np.ones((3, 8)), "B": np.ones(3)}, inputs=inputs)
    with pytest.raises(OnnxImportError, match=r"unsupported operator Conv \(node 'conv1'\)") as info:
        from_onnx(model_bytes, max_bytes=MAX)
    assert (info.value.op_type, info.value.node, info.value.loc) == ("Conv", "conv1", "node:conv1")


@pytest.mark.parametrize(
    ("extra", "op"),
    [
        ((helper.make_node("LeakyRelu", ["y"], ["z"], name="lrelu"),), "LeakyRelu"),
        ((helper.make_node("Log", ["y"], ["z"], name="log"),), "Log"),
    ],
)
def test_unsupported_post_operator_is_named(extra, op: str) -> None:
    with pytest.raises(OnnxImportError, match=f"unsupported operator {op}") as info:
        from_onnx(_dense(extra), max_bytes=MAX)
    assert info.value.op_type == op


def test_unsupported_operators_inside_the_chain() -> None:
    with pytest.raises(OnnxImportError, match=r"unsupported operator LeakyRelu \(node 'act1'\)"):
        from_onnx(_dense(act="LeakyRelu"), max_bytes=MAX)
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["a"]),
        helper.make_node("Sub", ["a", "C"], ["s"], name="shift"),
        helper.make_node("Gemm", ["s", "W2", "B2"], ["y"], transB=1),
    ]
    model_bytes = _model(nodes, {"W1": W1, "B1": B1, "C": np.ones(5), "W2": W2, "B2": B2})
    with pytest.raises(OnnxImportError, match=r"unsupported operator Sub \(node 'shift'\)"):
        from_onnx(model_bytes, max_bytes=MAX)
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], name="fc1", transA=1),
        helper.make_node("Gemm", ["h", "W2", "B2"], ["y"], transB=1),
    ]
    with pytest.raises(OnnxImportError, match="transA=1"):
        from_onnx(_model(nodes, {"W1": W1.T, "B1": B1, "W2": W2, "B2": B2}, n_in=5), max_bytes=MAX)


def test_branching_graph_is_refused() -> None:
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["a"]),
        helper.make_node("Gemm", ["a", "W", "B"], ["b"], transB=1, name="fc2"),
        helper.make_node("Add", ["a", "b"], ["r"], name="residual"),
        helper.make_node("Gemm", ["r", "W2", "B2"], ["y"], transB=1),
    ]
    inits = {"W1": W1, "B1": B1, "W": np.eye(5), "B": np.zeros(5), "W2": W2, "B2": B2}
    with pytest.raises(OnnxImportError, match="branches at tensor 'a'"):
        from_onnx(_model(nodes, inits), max_bytes=MAX)


def test_mismatched_shapes() -> None:
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], name="fc1", transB=1),
        helper.make_node("Gemm", ["h", "W2", "B2"], ["y"], name="fc2", transB=1),
    ]
    bad = {"W1": W1, "B1": B1, "W2": np.ones((3, 6)), "B2": B2}
    with pytest.raises(OnnxImportError, match="'fc2' expects 6 input features, it receives 5"):
        from_onnx(_model(nodes, bad), max_bytes=MAX)
    bad_bias = {"W1": W1, "B1": np.ones(4), "W2": W2, "B2": B2}
    with pytest.raises(OnnxImportError, match=r"bias of shape \[4\] does not broadcast to \[5\]"):
        from_onnx(_model(nodes, bad_bias), max_bytes=MAX)
    with pytest.raises(OnnxImportError, match="takes 4 input features, the model expects 30") as info:
        from_onnx(_dense(), max_bytes=MAX).check_against(
            task="regression", activation="relu", input_dim=30, output_dim=3, n_layers=2
        )
    assert info.value.loc == "input"


def test_check_against_names_each_mismatch() -> None:
    imp = from_onnx(_dense(), max_bytes=MAX)
    ok = {"task": "regression", "activation": "relu", "input_dim": 4, "output_dim": 3, "n_layers": 2}
    assert imp.check_against(**ok).hidden == [5]
    cases = [
        ({"n_layers": 3}, "layers", "has 2 dense layers"),
        ({"activation": "tanh"}, "activation", r"layer 0 \(node 'fc1'\) is followed by relu"),
        ({"output_dim": 4}, "output", "gives 3 outputs, the model expects 4"),
        ({"task": "binary", "output_dim": 1}, "output", "a binary model needs one sigmoid output"),
    ]
    for change, loc, msg in cases:
        with pytest.raises(OnnxImportError, match=msg) as info:
            imp.check_against(**{**ok, **change})
        assert info.value.loc == loc
    assert imp.output_link == "identity"
    with_softmax = _model(
        [
            helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], transB=1),
            helper.make_node("Sigmoid", ["h"], ["a"]),
            helper.make_node("Gemm", ["a", "W2", "B2"], ["z"], transB=1, name="head"),
            helper.make_node("Softmax", ["z"], ["y"], axis=1),
        ],
        {"W1": W1, "B1": B1, "W2": W2, "B2": B2},
    )
    imp = from_onnx(with_softmax, max_bytes=MAX)
    with pytest.raises(OnnxImportError, match=r"layer 1 \(node 'head'\) ends with softmax; a regression"):
        imp.check_against(task="regression", activation="sigmoid", input_dim=4, output_dim=3, n_layers=2)


def test_hidden_layer_without_activation_is_identity() -> None:
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], transB=1, name="fc1"),
        helper.make_node("Gemm", ["h", "W2", "B2"], ["y"], transB=1),
    ]
    imp = from_onnx(_model(nodes, {"W1": W1, "B1": B1, "W2": W2, "B2": B2}), max_bytes=MAX)
    assert imp.hidden_activations == ["identity"]
    with pytest.raises(OnnxImportError, match="followed by identity"):
        imp.check_against(task="regression", activation="relu", input_dim=4, output_dim=3, n_layers=2)


def test_two_inputs_and_external_data_are_refused() -> None:
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
        helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["N", 4]),
    ]
    with pytest.raises(OnnxImportError, match="expected one graph input, found 2"):
        from_onnx(_dense(inputs=inputs), max_bytes=MAX)
    model = onnx.load_model_from_string(_dense())
    w = model.graph.initializer[0]
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="../../etc/passwd")
    with pytest.raises(OnnxImportError, match="external files"):
        from_onnx(model.SerializeToString(), max_bytes=MAX)


def test_verification_catches_a_network_that_differs() -> None:
    model_bytes = _dense()
    imp = from_onnx(model_bytes, max_bytes=MAX)
    net = imp.check_against(task="regression", activation="relu", input_dim=4, output_dim=3, n_layers=2)
    net.biases[1][0] += 0.1
    with pytest.raises(OnnxVerificationError) as info:
        verify_import(model_bytes, imp, net, probe_inputs(4, np.random.default_rng(0)))
    assert info.value.evidence["max_abs_error"] == pytest.approx(0.1, rel=1e-3)


def test_init_network_import_shapes_are_free_for_pruned_models() -> None:
    net = init_network("binary", "relu", 6, 1, [3], 0)  # e.g. a neuron-pruned [6, 16, 1] model
    imp = from_onnx(to_onnx(net, name="m", version=1), max_bytes=MAX)
    assert imp.check_against(task="binary", activation="relu", input_dim=6, output_dim=1, n_layers=2).hidden == [3]
