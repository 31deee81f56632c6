"""The numpy network and the tensor codec: deterministic initialisation, forward pass,
losses, labels, gradients against finite differences, wire layout checks."""

from __future__ import annotations

import numpy as np
import pytest

from app.engine import codec
from app.engine.codec import dequantize, describe, from_tensors, to_tensors
from app.engine.errors import TensorError
from app.engine.nn import network
from app.engine.nn.network import Network, gradients, init_network, per_sample_loss

TASKS = [("regression", 2), ("binary", 1), ("multiclass", 3)]


# --------------------------------------------------------------------------- init
def test_init_is_deterministic_float32():
    a = init_network("binary", "relu", 20, 1, [30, 10], seed=5)
    b = init_network("binary", "relu", 20, 1, [30, 10], seed=5)
    c = init_network("binary", "relu", 20, 1, [30, 10], seed=6)
    assert [w.shape for w in a.weights] == [(30, 20), (10, 30), (1, 10)]
    for wa, wb, ba, bb in zip(a.weights, b.weights, a.biases, b.biases, strict=True):
        assert wa.dtype == np.float32 and ba.dtype == np.float32
        np.testing.assert_array_equal(wa, wb)
        np.testing.assert_array_equal(ba, bb)
    assert not np.array_equal(a.weights[0], c.weights[0])
    assert (a.input_dim, a.output_dim, a.hidden, a.n_params) == (20, 1, [30, 10], 20 * 30 + 30 + 30 * 10 + 10 + 11)


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_init_is_pytorchs_linear_default(activation):
    """U(−1/√fan_in, 1/√fan_in) for every weight and bias, drawn W then b per layer."""
    net = init_network("regression", activation, 400, 1, [300], seed=0)
    rng = np.random.default_rng(0)
    for (fan_out, fan_in), W, b in zip([(300, 400), (1, 300)], net.weights, net.biases, strict=True):
        lim = 1 / np.sqrt(fan_in)
        np.testing.assert_array_equal(W, rng.uniform(-lim, lim, (fan_out, fan_in)).astype(np.float32))
        np.testing.assert_array_equal(b, rng.uniform(-lim, lim, fan_out).astype(np.float32))
        assert np.abs(W).max() <= lim and np.abs(b).max() <= lim
    W0 = net.weights[0].astype(np.float64)
    assert W0.std() == pytest.approx(1 / np.sqrt(400) / np.sqrt(3), rel=0.02)  # uniform: lim / √3
    assert abs(W0.mean()) < 1e-3 and net.biases[0].std() > 0


