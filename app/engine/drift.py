"""Drift detectors: ADWIN on a stream of numbers, the population stability index per feature.

**ADWIN** (Bifet & Gavaldà, "Learning from time-changing data with adaptive windowing",
SDM 2007; the ADWIN2 variant with an exponential histogram, with River's parameters and
conventions). The window ``W`` of the most recent values is kept as buckets: level ``i``
holds up to ``max_buckets`` buckets of ``2^i`` values each, as ``(total, variance)`` where
``variance`` is the sum of squared deviations from the bucket's mean; a level that gets
``max_buckets + 1`` buckets merges its two oldest into one bucket of the next level
(``total = t₁ + t₂``, ``variance = v₁ + v₂ + n·½·(μ₁ − μ₂)²`` for two buckets of ``n``).
The window's ``width`` ``N``, ``total`` and ``variance`` (sum of squared deviations) are
kept incrementally: adding ``x`` to a window of ``N − 1`` values adds
``(N − 1)(x − total/(N − 1))²/N`` to the variance.

Every ``clock`` values (once more than ``grace_period`` arrived), each cut of ``W`` into an
older part ``W₀`` (``n₀`` values, mean ``μ₀``) and a newer ``W₁`` (``n₁``, ``μ₁``) at a bucket
boundary, oldest first, is tested: with ``m = 1/(n₀ − L + 1) + 1/(n₁ − L + 1)`` (``L`` =
``min_window_length``), ``δ' = ln(2 ln N / δ)`` and ``σ² = variance / N``, a change is
``|μ₀ − μ₁| > ε = √(2 m σ² δ') + ⅔ δ' m`` with both parts at least ``L`` values long. On a
change the oldest bucket is dropped and the cuts are tested again (from the oldest), until
none passes; :meth:`Adwin.update` then answers True. With ``restart`` (River's convention,
the default) the next value starts a new, empty window; without it (the paper's), the
window goes on with the newer part it kept.

**PSI.** For a feature with reference values ``r`` and current values ``c``: the bin edges
are the reference's deciles (``bins`` equal-count bins; values outside fall in the end
bins), ``p_b``/``q_b`` the shares of ``r``/``c`` in bin ``b`` floored at ``ε = 1e-4``, and
``PSI = Σ_b (q_b − p_b) ln(q_b / p_b)``. 0 for identical distributions; the usual reading:
< 0.1 no change, 0.1–0.25 some, > 0.25 a large one.

**The monitor** (:class:`DriftMonitor`) watches one learner's stream, sample by sample in
offset order, as the learner scores and learns it:

* performance: the prequential per-sample losses, as means of aligned groups of
  :data:`GROUP` samples (offsets ``32k … 32k + 31``), go to an :class:`Adwin` (without
  restart) in units of the standard deviation of the reference's group means (the groups
  of the first ``reference`` samples set the scale; ADWIN's ``⅔ δ' m`` term assumes values
  in [0, 1], which would hide a rise of a small loss); a change after which the kept,
  newer part has a *higher* mean than the part dropped is drift (a model that gets better
  is no alarm),
  and so is a loss that trips the learner's blow-up guard (:meth:`DriftMonitor.loss_rose`);
* inputs: every ``stride``-th sample (offsets ``0 mod stride``: a quarter of the stream by
  default, which keeps the cost per sample small) — the first ``reference`` samples' worth
  are the reference (their deciles are each feature's bin edges); then, once ``window``
  samples' worth followed, the PSI of the last ``window`` samples' worth against it is
  computed every ``check_every`` samples, and the features over ``threshold`` are listed,
  worst first;
* status: ``drift`` from the first performance drift on (it stays until a reset),
  ``warning`` while some feature is listed, else ``stable``; every change of status is a
  transition ``(status, offset)``.

Numpy and the standard library only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: Floor of a bin's share in :func:`psi` (an empty bin would make the log infinite).
PSI_EPS = 1e-4


class Adwin:
    """ADWIN over a stream of numbers (see the module doc). Defaults are River's."""

    def __init__(
        self,
        delta: float = 0.002,
        clock: int = 32,
        max_buckets: int = 5,
        min_window_length: int = 5,
        grace_period: int = 10,
        restart: bool = True,
    ) -> None:
        self.delta = delta
        self.restart = restart
        self.clock = clock
        self.max_buckets = max_buckets
        self.min_window_length = min_window_length
        self.grace_period = grace_period
        self.detections = 0
        self.detected = False
        self._clear()

    def _clear(self) -> None:
        # level i holds buckets of 2**i values, oldest first: their totals and variances
        self.totals: list[list[float]] = [[]]
        self.variances: list[list[float]] = [[]]
        self.width = 0.0
        self.total = 0.0
        self.variance = 0.0
        self.tick = 0

    @property
    def mean(self) -> float:
        return self.total / self.width if self.width else 0.0

    def update(self, x: float) -> bool:
        """Add ``x``; True when a change was detected. With ``restart`` (River's convention)
        the value after a detection starts a new, empty window; without it (the paper's),
        the window goes on with its newer part."""
        if self.detected and self.restart:
            self._clear()
        self._insert(float(x))
        self.tick += 1
        if self.tick % self.clock != 0 or self.width <= self.grace_period:
            self.detected = False
        else:
            self.detected = self._detect()
        return self.detected

    def _insert(self, x: float) -> None:
        totals, variances = self.totals, self.variances
        totals[0].append(x)
        variances[0].append(0.0)
        width = self.width = self.width + 1
        if width > 1:
            d = x - self.total / (width - 1)
            self.variance += (width - 1) * d * d / width
        self.total += x
        level = 0
        full = self.max_buckets + 1
        while len(totals[level]) == full:  # merge the two oldest
            if level + 1 == len(totals):
                totals.append([])
                variances.append([])
            ts, vs = totals[level], variances[level]
            t1, t2 = ts[0], ts[1]
            n = float(1 << level)
            d = t1 / n - t2 / n
            totals[level + 1].append(t1 + t2)
            variances[level + 1].append(vs[0] + vs[1] + n * 0.5 * d * d)
            del ts[:2], vs[:2]
            level += 1

    def _drop_oldest(self) -> float:
        """Remove the oldest bucket from the window; returns how many values it held."""
        top = len(self.totals) - 1
        n = float(1 << top)
        total, var = self.totals[top][0], self.variances[top][0]
        self.width -= n
        self.total -= total
        mu, mu_w = total / n, self.total / self.width
        self.variance -= var + n * self.width * (mu - mu_w) ** 2 / (n + self.width)
        del self.totals[top][0], self.variances[top][0]
        if not self.totals[top] and top > 0:
            self.totals.pop()
            self.variances.pop()
        return n

    def _detect(self) -> bool:
        """Test the cuts (every ``clock`` values, once past the grace period: see update)."""
        changed = False
        again = True
        L = self.min_window_length
        sqrt = math.sqrt
        while again:
            again = False
            # ε's terms that depend on the window alone (δ', σ²), in River's order of operations
            d_prime = math.log(2 * math.log(self.width) / self.delta)
            var_w = self.variance / self.width
            third_d = 2.0 / 3.0 * d_prime
            n0 = u0 = 0.0
            n1, u1 = self.width, self.total
            done = False
            for level in range(len(self.totals) - 1, -1, -1):
                size = float(1 << level)
                buckets = self.totals[level]
                last = len(buckets) - 1 if level == 0 else -1
                for k, u2 in enumerate(buckets):
                    n0, n1, u0, u1 = n0 + size, n1 - size, u0 + u2, u1 - u2
                    if k == last:
                        done = True
                        break
                    if n0 >= L and n1 >= L:
                        m = 1.0 / (n0 - L + 1) + 1.0 / (n1 - L + 1)
                        if abs(u0 / n0 - u1 / n1) <= sqrt(2 * m * var_w * d_prime) + third_d * m:
                            continue
                        changed = again = True
                        if self.width > 0:
                            n0 -= self._drop_oldest()
                            done = True
                            break
                if done:
                    break
        if changed:
            self.detections += 1
        return changed

    def state(self) -> dict[str, Any]:
        """What a client sees of the detector (JSON)."""
        return {
            "detector": "ADWIN",
            "delta": self.delta,
            "width": int(self.width),
            "mean": self.mean,
            "detections": self.detections,
        }


