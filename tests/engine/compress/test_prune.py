"""Pruning against independent formulas: a sort-based reference for which entries are zeroed,
hand-deleted rows / columns for neuron pruning, and the guarded search's budget."""

from __future__ import annotations

import itertools
import math
import warnings
from decimal import Decimal

import numpy as np
import pytest

from app.engine.compress import prune as pr
from app.engine.nn.network import F32, Network, accuracy, gradients, init_network, per_sample_loss


# --------------------------------------------------------------------------- helpers
def reference_prune(weights: list[np.ndarray], sparsity: float, scope: str) -> list[np.ndarray]:
    """Zero the k smallest by (|w|, flat index) with a stable full sort (the spec, verbatim)."""

    def one(ws: list[np.ndarray]) -> list[np.ndarray]:
        flat = np.concatenate([w.ravel() for w in ws]).astype(F32)
        k = math.floor(Decimal(repr(sparsity)) * flat.size)
        order = np.argsort(np.abs(flat), kind="stable")  # ties: lower flat index first
        flat = flat.copy()
        flat[order[:k]] = 0.0
        out, o = [], 0
        for w in ws:
            out.append(flat[o : o + w.size].reshape(w.shape))
            o += w.size
        return out

    if scope == "global":
        return one(weights)
    return [one([w])[0] for w in weights]


def random_net(rng: np.random.Generator, sizes: list[int], ties: bool = False) -> Network:
    weights, biases = [], []
    for fan_in, fan_out in itertools.pairwise(sizes):
        if ties:  # four distinct magnitudes (no zeros): heavy ties, both signs
            mag = rng.integers(1, 5, size=(fan_out, fan_in)).astype(F32) * F32(0.25)
            W = np.where(rng.random((fan_out, fan_in)) < 0.5, -mag, mag).astype(F32)
        else:
            W = rng.standard_normal((fan_out, fan_in)).astype(F32)
        weights.append(W)
        biases.append(rng.standard_normal(fan_out).astype(F32))
    return Network("multiclass", "relu", weights, biases)


def bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.fixture(scope="module")
def digits():
    """A 64-32-16-10 ReLU MLP trained by scikit-learn on the digits set, as a Network."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(F32)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    clf = MLPClassifier(hidden_layer_sizes=(32, 16), max_iter=400, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(Xtr, ytr)
    net = Network(
        "multiclass",
        "relu",
        [np.ascontiguousarray(c.T, dtype=F32) for c in clf.coefs_],
        [b.astype(F32) for b in clf.intercepts_],
    )
    np.testing.assert_allclose(net.forward(Xte), clf.predict_proba(Xte), atol=1e-4)
    return net, Xtr, ytr.astype(np.int64), Xte, yte.astype(np.int64)


def mean_loss(net: Network, X: np.ndarray, y: np.ndarray) -> float:
    return float(per_sample_loss(net.task, net.forward(X), y).mean())


def masked_fine_tune(X, y, epochs=30, lr=0.1, batch=64, seed=0):
    """Mini-batch SGD keeping pruned weights at zero (W ← (W − η g) ⊙ M)."""

    def run(net: Network, masks):
        net = net.copy()
        rng = np.random.default_rng(seed)
        for _ in range(epochs):
            idx = rng.permutation(len(X))
            for o in range(0, len(X), batch):
                sel = idx[o : o + batch]
                dW, db, _ = gradients(net, X[sel], y[sel])
                for W, g, b, gb in zip(net.weights, dW, net.biases, db, strict=True):
                    W -= F32(lr) * g
                    b -= F32(lr) * gb
                if masks is not None:
                    pr.apply_masks(net, masks)
        return net

    return run


# --------------------------------------------------------------------------- counting
@pytest.mark.parametrize(
    ("s", "n", "k"), [(0.29, 100, 29), (0.5, 7, 3), (0.8, 10, 8), (0.0, 5, 0), (0.999, 1000, 999), (0.7, 10, 7)]
)
def test_prune_count_is_exact_floor(s, n, k):
    assert pr.prune_count(s, n) == k


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), float("inf")])
def test_bad_sparsity_is_refused(bad):
    net = init_network("regression", "relu", 4, 1, [3], 0)
    with pytest.raises(pr.PruneError):
        pr.prune_magnitude(net, bad)
    with pytest.raises(pr.PruneError):
        pr.prune_neurons(net, bad)


def test_unknown_scope_and_structure():
    net = init_network("regression", "relu", 4, 1, [3], 0)
    with pytest.raises(pr.PruneError):
        pr.prune_magnitude(net, 0.5, scope="row")
    with pytest.raises(pr.PruneError):
        pr.prune(net, 0.5, structure="channels")


# --------------------------------------------------------------------------- unstructured
@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.8, 0.97])
def test_magnitude_matches_sort_reference(scope, ties, sparsity):
    rng = np.random.default_rng(7)
    net = random_net(rng, [37, 23, 19, 5], ties=ties)
    parent = net.copy()
    res = pr.prune_magnitude(net, sparsity, scope=scope)
    ref = reference_prune(parent.weights, sparsity, scope)
    for got, want in zip(res.network.weights, ref, strict=True):
        assert bits_equal(got, want + F32(0.0))  # +0.0, never −0.0
    for b_got, b_parent in zip(res.network.biases, parent.biases, strict=True):
        assert bits_equal(b_got, b_parent)  # biases untouched
    for W, W0 in zip(net.weights, parent.weights, strict=True):
        assert bits_equal(W, W0)  # not in place by default
    for M, W in zip(res.masks, res.network.weights, strict=True):
        assert np.array_equal(M, W != 0)
    n = sum(W.size for W in parent.weights)
    if scope == "global":
        assert sum(int((W == 0).sum()) for W in res.network.weights) == pr.prune_count(sparsity, n)
    else:
        for W in res.network.weights:
            assert int((W == 0).sum()) == pr.prune_count(sparsity, W.size)
    overall, per_layer = pr.weight_sparsity(res.network.weights)
    assert res.sparsity == pytest.approx(overall) and res.layer_sparsity == pytest.approx(per_layer)


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("ties", [False, True])
def test_bracketed_path_matches_reference(monkeypatch, scope, ties):
    """Large inputs take the sampled-bracket path; it must give the same answer."""
    monkeypatch.setattr(pr, "_DIRECT_MAX", 1000)
    monkeypatch.setattr(pr, "_SAMPLE", 512)
    monkeypatch.setattr(pr, "_BLOCK_ELEMS", 300)
    rng = np.random.default_rng(3)
    net = random_net(rng, [130, 90, 60, 7], ties=ties)
    for s in (0.3, 0.5, 0.9):
        res = pr.prune_magnitude(net, s, scope=scope)
        for got, want in zip(res.network.weights, reference_prune(net.weights, s, scope), strict=True):
            assert bits_equal(got, want + F32(0.0))


def test_bracket_miss_falls_back_to_full_partition(monkeypatch):
    monkeypatch.setattr(pr, "_DIRECT_MAX", 100)
    monkeypatch.setattr(pr, "_bracket", lambda tensors, k, n: (F32(100.0), F32(200.0)))  # far off
    rng = np.random.default_rng(4)
    net = random_net(rng, [40, 30, 3])
    res = pr.prune_magnitude(net, 0.6, scope="global")
    for got, want in zip(res.network.weights, reference_prune(net.weights, 0.6, "global"), strict=True):
        assert bits_equal(got, want)


def test_ties_are_broken_by_flat_index():
    W0 = np.array([[1.0, -2.0, 2.0], [2.0, -1.0, 3.0]], dtype=F32)
    W1 = np.array([[-2.0, 1.0]], dtype=F32)
    net = Network("regression", "relu", [W0, W1], [np.zeros(2, F32), np.zeros(1, F32)])
    # global, k = ⌊0.5 · 8⌋ = 4: the three |w| = 1 (flat 0, 4, 7), then the first |w| = 2 (flat 1)
    res = pr.prune_magnitude(net, 0.5, scope="global")
    assert res.network.weights[0].tolist() == [[0.0, 0.0, 2.0], [2.0, 0.0, 3.0]]
    assert res.network.weights[1].tolist() == [[-2.0, 0.0]]
    assert res.threshold == 2.0


def test_inplace_prunes_the_given_network():
    rng = np.random.default_rng(5)
    net = random_net(rng, [20, 10, 2])
    ref = reference_prune(net.weights, 0.5, "global")
    res = pr.prune_magnitude(net, 0.5, scope="global", inplace=True, return_masks=False)
    assert res.network is net and res.masks is None
    for got, want in zip(net.weights, ref, strict=True):
        assert bits_equal(got, want + F32(0.0))


def test_refuses_to_lower_sparsity_and_is_idempotent():
    rng = np.random.default_rng(6)
    net = random_net(rng, [30, 20, 4])
    first = pr.prune_magnitude(net, 0.8, scope="global").network
    overall, _ = pr.weight_sparsity(first.weights)
    assert overall == pytest.approx(pr.prune_count(0.8, 680) / 680)
    with pytest.raises(pr.SparsityLoweringError):
        pr.prune_magnitude(first, 0.5, scope="global")
    with pytest.raises(pr.SparsityLoweringError):
        pr.check_not_lowering(first.weights, 0.79)
    again = pr.prune_magnitude(first, 0.8, scope="global").network
    for a, b in zip(again.weights, first.weights, strict=True):
        assert bits_equal(a, b)
    higher = pr.prune_magnitude(first, 0.9, scope="layer")
    assert higher.sparsity >= 0.9 - 1 / 600


def test_layer_scope_keeps_an_already_sparser_layer():
    W0 = np.zeros((4, 4), dtype=F32)
    W0[0, 0] = 1.0  # 15/16 zero
    W1 = np.arange(1, 9, dtype=F32).reshape(2, 4)
    net = Network("regression", "relu", [W0, W1], [np.zeros(4, F32), np.zeros(2, F32)])
    with pytest.raises(pr.SparsityLoweringError):  # overall 15/24 = 0.625 > 0.5
        pr.prune_magnitude(net, 0.5, scope="layer")
    res = pr.prune_magnitude(net, 0.625, scope="layer")  # layer 0: k = 10 < 15 zeros; layer 1: k = 5
    assert bits_equal(res.network.weights[0], W0)
    assert res.network.weights[1].tolist() == [[0, 0, 0, 0], [0, 6, 7, 8]]
    assert res.layer_sparsity == [15 / 16, 5 / 8]


# --------------------------------------------------------------------------- neurons
def reference_scores(net: Network) -> list[np.ndarray]:
    out = []
    for i in range(len(net.weights) - 1):
        W, b, Wn = (x.astype(np.float64) for x in (net.weights[i], net.biases[i], net.weights[i + 1]))
        inc = np.array([np.linalg.norm(np.append(W[j], b[j])) for j in range(W.shape[0])])
        outg = np.array([np.linalg.norm(Wn[:, j]) for j in range(W.shape[0])])
        out.append(inc * outg)
    return out


def delete_by_hand(net: Network, removed: list[list[int]]) -> Network:
    Ws = [W.copy() for W in net.weights]
    bs = [b.copy() for b in net.biases]
    for i, rm in enumerate(removed):
        Ws[i] = np.delete(Ws[i], rm, axis=0)
        bs[i] = np.delete(bs[i], rm)
        Ws[i + 1] = np.delete(Ws[i + 1], rm, axis=1)
    return Network(net.task, net.activation, Ws, bs)


def hidden_activations(net: Network, X: np.ndarray) -> list[np.ndarray]:
    return net.forward_trace(X)[1:-1]


def test_neuron_scores_formula():
    rng = np.random.default_rng(8)
    net = random_net(rng, [6, 5, 4, 3])
    for got, want in zip(pr.neuron_scores(net), reference_scores(net), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.9])
def test_neurons_layer_scope_shapes_and_outputs(sparsity):
    rng = np.random.default_rng(9)
    net = random_net(rng, [12, 16, 8, 3])
    X = rng.standard_normal((20, 12)).astype(F32)
    res = pr.prune_neurons(net, sparsity, scope="layer")
    removed = []
    for h, sc in zip([16, 8], reference_scores(net), strict=True):
        r = min(int(np.floor(sparsity * h + 1e-9)), h - 1)
        removed.append(sorted(np.argsort(sc, kind="stable")[:r].tolist()))
    ref = delete_by_hand(net, removed)
    assert res.hidden == ref.hidden == [16 - len(removed[0]), 8 - len(removed[1])]
    for a, b in zip(res.network.weights + res.network.biases, ref.weights + ref.biases, strict=True):
        assert bits_equal(a, b)
    # kept units compute what they computed before (to float32 rounding: BLAS may sum a
    # narrower product in another order, depending on the CPU's kernels)
    before = hidden_activations(net, X)
    after = hidden_activations(res.network, X)
    np.testing.assert_allclose(after[0], before[0][:, res.kept_units[0]], rtol=1e-5, atol=1e-6)
    assert res.params_after == res.network.n_params < res.params_before == net.n_params
    assert res.unit_sparsity == [len(removed[0]) / 16, len(removed[1]) / 8]


def test_neurons_global_scope_and_minimum_width():
    rng = np.random.default_rng(10)
    net = random_net(rng, [6, 10, 4, 2])
    net.weights[1][:, :] *= F32(1e-3)  # layer 1's units all score tiny
    res = pr.prune_neurons(net, 0.9, scope="global")
    # ⌊0.9 · 14⌋ = 12 removed, but each layer keeps its best unit → 2 kept in all
    assert res.hidden == [1, 1]
    sc = reference_scores(net)
    assert res.kept_units[0].tolist() == [int(np.argmax(sc[0]))]
    assert res.kept_units[1].tolist() == [int(np.argmax(sc[1]))]
    mid = pr.prune_neurons(net, 0.5, scope="global")  # 7 removed: the lowest scores overall
    flat = np.concatenate(sc)
    lowest = set(np.argsort(flat, kind="stable")[:7].tolist())
    kept_flat = set(mid.kept_units[0].tolist()) | {10 + j for j in mid.kept_units[1].tolist()}
    assert kept_flat == set(range(14)) - lowest


def test_neurons_reference_hidden_refuses_lowering():
    rng = np.random.default_rng(11)
    net = random_net(rng, [5, 8, 2])
    half = pr.prune_neurons(net, 0.5, reference_hidden=[8]).network
    assert half.hidden == [4]
    assert pr.prune_neurons(half, 0.75, reference_hidden=[8]).hidden == [2]
    with pytest.raises(pr.SparsityLoweringError):
        pr.prune_neurons(half, 0.25, reference_hidden=[8])


def test_neurons_need_a_hidden_layer():
    net = init_network("binary", "relu", 4, 1, [], 0)
    with pytest.raises(pr.PruneError):
        pr.prune_neurons(net, 0.5)


def test_neuron_pruning_with_fine_tuning_on_digits(digits):
    net, Xtr, ytr, Xte, yte = digits
    base = accuracy(net.task, net.forward(Xte), yte)
    res = pr.prune_neurons(net, 0.25, scope="layer")
    assert res.hidden == [24, 12] and res.masks is None
    tuned = masked_fine_tune(Xtr, ytr, epochs=30)(res.network, None)
    assert tuned.hidden == [24, 12]
    assert accuracy(net.task, tuned.forward(Xte), yte) >= base - 0.03


# --------------------------------------------------------------------------- guarded search
def test_search_finds_highest_grid_point_within_budget():
    rng = np.random.default_rng(12)
    net = random_net(rng, [40, 30, 5])
    calls = []

    def evaluate(n: Network) -> float:  # loss = sparsity²: monotone, known
        s, _ = pr.weight_sparsity(n.weights)
        calls.append(s)
        return s * s

    grid = [0.1 * i for i in range(1, 10)]
    out = pr.search_sparsity(net, evaluate, max_loss_increase=0.3, grid=grid, scope="global")
    assert out.sparsity == pytest.approx(0.5)  # 0.5² = 0.25 ≤ 0.3 < 0.36 = 0.6²
    assert out.loss - out.base_loss <= 0.3
    assert len(calls) <= 1 + 4  # base + at most ⌈log₂(9 + 1)⌉ probes
    assert [s for s, _ in out.curve] == sorted(s for s, _ in out.curve)
    assert (0.5, pytest.approx(out.loss)) in [(round(s, 10), v) for s, v in out.curve]
    assert out.result.sparsity == pytest.approx(pr.prune_count(0.5, 1350) / 1350)


def test_search_with_no_passing_point():
    rng = np.random.default_rng(13)
    net = random_net(rng, [10, 5, 2])
    out = pr.search_sparsity(net, lambda n: 1.0 + pr.weight_sparsity(n.weights)[0], max_loss_increase=0.01)
    assert out.sparsity is None and out.result is None and out.curve


def test_search_skips_grid_points_below_current_sparsity():
    rng = np.random.default_rng(14)
    net = pr.prune_magnitude(random_net(rng, [20, 10, 2]), 0.6, scope="global").network
    seen = []
    pr.search_sparsity(
        net,
        lambda n: 0.0,
        max_loss_increase=1.0,
        scope="global",
        grid=[0.2, 0.4, 0.6, 0.7, 0.9],
        on_point=lambda s, loss: seen.append(s),
    )
    assert min(seen) >= 0.6


def test_search_neurons_skips_widths_it_cannot_reach():
    rng = np.random.default_rng(15)
    net = pr.prune_neurons(random_net(rng, [8, 20, 2]), 0.5, reference_hidden=[20]).network  # 10 left
    seen = []
    out = pr.search_sparsity(
        net,
        lambda n: float(sum(n.hidden)) * -0.0,
        max_loss_increase=0.0,
        structure="neurons",
        reference_hidden=[20],
        grid=[0.25, 0.5, 0.6, 0.8],
        on_point=lambda s, loss: seen.append(s),
    )
    assert min(seen) >= 0.5 and out.sparsity == 0.8
    assert out.result.hidden == [4]


def test_search_on_digits_respects_budget_with_fine_tuning(digits):
    net, Xtr, ytr, Xte, yte = digits
    budget = 0.05
    tuned = []

    def fine_tune(n, masks):
        tuned.append(masks)
        return masked_fine_tune(Xtr, ytr, epochs=3)(n, masks)

    out = pr.search_sparsity(
        net,
        lambda n: mean_loss(n, Xte, yte),
        max_loss_increase=budget,
        scope="global",
        fine_tune=fine_tune,
    )
    assert out.sparsity is not None and out.sparsity >= 0.5
    assert out.loss - out.base_loss <= budget
    assert mean_loss(out.result.network, Xte, yte) == pytest.approx(out.loss)
    assert all(m is not None for m in tuned)
    # the mask stayed fixed: the fine-tuned result is at least as sparse as asked
    assert pr.weight_sparsity(out.result.network.weights)[0] >= out.sparsity - 1e-3
    for s, loss in out.curve:
        assert (loss - out.base_loss <= budget) == (s <= out.sparsity)


def test_80_percent_with_fine_tuning_keeps_digits_accuracy(digits):
    net, Xtr, ytr, Xte, yte = digits
    base = accuracy(net.task, net.forward(Xte), yte)
    res = pr.prune_magnitude(net, 0.8, scope="global")
    tuned = masked_fine_tune(Xtr, ytr, epochs=30)(res.network, res.masks)
    assert pr.weight_sparsity(tuned.weights)[0] >= 0.8 - 1e-3
    assert accuracy(net.task, tuned.forward(Xte), yte) >= base - 0.02
