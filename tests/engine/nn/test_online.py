"""Online learner: hand-worked streams, generic-path and PyTorch equivalence, exact replay,
the guard, prequential metrics, constraints and quality on real data."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from app.engine.nn.evaluation import evaluate
from app.engine.nn.network import Network, gradients, init_network
from app.engine.nn.online import LOSS_BLOWUP, NON_FINITE_LOSS, NON_FINITE_PARAMS, LearnerConfig, OnlineLearner
from app.engine.nn.optim import Optimizer, OptimizerConfig

F32 = np.float32


def params(net: Network) -> list[np.ndarray]:
    return [*net.weights, *net.biases]


def assert_close_to_scale(got: Network, want: Network, tol: float) -> None:
    """max |got − want| ≤ tol · max |want| over the whole network.

    float32 rounding in a pre-activation z = Wx + b is absolute on the scale of the weights and
    reaches every parameter through the deltas, so the yardstick is the network's largest
    parameter (a bias that starts at 0 is tiny after one step but carries the same errors).
    """
    scale = max(float(np.max(np.abs(b))) for b in params(want))
    for a, b in zip(params(got), params(want), strict=True):
        assert a.shape == b.shape
        err = float(np.max(np.abs(a.astype(np.float64) - b)))
        assert err <= tol * scale, (err, scale)


def assert_identical(a: Network, b: Network) -> None:
    for x, y in zip(params(a), params(b), strict=True):
        np.testing.assert_array_equal(x, y)


def stream(task: str, n: int, d: int, out: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(F32)
    W = rng.standard_normal((out, d))
    z = X @ W.T
    if task == "binary":
        return X, (z[:, 0] + 0.3 * rng.standard_normal(n) > 0).astype(F32)
    if task == "multiclass":
        return X, (z + 0.3 * rng.standard_normal(z.shape)).argmax(axis=1).astype(np.int64)
    return X, (z + 0.1 * rng.standard_normal(z.shape)).astype(F32)


# --------------------------------------------------------------------------- hand-worked streams
def reference_linear(task: str, W: np.ndarray, b: np.ndarray, X: np.ndarray, Y: np.ndarray, lr: float):
    """Per-sample SGD written out with plain numpy float32 formulas.

    regression: ŷ = Wx + b, ℓ = ½‖ŷ − y‖², ∇z = ŷ − y
    binary:     ŷ = σ(wx + b), ℓ = −y log ŷ − (1 − y) log(1 − ŷ), ∇z = ŷ − y
    multiclass: ŷ = softmax(Wx + b), ℓ = −log ŷ_y, ∇z = ŷ − e_y
    step: W ← W − η ∇z xᵀ, b ← b − η ∇z. Returns (W, b, prequential losses, correct flags).
    """
    W, b, lr32 = W.copy(), b.copy(), F32(lr)
    losses, correct = [], []
    for x, y in zip(X, Y, strict=True):
        z = W @ x + b
        if task == "regression":
            yhat = z
            g = yhat - y
            losses.append(0.5 * float(np.sum(g.astype(np.float64) ** 2)))
        elif task == "binary":
            yhat = F32(1) / (F32(1) + np.exp(-z))
            g = yhat - y
            p = float(yhat[0])
            losses.append(-(y * math.log(p) + (1 - y) * math.log(1 - p)))
            correct.append(int(p >= 0.5) == y)
        else:
            e = np.exp(z - z.max())
            yhat = e / e.sum()
            g = yhat.copy()
            g[y] -= 1
            losses.append(-math.log(float(yhat[y])))
            correct.append(int(yhat.argmax()) == y)
        W -= lr32 * np.outer(g, x)
        b -= lr32 * g
    return W, b, np.array(losses), np.array(correct)


@pytest.mark.parametrize(("task", "out"), [("regression", 1), ("regression", 3), ("binary", 1), ("multiclass", 4)])
def test_hand_worked_linear_stream(task: str, out: int) -> None:
    X, Y = stream(task, 200, 6, out, seed=1)
    net = init_network(task, "relu", 6, out, [], seed=2)
    lr = 0.05
    W, b, losses, correct = reference_linear(
        task, net.weights[0], net.biases[0], X, Y.reshape(len(X), -1) if task == "regression" else Y, lr
    )
    learner = OnlineLearner(net, OptimizerConfig("sgd", lr), config=LearnerConfig(window=50))
    res = learner.learn_many(X, Y, first_offset=10)
    assert (res.applied, res.last_offset, res.pause) == (200, 209, None)
    assert learner.applied_through == 209
    want = Network(task, "relu", [W], [b])
    assert_close_to_scale(learner.network, want, 2e-5)
    m = learner.metrics()
    assert m["count"] == 200
    assert m["loss"] == pytest.approx(losses.mean(), rel=1e-5)
    win = m["window"]
    assert (win["size"], win["count"]) == (50, 50)
    assert win["loss"] == pytest.approx(losses[-50:].mean(), rel=1e-5)
    assert win["accuracy"] == (correct[-50:].mean() if task != "regression" else None)
    if task == "regression":
        assert m["accuracy"] is None
    else:
        assert m["accuracy"] == correct.mean()


def test_single_step_by_hand_logistic() -> None:
    W = np.array([[0.5, -1.0, 0.25]], F32)
    b = np.array([0.1], F32)
    x = np.array([1.0, 2.0, -4.0], F32)
    net = Network("binary", "relu", [W.copy()], [b.copy()])
    learner = OnlineLearner(net, OptimizerConfig("sgd", 0.5))
    learner.learn_many(x[None], np.array([1.0], F32))
    z = 0.5 - 2.0 - 1.0 + 0.1  # = −2.4
    p = 1 / (1 + math.exp(-z))
    np.testing.assert_allclose(learner.network.weights[0], W - 0.5 * (p - 1) * x, rtol=1e-6)
    np.testing.assert_allclose(learner.network.biases[0], b - 0.5 * (p - 1), rtol=1e-6)
    assert learner.metrics()["loss"] == pytest.approx(-math.log(p), rel=1e-6)
    assert learner.metrics()["accuracy"] == 0.0


# --------------------------------------------------------------------------- fast path = generic path
CONFIGS = [
    OptimizerConfig("sgd", 0.05),
    OptimizerConfig("sgd", 0.02, l2=0.01),
    OptimizerConfig("sgd", 0.01, momentum=0.9, clip_norm=0.5),
    OptimizerConfig("adam", 0.01, l2=1e-3),
    OptimizerConfig("adam", 0.01, clip_norm=0.2),
]
ARCHS = [
    ("binary", 1, [], "relu"),
    ("regression", 1, [], "relu"),
    ("regression", 2, [7], "tanh"),
    ("binary", 1, [7], "relu"),
    ("binary", 1, [7], "tanh"),
    ("regression", 1, [7], "sigmoid"),
    ("binary", 1, [7, 5], "sigmoid"),
    ("multiclass", 3, [], "relu"),
    ("multiclass", 3, [7, 5], "relu"),
    ("regression", 1, [7, 5], "tanh"),
]


def generic_step(net: Network, opt: Optimizer, x: np.ndarray, y: np.ndarray) -> None:
    dW, db, _ = gradients(net, x[None], y[None])
    opt.step(net, dW, db)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.kind}-m{c.momentum}-l2{c.l2}-c{c.clip_norm}")
@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"{a[0]}{a[1]}-{a[2]}-{a[3]}")
@pytest.mark.parametrize("constrained", [False, True], ids=["free", "frozen+masks"])
def test_fast_path_equals_generic_step(cfg: OptimizerConfig, arch: tuple, constrained: bool) -> None:
    task, out, hidden, act = arch
    X, Y = stream(task, 120, 5, out, seed=3)
    net = init_network(task, act, 5, out, hidden, seed=4)
    frozen = masks = None
    if constrained:
        rng = np.random.default_rng(5)
        masks = [rng.random(w.shape) > 0.4 for w in net.weights]
        frozen = {0} if hidden else None
        for W, m in zip(net.weights, masks, strict=True):
            W *= m
    learner = OnlineLearner(net, cfg, frozen=frozen, masks=masks)
    ref = net.copy()
    ref_opt = Optimizer(cfg, ref, frozen=frozen, masks=masks)
    for i in range(40):  # one step at a time from the same parameters and state
        start, state = learner.snapshot(), learner.optimizer.state_dict()
        learner.learn_many(X[i : i + 1], Y[i : i + 1], i)
        one = start.copy()
        opt = Optimizer(cfg, one, frozen=frozen, masks=masks)
        opt.load_state_dict(state)
        generic_step(one, opt, X[i], Y[i])
        assert_close_to_scale(learner.network, one, 2e-6)
    learner.learn_many(X[40:], Y[40:], 40)
    for i in range(len(X)):  # the whole stream on the generic path
        generic_step(ref, ref_opt, X[i], Y[i])
    assert_close_to_scale(learner.network, ref, 2e-4)
    assert learner.optimizer.t == ref_opt.t == len(X)
    if constrained:
        for W, m in zip(learner.network.weights, masks, strict=True):
            assert (W[~m] == 0).all()
        if frozen:
            np.testing.assert_array_equal(learner.network.weights[0], net.weights[0])
            np.testing.assert_array_equal(learner.network.biases[0], net.biases[0])


# --------------------------------------------------------------------------- PyTorch
def torch_stream(torch, net: Network, cfg: OptimizerConfig, X: np.ndarray, Y: np.ndarray) -> Network:
    """The same per-sample learning with autograd and torch.optim.

    l2 is torch's ``weight_decay`` on a weights-only param group; with clipping it is added to
    the loss as ½ l2 ‖W‖² instead, because torch clips before applying weight decay while the
    contract clips g = ∇ℓ + l2 W.
    """
    F = torch.nn.functional
    acts = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}
    ws = [torch.nn.Parameter(torch.from_numpy(w.copy())) for w in net.weights]
    bs = [torch.nn.Parameter(torch.from_numpy(b.copy())) for b in net.biases]
    penalty = cfg.clip_norm is not None
    groups = [{"params": ws, "weight_decay": 0.0 if penalty else cfg.l2}, {"params": bs, "weight_decay": 0.0}]
    if cfg.kind == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.learning_rate, momentum=cfg.momentum)
    else:
        opt = torch.optim.Adam(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    Xt = torch.from_numpy(X)
    for i in range(len(X)):
        opt.zero_grad()
        a = Xt[i : i + 1]
        for k, (w, b) in enumerate(zip(ws, bs, strict=True)):
            a = F.linear(a, w, b)
            if k < len(ws) - 1:
                a = acts[net.activation](a)
        if net.task == "binary":
            loss = F.binary_cross_entropy_with_logits(a[:, 0], torch.tensor([float(Y[i])]))
        elif net.task == "multiclass":
            loss = F.cross_entropy(a, torch.tensor([int(Y[i])]))
        else:
            loss = 0.5 * ((a - torch.from_numpy(Y[i : i + 1])) ** 2).sum()
        if penalty and cfg.l2:
            loss = loss + 0.5 * cfg.l2 * sum((w**2).sum() for w in ws)
        loss.backward()
        if cfg.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(ws + bs, cfg.clip_norm)
        opt.step()
    return Network(net.task, net.activation, [w.detach().numpy() for w in ws], [b.detach().numpy() for b in bs])


TORCH_CONFIGS = [
    OptimizerConfig("sgd", 0.05),
    OptimizerConfig("sgd", 0.01, momentum=0.9),
    OptimizerConfig("sgd", 0.05, l2=0.01),
    OptimizerConfig("sgd", 0.02, momentum=0.5, l2=0.01, clip_norm=0.3),
    OptimizerConfig("adam", 0.01),
    OptimizerConfig("adam", 0.01, l2=0.01),
    OptimizerConfig("adam", 0.01, l2=0.01, clip_norm=0.3),
]


@pytest.mark.parametrize("cfg", TORCH_CONFIGS, ids=lambda c: f"{c.kind}-m{c.momentum}-l2{c.l2}-c{c.clip_norm}")
@pytest.mark.parametrize(
    ("task", "out", "act"), [("binary", 1, "relu"), ("multiclass", 3, "tanh"), ("regression", 2, "sigmoid")]
)
def test_mlp_stream_matches_pytorch(cfg: OptimizerConfig, task: str, out: int, act: str) -> None:
    torch = pytest.importorskip("torch")
    X, Y = stream(task, 200, 6, out, seed=6)
    net = init_network(task, act, 6, out, [8, 5], seed=7)
    want = torch_stream(torch, net, cfg, X, Y)
    learner = OnlineLearner(net, cfg)
    assert learner.learn_many(X, Y).applied == 200
    assert_close_to_scale(learner.network, want, 5e-5)


# --------------------------------------------------------------------------- exact replay
@pytest.mark.parametrize(
    "cfg",
    [
        OptimizerConfig("sgd", 0.05),
        OptimizerConfig("sgd", 0.02, momentum=0.9, l2=1e-3, clip_norm=1.0),
        OptimizerConfig("adam", 0.01),
    ],
)
@pytest.mark.parametrize(("task", "out", "hidden"), [("binary", 1, []), ("binary", 1, [16]), ("multiclass", 3, [8])])
def test_state_round_trip_continues_bit_identically(cfg: OptimizerConfig, task: str, out: int, hidden: list) -> None:
    safetensors = pytest.importorskip("safetensors.numpy")
    X, Y = stream(task, 300, 8, out, seed=8)
    net = init_network(task, "tanh", 8, out, hidden, seed=9)
    lc = LearnerConfig(window=64)
    straight = OnlineLearner(net, cfg, config=lc)
    straight.learn_many(X, Y)

    first = OnlineLearner(net, cfg, config=lc)
    first.learn_many(X[:150], Y[:150])
    blob = safetensors.save(first.state_dict())  # as the service stores it, next to the weights
    resumed = OnlineLearner(first.snapshot(), cfg, config=lc)
    resumed.load_state_dict(safetensors.load(blob))
    resumed.learn_many(X[150:], Y[150:], 150)

    assert_identical(straight.network, resumed.network)
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert straight.metrics() == resumed.metrics()


def test_result_does_not_depend_on_how_the_stream_is_cut() -> None:
    X, Y = stream("binary", 10_000, 8, 1, seed=10)
    net = init_network("binary", "relu", 8, 1, [8], seed=11)
    cfg = OptimizerConfig("adam", 0.01)
    lc = LearnerConfig(window=100)
    whole = OnlineLearner(net, cfg, config=lc)
    whole.learn_many(X, Y)
    pieces = OnlineLearner(net, cfg, config=lc)
    cuts = [0, 1, 2, 99, 100, 101, 4095, 4096, 4097, 8191, 9999, 10_000]
    for s, e in itertools.pairwise(cuts):
        pieces.learn_many(X[s:e], Y[s:e], s)
    assert_identical(whole.network, pieces.network)
    a, b = whole.state_dict(), pieces.state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# --------------------------------------------------------------------------- the guard
def test_huge_learning_rate_pauses_with_last_good_params() -> None:
    X, Y = stream("regression", 500, 8, 1, seed=12)
    Y = 10 * Y
    net = init_network("regression", "relu", 8, 1, [16], seed=13)
    cfg = OptimizerConfig("sgd", 0.5)
    learner = OnlineLearner(net, cfg, config=LearnerConfig(window=50))
    res = learner.learn_many(X, Y, first_offset=1000)
    assert res.pause is not None
    assert res.pause.reason in (NON_FINITE_LOSS, NON_FINITE_PARAMS)
    assert res.pause.offset == 1000 + res.applied
    assert res.last_offset == 1000 + res.applied - 1 if res.applied else res.last_offset is None
    assert 0 < res.applied < 500
    assert all(np.isfinite(p).all() for p in params(learner.network))
    # the last good parameters: exactly those after the applied samples
    good = OnlineLearner(net, cfg, config=LearnerConfig(window=50))
    assert good.learn_many(X[: res.applied], Y[: res.applied]).pause is None
    assert_identical(learner.network, good.network)
    assert learner.metrics() == good.metrics()
    # paused: nothing more is applied until resume
    again = learner.learn_many(X[res.applied :], Y[res.applied :], res.pause.offset)
    assert (again.applied, again.pause) == (0, res.pause)
    assert learner.paused == res.pause
    learner.resume()
    assert learner.paused is None
    assert learner.guard_status()["warmup_remaining"] == 50


def test_step_that_would_overflow_is_not_applied() -> None:
    X, Y = stream("regression", 20, 4, 1, seed=14)
    net = init_network("regression", "relu", 4, 1, [], seed=15)
    learner = OnlineLearner(net, OptimizerConfig("sgd", 1e38))
    res = learner.learn_many(X, Y, first_offset=7)
    assert (res.applied, res.pause.reason, res.pause.offset) == (0, NON_FINITE_PARAMS, 7)
    assert_identical(learner.network, net)
    assert learner.metrics()["count"] == 0
    assert learner.optimizer.t == 0


def test_loss_blowup_guard_trips_where_the_window_mean_crosses() -> None:
    X, Y = stream("binary", 3000, 8, 1, seed=16)
    Y[1000:] = 1 - Y[1000:]  # the world flips after 1000 samples
    net = init_network("binary", "relu", 8, 1, [], seed=17)
    cfg = OptimizerConfig("sgd", 0.05)
    lc = LearnerConfig(window=200, guard_factor=2.0)
    learner = OnlineLearner(net, cfg, config=lc)
    res = learner.learn_many(X, Y, first_offset=0)
    assert res.pause is not None and res.pause.reason == LOSS_BLOWUP
    # recompute the prequential losses with the guard off, and where the rule says to stop
    free = OnlineLearner(net, cfg, config=LearnerConfig(window=200, guard_factor=None))
    losses = []
    for i in range(len(X)):
        before = free.snapshot()
        losses.append(evaluate(before, X[i : i + 1], Y[i : i + 1]).loss)
        free.learn_many(X[i : i + 1], Y[i : i + 1], i)
    losses = np.array(losses)
    assert free.paused is None
    baseline = losses[:200].mean()
    means = np.convolve(losses, np.ones(200) / 200, mode="valid")  # means[k] covers losses[k : k + 200]
    trip = next(i for i in range(200, len(losses)) if means[i - 199] > 2.0 * baseline)
    assert res.pause.offset == trip
    assert res.applied == trip
    assert learner.metrics()["count"] == trip
    assert learner.guard_status()["baseline"] == pytest.approx(baseline, rel=1e-5)
    assert "threshold" in res.pause.detail
    # after resume the guard warms up again and learning continues
    learner.resume()
    r2 = learner.learn_many(X[trip + 1 :], Y[trip + 1 :], trip + 1)
    assert r2.applied > 0


@pytest.mark.parametrize(("window", "warmup"), [(200, 100), (100, 300), (200, 1)])
def test_guard_warmup_is_its_own_length(window: int, warmup: int) -> None:
    """The baseline is the window mean after ``warmup`` samples (over the last
    min(window, warmup) losses); the guard watches only after it."""
    X, Y = stream("binary", 3000, 8, 1, seed=16)
    Y[1000:] = 1 - Y[1000:]
    net = init_network("binary", "relu", 8, 1, [], seed=17)
    cfg = OptimizerConfig("sgd", 0.05)
    learner = OnlineLearner(net, cfg, config=LearnerConfig(window=window, guard_factor=2.0, guard_warmup=warmup))
    assert learner.guard_status()["warmup_remaining"] == warmup
    res = learner.learn_many(X, Y, first_offset=0)
    free = OnlineLearner(net, cfg, config=LearnerConfig(window=window, guard_factor=None))
    losses = []
    for i in range(len(X)):
        losses.append(evaluate(free.snapshot(), X[i : i + 1], Y[i : i + 1]).loss)
        free.learn_many(X[i : i + 1], Y[i : i + 1], i)
    losses = np.array(losses)

    def mean_through(i: int) -> float:  # the window mean including losses[i]
        return float(losses[max(0, i + 1 - window) : i + 1].mean())

    baseline = mean_through(warmup - 1)
    thr = 2.0 * max(baseline, 1e-3)
    trip = next(i for i in range(warmup, len(losses)) if mean_through(i) > thr)
    assert res.pause is not None and res.pause.reason == LOSS_BLOWUP
    assert res.pause.offset == trip
    assert learner.guard_status()["baseline"] == pytest.approx(baseline, rel=1e-6)
    assert learner.guard_status()["warmup_remaining"] == 0
    learner.resume()
    assert learner.guard_status() == {"warmup_remaining": warmup, "baseline": None, "threshold": None}


def test_a_warmup_already_over_arms_the_guard_at_the_next_sample() -> None:
    """State saved under a longer warm-up, loaded by a learner with a shorter one."""
    X, Y = stream("regression", 400, 4, 1, seed=3)
    net = init_network("regression", "relu", 4, 1, [], seed=4)
    cfg = OptimizerConfig("sgd", 0.01)
    long = OnlineLearner(net, cfg, config=LearnerConfig(window=50, guard_warmup=300))
    long.learn_many(X[:100], Y[:100])
    short = OnlineLearner(long.snapshot(), cfg, config=LearnerConfig(window=50, guard_warmup=20))
    short.load_state_dict(long.state_dict())
    assert short.guard_status()["baseline"] is None and short.guard_status()["warmup_remaining"] == 0
    short.learn_many(X[100:101], Y[100:101], 100)
    assert short.guard_status()["baseline"] == pytest.approx(short.metrics()["window"]["loss"], rel=1e-12)


def test_non_finite_loss_pauses_before_the_step() -> None:
    net = Network("regression", "relu", [np.array([[3e38, 3e38]], F32)], [np.zeros(1, F32)])
    learner = OnlineLearner(net, OptimizerConfig("sgd", 0.1))
    X = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]], F32)
    res = learner.learn_many(X, np.zeros(3, F32), first_offset=5)
    assert (res.applied, res.pause.reason, res.pause.offset) == (1, NON_FINITE_LOSS, 6)
    assert learner.metrics()["count"] == 1


# --------------------------------------------------------------------------- metrics and API
def test_metrics_before_any_sample_and_guard_status() -> None:
    learner = OnlineLearner(init_network("binary", "relu", 3, 1, [], 0), OptimizerConfig())
    assert learner.metrics() == {
        "count": 0,
        "loss": None,
        "accuracy": None,
        "window": {"size": 1000, "count": 0, "loss": None, "accuracy": None},
    }
    assert learner.guard_status() == {"warmup_remaining": 1000, "baseline": None, "threshold": None}


def test_window_sum_is_recomputed_exactly_when_the_ring_wraps() -> None:
    X, Y = stream("regression", 2000, 4, 1, seed=18)
    learner = OnlineLearner(
        init_network("regression", "relu", 4, 1, [], 0), OptimizerConfig("sgd", 0.01), config=LearnerConfig(window=100)
    )
    learner.learn_many(X, Y)
    st = learner.state_dict()
    assert float(st["metrics.win_loss_sum"]) == math.fsum(st["metrics.ring_loss"].tolist())


def test_load_only_metrics_keeps_running_metrics_across_a_new_version() -> None:
    X, Y = stream("binary", 300, 4, 1, seed=19)
    net = init_network("binary", "relu", 4, 1, [], 0)
    old = OnlineLearner(net, OptimizerConfig("sgd", 0.05))
    old.learn_many(X, Y)
    new = OnlineLearner(init_network("binary", "relu", 4, 1, [], 1), OptimizerConfig("adam", 0.01))
    new.load_state_dict({k: v for k, v in old.state_dict().items() if k.startswith("metrics.")})
    assert new.metrics() == old.metrics()
    assert new.optimizer.t == 0


def test_set_parameters_and_live_network_views() -> None:
    net = init_network("binary", "relu", 4, 1, [3], 0)
    learner = OnlineLearner(net, OptimizerConfig("adam", 0.01))
    X, Y = stream("binary", 50, 4, 1, seed=20)
    learner.learn_many(X, Y)
    snap = learner.snapshot()
    learner.learn_many(X, Y)
    assert not np.array_equal(snap.weights[0], learner.network.weights[0])
    learner.set_parameters(snap, reset_optimizer=True)
    assert_identical(learner.network, snap)
    assert learner.optimizer.t == 0
    assert all(not v.any() for k, v in learner.optimizer.state_dict().items() if k != "t")
    with pytest.raises(ValueError, match="shapes"):
        learner.set_parameters(init_network("binary", "relu", 4, 1, [5], 0))


@pytest.mark.parametrize(
    ("task", "out", "X", "Y", "match"),
    [
        ("binary", 1, np.zeros((2, 3)), np.zeros(2), r"X: expected shape \[n, 4\]"),
        ("binary", 1, np.zeros((2, 4)), np.zeros(3), r"Y: expected shape \[2\]"),
        ("binary", 1, np.zeros((2, 4)), np.array([0, 2]), "0 or 1"),
        ("binary", 1, np.full((2, 4), np.nan), np.zeros(2), "NaN"),
        ("multiclass", 3, np.zeros((2, 4)), np.array([0, 3]), "0..2"),
        ("multiclass", 3, np.zeros((2, 4)), np.array([0.5, 1]), "integers"),
        ("regression", 2, np.zeros((2, 4)), np.zeros(2), r"Y: expected shape \[2, 2\]"),
        ("regression", 1, np.zeros((2, 4)), np.array([np.inf, 0]), "NaN or infinite"),
    ],
)
def test_bad_input_is_rejected_and_changes_nothing(task, out, X, Y, match) -> None:
    net = init_network(task, "relu", 4, out, [], 0)
    learner = OnlineLearner(net, OptimizerConfig())
    with pytest.raises(ValueError, match=match):
        learner.learn_many(X, Y)
    assert learner.metrics()["count"] == 0
    assert_identical(learner.network, net)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="window"):
        LearnerConfig(window=0)
    with pytest.raises(ValueError, match="guard_factor"):
        LearnerConfig(guard_factor=0.5)


def test_everything_frozen_still_scores() -> None:
    X, Y = stream("binary", 100, 4, 1, seed=21)
    net = init_network("binary", "relu", 4, 1, [3], 0)
    learner = OnlineLearner(net, OptimizerConfig("sgd", 0.1), frozen={0, 1})
    assert learner.learn_many(X, Y).applied == 100
    assert_identical(learner.network, net)
    assert learner.metrics()["loss"] == pytest.approx(evaluate(net, X, Y).loss, rel=1e-5)


# --------------------------------------------------------------------------- quality
def test_breast_cancer_online_logistic_accuracy() -> None:
    datasets = pytest.importorskip("sklearn.datasets")
    model_selection = pytest.importorskip("sklearn.model_selection")
    X, y = datasets.load_breast_cancer(return_X_y=True)
    folds = model_selection.StratifiedKFold(5, shuffle=True, random_state=0).split(X, y)
    accs = []
    for tr, te in folds:  # 5-fold mean: a single 143-sample test split moves 0.7 % per sample
        mu, sd = X[tr].mean(axis=0), X[tr].std(axis=0) + 1e-8
        Xtr, Xte = ((X[tr] - mu) / sd).astype(F32), ((X[te] - mu) / sd).astype(F32)
        learner = OnlineLearner(init_network("binary", "relu", 30, 1, [], 0), OptimizerConfig("sgd", 0.01))
        for p in range(3):  # three passes over the training stream
            learner.learn_many(Xtr, y[tr], p * len(tr))
        accs.append(evaluate(learner.snapshot(), Xte, y[te]).accuracy)
        assert learner.metrics()["accuracy"] > 0.9  # prequential accuracy over the passes
    assert np.mean(accs) >= 0.95, accs


@pytest.mark.parametrize("task", ["binary", "regression", "multiclass"])
@pytest.mark.parametrize("every", [1, 7, 100, 5000])
def test_marks_are_the_running_sums_a_cut_stream_shows(task, every):
    """A learner keeping marks every ``every`` offsets, fed the stream in arbitrary slices,
    marks exactly (bit for bit) the sums that a learner cut at those offsets shows there,
    and starts from wherever its first offset is."""
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

    if task == "binary":
        X, Y = load_breast_cancer(return_X_y=True)
        net = init_network("binary", "relu", 30, 1, [8], seed=1)
    elif task == "multiclass":
        X, Y = load_iris(return_X_y=True)
        X, Y = np.tile(X, (4, 1)), np.tile(Y, 4)
        net = init_network("multiclass", "relu", 4, 3, [8], seed=1)
    else:
        X, Y = load_diabetes(return_X_y=True)
        Y = ((Y - Y.mean()) / Y.std())[:, None]
        net = init_network("regression", "relu", 10, 1, [8], seed=1)
    X = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
    first = 13  # offsets need not start at 0
    opt = OptimizerConfig(kind="sgd", learning_rate=0.01)
    a = OnlineLearner(net, opt)
    a.mark_every = every
    at, marks = 0, []
    for size in itertools.cycle([1, 50, 333, 4100]):  # slices across the engine's blocks
        if at >= len(X):
            break
        a.learn_many(X[at : at + size], Y[at : at + size], first_offset=first + at)
        marks += a.take_marks()
        at += size
    want = [o for o in range(first, first + len(X)) if (o + 1) % every == 0]
    assert [m.offset for m in marks] == want and a.take_marks() == []
    b = OnlineLearner(net, opt)
    done = 0
    for m in marks:
        k = m.offset - first + 1
        b.learn_many(X[done:k], Y[done:k], first_offset=first + done)
        done = k
        s = b._metrics
        assert (m.count, m.loss_sum, m.correct) == (s.count, s.loss_sum, None if task == "regression" else s.correct)