def reference_edges(ref: np.ndarray, bins: int = 10) -> np.ndarray:
    """Inner bin edges ``[bins − 1, d]`` of each feature of ``ref`` ``[n, d]``: its quantiles
    at ``1/bins, …, (bins − 1)/bins``."""
    qs = np.linspace(0, 1, bins + 1)[1:-1]
    edges: np.ndarray = np.quantile(np.asarray(ref, np.float64), qs, axis=0)
    return edges


def below32(edges: np.ndarray) -> np.ndarray:
    """Each float64 edge ``e`` as the largest float32 ``f ≤ e``: for a float32 value ``v``,
    ``v > f`` exactly when ``v > e`` (no float32 lies in ``(f, e]`` unless ``e`` is one), so
    float32 inputs are binned without widening them."""
    f = edges.astype(np.float32)
    over = f.astype(np.float64) > edges
    f[over] = np.nextafter(f[over], np.float32(-np.inf))
    return f


def shares(X: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``[bins, d]``: the share of each feature's values of ``X`` ``[n, d]`` in each bin of
    ``edges`` ``[bins − 1, d]`` (bin ``b`` holds ``edges[b−1] < v ≤ edges[b]``), floored at
    :data:`PSI_EPS`."""
    X = np.asarray(X, np.float64)
    n, d = X.shape
    bins = edges.shape[0] + 1
    idx = (X[:, None, :] > edges[None, :, :]).sum(axis=1)  # [n, d]: the bin of each value
    counts = np.zeros((bins, d))
    for j in range(d):
        counts[:, j] = np.bincount(idx[:, j], minlength=bins)
    out: np.ndarray = np.maximum(counts / max(n, 1), PSI_EPS)
    return out


def psi(ref_shares: np.ndarray, cur_shares: np.ndarray) -> np.ndarray:
    """``[d]``: the population stability index of each feature (see the module doc)."""
    p, q = ref_shares, cur_shares
    out: np.ndarray = ((q - p) * np.log(q / p)).sum(axis=0)
    return out


#: Samples per loss group fed to the monitor's ADWIN (aligned on offsets: 32k … 32k + 31).
GROUP = 32


class DriftMonitor:
    """Performance and input drift of one learner's stream (see the module doc)."""

    def __init__(
        self,
        input_dim: int,
        *,
        delta: float = 0.002,
        clock: int = 16,
        reference: int = 2000,
        window: int = 2000,
        check_every: int = 1024,
        stride: int = 4,
        bins: int = 10,
        threshold: float = 0.2,
    ) -> None:
        self.input_dim = input_dim
        self.reference, self.stride = reference, stride
        self.bins, self.threshold = bins, threshold
        # the input side keeps every stride-th sample: counts of values
        self._ref_values = max(reference // stride, bins)
        self._win_values = max(window // stride, 1)
        self._check_values = max(check_every // stride, 1)
        # the paper's ADWIN: after a change the window keeps its newer part, so the next
        # change is judged against what came just before it
        self.adwin = Adwin(delta=delta, clock=clock, restart=False)
        self.status = "stable"
        self.since_offset: int | None = None
        self.checked_through: int | None = None
        self.loss_drift = False
        self.transitions: list[tuple[str, int]] = []
        self._group_sum = 0.0
        self._group_n = 0
        self._ref_groups: list[float] = []
        #: the standard deviation of the reference's group means: groups are fed to ADWIN in
        #: units of it (None while the reference is being taken)
        self.scale: float | None = None
        self._ref: list[np.ndarray] = []
        self._ref_n = 0
        self.edges: np.ndarray | None = None
        self._ring = np.zeros((self._win_values, input_dim), np.int8)  # bin of each recent value
        self._edges32 = np.empty((bins - 1, input_dim), np.float32)
        self._ref_shares: np.ndarray | None = None
        self._seen = 0  # values binned since the reference
        self.scores: np.ndarray | None = None

    # ---------------------------------------------------------------- input
    def observe(self, first_offset: int, losses: np.ndarray, X: np.ndarray) -> list[tuple[str, int]]:
        """Samples ``first_offset …`` (in order, contiguous with the last call): their
        prequential ``losses`` ``[n]`` and inputs ``X`` ``[n, input_dim]``. Returns the
        transitions they caused."""
        n = len(losses)
        if n == 0:
            return []
        before = len(self.transitions)
        self._losses(first_offset, np.asarray(losses, np.float64))
        self._inputs(first_offset, np.asarray(X))
        self.checked_through = first_offset + n - 1
        return self.transitions[before:]

    def _losses(self, first: int, losses: np.ndarray) -> None:
        n = len(losses)
        head = min((GROUP - first % GROUP) % GROUP, n)  # completes the group begun before
        if head:
            self._group_sum += float(losses[:head].sum())
            self._group_n += head
            if (first + head) % GROUP == 0:
                self._feed(self._group_sum / self._group_n, first + head - 1)
                self._group_sum, self._group_n = 0.0, 0
        whole = (n - head) // GROUP
        if whole:
            means = losses[head : head + whole * GROUP].reshape(whole, GROUP).mean(axis=1)
            end = first + head + GROUP - 1
            for k, mean in enumerate(means.tolist()):
                self._feed(mean, end + k * GROUP)
        tail = losses[head + whole * GROUP :]
        if len(tail):  # a group that goes on in the next call
            self._group_sum += float(tail.sum())
            self._group_n += len(tail)

    def _feed(self, mean: float, offset: int) -> None:
        if self.scale is None:  # still taking the reference: its groups set the scale
            self._ref_groups.append(mean)
            if len(self._ref_groups) * GROUP >= self.reference:
                sd = float(np.std(self._ref_groups))
                self.scale = sd if sd > 0 and math.isfinite(sd) else 1.0
            return
        mean /= self.scale
        a = self.adwin
        w0, t0 = a.width + 1, a.total + mean
        if a.update(mean) and not self.loss_drift:
            gone_w = w0 - a.width
            if gone_w > 0 and a.mean > (t0 - a.total) / gone_w:  # the newer part is worse
                self.loss_rose(offset)

    def loss_rose(self, offset: int) -> None:
        """The loss rose past the learner's guard at ``offset``: performance drift."""
        if not self.loss_drift:
            self.loss_drift = True
            self._set("drift", offset)

    def _inputs(self, first: int, X: np.ndarray) -> None:
        # the samples watched: offsets that are multiples of the stride, whatever the calls
        start = (-first) % self.stride
        X = X[start :: self.stride]
        offsets = first + start + self.stride * np.arange(len(X))
        if self.edges is None:
            need = self._ref_values - self._ref_n
            self._ref.append(X[:need])
            self._ref_n += len(X[:need])
            if self._ref_n < self._ref_values:
                return
            ref = np.concatenate(self._ref)
            self._ref = []
            self.edges = reference_edges(ref, self.bins)
            self._edges32 = below32(self.edges)
            self._ref_shares = shares(ref, self.edges)
            X, offsets = X[need:], offsets[need:]
        if len(X) == 0:
            return
        assert self.edges is not None and self._ref_shares is not None
        # [n, d]: the bin of each value (edges[b−1] < v ≤ edges[b]), as the number of edges below it
        Xf = np.asarray(X, np.float32)
        idx = np.zeros(X.shape, np.int8)
        for e in self._edges32:  # [d]: one inner edge of every feature
            idx += Xf > e
        W, C = self._win_values, self._check_values
        at = 0
        while at < len(idx):  # in pieces that end on the checks' values and fit the ring
            k = min(C - self._seen % C, W - self._seen % W, len(idx) - at)
            pos = self._seen % W
            self._ring[pos : pos + k] = idx[at : at + k]
            self._seen += k
            at += k
            if self._seen % C == 0 and self._seen >= W:  # compared once the window is full
                self._check(int(offsets[at - 1]))

    def _check(self, offset: int) -> None:
        assert self._ref_shares is not None
        d, B = self.input_dim, self.bins
        counts = np.bincount((self._ring.astype(np.int64) * d + np.arange(d)).ravel(), minlength=B * d)
        cur = np.maximum(counts.reshape(B, d) / len(self._ring), PSI_EPS)
        self.scores = psi(self._ref_shares, cur)
        if not self.loss_drift:
            self._set("warning" if bool((self.scores > self.threshold).any()) else "stable", offset)

    def _set(self, status: str, offset: int) -> None:
        if status != self.status:
            self.status = status
            self.since_offset = offset if status != "stable" else None
            self.transitions.append((status, offset))

    # ---------------------------------------------------------------- output
    def inputs(self) -> list[dict[str, Any]]:
        """The features whose PSI passes the threshold, worst first."""
        if self.scores is None:
            return []
        over = np.flatnonzero(self.scores > self.threshold)
        order = over[np.argsort(-self.scores[over], kind="stable")]
        return [{"index": int(j), "score": float(self.scores[j])} for j in order]

    def state(self) -> dict[str, Any]:
        """The model answer's ``drift`` block."""
        return {
            "status": self.status,
            "since_offset": self.since_offset,
            "checked_through": self.checked_through,
            "loss": {**self.adwin.state(), "group": GROUP, "scale": self.scale},
            "inputs": self.inputs(),
            "reference": {"size": self.reference, "stride": self.stride, "ready": self.edges is not None},
        }
