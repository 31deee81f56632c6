"""Mini-batch training: gradients by finite differences, batch semantics, early stopping,
progress / cancel, constraints, and quality on real data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.engine.nn.evaluation import evaluate
from app.engine.nn.network import TASKS, Network, gradients, init_network, per_sample_loss
from app.engine.nn.online import OnlineLearner
from app.engine.nn.optim import Optimizer, OptimizerConfig
from app.engine.nn.train import Diverged, TrainingCanceled, split_indices, train

F32 = np.float32


def params(net: Network) -> list[np.ndarray]:
    return [*net.weights, *net.biases]


def data(task: str, n: int, d: int, out: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(F32)
    z = X @ rng.standard_normal((d, out))
    if task == "binary":
        return X, (z[:, 0] + 0.3 * rng.standard_normal(n) > 0).astype(F32)
    if task == "multiclass":
        return X, z.argmax(axis=1).astype(np.int64)
    return X, (z + 0.1 * rng.standard_normal(z.shape)).astype(F32)


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("task", TASKS)
def test_gradients_match_finite_differences(task: str, activation: str) -> None:
    out = {"regression": 2, "binary": 1, "multiclass": 3}[task]
    X, Y = data(task, 7, 4, out, seed=1)
    net32 = init_network(task, activation, 4, out, [5, 3], seed=2)
    net = Network(
        task, activation, [w.astype(np.float64) for w in net32.weights], [b.astype(np.float64) for b in net32.biases]
    )

    def mean_loss() -> float:
        return float(per_sample_loss(task, net.forward(X), Y).mean())

    dW, db, _ = gradients(net, X, Y)
    h = 1e-6
    for analytic, arrays in ((dW, net.weights), (db, net.biases)):
        for g, p in zip(analytic, arrays, strict=True):
            num = np.zeros_like(p)
            for idx in np.ndindex(p.shape):
                old = p[idx]
                p[idx] = old + h
                up = mean_loss()
                p[idx] = old - h
                down = mean_loss()
                p[idx] = old
                num[idx] = (up - down) / (2 * h)
            np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-8)


# --------------------------------------------------------------------------- split
def test_split_is_deterministic_disjoint_and_complete() -> None:
    tr, va, _ = split_indices(101, 0.2, 5)
    tr2, va2, _ = split_indices(101, 0.2, 5)
    np.testing.assert_array_equal(tr, tr2)
    np.testing.assert_array_equal(va, va2)
    assert va.size == 20 and tr.size == 81
    assert sorted([*tr, *va]) == list(range(101))
    assert not np.array_equal(va, split_indices(101, 0.2, 6)[1])
    tr, va, rng = split_indices(10, 0.3, None)  # no seed: time-ordered hold-out
    assert rng is None and list(va) == [7, 8, 9]
    assert split_indices(2, 0.01, 0)[1].size == 1  # a positive fraction gives ≥ 1 row
    assert split_indices(1, 0.5, 0)[0].size == 1  # never leaves no training row
    with pytest.raises(ValueError, match="validation_fraction"):
        split_indices(10, 1.0, 0)


# --------------------------------------------------------------------------- batch semantics
@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize(("task", "out"), [("binary", 1), ("multiclass", 3), ("regression", 2)])
def test_one_full_batch_epoch_is_one_mean_gradient_step(task: str, out: int, activation: str) -> None:
    X, Y = data(task, 40, 5, out, seed=3)
    net = init_network(task, activation, 5, out, [6, 4], seed=4)
    cfg = OptimizerConfig("adam", 0.1, l2=0.01)
    ref = net.copy()
    dW, db, outputs = gradients(ref, X, Y)
    Optimizer(cfg, ref).step(ref, dW, db)
    res = train(net, Optimizer(cfg, net), X, Y, epochs=1, batch_size=40, shuffle_seed=None)
    for a, b in zip(params(net), params(ref), strict=True):  # the same operations, in the same order
        np.testing.assert_array_equal(a, b)
    assert res.steps == 1 and res.n_val == 0
    assert res.train_loss == pytest.approx(per_sample_loss(task, outputs, Y).mean(), rel=1e-12)


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize(("task", "out"), [("binary", 1), ("multiclass", 4), ("regression", 2)])
def test_an_epoch_is_one_mean_gradient_step_per_batch_including_the_short_last_one(
    task: str, out: int, activation: str
) -> None:
    X, Y = data(task, 70, 6, out, seed=29)
    net = init_network(task, activation, 6, out, [9, 5], seed=30)
    cfg = OptimizerConfig("adam", 0.05, l2=0.01)
    ref = net.copy()
    opt = Optimizer(cfg, ref)
    for _ in range(2):
        for s in range(0, 70, 16):  # 4 batches of 16, then one of 6
            dW, db, _ = gradients(ref, X[s : s + 16], Y[s : s + 16])
            opt.step(ref, dW, db)
    res = train(net, Optimizer(cfg, net), X, Y, epochs=2, batch_size=16, shuffle_seed=None)
    for a, b in zip(params(net), params(ref), strict=True):
        np.testing.assert_array_equal(a, b)
    assert res.steps == 10


@pytest.mark.parametrize(
    "cfg",
    [
        OptimizerConfig("sgd", 0.05),
        OptimizerConfig("sgd", 0.01, momentum=0.9, l2=1e-3),
        OptimizerConfig("adam", 0.01, clip_norm=0.5),
    ],
)
@pytest.mark.parametrize(("task", "out"), [("binary", 1), ("multiclass", 3), ("regression", 2)])
def test_batch_of_one_equals_online_learning(cfg: OptimizerConfig, task: str, out: int) -> None:
    X, Y = data(task, 150, 5, out, seed=5)
    net = init_network(task, "relu", 5, out, [8], seed=6)
    learner = OnlineLearner(net, cfg)
    learner.learn_many(X, Y)
    trained = net.copy()
    res = train(trained, Optimizer(cfg, trained), X, Y, epochs=1, batch_size=1, shuffle_seed=None)
    assert res.steps == 150
    scale = max(float(np.abs(p).max()) for p in params(trained))
    for a, b in zip(params(learner.network), params(trained), strict=True):
        assert float(np.abs(a - b).max()) <= 2e-4 * scale
    assert learner.metrics()["loss"] == pytest.approx(res.train_loss, rel=1e-4)


def test_same_seed_same_result_other_seed_other_result() -> None:
    X, Y = data("binary", 300, 6, 1, seed=7)

    def run(seed: int) -> tuple[Network, dict]:
        net = init_network("binary", "relu", 6, 1, [8], seed=8)
        r = train(
            net,
            Optimizer(OptimizerConfig("adam", 0.01), net),
            X,
            Y,
            epochs=3,
            batch_size=16,
            shuffle_seed=seed,
            validation_fraction=0.2,
        )
        return net, r.to_dict()

    a, ra = run(1)
    b, rb = run(1)
    c, _ = run(2)
    for x, y in zip(params(a), params(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert ra == rb
    assert not np.array_equal(a.weights[0], c.weights[0])


# --------------------------------------------------------------------------- early stopping
def test_early_stopping_restores_the_best_epoch() -> None:
    rng = np.random.default_rng(9)
    X = rng.standard_normal((60, 10)).astype(F32)
    Y = (rng.random(60) > 0.5).astype(F32)  # pure noise: validation loss must turn up
    net = init_network("binary", "relu", 10, 1, [64], seed=10)
    opt = Optimizer(OptimizerConfig("adam", 0.01), net)
    res = train(
        net, opt, X, Y, epochs=200, batch_size=8, shuffle_seed=0, validation_fraction=0.3, early_stopping_patience=3
    )
    losses = [h.val_loss for h in res.history]
    best = int(np.argmin(losses)) + 1
    assert res.stopped_early
    assert res.best_epoch == best
    assert res.epochs_run == best + 3 < 200
    assert res.val_loss == losses[best - 1]
    val = evaluate(net, X[res.val_indices], Y[res.val_indices])
    assert val.loss == res.val_loss  # the kept parameters are the best epoch's
    assert val.accuracy == res.val_accuracy
    assert [h.epoch for h in res.history] == list(range(1, res.epochs_run + 1))
    assert opt.t == best * math.ceil(42 / 8)  # optimizer state restored with the parameters


def test_without_patience_the_last_epoch_is_kept() -> None:
    X, Y = data("regression", 80, 4, 1, seed=11)
    net = init_network("regression", "tanh", 4, 1, [4], seed=12)
    res = train(
        net, Optimizer(OptimizerConfig("sgd", 0.05), net), X, Y, epochs=4, batch_size=10, validation_fraction=0.25
    )
    assert (res.epochs_run, res.best_epoch, res.stopped_early) == (4, 4, False)
    assert res.val_accuracy is None and res.history[-1].val_accuracy is None
    assert res.val_loss == evaluate(net, X[res.val_indices], Y[res.val_indices]).loss


# --------------------------------------------------------------------------- progress, cancel, errors
def test_progress_is_reported_per_batch_and_ends_at_one() -> None:
    X, Y = data("binary", 100, 3, 1, seed=13)
    net = init_network("binary", "relu", 3, 1, [], seed=14)
    seen: list[float] = []
    res = train(net, Optimizer(OptimizerConfig(), net), X, Y, epochs=2, batch_size=30, progress_cb=seen.append)
    assert res.steps == 8
    assert seen == [*(k / 8 for k in range(1, 9)), 1.0]


def test_should_stop_cancels_between_batches() -> None:
    X, Y = data("binary", 100, 3, 1, seed=15)
    net = init_network("binary", "relu", 3, 1, [], seed=16)
    opt = Optimizer(OptimizerConfig(), net, frozen=set())
    calls = iter(range(100))
    with pytest.raises(TrainingCanceled):
        train(net, opt, X, Y, epochs=5, batch_size=10, should_stop=lambda: next(calls) >= 3, frozen={0})
    assert opt.t == 3
    assert opt.frozen == frozenset()  # per-call constraints are undone


def test_divergence_raises() -> None:
    X, Y = data("regression", 50, 4, 1, seed=17)
    net = init_network("regression", "relu", 4, 1, [8], seed=18)
    with pytest.raises(Diverged, match="non-finite"):
        train(net, Optimizer(OptimizerConfig("sgd", 1e30), net), 100 * X, Y, epochs=3, batch_size=5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"epochs": 0}, "epochs"), ({"batch_size": 0}, "batch_size"), ({"early_stopping_patience": 0}, "patience")],
)
def test_bad_options_are_rejected(kwargs: dict, match: str) -> None:
    X, Y = data("binary", 10, 3, 1, seed=19)
    net = init_network("binary", "relu", 3, 1, [], seed=20)
    with pytest.raises(ValueError, match=match):
        train(net, Optimizer(OptimizerConfig(), net), X, Y, **kwargs)
    with pytest.raises(ValueError, match="X: expected"):
        train(net, Optimizer(OptimizerConfig(), net), X[:, :2], Y)


# --------------------------------------------------------------------------- constraints
def test_frozen_layers_are_bit_identical_after_training() -> None:
    X, Y = data("multiclass", 200, 6, 3, seed=24)
    net = init_network("multiclass", "relu", 6, 3, [8, 8], seed=25)
    before = net.copy()
    res = train(net, Optimizer(OptimizerConfig("adam", 0.01), net), X, Y, epochs=3, batch_size=16, frozen={0, 1})
    for i in (0, 1):
        np.testing.assert_array_equal(net.weights[i], before.weights[i])
        np.testing.assert_array_equal(net.biases[i], before.biases[i])
    assert not np.array_equal(net.weights[2], before.weights[2])
    assert res.history[-1].train_loss < res.history[0].train_loss


def test_masks_keep_pruned_weights_at_zero_while_fine_tuning() -> None:
    X, Y = data("binary", 200, 6, 1, seed=26)
    net = init_network("binary", "relu", 6, 1, [8], seed=27)
    rng = np.random.default_rng(28)
    masks = [rng.random(w.shape) > 0.7 for w in net.weights]
    for W, m in zip(net.weights, masks, strict=True):
        W *= m
    opt = Optimizer(OptimizerConfig("sgd", 0.05, momentum=0.9, l2=1e-3), net)
    train(net, opt, X, Y, epochs=3, batch_size=16, masks=masks)
    for W, m in zip(net.weights, masks, strict=True):
        assert (W[~m] == 0).all()
        assert (W[m] != 0).all()


# --------------------------------------------------------------------------- quality
def _cv_accuracy(load, task: str, out: int, seed: int = 0) -> list[float]:
    model_selection = pytest.importorskip("sklearn.model_selection")
    X, y = load(return_X_y=True)
    accs = []
    for tr, te in model_selection.StratifiedKFold(5, shuffle=True, random_state=seed).split(X, y):
        mu, sd = X[tr].mean(axis=0), X[tr].std(axis=0) + 1e-8
        Xtr, Xte = ((X[tr] - mu) / sd).astype(F32), ((X[te] - mu) / sd).astype(F32)
        net = init_network(task, "relu", X.shape[1], out, [64], seed=0)
        train(
            net,
            Optimizer(OptimizerConfig("adam", 0.001), net),
            Xtr,
            y[tr],
            epochs=50,
            batch_size=32,
            shuffle_seed=0,
            validation_fraction=0.1,
            early_stopping_patience=5,
        )
        accs.append(evaluate(net, Xte, y[te]).accuracy)
    return accs


def test_digits_mlp_accuracy() -> None:
    datasets = pytest.importorskip("sklearn.datasets")
    accs = _cv_accuracy(datasets.load_digits, "multiclass", 10)
    assert np.mean(accs) >= 0.95, accs


def test_breast_cancer_mlp_accuracy() -> None:
    datasets = pytest.importorskip("sklearn.datasets")
    accs = _cv_accuracy(datasets.load_breast_cancer, "binary", 1)
    assert np.mean(accs) >= 0.96, accs
