"""``app.engine.drift``: ADWIN detects what River's ADWIN detects, at the same samples, on
the same streams (abrupt and gradual changes, Bernoulli and Gaussian, several deltas and
clocks); PSI equals a hand-written histogram formula and reads the usual way."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from app.engine.drift import Adwin, psi, reference_edges, shares

river_drift = pytest.importorskip("river.drift")


def streams() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "bernoulli-abrupt": np.concatenate([rng.random(3000) < 0.2, rng.random(3000) < 0.5]).astype(float),
        "gauss-abrupt": np.concatenate([rng.normal(0, 1, 4000), rng.normal(0.8, 1, 4000)]),
        "gauss-gradual": rng.normal(np.linspace(0, 2, 8000), 1.0),
        "stationary": rng.normal(1.0, 0.5, 10000),
        "losses": np.concatenate([rng.exponential(0.3, 5000), rng.exponential(0.9, 3000)]),
        "several": np.concatenate([rng.normal(m, 1, 2000) for m in (0, 2, -1, 3, 3)]),
    }


@pytest.mark.parametrize("name", list(streams()))
@pytest.mark.parametrize(
    "params",
    [{}, {"delta": 0.01, "clock": 1}, {"delta": 0.0001, "clock": 8, "max_buckets": 3, "min_window_length": 10}],
)
def test_adwin_detects_what_rivers_adwin_detects(name, params):
    x = streams()[name]
    ours, theirs = Adwin(**params), river_drift.ADWIN(**params)
    mine, ref = [], []
    for i, v in enumerate(x):
        if ours.update(v):
            mine.append(i)
        theirs.update(v)
        if theirs.drift_detected:
            ref.append(i)
        if i % 997 == 0:
            assert ours.width == theirs.width, i
            assert ours.total == pytest.approx(theirs.total, rel=1e-9, abs=1e-9)
            assert ours.variance == pytest.approx(theirs.variance, rel=1e-6, abs=1e-6)
    assert mine == ref
    assert ours.detections == len(ref)
    if name == "stationary":
        assert mine == []
    else:
        assert mine  # every changing stream is detected


def test_psi_equals_the_histogram_formula():
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(4000, 3))
    cur = np.column_stack([rng.normal(size=2000), rng.normal(0.5, 1, 2000), rng.exponential(1, 2000)])
    edges = reference_edges(ref, bins=10)
    got = psi(shares(ref, edges), shares(cur, edges))
    for j in range(3):
        inner = edges[:, j]
        bounds = np.concatenate([[-np.inf], inner, [np.inf]])
        p = np.array([((ref[:, j] > lo) & (ref[:, j] <= hi)).mean() for lo, hi in itertools.pairwise(bounds)])
        q = np.array([((cur[:, j] > lo) & (cur[:, j] <= hi)).mean() for lo, hi in itertools.pairwise(bounds)])
        p, q = np.maximum(p, 1e-4), np.maximum(q, 1e-4)
        assert got[j] == pytest.approx(float(np.sum((q - p) * np.log(q / p))), rel=1e-12)
    assert got[0] < 0.05 < 0.1 < got[1]  # same distribution: ~0; a half-σ shift: clear


def test_psi_of_a_sample_of_the_reference_is_small_and_of_a_3_sigma_shift_large():
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(2000, 5))
    edges = reference_edges(ref)
    same = psi(shares(ref, edges), shares(rng.normal(size=(1000, 5)), edges))
    shifted = rng.normal(size=(1000, 5))
    shifted[:, 2] += 3
    moved = psi(shares(ref, edges), shares(shifted, edges))
    assert same.max() < 0.1
    assert moved[2] > 2 and np.delete(moved, 2).max() < 0.1


# --------------------------------------------------------------------------- the contract
# API.md "Drift": stable on 20,000 stationary samples; `drift` within 2,000 samples of an
# abrupt change of the labelling rule; a feature whose mean moves by 3σ listed within 2,000
# samples — on a binary and a regression model, with the learner that runs in production
# (scoring each sample before its step), on real data drawn with replacement.
CHANGE = 6000


def real_stream(task: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer, load_diabetes

    X, y = (load_breast_cancer if task == "binary" else load_diabetes)(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    y = y.astype(np.float64) if task == "binary" else (y - y.mean()) / y.std()
    pick = np.random.default_rng(seed).integers(0, len(X), n)
    return X[pick].astype(np.float32), y[pick].astype(np.float32)


def learn(task: str, X: np.ndarray, Y: np.ndarray, chunk: int = 500):  # type: ignore[no-untyped-def]
    from app.engine.drift import DriftMonitor
    from app.engine.nn.network import init_network
    from app.engine.nn.online import OnlineLearner
    from app.engine.nn.optim import OptimizerConfig

    net = init_network(task, "relu", X.shape[1], 1, [8], seed=0)
    learner = OnlineLearner(net, OptimizerConfig("sgd", 0.01))
    learner.drift = monitor = DriftMonitor(X.shape[1])
    listed: dict[int, int] = {}  # feature → first offset where it was listed
    for s in range(0, len(X), chunk):
        Yc = Y[s : s + chunk] if task == "binary" else Y[s : s + chunk, None]
        learner.learn_many(X[s : s + chunk], Yc, s)
        for f in monitor.inputs():
            listed.setdefault(f["index"], s + chunk - 1)
    return monitor, listed


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_a_stationary_stream_stays_stable(task):
    monitor, listed = learn(task, *real_stream(task, 20_000, 1))
    assert monitor.status == "stable" and monitor.transitions == [] and listed == {}
    assert monitor.checked_through == 19_999 and monitor.edges is not None


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_a_new_labelling_rule_is_drift_within_2000_samples(task):
    X, Y = real_stream(task, 12_000, 2)
    Y[CHANGE:] = 1 - Y[CHANGE:] if task == "binary" else -Y[CHANGE:]
    monitor, _ = learn(task, X, Y)
    assert monitor.status == "drift"
    (status, offset), *_ = monitor.transitions
    assert status == "drift" and CHANGE <= offset < CHANGE + 2000, monitor.transitions


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_a_feature_moved_by_3_sigma_is_listed_within_2000_samples(task):
    X, Y = real_stream(task, 12_000, 3)
    j = 2
    X[CHANGE:, j] += 3 * X[:CHANGE, j].std()
    monitor, listed = learn(task, X, Y)
    assert j in listed and CHANGE <= listed[j] < CHANGE + 2000, listed
    assert all(f >= CHANGE for f in listed.values())  # nothing listed before the shift
    assert monitor.inputs()[0]["index"] == j  # the worst
    assert monitor.transitions[0] == ("warning", monitor.transitions[0][1])


def test_the_monitor_sees_the_same_whatever_the_chunks():
    X, Y = real_stream("binary", 8000, 4)
    Y[5000:] = 1 - Y[5000:]
    a, _ = learn("binary", X, Y, chunk=500)
    b, _ = learn("binary", X, Y, chunk=333)
    assert a.transitions == b.transitions and a.state()["loss"] == b.state()["loss"]
