"""Pruning of a :class:`~app.engine.nn.network.Network`: magnitude (unstructured) and neurons.

Unstructured magnitude pruning
------------------------------
The weight matrices ``W_i`` [out_i, in_i] are read in *flat order*: layer 0 first, each
matrix row-major (the order of ``np.concatenate([W.ravel() for W in weights])``).
For ``n`` weights and a sparsity ``s`` in [0, 1) exactly

    k = ⌊s · n⌋          (s read as its shortest decimal form: 0.29 · 100 = 29, not 28)

weights are set to +0.0: the ``k`` smallest by the key ``(|w|, flat index)``. In words: the
smallest magnitudes go first and, **among equal magnitudes, the lower flat index is pruned
first**. Biases are never touched.

- ``scope="layer"``: every weight matrix separately, ``k_i = ⌊s · n_i⌋`` (flat index =
  row-major index inside the matrix). A matrix already sparser than ``s`` stays as it is.
- ``scope="global"``: one threshold over all matrices, ``k = ⌊s · Σ n_i⌋``.

Equivalently, with ``t`` the k-th smallest magnitude, every ``|w| < t`` is pruned plus the
first ``k − #{|w| < t}`` entries with ``|w| = t`` in flat order.

The mask of a layer is ``M_i = (W_i' ≠ 0)``, bool [out_i, in_i], for the pruned weights ``W_i'``:
True where a weight may be non-zero while fine-tuning (weights that were already exactly zero
stay pruned).

Memory: tensors are processed one row block at a time (≈1 MiB). The k-th magnitude is found
with an in-place ``np.partition`` on ONE preallocated float32 buffer. For large inputs, a
strided sample of ≈2¹⁸ magnitudes first brackets the threshold (``lo ≤ t ≤ hi``, ±8σ of the
sample quantile), one pass counts ``|w| < lo`` and copies only the candidates in
``[lo, hi]`` into the buffer (typically < 1 % of the weights); if the bracket misses ``t``
the buffer is filled with every ``|w|`` instead (the result is exact either way). The buffer
is allocated with ``np.empty`` so only the pages written count toward resident memory.

Structured (neuron) pruning
---------------------------
Hidden unit ``j`` of hidden layer ``i`` (row ``j`` of ``W_i``, column ``j`` of ``W_{i+1}``)
scores

    score_ij = ‖[W_i[j, :], b_i[j]]‖₂ · ‖W_{i+1}[:, j]‖₂

(incoming weights and bias times outgoing column: for ReLU the unit's function is
invariant under ``in · α, out / α``, and so is this score). All scores are computed on the
parent network. Per layer, ``r_i = ⌊s · h_i⌋`` units with the smallest ``(score, index)`` are
removed; ``scope="global"`` removes ``⌊s · Σ h_i⌋`` units over all hidden layers with the key
``(score, layer, index)``. Every hidden layer keeps at least one unit (its best one). Removal
deletes row ``j`` of ``W_i`` and ``b_i`` and column ``j`` of ``W_{i+1}``, so every kept unit
computes exactly what it computed before and the layers really shrink.

Everything here is pure numpy: no I/O, no imports from the web or database layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from app.engine.nn.network import F32, Network

SCOPES = ("layer", "global")
STRUCTURES = ("unstructured", "neurons")

#: Elements per working block (1 MiB of float32): abs / compare / mask work stays in cache.
_BLOCK_ELEMS = 1 << 18
#: Up to this many weights the threshold is found by partitioning all magnitudes at once.
_DIRECT_MAX = 1 << 21
#: Approximate size of the strided sample that brackets the threshold.
_SAMPLE = 1 << 18
#: Chunk for counting over the candidate buffer without large temporaries.
_COUNT_CHUNK = 1 << 20
#: Default sparsity grid of :func:`search_sparsity`.
DEFAULT_GRID = (
    *(round(0.05 * i, 2) for i in range(1, 20)),
    0.98,
    0.99,
)


class PruneError(ValueError):
    """Invalid pruning request: sparsity outside [0, 1), unknown scope / structure, or
    nothing to prune (e.g. neuron pruning of a network without hidden layers)."""


class SparsityLoweringError(PruneError):
    """The asked sparsity is lower than the network's current one: pruning cannot restore
    weights that are already gone."""


# --------------------------------------------------------------------------- helpers
def check_sparsity(sparsity: float) -> float:
    """Return ``sparsity`` as a float after checking it is finite and in [0, 1)."""
    s = float(sparsity)
    if not math.isfinite(s) or not 0.0 <= s < 1.0:
        raise PruneError(f"sparsity must be in [0, 1), got {sparsity!r}")
    return s


def prune_count(sparsity: float, n: int) -> int:
    """Number of entries pruned out of ``n``: ``k = ⌊s · n⌋``, exactly.

    ``s`` is taken as its shortest decimal representation (``repr``) so the product is
    exact: ``prune_count(0.29, 100) == 29`` (binary floating point would give 28.999… → 28).
    """
    s = check_sparsity(sparsity)
    return math.floor(Fraction(repr(s)) * int(n))


def weight_sparsity(weights: Sequence[np.ndarray]) -> tuple[float, list[float]]:
    """Current sparsity: ``(overall, per_layer)``, the share of exactly-zero entries over all
    weight matrices and in each one (biases are not counted)."""
    per_layer: list[float] = []
    zeros = total = 0
    for W in weights:
        z = int(W.size - np.count_nonzero(W))
        per_layer.append(z / W.size if W.size else 0.0)
        zeros += z
        total += int(W.size)
    return (zeros / total if total else 0.0), per_layer


def check_not_lowering(weights: Sequence[np.ndarray], sparsity: float) -> None:
    """Raise :class:`SparsityLoweringError` when ``⌊s · n⌋`` is below the number of weights
    that are already zero, i.e. when ``sparsity`` is lower than the current overall sparsity.
    Asking for the current sparsity again is allowed (and changes nothing)."""
    n = sum(int(W.size) for W in weights)
    zeros = n - sum(int(np.count_nonzero(W)) for W in weights)
    if prune_count(sparsity, n) < zeros:
        raise SparsityLoweringError(
            f"the network is already {zeros / n:.4f} sparse ({zeros} of {n} weights are zero); "
            f"pruning cannot lower it to {float(sparsity):.4f}"
        )


def apply_masks(net: Network, masks: Sequence[np.ndarray]) -> Network:
    """Zero, in place, every weight outside its mask (``W_i ← W_i · M_i``, as +0.0) and return
    ``net``. Call after each fine-tuning step to keep pruned weights at zero."""
    for W, M in zip(net.weights, masks, strict=True):
        np.multiply(W, M, out=W)
        W += F32(0.0)  # −0.0 → +0.0
    return net


def _row_block(cols: int) -> int:
    """Rows per working block for a matrix with ``cols`` columns (≥ 1)."""
    return max(1, _BLOCK_ELEMS // max(1, cols))


def _count(a: np.ndarray, fn: Callable[[np.ndarray, np.float32], np.ndarray], t: np.float32) -> int:
    """``np.count_nonzero(fn(a, t))`` in chunks (no temporary as large as ``a``)."""
    c = 0
    for o in range(0, a.size, _COUNT_CHUNK):
        c += int(np.count_nonzero(fn(a[o : o + _COUNT_CHUNK], t)))
    return c


# --------------------------------------------------------------------------- threshold
@dataclass(frozen=True)
class _Cut:
    """What to prune among a set of tensors read in flat order.

    ``t``: the k-th smallest magnitude. ``n_tie``: how many entries with ``|w| = t`` are
    pruned (the first ones in flat order), ``n_eq``: how many have ``|w| = t`` in all.
    """

    t: np.float32
    n_tie: int
    n_eq: int

    @property
    def all_ties(self) -> bool:
        # t = 0: the tied entries are zeros already, pruning all of them changes nothing.
        return self.n_tie == self.n_eq or self.t == 0


def _cut_from_candidates(cand: np.ndarray, j: int, below: int, k: int) -> _Cut:
    """Partition ``cand`` (modified in place) at its ``j``-th smallest value (1-based);
    ``below`` entries outside ``cand`` are smaller than every candidate."""
    cand.partition(j - 1)
    t = F32(cand[j - 1])
    n_lt = below + _count(cand[: j - 1], np.less, t)  # cand[:j-1] ≤ t ≤ cand[j:]
    n_eq = _count(cand, np.equal, t)
    return _Cut(t, k - n_lt, n_eq)


def _fill_all(tensors: Sequence[np.ndarray], buf: np.ndarray) -> None:
    o = 0
    for W in tensors:
        np.abs(W.reshape(-1), out=buf[o : o + W.size])
        o += W.size


def _bracket(tensors: Sequence[np.ndarray], k: int, n: int) -> tuple[np.float32 | None, np.float32 | None]:
    """``(lo, hi)`` around the k-th smallest magnitude from a strided sample, or None for an
    open end. Stride: an odd number ≈ n / _SAMPLE (so rows are not sampled at one column)."""
    stride = max(1, n // _SAMPLE) | 1
    sample = np.abs(np.concatenate([W.reshape(-1)[::stride] for W in tensors]))
    m = sample.size
    q = k / n
    margin = 8.0 * math.sqrt(m * q * (1.0 - q)) + 64.0
    i_lo, i_hi = math.floor(q * m - margin), math.ceil(q * m + margin)
    kth = [i for i in (i_lo, i_hi) if 0 <= i < m]
    if kth:
        sample.partition(kth)
    lo = F32(sample[i_lo]) if 0 <= i_lo < m else None
    hi = F32(sample[i_hi]) if 0 <= i_hi < m else None
    return lo, hi


def _find_cut(tensors: Sequence[np.ndarray], k: int) -> _Cut:
    """The cut for the ``k`` (1 ≤ k ≤ n) smallest magnitudes over ``tensors`` (flat order)."""
    n = sum(int(W.size) for W in tensors)
    buf = np.empty(n, dtype=F32)  # the one buffer; pages are touched only where written
    if n > _DIRECT_MAX:
        lo, hi = _bracket(tensors, k, n)
        if lo is not None or hi is not None:
            below = pos = 0
            width = max(_row_block(W.shape[1]) * W.shape[1] for W in tensors)
            a_buf = np.empty(width, dtype=F32)
            lt_buf = np.empty(width, dtype=bool)
            sel_buf = np.empty(width, dtype=bool)
            for W in tensors:
                rows = _row_block(W.shape[1])
                for r0 in range(0, W.shape[0], rows):
                    blk = W[r0 : r0 + rows].reshape(-1)
                    a, sel = a_buf[: blk.size], sel_buf[: blk.size]
                    np.abs(blk, out=a)
                    if hi is not None:
                        np.less_equal(a, hi, out=sel)
                    else:
                        sel.fill(True)
                    if lo is not None:
                        lt = np.less(a, lo, out=lt_buf[: blk.size])
                        below += int(np.count_nonzero(lt))
                        np.greater(sel, lt, out=sel)  # sel ∧ ¬lt
                    c = a[sel]
                    buf[pos : pos + c.size] = c
                    pos += c.size
            if below < k <= below + pos:
                return _cut_from_candidates(buf[:pos], k - below, below, k)
    _fill_all(tensors, buf)
    return _cut_from_candidates(buf, k, 0, k)


def _apply_cut(
    tensors: Sequence[np.ndarray],
    outs: Sequence[np.ndarray],
    masks: Sequence[np.ndarray] | None,
    cut: _Cut,
) -> list[int]:
    """Write the pruned tensors into ``outs`` (may be ``tensors`` themselves: in place) and
    the masks ``(W' ≠ 0)`` into ``masks``. Returns the number of zeros of each output."""
    zeros: list[int] = []
    remaining = cut.n_tie
    width = max(_row_block(W.shape[1]) * W.shape[1] for W in tensors)
    a_buf = np.empty(width, dtype=F32)
    keep_buf = np.empty(width, dtype=bool) if masks is None else None
    t = cut.t
    for idx, (W, Wout) in enumerate(zip(tensors, outs, strict=True)):
        rows = _row_block(W.shape[1])
        kept = 0
        for r0 in range(0, W.shape[0], rows):
            blk = W[r0 : r0 + rows].reshape(-1)
            oblk = Wout[r0 : r0 + rows].reshape(-1)
            if masks is None:
                assert keep_buf is not None, "allocated when no masks are given"
                keep = keep_buf[: blk.size]
            else:
                keep = masks[idx][r0 : r0 + rows].reshape(-1)
            a = a_buf[: blk.size]
            np.abs(blk, out=a)
            if cut.all_ties:
                np.greater(a, t, out=keep)
            else:
                np.greater_equal(a, t, out=keep)
                if remaining:
                    eq = np.flatnonzero(a == t)[:remaining]
                    keep[eq] = False
                    remaining -= eq.size
            np.multiply(blk, keep, out=oblk)
            oblk += F32(0.0)  # −0.0 → +0.0
            kept += int(np.count_nonzero(keep))
        zeros.append(int(W.size) - kept)
    return zeros


# --------------------------------------------------------------------------- results
@dataclass
class PruneResult:
    """Outcome of a pruning.

    ``network``: the pruned network. ``masks``: unstructured only, bool [out_i, in_i],
    ``M_i = (W_i' ≠ 0)`` (None for neurons or when not asked). ``layer_sparsity[i]`` and
    ``sparsity``: share of exactly-zero weights in each matrix and overall, after pruning.
    Neurons only: ``kept_units[i]`` int64 indices (into the parent's hidden layer ``i``) that
    were kept, ``unit_sparsity[i]`` the share of hidden layer ``i``'s units removed.
    """

    network: Network
    structure: str
    scope: str
    requested_sparsity: float
    sparsity: float
    layer_sparsity: list[float]
    masks: list[np.ndarray] | None = None
    threshold: float | None = None
    kept_units: list[np.ndarray] | None = None
    unit_sparsity: list[float] | None = None
    params_before: int = 0
    params_after: int = 0

    @property
    def hidden(self) -> list[int]:
        """Hidden widths of the pruned network."""
        return self.network.hidden

    def report(self) -> dict[str, Any]:
        """JSON-ready summary (no arrays except the hidden widths)."""
        out: dict[str, Any] = {
            "structure": self.structure,
            "scope": self.scope,
            "requested_sparsity": self.requested_sparsity,
            "sparsity": self.sparsity,
            "layer_sparsity": list(self.layer_sparsity),
            "hidden": self.hidden,
            "params_before": self.params_before,
            "params_after": self.params_after,
        }
        if self.threshold is not None:
            out["threshold"] = self.threshold
        if self.unit_sparsity is not None:
            out["unit_sparsity"] = list(self.unit_sparsity)
        return out


# --------------------------------------------------------------------------- unstructured
def prune_magnitude(
    net: Network,
    sparsity: float,
    *,
    scope: str = "layer",
    inplace: bool = False,
    return_masks: bool = True,
) -> PruneResult:
    """Unstructured magnitude pruning (see the module docstring for the exact rule).

    ``net.weights[i]`` [out_i, in_i] float32 → same shapes with ``k`` (or ``k_i``) entries set
    to 0; biases are shared with (``inplace``) or copied from ``net``. Raises
    :class:`PruneError` for a bad ``sparsity`` / ``scope`` and :class:`SparsityLoweringError`
    when ``sparsity`` is below the network's current overall sparsity.

    Peak extra memory: the masks (1 byte per weight, if ``return_masks``), the output copy
    (unless ``inplace``) and the candidate buffer (typically < 1 % of the weights, at worst
    one float32 per weight).
    """
    s = check_sparsity(sparsity)
    if scope not in SCOPES:
        raise PruneError(f"scope must be one of {SCOPES}, got {scope!r}")
    weights = [np.ascontiguousarray(W, dtype=F32) for W in net.weights]
    check_not_lowering(weights, s)
    if inplace:
        net.weights[:] = weights
        out_net = net
        outs = weights
    else:
        outs = [np.empty_like(W) for W in weights]
        out_net = Network(net.task, net.activation, outs, [b.copy() for b in net.biases], dict(net.meta))
    masks = [np.empty(W.shape, dtype=bool) for W in weights] if return_masks else None

    threshold: float | None = None
    if scope == "global":
        n = sum(int(W.size) for W in weights)
        k = prune_count(s, n)
        cut = _find_cut(weights, k) if k else _Cut(F32(0.0), 0, 0)
        threshold = float(cut.t)
        zeros = _apply_cut(weights, outs, masks, cut)
    else:
        zeros = []
        for i, W in enumerate(weights):
            k = prune_count(s, W.size)
            cut = _find_cut([W], k) if k else _Cut(F32(0.0), 0, 0)
            zeros += _apply_cut([W], [outs[i]], None if masks is None else [masks[i]], cut)

    total = sum(int(W.size) for W in weights)
    n_params = net.n_params
    return PruneResult(
        network=out_net,
        structure="unstructured",
        scope=scope,
        requested_sparsity=s,
        sparsity=sum(zeros) / total if total else 0.0,
        layer_sparsity=[z / W.size if W.size else 0.0 for z, W in zip(zeros, weights, strict=True)],
        masks=masks,
        threshold=threshold,
        params_before=n_params,
        params_after=n_params,
    )


# --------------------------------------------------------------------------- neurons
def _square_sums(W: np.ndarray, axis: int) -> np.ndarray:
    """Σ W² over rows (``axis=1``: one value per row) or columns (``axis=0``), in float64,
    one row block at a time (no float64 copy of the whole matrix)."""
    out = np.zeros(W.shape[0] if axis == 1 else W.shape[1], dtype=np.float64)
    rows = _row_block(W.shape[1])
    for a in range(0, W.shape[0], rows):
        blk = W[a : a + rows].astype(np.float64)
        if axis == 1:
            out[a : a + rows] = np.einsum("ij,ij->i", blk, blk)
        else:
            out += np.einsum("ij,ij->j", blk, blk)
    return out


def neuron_scores(net: Network) -> list[np.ndarray]:
    """Score of every hidden unit, one float64 array [h_i] per hidden layer ``i``:
    ``‖[W_i[j, :], b_i[j]]‖₂ · ‖W_{i+1}[:, j]‖₂`` (sums of squares in float64, by row blocks)."""
    scores = []
    for i in range(len(net.weights) - 1):
        W, b, W_next = net.weights[i], net.biases[i], net.weights[i + 1]
        incoming = np.sqrt(_square_sums(W, 1) + b.astype(np.float64) ** 2)
        outgoing = np.sqrt(_square_sums(W_next, 0))
        scores.append(incoming * outgoing)
    return scores


def prune_neurons(
    net: Network,
    sparsity: float,
    *,
    scope: str = "layer",
    reference_hidden: Sequence[int] | None = None,
) -> PruneResult:
    """Remove whole hidden units with the smallest scores (see the module docstring).

    Returns a new network whose hidden layer ``i`` has ``h_i − r_i`` units: ``W_i`` [h_i', in_i],
    ``b_i`` [h_i'], ``W_{i+1}`` [out_{i+1}, h_i']. Kept units stay in their original order.

    ``sparsity`` is the share of hidden units removed, relative to the current widths, or to
    ``reference_hidden`` (e.g. the model spec's ``hidden``) when given: then the target width
    is ``h_ref − ⌊s · h_ref⌋`` (per layer, or in total for ``global``) and a network already
    narrower than that raises :class:`SparsityLoweringError`.
    """
    s = check_sparsity(sparsity)
    if scope not in SCOPES:
        raise PruneError(f"scope must be one of {SCOPES}, got {scope!r}")
    L = len(net.weights)
    if L < 2:
        raise PruneError("the network has no hidden layer: there are no neurons to prune")
    widths = net.hidden
    ref = list(widths) if reference_hidden is None else [int(h) for h in reference_hidden]
    if len(ref) != len(widths):
        raise PruneError(f"reference_hidden has {len(ref)} layers, the network {len(widths)}")
    scores = neuron_scores(net)

    removed: list[np.ndarray] = []
    if scope == "layer":
        for i, (h, h_ref, sc) in enumerate(zip(widths, ref, scores, strict=True)):
            target = max(1, h_ref - prune_count(s, h_ref))
            r = h - target
            if r < 0:
                raise SparsityLoweringError(
                    f"hidden layer {i} already has {h} units, fewer than the {target} left at sparsity {s} of {h_ref}"
                )
            order = np.lexsort((np.arange(h), sc))  # by (score, index)
            removed.append(np.sort(order[:r]))
    else:
        H, H_ref = sum(widths), sum(ref)
        target = max(len(widths), H_ref - prune_count(s, H_ref))
        R = H - target
        if R < 0:
            raise SparsityLoweringError(
                f"the network already has {H} hidden units, fewer than the {target} left at sparsity {s} of {H_ref}"
            )
        layer_of = np.concatenate([np.full(h, i) for i, h in enumerate(widths)])
        index_of = np.concatenate([np.arange(h) for h in widths])
        flat = np.concatenate(scores)
        order = np.lexsort((index_of, layer_of, flat))  # by (score, layer, index)
        # protect each layer's best unit: the last one of that layer in `order`
        protected = np.zeros(H, dtype=bool)
        seen: set[int] = set()
        for pos in order[::-1]:
            if int(layer_of[pos]) not in seen:
                seen.add(int(layer_of[pos]))
                protected[pos] = True
            if len(seen) == len(widths):
                break
        victims = order[~protected[order]][:R]
        for i in range(len(widths)):
            removed.append(np.sort(index_of[victims[layer_of[victims] == i]]))

    kept = [np.setdiff1d(np.arange(h), r).astype(np.int64) for h, r in zip(widths, removed, strict=True)]
    weights, biases = [], []
    for i in range(L):
        W = net.weights[i]
        rows = kept[i] if i < L - 1 else np.arange(W.shape[0])
        cols = kept[i - 1] if i > 0 else np.arange(W.shape[1])
        weights.append(np.ascontiguousarray(W[np.ix_(rows, cols)], dtype=F32))  # one copy, the kept block
        biases.append(np.ascontiguousarray(net.biases[i][rows], dtype=F32))
    out_net = Network(net.task, net.activation, weights, biases, dict(net.meta))
    overall, per_layer = weight_sparsity(weights)
    return PruneResult(
        network=out_net,
        structure="neurons",
        scope=scope,
        requested_sparsity=s,
        sparsity=overall,
        layer_sparsity=per_layer,
        kept_units=kept,
        unit_sparsity=[r.size / h for r, h in zip(removed, widths, strict=True)],
        params_before=net.n_params,
        params_after=out_net.n_params,
    )


def _neurons_reachable(widths: list[int], ref: list[int], s: float, scope: str) -> bool:
    """False when neuron pruning at ``s`` relative to ``ref`` would have to add units."""
    if scope == "global":
        return sum(widths) >= max(len(widths), sum(ref) - prune_count(s, sum(ref)))
    return all(h >= max(1, r - prune_count(s, r)) for h, r in zip(widths, ref, strict=True))


def prune(
    net: Network,
    sparsity: float,
    *,
    scope: str = "layer",
    structure: str = "unstructured",
    reference_hidden: Sequence[int] | None = None,
    inplace: bool = False,
) -> PruneResult:
    """Dispatch to :func:`prune_magnitude` or :func:`prune_neurons` by ``structure``."""
    if structure == "unstructured":
        return prune_magnitude(net, sparsity, scope=scope, inplace=inplace)
    if structure == "neurons":
        return prune_neurons(net, sparsity, scope=scope, reference_hidden=reference_hidden)
    raise PruneError(f"structure must be one of {STRUCTURES}, got {structure!r}")


# --------------------------------------------------------------------------- guarded search
@dataclass
class SearchResult:
    """Outcome of :func:`search_sparsity`.

    ``base_loss``: loss of the parent. ``curve``: every ``(sparsity, loss)`` measured, sorted by
    sparsity (losses after fine-tuning when a ``fine_tune`` was given). ``sparsity`` /
    ``loss`` / ``result``: the highest measured sparsity whose loss rose by at most the budget,
    or None when no grid point satisfied it.
    """

    base_loss: float
    max_loss_increase: float
    curve: list[tuple[float, float]] = field(default_factory=list)
    sparsity: float | None = None
    loss: float | None = None
    result: PruneResult | None = None

    def report(self) -> dict[str, Any]:
        return {
            "base_loss": self.base_loss,
            "max_loss_increase": self.max_loss_increase,
            "curve": [{"sparsity": s, "loss": v} for s, v in self.curve],
            "sparsity": self.sparsity,
            "loss": self.loss,
        }


def search_sparsity(
    net: Network,
    evaluate: Callable[[Network], float],
    *,
    max_loss_increase: float,
    scope: str = "layer",
    structure: str = "unstructured",
    fine_tune: Callable[[Network, list[np.ndarray] | None], Network] | None = None,
    grid: Sequence[float] | None = None,
    reference_hidden: Sequence[int] | None = None,
    on_point: Callable[[float, float], None] | None = None,
) -> SearchResult:
    """Highest grid sparsity whose loss increase stays within ``max_loss_increase``.

    ``evaluate(net) -> loss`` (lower is better) is called once on ``net`` and once per probed
    sparsity; ``fine_tune(pruned_net, masks) -> net`` (masks None for neurons) runs before the
    evaluation when given and must keep masked weights at zero (:func:`apply_masks`).
    Candidates are ``grid`` (default :data:`DEFAULT_GRID`) minus points below the network's
    current sparsity (unstructured) — pruning never lowers it. A candidate passes when
    ``loss − base_loss ≤ max_loss_increase``.

    Bisection over the sorted grid, assuming loss grows with sparsity: ``⌈log₂(len+1)⌉``
    probes. The answer is always a measured point that passes the budget; if the loss is not
    monotone a higher passing point may be missed. ``on_point(sparsity, loss)`` is called after
    each probe (e.g. for job progress).
    """
    budget = float(max_loss_increase)
    if not math.isfinite(budget) or budget < 0:
        raise PruneError(f"max_loss_increase must be finite and ≥ 0, got {max_loss_increase!r}")
    if structure not in STRUCTURES:
        raise PruneError(f"structure must be one of {STRUCTURES}, got {structure!r}")
    pts = sorted({check_sparsity(g) for g in (DEFAULT_GRID if grid is None else grid)})
    if structure == "unstructured":
        n = sum(int(W.size) for W in net.weights)
        zeros = n - sum(int(np.count_nonzero(W)) for W in net.weights)
        pts = [g for g in pts if prune_count(g, n) >= zeros]
    elif reference_hidden is not None:
        pts = [g for g in pts if _neurons_reachable(net.hidden, list(reference_hidden), g, scope)]
    base = float(evaluate(net))
    out = SearchResult(base_loss=base, max_loss_increase=budget)
    lo, hi = -1, len(pts)  # pts[lo] passes (−1: none yet), pts[hi] fails (len: virtual)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        res = prune(net, pts[mid], scope=scope, structure=structure, reference_hidden=reference_hidden)
        if fine_tune is not None:
            res.network = fine_tune(res.network, res.masks)
            if res.masks is not None:
                res.sparsity, res.layer_sparsity = weight_sparsity(res.network.weights)
        loss = float(evaluate(res.network))
        out.curve.append((pts[mid], loss))
        if on_point is not None:
            on_point(pts[mid], loss)
        if math.isfinite(loss) and loss - base <= budget:
            lo = mid
            out.sparsity, out.loss, out.result = pts[mid], loss, res
        else:
            hi = mid
    out.curve.sort()
    return out