def test_init_matches_torch_nn_linear_in_distribution():
    """The same family as ``torch.nn.Linear``'s own initialisation (where torch is installed):
    same bounds, same spread, for weights and biases."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 512)
    ours = init_network("regression", "relu", 256, 512, [], seed=0)
    lim = 1 / 16
    for t, o, rel in ((lin.weight, ours.weights[0], 0.01), (lin.bias, ours.biases[0], 0.1)):
        t = t.detach().numpy().astype(np.float64)
        assert np.abs(o).max() <= lim and np.abs(t).max() <= lim
        # both spread like U(±lim): std lim / √3 (tolerance ≈ 4 standard errors of the estimate)
        assert o.std() == pytest.approx(lim / np.sqrt(3), rel=rel)
        assert t.std() == pytest.approx(lim / np.sqrt(3), rel=rel)


# --------------------------------------------------------------------------- forward
def manual(net: Network, X: np.ndarray) -> np.ndarray:
    a = X.astype(np.float64)
    act = {"relu": lambda z: np.maximum(z, 0), "tanh": np.tanh, "sigmoid": lambda z: 1 / (1 + np.exp(-z))}
    for i, (W, b) in enumerate(zip(net.weights, net.biases, strict=True)):
        z = a @ W.T.astype(np.float64) + b
        a = act[net.activation](z) if i < len(net.weights) - 1 else z
    if net.task == "binary":
        return 1 / (1 + np.exp(-a))
    if net.task == "multiclass":
        e = np.exp(a - a.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return a


@pytest.mark.parametrize(("task", "out"), TASKS)
@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("hidden", [[], [7, 5]])
def test_forward_matches_a_manual_pass(task, out, activation, hidden):
    net = init_network(task, activation, 4, out, hidden, seed=1)
    rng = np.random.default_rng(0)
    net.biases = [rng.normal(size=b.shape).astype(np.float32) for b in net.biases]
    X = rng.normal(size=(9, 4)).astype(np.float32)
    y = net.forward(X)
    assert y.dtype == np.float32 and y.shape == (9, out)
    np.testing.assert_allclose(y, manual(net, X), rtol=1e-5, atol=1e-6)
    trace = net.forward_trace(X)
    assert len(trace) == len(hidden) + 2
    np.testing.assert_allclose(trace[-1], y, rtol=1e-6)


def test_sigmoid_and_softmax_are_stable_at_extremes():
    z = np.array([[-1000.0, 0.0, 1000.0]], dtype=np.float32)
    s = network.output_link("binary", z.T)
    assert np.isfinite(s).all() and s[0, 0] == 0.0 and s[2, 0] == 1.0
    p = network.output_link("multiclass", z)
    assert np.isfinite(p).all() and p.sum() == pytest.approx(1.0)


def test_labels_and_accuracy():
    out = np.array([[0.2], [0.5], [0.9]], dtype=np.float32)
    assert network.labels("binary", out).tolist() == [0, 1, 1]
    assert network.accuracy("binary", out, np.array([0, 0, 1])) == pytest.approx(2 / 3)
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], dtype=np.float32)
    assert network.labels("multiclass", probs).tolist() == [1, 0]
    assert network.labels("regression", probs) is None and network.accuracy("regression", probs, probs) is None


def test_per_sample_losses_follow_the_formulas():
    y = np.array([[1.0, 2.0]], dtype=np.float32)
    assert per_sample_loss("regression", np.array([[0.0, 4.0]], dtype=np.float32), y)[0] == pytest.approx(2.5)
    p = np.array([[0.8], [0.3]], dtype=np.float32)
    bce = per_sample_loss("binary", p, np.array([1.0, 0.0], dtype=np.float32))
    np.testing.assert_allclose(bce, [-np.log(0.8), -np.log(0.7)], rtol=1e-6)
    probs = np.array([[0.1, 0.6, 0.3]], dtype=np.float32)
    assert per_sample_loss("multiclass", probs, np.array([2]))[0] == pytest.approx(-np.log(0.3), rel=1e-6)
    assert np.isfinite(per_sample_loss("binary", np.array([[1.0]], np.float32), np.array([0.0], np.float32))).all()


@pytest.mark.parametrize(("task", "out"), TASKS)
@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu"])
def test_gradients_match_finite_differences(task, out, activation):
    rng = np.random.default_rng(3)
    net32 = init_network(task, activation, 3, out, [4], seed=2)
    net = Network(
        task,
        activation,
        [w.astype(np.float64) for w in net32.weights],
        [rng.normal(size=b.shape) for b in net32.biases],
    )
    X = rng.normal(size=(5, 3))
    Y = {
        "regression": rng.normal(size=(5, out)),
        "binary": rng.integers(0, 2, size=5).astype(float),
        "multiclass": rng.integers(0, out, size=5),
    }[task]
    dW, db, _ = gradients(net, X, Y)

    def loss() -> float:
        return float(per_sample_loss(task, net.forward(X), Y).mean())

    eps = 1e-6
    for params, grads in ((net.weights, dW), (net.biases, db)):
        for P, G in zip(params, grads, strict=True):
            for idx in np.ndindex(P.shape):
                old = P[idx]
                P[idx] = old + eps
                up = loss()
                P[idx] = old - eps
                down = loss()
                P[idx] = old
                assert G[idx] == pytest.approx((up - down) / (2 * eps), rel=1e-3, abs=1e-5), (task, idx)


# --------------------------------------------------------------------------- codec
def spec(net: Network) -> dict:
    return {
        "task": net.task,
        "activation": net.activation,
        "input_dim": net.input_dim,
        "output_dim": net.output_dim,
        "n_layers": len(net.weights),
    }


def test_codec_round_trip():
    net = init_network("multiclass", "tanh", 3, 4, [5], seed=0)
    t = to_tensors(net)
    assert list(t) == ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"]
    assert all(a.flags.c_contiguous and a.dtype == np.float32 for a in t.values())
    back = from_tensors(t, **spec(net))
    for a, b in zip(back.weights + back.biases, net.weights + net.biases, strict=True):
        np.testing.assert_array_equal(a, b)
    assert describe(t) == ("float32", 0.0)


def test_codec_accepts_narrower_hidden_layers_and_float16_weights():
    net = init_network("regression", "relu", 3, 1, [5], seed=0)
    t = to_tensors(net)
    t["layers.0.weight"] = t["layers.0.weight"][:2].astype(np.float16)
    t["layers.0.bias"] = t["layers.0.bias"][:2]
    t["layers.1.weight"] = t["layers.1.weight"][:, :2]
    back = from_tensors(t, **spec(net))
    assert back.hidden == [2] and back.weights[0].dtype == np.float32


def test_codec_dequantizes_integer_weights():
    q = np.array([[-127, 0, 127], [10, -10, 5]], dtype=np.int8)
    scale = np.array([0.5, 0.25], dtype=np.float32)
    np.testing.assert_allclose(dequantize(q, scale, None), q * scale[:, None])
    zp = np.array([3, 4], dtype=np.uint8)
    np.testing.assert_allclose(dequantize(q, scale, zp), (q - zp[:, None].astype(np.float32)) * scale[:, None])
    np.testing.assert_allclose(dequantize(q, np.float32(2.0), None), q * 2.0)
    t = {
        "layers.0.weight": q,
        "layers.0.weight_scale": scale,
        "layers.0.bias": np.zeros(2, np.float32),
    }
    net = from_tensors(t, task="regression", activation="relu", input_dim=3, output_dim=2, n_layers=1)
    np.testing.assert_allclose(net.weights[0], q * scale[:, None])


def _bad(change: dict) -> dict:
    net = init_network("regression", "relu", 3, 1, [4], seed=0)
    t = to_tensors(net)
    for k, v in change.items():
        if v is None:
            t.pop(k)
        else:
            t[k] = v
    return t


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"layers.0.weight": np.zeros((4, 2), np.float32)}, "layers.0.weight"),
        ({"layers.0.weight": np.zeros(12, np.float32)}, "layers.0.weight"),
        ({"layers.1.weight": np.zeros((2, 4), np.float32)}, "layers.1.weight"),
        ({"layers.0.bias": np.zeros(3, np.float32)}, "layers.0.bias"),
        ({"layers.0.bias": np.zeros(4, np.float64)}, "layers.0.bias"),
        ({"layers.0.weight": np.zeros((4, 3), np.float64)}, "layers.0.weight"),
        ({"layers.0.weight": np.zeros((4, 3), np.int8)}, "layers.0.weight_scale"),
        ({"layers.0.weight_scale": np.ones(4, np.float32)}, "layers.0.weight_scale"),
        ({"layers.0.weight": np.full((4, 3), np.nan, np.float32)}, "layers.0.weight"),
        ({"layers.1.bias": np.array([np.inf], np.float32)}, "layers.1.bias"),
        ({"layers.1.bias": None}, "layers.1.bias"),
        ({"layers.2.weight": np.zeros((1, 1), np.float32)}, "layers.2.weight"),
        ({"weights.0": np.zeros(1, np.float32)}, "weights.0"),
    ],
)
def test_codec_names_the_offending_tensor(change, loc):
    with pytest.raises(TensorError) as e:
        from_tensors(_bad(change), task="regression", activation="relu", input_dim=3, output_dim=1, n_layers=2)
    assert e.value.loc == loc


def test_codec_checks_quantization_scales():
    t = {
        "layers.0.weight": np.ones((2, 3), np.int8),
        "layers.0.weight_scale": np.array([1.0, -1.0], np.float32),
        "layers.0.bias": np.zeros(2, np.float32),
    }
    kw = {"task": "regression", "activation": "relu", "input_dim": 3, "output_dim": 2, "n_layers": 1}
    with pytest.raises(TensorError, match="positive"):
        codec.from_tensors(t, **kw)
    t["layers.0.weight_scale"] = np.ones(3, np.float32)
    with pytest.raises(TensorError, match="shape"):
        codec.from_tensors(t, **kw)
