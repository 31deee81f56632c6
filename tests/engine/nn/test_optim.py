"""Optimizer: one step worked by hand, state round trips, constraints, torch.optim equivalence."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.engine.nn.network import Network, init_network
from app.engine.nn.optim import Optimizer, OptimizerConfig, param_layout

F32 = np.float32


def tiny_net(seed: int = 0) -> Network:
    return init_network("regression", "tanh", 3, 2, [4], seed)


def grads_like(net: Network, rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    dW = [rng.standard_normal(w.shape).astype(F32) for w in net.weights]
    db = [rng.standard_normal(b.shape).astype(F32) for b in net.biases]
    return dW, db


def params(net: Network) -> list[np.ndarray]:
    return [*net.weights, *net.biases]


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "rmsprop"},
        {"learning_rate": 0.0},
        {"learning_rate": -1.0},
        {"learning_rate": math.inf},
        {"momentum": 1.0},
        {"momentum": -0.1},
        {"l2": -1e-3},
        {"clip_norm": 0.0},
        {"clip_norm": math.nan},
        {"beta1": 1.0},
        {"beta2": 1.5},
        {"eps": 0.0},
        {"learning_rate": True},
    ],
)
def test_config_rejects_nonsense(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        OptimizerConfig(**kwargs)


def test_config_dict_round_trip_and_plain_flag() -> None:
    cfg = OptimizerConfig("adam", 0.003, l2=1e-4, clip_norm=2.0)
    assert OptimizerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown field"):
        OptimizerConfig.from_dict({"kind": "sgd", "nesterov": True})
    assert OptimizerConfig("sgd", 0.1).is_plain_sgd
    assert not OptimizerConfig("sgd", 0.1, momentum=0.5).is_plain_sgd
    assert not OptimizerConfig("sgd", 0.1, l2=0.1).is_plain_sgd
    assert not OptimizerConfig("adam", 0.1).is_plain_sgd
    assert cfg.replace(learning_rate=0.5).learning_rate == 0.5


def test_config_from_a_model_spec() -> None:
    """The one builder of a model's optimizer (online learner and batch training): known
    fields taken, other keys ignored, a job's learning rate replacing the spec's."""
    spec = {"kind": "adam", "learning_rate": 0.003, "l2": 1e-4, "note": "not an optimizer field"}
    assert OptimizerConfig.from_spec(spec) == OptimizerConfig("adam", 0.003, l2=1e-4)
    assert OptimizerConfig.from_spec(spec, learning_rate=0.5) == OptimizerConfig("adam", 0.5, l2=1e-4)
    assert OptimizerConfig.from_spec(spec, learning_rate=None).learning_rate == 0.003
    assert OptimizerConfig.from_spec(None) == OptimizerConfig()
    assert spec["learning_rate"] == 0.003  # the spec is not changed
    with pytest.raises(ValueError, match="learning_rate"):
        OptimizerConfig.from_spec({"learning_rate": -1.0})


# --------------------------------------------------------------------------- hand-worked steps
def test_sgd_step_by_hand_l2_on_weights_only() -> None:
    net = tiny_net()
    before = net.copy()
    dW, db = grads_like(net, np.random.default_rng(1))
    lr, l2 = 0.1, 0.01
    Optimizer(OptimizerConfig("sgd", lr, l2=l2), net).step(net, dW, db)
    for i in range(2):
        W0, b0 = before.weights[i], before.biases[i]
        expect_W = W0 - F32(lr) * (dW[i] + F32(l2) * W0)
        np.testing.assert_array_equal(net.weights[i], expect_W)
        np.testing.assert_array_equal(net.biases[i], b0 - F32(lr) * db[i])


def test_sgd_momentum_by_hand_two_steps() -> None:
    net = tiny_net()
    w = net.weights[0].astype(np.float64)
    rng = np.random.default_rng(2)
    opt = Optimizer(OptimizerConfig("sgd", 0.05, momentum=0.9), net)
    v = np.zeros_like(w)
    for _ in range(2):
        dW, db = grads_like(net, rng)
        opt.step(net, dW, db)
        v = 0.9 * v + dW[0]
        w = w - 0.05 * v
    np.testing.assert_allclose(net.weights[0], w, rtol=1e-6, atol=1e-7)


def test_adam_by_hand_three_steps_kingma_ba() -> None:
    net = tiny_net()
    b1, b2, eps, lr, l2 = 0.9, 0.999, 1e-8, 0.01, 0.05
    w = net.weights[1].astype(np.float64)
    b = net.biases[1].astype(np.float64)
    mw = vw = np.zeros_like(w)
    mb = vb = np.zeros_like(b)
    rng = np.random.default_rng(3)
    opt = Optimizer(OptimizerConfig("adam", lr, l2=l2), net)
    for t in range(1, 4):
        dW, db = grads_like(net, rng)
        opt.step(net, dW, db)
        g = dW[1] + l2 * w
        mw, vw = b1 * mw + (1 - b1) * g, b2 * vw + (1 - b2) * g * g
        w = w - lr * (mw / (1 - b1**t)) / (np.sqrt(vw / (1 - b2**t)) + eps)
        mb, vb = b1 * mb + (1 - b1) * db[1], b2 * vb + (1 - b2) * db[1] ** 2
        b = b - lr * (mb / (1 - b1**t)) / (np.sqrt(vb / (1 - b2**t)) + eps)
    assert opt.t == 3
    np.testing.assert_allclose(net.weights[1], w, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(net.biases[1], b, rtol=2e-6, atol=1e-7)


def test_clip_norm_scales_all_layers_jointly() -> None:
    net = tiny_net()
    before = net.copy()
    dW, db = grads_like(net, np.random.default_rng(4))
    norm = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in [*dW, *db]))
    clip = norm / 4
    Optimizer(OptimizerConfig("sgd", 1.0, clip_norm=clip), net).step(net, dW, db)
    applied = [b - a for a, b in zip(params(net), params(before), strict=True)]  # = lr · g_clipped
    new_norm = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in applied))
    assert new_norm == pytest.approx(clip, rel=1e-5)
    for g, a in zip([*dW, *db], applied, strict=True):  # same direction, one common factor
        np.testing.assert_allclose(a, g * (clip / (norm + 1e-6)), rtol=1e-5, atol=1e-7)


def test_clip_norm_leaves_small_gradients_alone() -> None:
    net, ref = tiny_net(), tiny_net()
    dW, db = grads_like(net, np.random.default_rng(5))
    Optimizer(OptimizerConfig("sgd", 0.1, clip_norm=1e6), net).step(net, dW, db)
    Optimizer(OptimizerConfig("sgd", 0.1), ref).step(ref, dW, db)
    for a, b in zip(params(net), params(ref), strict=True):
        np.testing.assert_array_equal(a, b)


def test_step_does_not_modify_gradients() -> None:
    net = tiny_net()
    dW, db = grads_like(net, np.random.default_rng(6))
    copies = [g.copy() for g in [*dW, *db]]
    Optimizer(OptimizerConfig("adam", 0.1, l2=0.1, clip_norm=0.5), net).step(net, dW, db)
    for g, c in zip([*dW, *db], copies, strict=True):
        np.testing.assert_array_equal(g, c)


# --------------------------------------------------------------------------- constraints
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_frozen_layers_bit_identical(kind: str) -> None:
    net = init_network("binary", "relu", 5, 1, [6, 4], 0)
    before = net.copy()
    opt = Optimizer(OptimizerConfig(kind, 0.1, momentum=0.5 if kind == "sgd" else 0.0), net, frozen={0, 2})
    rng = np.random.default_rng(0)
    for _ in range(5):
        opt.step(net, *grads_like(net, rng))
    for i in (0, 2):
        np.testing.assert_array_equal(net.weights[i], before.weights[i])
        np.testing.assert_array_equal(net.biases[i], before.biases[i])
    assert not np.array_equal(net.weights[1], before.weights[1])
    with pytest.raises(ValueError, match="layer 3"):
        Optimizer(OptimizerConfig(), net, frozen={3})


@pytest.mark.parametrize("cfg", [OptimizerConfig("sgd", 0.1, momentum=0.9, l2=0.1), OptimizerConfig("adam", 0.1)])
def test_masks_keep_pruned_weights_at_zero(cfg: OptimizerConfig) -> None:
    net = init_network("binary", "relu", 5, 1, [6], 0)
    rng = np.random.default_rng(1)
    masks = [rng.random(w.shape) > 0.5 for w in net.weights]
    opt = Optimizer(cfg, net, masks=masks)
    # even state carried over from an unmasked run cannot move a pruned weight
    state = opt.state_dict()
    for k in state:
        if k != "t":
            state[k] = np.ones_like(state[k])
    opt.load_state_dict(state)
    for _ in range(5):
        opt.step(net, *grads_like(net, rng))
        for W, m in zip(net.weights, masks, strict=True):
            assert (W[~m] == 0).all()
            assert (W[m] != 0).all()
    with pytest.raises(ValueError, match="masks\\[0\\]"):
        Optimizer(cfg, net, masks=[np.ones((2, 2), bool), None])


# --------------------------------------------------------------------------- state
@pytest.mark.parametrize(
    "cfg",
    [
        OptimizerConfig("sgd", 0.05),
        OptimizerConfig("sgd", 0.05, momentum=0.9, l2=1e-3, clip_norm=1.0),
        OptimizerConfig("adam", 0.01, l2=1e-3),
    ],
)
def test_state_dict_round_trip_continues_bit_identically(cfg: OptimizerConfig) -> None:
    rng = np.random.default_rng(7)
    grads = [grads_like(tiny_net(), rng) for _ in range(10)]
    straight = tiny_net()
    opt = Optimizer(cfg, straight)
    for g in grads:
        opt.step(straight, *g)

    part = tiny_net()
    opt1 = Optimizer(cfg, part)
    for g in grads[:4]:
        opt1.step(part, *g)
    state = opt1.state_dict()
    assert state["t"].dtype == np.int64 and int(state["t"]) == 4
    assert all(v.dtype == F32 for k, v in state.items() if k != "t")
    restored = Network(part.task, part.activation, [w.copy() for w in part.weights], [b.copy() for b in part.biases])
    opt2 = Optimizer(cfg, restored)
    opt2.load_state_dict({k: v.copy() for k, v in state.items()})
    for g in grads[4:]:
        opt2.step(restored, *g)
    for a, b in zip(params(straight), params(restored), strict=True):
        np.testing.assert_array_equal(a, b)


def test_state_names_follow_torch_and_api_layout() -> None:
    net = tiny_net()
    assert set(Optimizer(OptimizerConfig("sgd", 0.1), net).state_dict()) == {"t"}
    mom = Optimizer(OptimizerConfig("sgd", 0.1, momentum=0.9), net).state_dict()
    assert set(mom) == {"t"} | {f"momentum.layers.{i}.{p}" for i in range(2) for p in ("weight", "bias")}
    adam = Optimizer(OptimizerConfig("adam", 0.1), net).state_dict()
    assert adam["exp_avg_sq.layers.0.weight"].shape == (4, 3)
    assert adam["exp_avg.layers.1.bias"].shape == (2,)


def test_load_state_dict_rejects_mismatch() -> None:
    net = tiny_net()
    opt = Optimizer(OptimizerConfig("adam", 0.1), net)
    good = opt.state_dict()
    with pytest.raises(ValueError, match="missing"):
        opt.load_state_dict({k: v for k, v in good.items() if k != "exp_avg.layers.0.weight"})
    bad = dict(good)
    bad["exp_avg.layers.0.weight"] = np.zeros((3, 4), F32)
    with pytest.raises(ValueError, match=r"exp_avg\.layers\.0\.weight"):
        opt.load_state_dict(bad)
    with pytest.raises(ValueError, match="unexpected"):
        opt.load_state_dict({**good, "momentum.layers.0.weight": np.zeros((4, 3), F32)})
    with pytest.raises(ValueError, match="layer shapes"):
        opt.step(init_network("regression", "tanh", 3, 2, [5], 0), *grads_like(net, np.random.default_rng(0)))


# --------------------------------------------------------------------------- flat API
def _flat(net: Network) -> np.ndarray:
    out = np.empty(param_layout(net)[-1][2], F32)
    for (ws, bs, end), W, b in zip(param_layout(net), net.weights, net.biases, strict=True):
        out[ws:bs] = W.reshape(-1)
        out[bs:end] = b
    return out


@pytest.mark.parametrize(
    ("cfg", "exact"),
    [
        (OptimizerConfig("sgd", 0.05, l2=0.01), True),
        (OptimizerConfig("sgd", 0.05, momentum=0.9), True),
        (OptimizerConfig("adam", 0.01, l2=0.01), True),
        (OptimizerConfig("adam", 0.01, clip_norm=0.5), False),  # clip norm summed in another order
    ],
)
def test_flat_update_equals_list_step(cfg: OptimizerConfig, exact: bool) -> None:
    net = init_network("binary", "relu", 4, 1, [5, 3], 0)
    rng = np.random.default_rng(8)
    masks = [None, rng.random((3, 5)) > 0.3, None]
    frozen = {0}
    ref = net.copy()
    opt_ref = Optimizer(cfg, ref, frozen=frozen, masks=masks)
    flat_opt = Optimizer(cfg, net, frozen=frozen, masks=masks)
    P = _flat(net)
    G = np.zeros_like(P)
    update = flat_opt.bind_flat(P, G)
    for _ in range(6):
        dW, db = grads_like(net, rng)
        opt_ref.step(ref, dW, db)
        G[...] = _flat(Network(net.task, net.activation, dW, db))
        update()
    got = _flat(ref)
    if exact:
        np.testing.assert_array_equal(P, got)
    else:
        np.testing.assert_allclose(P, got, rtol=1e-6, atol=1e-7)
    assert flat_opt.t == opt_ref.t == 6


# --------------------------------------------------------------------------- torch.optim
@pytest.mark.parametrize(
    "cfg",
    [
        OptimizerConfig("sgd", 0.05, momentum=0.9),
        OptimizerConfig("sgd", 0.05, momentum=0.5, l2=0.1),
        OptimizerConfig("adam", 0.01),
        OptimizerConfig("adam", 0.01, l2=0.1, beta1=0.8, beta2=0.99, eps=1e-6),
    ],
)
def test_matches_torch_optim_on_a_gradient_sequence(cfg: OptimizerConfig) -> None:
    torch = pytest.importorskip("torch")
    net = tiny_net()
    ws = [torch.nn.Parameter(torch.from_numpy(w.copy())) for w in net.weights]
    bs = [torch.nn.Parameter(torch.from_numpy(b.copy())) for b in net.biases]
    groups = [{"params": ws, "weight_decay": cfg.l2}, {"params": bs, "weight_decay": 0.0}]
    if cfg.kind == "sgd":
        topt = torch.optim.SGD(groups, lr=cfg.learning_rate, momentum=cfg.momentum)
    else:
        topt = torch.optim.Adam(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    opt = Optimizer(cfg, net)
    rng = np.random.default_rng(9)
    for _ in range(50):
        dW, db = grads_like(net, rng)
        opt.step(net, dW, db)
        for p, g in zip(ws + bs, dW + db, strict=True):
            p.grad = torch.from_numpy(g.copy())
        topt.step()
    for a, p in zip(params(net), ws + bs, strict=True):
        np.testing.assert_allclose(a, p.detach().numpy(), rtol=1e-5, atol=1e-6)
