"""Per-sample online learning with prequential ("test-then-train") metrics and a guard.

For every sample ``(x_n, y_n)`` in offset order, :meth:`OnlineLearner.learn_many`

1. scores it with the current parameters θ: output ŷ_n, loss ℓ_n = ℓ(θ; x_n, y_n) and,
   for classification, whether the label is right;
2. checks the guard (below) -- if it trips, stops *before* the step;
3. adds ℓ_n (and correctness) to the running metrics;
4. takes exactly one optimizer step on that sample: the gradient is ``network.gradients``
   on the batch ``[x_n]``, the update :meth:`Optimizer.step` (see ``optim.py``).

Running metrics (all float64 sums / integer counts):

- cumulative: ``count``, ``loss_sum = Σ ℓ``, ``correct``;
- recent window of the last ``W`` samples in ring buffers ``ring_loss [W]``,
  ``ring_correct [W]``, with the window sum maintained as
  ``S ← S + (ℓ_n − ℓ_{n−W})`` and recomputed exactly (``math.fsum``) each time the
  ring wraps, so it cannot drift.

Guard, in this order for each sample:

- ``non_finite_loss``: ℓ_n is NaN or ±∞;
- ``loss_blowup`` (when ``guard_factor`` is set): after a warm-up of ``U`` samples
  (``guard_warmup``, by default the window ``W``; counted since the learner was created or
  :meth:`~OnlineLearner.resume`), with ``baseline`` = the window mean loss (over the last
  ``min(W, count)`` samples) at the end of the warm-up, the window mean *including* ℓ_n
  exceeds ``guard_factor · max(baseline, guard_min_loss)``;
- ``non_finite_params``: the step on sample n would make a parameter (or Adam's second
  moment) non-finite.

On a trip nothing of sample n is applied -- parameters, optimizer state and metrics are
those after sample n − 1 -- and the learner is paused until :meth:`~OnlineLearner.resume`.

Determinism: the result after a sequence of samples does not depend on how the sequence is
cut into ``learn_many`` calls, and :meth:`~OnlineLearner.state_dict` /
:meth:`~OnlineLearner.load_state_dict` (with the parameters) restore a learner that
continues bit for bit identically.

Speed: samples are processed in blocks. Inside a block a specialised per-sample loop runs
on one flat float32 parameter vector (the network's arrays are views into it), with
preallocated buffers, 1-D BLAS calls, float32 0-d constants and scalar Python math for a
single-output head; outputs are recorded and losses / metrics / the guard are computed for
the whole block afterwards. If the guard trips inside a block, the block's starting state
is restored and the samples before the offending one are replayed (same arithmetic, so
the same result).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from app.engine.drift import DriftMonitor
from app.engine.nn.network import ACTIVATIONS, F32, Network, labels, per_sample_loss
from app.engine.nn.optim import MaskSpec, Optimizer, OptimizerConfig, param_layout

BLOCK = 4096  # samples per block (bounds buffers and the replay cost of a trip)

NON_FINITE_LOSS = "non_finite_loss"
LOSS_BLOWUP = "loss_blowup"
NON_FINITE_PARAMS = "non_finite_params"
PAUSE_REASONS = (NON_FINITE_LOSS, LOSS_BLOWUP, NON_FINITE_PARAMS)


@dataclass(frozen=True)
class LearnerConfig:
    """Window size (metrics), the loss guard and its warm-up.

    ``guard_factor`` None disables the blow-up check (the non-finite checks stay on).
    ``guard_warmup`` None means a warm-up of one window.
    """

    window: int = 1000
    guard_factor: float | None = 10.0
    guard_min_loss: float = 1e-3
    guard_warmup: int | None = None

    @property
    def warmup(self) -> int:
        """Samples after creation or resume before the guard's baseline is taken."""
        return self.window if self.guard_warmup is None else self.guard_warmup

    def __post_init__(self) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"window: expected an integer ≥ 1, got {self.window!r}")
        if self.guard_factor is not None and not (math.isfinite(self.guard_factor) and self.guard_factor > 1.0):
            raise ValueError(f"guard_factor: expected a finite number > 1 or null, got {self.guard_factor!r}")
        if not (math.isfinite(self.guard_min_loss) and self.guard_min_loss >= 0):
            raise ValueError(f"guard_min_loss: expected a finite number ≥ 0, got {self.guard_min_loss!r}")
        u = self.guard_warmup
        if u is not None and (isinstance(u, bool) or not isinstance(u, int) or u < 1):
            raise ValueError(f"guard_warmup: expected an integer ≥ 1 or null, got {u!r}")


@dataclass(frozen=True)
class Pause:
    """Why the learner stopped: ``reason`` in :data:`PAUSE_REASONS`, ``offset`` of the
    offending sample (not applied), ``detail`` a human sentence."""

    reason: str
    offset: int
    detail: str


@dataclass(frozen=True)
class Mark:
    """The running prequential sums after the sample at ``offset``: ``count`` samples
    since the metrics began, the sum of their losses, and of their correct labels (None
    for a regression)."""

    offset: int
    count: int
    loss_sum: float
    correct: int | None


@dataclass(frozen=True)
class LearnResult:
    """``applied`` samples were learned (the first ``applied`` of the call), the last one
    being ``last_offset`` (None if none); ``pause`` is set if the call stopped early."""

    applied: int
    last_offset: int | None
    pause: Pause | None = None


# --------------------------------------------------------------------------- metrics
@dataclass
class _Metrics:
    window: int
    classify: bool
    count: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    win_loss_sum: float = 0.0
    win_correct: int = 0
    guard_count: int = 0
    baseline: float = math.nan
    ring_loss: np.ndarray = field(init=False)
    ring_correct: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.ring_loss = np.zeros(self.window, np.float64)
        self.ring_correct = np.zeros(self.window, np.int8)

    def copy(self) -> _Metrics:
        c = replace(self)
        c.ring_loss = self.ring_loss.copy()
        c.ring_correct = self.ring_correct.copy()
        return c

    # The one place where samples enter the metrics. Works segment by segment, a segment
    # ending where the ring wraps, so that every quantity is computed by the same
    # sequence of float operations however the stream is cut into calls.
    def absorb(
        self, losses: np.ndarray, correct: np.ndarray | None, cfg: LearnerConfig
    ) -> tuple[int | None, str | None]:
        """Absorb ``losses`` [n] float64 in order until the guard trips.

        Returns ``(index, reason)`` of the first tripping sample (not absorbed), or
        ``(None, None)`` when all were absorbed.
        """
        n = losses.shape[0]
        bad = ~np.isfinite(losses)
        nf = int(bad.argmax()) if bad.any() else n
        W = self.window
        i = 0
        while i < nf:
            pos = self.count % W
            ln = min(W - pos, nf - i)
            seg = losses[i : i + ln]
            diffs = seg - self.ring_loss[pos : pos + ln]
            S = np.add.accumulate(np.concatenate(([self.win_loss_sum], diffs)))[1:]
            trip = None
            if cfg.guard_factor is not None:
                trip = self._guard(S, ln, cfg, cfg.guard_factor)
            take = ln if trip is None else trip
            if take:
                self._commit(seg[:take], None if correct is None else correct[i : i + take], pos, S, cfg.warmup)
            if trip is not None:
                return i + trip, LOSS_BLOWUP
            i += ln
        if nf < n:
            return nf, NON_FINITE_LOSS
        return None, None

    def _guard(self, S: np.ndarray, ln: int, cfg: LearnerConfig, factor: float) -> int | None:
        W, U = self.window, cfg.warmup
        j = np.arange(ln)
        means = S / np.minimum(self.count + 1 + j, W)
        g_after = self.guard_count + 1 + j
        base = self.baseline
        if math.isnan(base):
            # local index where the warm-up completes (at once if it is already over, e.g.
            # after the model's warm-up was shortened)
            k = max(U - self.guard_count - 1, 0)
            if k >= ln:
                return None
            base = float(means[k])
        thr = factor * max(base, cfg.guard_min_loss)
        hit = (g_after > U) & ~(means <= thr)
        return int(hit.argmax()) if hit.any() else None

    def _commit(self, seg: np.ndarray, cseg: np.ndarray | None, pos: int, S: np.ndarray, warmup: int) -> None:
        """Absorb ``seg`` (not crossing a ring wrap); ``S[j]`` is the window sum after ``seg[j]``;
        the baseline is taken after ``warmup`` samples since the guard's (re)start."""
        ln = seg.shape[0]
        W = self.window
        if math.isnan(self.baseline) and warmup <= self.guard_count + ln:
            k = max(warmup - self.guard_count - 1, 0)  # the sample that completes the warm-up
            self.baseline = float(S[k] / min(self.count + 1 + k, W))
        self.loss_sum = float(np.add.accumulate(np.concatenate(([self.loss_sum], seg)))[-1])
        self.ring_loss[pos : pos + ln] = seg
        self.win_loss_sum = float(S[ln - 1])
        if cseg is not None:
            c8 = cseg.astype(np.int8)
            self.win_correct += int(c8.sum(dtype=np.int64)) - int(self.ring_correct[pos : pos + ln].sum(dtype=np.int64))
            self.ring_correct[pos : pos + ln] = c8
            self.correct += int(c8.sum(dtype=np.int64))
        self.count += ln
        self.guard_count += ln
        if self.count % W == 0:
            self.win_loss_sum = math.fsum(self.ring_loss.tolist())

    def as_dict(self) -> dict[str, Any]:
        c = min(self.count, self.window)
        acc = self.classify
        return {
            "count": self.count,
            "loss": self.loss_sum / self.count if self.count else None,
            "accuracy": (self.correct / self.count if self.count else None) if acc else None,
            "window": {
                "size": self.window,
                "count": c,
                "loss": self.win_loss_sum / c if c else None,
                "accuracy": (self.win_correct / c if c else None) if acc else None,
            },
        }

    _SCALARS = (
        ("count", np.int64),
        ("loss_sum", np.float64),
        ("correct", np.int64),
        ("win_loss_sum", np.float64),
        ("win_correct", np.int64),
        ("guard_count", np.int64),
        ("baseline", np.float64),
    )

    def state_dict(self) -> dict[str, np.ndarray]:
        d = {f"metrics.{k}": np.array(getattr(self, k), dt) for k, dt in self._SCALARS}
        d["metrics.window"] = np.array(self.window, np.int64)
        d["metrics.ring_loss"] = self.ring_loss.copy()
        d["metrics.ring_correct"] = self.ring_correct.copy()
        return d

    def load_state_dict(self, d: dict[str, np.ndarray]) -> None:
        W = int(np.asarray(d["metrics.window"]))
        if self.window != W:
            raise ValueError(f"metrics state has window {W}, the learner uses {self.window}")
        rl, rc = np.asarray(d["metrics.ring_loss"]), np.asarray(d["metrics.ring_correct"])
        if rl.shape != (W,) or rc.shape != (W,):
            raise ValueError("metrics state: ring buffers have the wrong shape")
        for k, dt in self._SCALARS:
            v = np.asarray(d[f"metrics.{k}"]).reshape(())
            setattr(self, k, int(v) if dt is np.int64 else float(v))
        self.ring_loss = rl.astype(np.float64, copy=True)
        self.ring_correct = rc.astype(np.int8, copy=True)


# --------------------------------------------------------------------------- learner
_ACT = {name: k for k, name in enumerate(ACTIVATIONS)}  # relu 0, tanh 1, sigmoid 2
#: What :meth:`OnlineLearner._save` keeps: flat parameters, optimizer moments (None when the
#: optimizer has none) and the step count.
_Snapshot = tuple[np.ndarray, np.ndarray | None, np.ndarray | None, int]


def _no_update() -> None:
    """The learner's update under plain sgd, which steps by hand and never calls it."""
    raise RuntimeError("plain sgd has no bound optimizer update")


class OnlineLearner:
    """A network, its optimizer and prequential metrics, learning one sample at a time.

    The learner owns a private copy of ``net``: :attr:`network` is live (its arrays are
    views of the learner's flat parameter vector and change with every step), use
    :meth:`snapshot` for a detached copy. ``frozen`` / ``masks`` as in :class:`Optimizer`
    (masked weights are set to 0 on construction).
    """

    def __init__(
        self,
        net: Network,
        optimizer: OptimizerConfig,
        *,
        config: LearnerConfig | None = None,
        frozen: Iterable[int] | None = None,
        masks: MaskSpec | None = None,
    ) -> None:
        self.config = config or LearnerConfig()
        self.task = net.task
        self.activation = net.activation
        if self.activation not in _ACT:
            raise ValueError(f"unknown activation {self.activation!r}")
        layout = param_layout(net)
        self._P = np.empty(layout[-1][2], F32)
        Ws: list[np.ndarray] = []
        bs: list[np.ndarray] = []
        for (ws, bst, end), W, b in zip(layout, net.weights, net.biases, strict=True):
            self._P[ws:bst] = np.asarray(W, F32).reshape(-1)
            self._P[bst:end] = np.asarray(b, F32)
            Ws.append(self._P[ws:bst].reshape(W.shape))
            bs.append(self._P[bst:end])
        self._net = Network(net.task, net.activation, Ws, bs, dict(net.meta))
        self._opt = Optimizer(optimizer, self._net, frozen=frozen, masks=masks)
        self._maskvec = self._opt.flat_mask()
        if self._maskvec is not None:
            self._P *= self._maskvec
        self._metrics = _Metrics(self.config.window, self.task != "regression")
        self.applied_through = -1
        self.paused: Pause | None = None
        #: watches the applied samples' losses and inputs when set (the runtime sets it)
        self.drift: DriftMonitor | None = None
        #: > 0: keep a :class:`Mark` at every applied offset ``o`` with ``(o + 1) % mark_every
        #: == 0`` in :attr:`marks` (the runtime takes them; see :meth:`take_marks`)
        self.mark_every = 0
        self.marks: list[Mark] = []
        self._build_kernel()

    # ---------------------------------------------------------------- public
    @property
    def network(self) -> Network:
        """The live network (views of the learner's parameters)."""
        return self._net

    @property
    def optimizer(self) -> Optimizer:
        return self._opt

    def snapshot(self) -> Network:
        """A detached copy of the current parameters (contiguous float32 arrays)."""
        return self._net.copy()

    def set_parameters(self, net: Network, *, reset_optimizer: bool = False) -> None:
        """Copy ``net``'s parameters in (same layer shapes), e.g. to resume from a version."""
        if [w.shape for w in net.weights] != [w.shape for w in self._net.weights] or [b.shape for b in net.biases] != [
            b.shape for b in self._net.biases
        ]:
            raise ValueError("set_parameters: layer shapes differ from the learner's network")
        for dst, src in zip(self._net.weights + self._net.biases, net.weights + net.biases, strict=True):
            dst[...] = src
        if self._maskvec is not None:
            self._P *= self._maskvec
        if reset_optimizer:
            self._opt.load_state_dict(
                {
                    k: (np.zeros_like(v) if k != "t" else np.array(0, np.int64))
                    for k, v in self._opt.state_dict().items()
                }
            )

    def nbytes(self) -> int:
        """Bytes of the arrays the learner holds: parameters, gradient and scratch buffers,
        optimizer moments, masks and the metrics' ring buffers (each counted once)."""
        seen: dict[int, int] = {}

        def add(x: object) -> None:
            if isinstance(x, np.ndarray):
                while isinstance(x.base, np.ndarray):
                    x = x.base
                seen[id(x)] = x.nbytes
            elif isinstance(x, list | tuple):
                for y in x:
                    add(y)

        for obj in (self, self._opt, self._metrics):
            for v in vars(obj).values():
                add(v)
        return sum(seen.values())

    def take_marks(self) -> list[Mark]:
        """The marks kept since the last call, oldest first (and forget them)."""
        out, self.marks = self.marks, []
        return out

    def metrics(self) -> dict[str, Any]:
        """Prequential metrics: ``{"count", "loss", "accuracy", "window": {"size", "count",
        "loss", "accuracy"}}`` (means; accuracy None for regression or before any sample)."""
        return self._metrics.as_dict()

    def guard_status(self) -> dict[str, Any]:
        """``{"warmup_remaining": int, "baseline": float | None, "threshold": float | None}``."""
        m, cfg = self._metrics, self.config
        base = None if math.isnan(m.baseline) else m.baseline
        thr = None
        if base is not None and cfg.guard_factor is not None:
            thr = cfg.guard_factor * max(base, cfg.guard_min_loss)
        return {"warmup_remaining": max(0, cfg.warmup - m.guard_count), "baseline": base, "threshold": thr}

    def resume(self) -> None:
        """Clear a pause and restart the guard's warm-up (a new baseline after ``config.warmup`` samples).

        The offending sample is not retried by the learner: the caller moves on past it.
        """
        self.paused = None
        self._metrics.guard_count = 0
        self._metrics.baseline = math.nan

    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything but the parameters: ``optim.*`` (see :meth:`Optimizer.state_dict`),
        ``metrics.*`` (counts, sums, ring buffers, guard) and ``learner.applied_through``."""
        d = {f"optim.{k}": v for k, v in self._opt.state_dict().items()}
        d.update(self._metrics.state_dict())
        d["learner.applied_through"] = np.array(self.applied_through, np.int64)
        return d

    def load_state_dict(self, d: dict[str, np.ndarray]) -> None:
        """Restore :meth:`state_dict` output. Parts whose keys are absent are left as they
        are: load only the ``metrics.*`` keys to keep the running metrics across a change
        of parameters, e.g. a new version made by a batch job."""
        opt = {k[6:]: v for k, v in d.items() if k.startswith("optim.")}
        if opt:
            self._opt.load_state_dict(opt)
        if any(k.startswith("metrics.") for k in d):
            m = _Metrics(self.config.window, self.task != "regression")
            m.load_state_dict(d)
            self._metrics = m
        if "learner.applied_through" in d:
            self.applied_through = int(np.asarray(d["learner.applied_through"]))

    def learn_many(self, X: np.ndarray, Y: np.ndarray, first_offset: int = 0) -> LearnResult:
        """Learn samples ``X`` [n, input_dim] / ``Y`` (targets as in ``network.py``) in order.

        Sample ``k`` has offset ``first_offset + k``. Returns how many were applied and,
        if the guard tripped, the pause (the learner then stays paused: further calls
        apply nothing until :meth:`resume`).
        """
        if self.paused is not None:
            return LearnResult(0, None, self.paused)
        X, Y = self._check(X, Y)
        n = X.shape[0]
        done = 0
        pause = None
        with np.errstate(all="ignore"):
            while done < n:
                e = min(n, done + BLOCK)
                k, pause = self._learn_block(X[done:e], Y[done:e], first_offset + done)
                done += k
                if pause is not None:
                    break
        if done:
            self.applied_through = first_offset + done - 1
        self.paused = pause
        return LearnResult(done, first_offset + done - 1 if done else None, pause)

    # ---------------------------------------------------------------- checks
    def _check(self, X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X = np.ascontiguousarray(X, dtype=F32)
        d_in, d_out = self._net.input_dim, self._net.output_dim
        if X.ndim != 2 or X.shape[1] != d_in:
            raise ValueError(f"X: expected shape [n, {d_in}], got {list(X.shape)}")
        n = X.shape[0]
        if not np.isfinite(X).all():
            raise ValueError("X: contains NaN or infinite values")
        Y = np.asarray(Y)
        if self.task == "multiclass":
            Y = Y.reshape(-1) if Y.ndim == 2 and Y.shape[1] == 1 else Y
            if Y.shape != (n,):
                raise ValueError(f"Y: expected shape [{n}], got {list(Y.shape)}")
            Yi = Y.astype(np.int64)
            if (Yi != Y).any() or (Yi < 0).any() or (Yi >= d_out).any():
                raise ValueError(f"Y: class indices must be integers in 0..{d_out - 1}")
            return X, Yi
        Yf = np.ascontiguousarray(Y, dtype=F32)
        if self.task == "binary" or d_out == 1:
            Yf = Yf.reshape(-1) if Yf.ndim == 2 and Yf.shape[1] == 1 else Yf
            if Yf.shape != (n,):
                raise ValueError(f"Y: expected shape [{n}], got {list(Yf.shape)}")
        elif Yf.shape != (n, d_out):
            raise ValueError(f"Y: expected shape [{n}, {d_out}], got {list(Yf.shape)}")
        if not np.isfinite(Yf).all():
            raise ValueError("Y: contains NaN or infinite values")
        if self.task == "binary" and ((Yf != 0) & (Yf != 1)).any():
            raise ValueError("Y: binary labels must be 0 or 1")
        return X, Yf

    # ---------------------------------------------------------------- block
    def _finite(self) -> bool:
        if not np.isfinite(self._P).all():
            return False
        v = self._opt._v
        return v is None or bool(np.isfinite(v).all())

    def _save(self) -> _Snapshot:
        o = self._opt
        return (
            self._P.copy(),
            None if o._m is None else o._m.copy(),
            None if o._v is None else o._v.copy(),
            o.t,
        )

    def _restore(self, snap: _Snapshot) -> None:
        P, m, v, t = snap
        o = self._opt
        self._P[...] = P
        if m is not None:
            assert o._m is not None, "saved from this optimizer"
            o._m[...] = m
        if v is not None:
            assert o._v is not None, "saved from this optimizer"
            o._v[...] = v
        o.t = t

    def _learn_block(self, X: np.ndarray, Y: np.ndarray, first: int) -> tuple[int, Pause | None]:
        n = X.shape[0]
        snap = self._save()
        outputs = self._run(X, Y)
        lim = n
        if not self._finite():
            self._restore(snap)
            for j in range(n):
                self._run(X[j : j + 1], Y[j : j + 1])
                if not self._finite():
                    lim = j
                    break
        losses = per_sample_loss(self.task, outputs, Y)
        lab = labels(self.task, outputs)
        correct = None if lab is None else lab == Y
        metrics = self._metrics.copy()
        m_end = min(n, lim + 1)
        trip, why = metrics.absorb(losses[:m_end], None if correct is None else correct[:m_end], self.config)
        if trip is not None and trip <= lim:
            stop, reason = trip, why
        elif lim < n:
            stop, reason = lim, NON_FINITE_PARAMS
            metrics = self._metrics.copy()
            metrics.absorb(losses[:lim], None if correct is None else correct[:lim], self.config)
        else:
            stop, reason = n, None
        applied = n if reason is None else stop
        if self.mark_every > 0 and applied:
            self._mark(first, applied, losses, correct)
        self._metrics = metrics
        if self.drift is not None and applied:
            self.drift.observe(first, losses[:applied], X[:applied])
        if self.drift is not None and reason == LOSS_BLOWUP:  # the guard saw the loss rise first
            self.drift.loss_rose(first + stop)
        if reason is None:
            return n, None
        self._restore(snap)
        if stop:
            self._run(X[:stop], Y[:stop])
        detail = self._detail(reason, float(losses[stop]))
        return stop, Pause(reason, first + stop, detail)

    def _mark(self, first: int, applied: int, losses: np.ndarray, correct: np.ndarray | None) -> None:
        """Marks at the offsets ``o`` of ``first .. first + applied − 1`` with ``(o + 1) %
        mark_every == 0``: the running sums after sample ``o``, computed from the sums
        before the block (``self._metrics``, not yet replaced) by the same sequential float
        additions as :meth:`_Metrics.absorb` (so they equal what :meth:`metrics` would
        show had the block ended there), without cutting the block."""
        e = self.mark_every
        k0 = (e - 1 - first % e) % e  # block index of the first marked offset
        if k0 >= applied:
            return
        m = self._metrics
        ks = np.arange(k0, applied, e)
        sums = np.add.accumulate(np.concatenate(([m.loss_sum], losses[:applied])))[1:]
        hits = None if correct is None else m.correct + np.cumsum(correct[:applied], dtype=np.int64)
        for k in ks.tolist():
            self.marks.append(Mark(first + k, m.count + k + 1, float(sums[k]), None if hits is None else int(hits[k])))

    def _detail(self, reason: str, loss: float) -> str:
        if reason == NON_FINITE_LOSS:
            return f"the sample's loss is not finite ({loss}) with the current parameters"
        if reason == NON_FINITE_PARAMS:
            return "a step on the sample would make parameters non-finite (learning rate too high?)"
        g = self.guard_status()
        return (
            f"recent-window mean loss exceeds the guard threshold {g['threshold']:.6g} "
            f"({self.config.guard_factor:g} × baseline {g['baseline']:.6g}); sample loss {loss:.6g}"
        )

    # ---------------------------------------------------------------- kernel
    def _build_kernel(self) -> None:
        net, opt = self._net, self._opt
        L = len(net.weights)
        P = self._P
        self._G = G = np.zeros_like(P)
        self._L = L
        self._scalar = net.output_dim == 1 and self.task in ("binary", "regression")
        self._plain = opt.config.is_plain_sgd
        self._nlr = np.array(-opt.config.learning_rate, F32)
        self._c = np.array(0.0, F32)
        segs = opt.trainable_segments()
        self._trainable = bool(segs)
        mv = self._maskvec
        self._segs = [(P[s:e], G[s:e], None if mv is None else mv[s:e]) for s, e in segs]
        # plain sgd steps by hand (no bound update: it would allocate a scratch vector)
        self._update = opt.bind_flat(P, G) if not self._plain else _no_update
        train = opt.trainable
        self._lo = min(train) if train else L
        layout = param_layout(net)
        self._GW = [G[ws:bs].reshape(W.shape) for (ws, bs, _), W in zip(layout, net.weights, strict=True)]
        self._D = [G[bs:end] for (_, bs, end) in layout]  # δ_i is db_i for a batch of one
        self._Dc = [d[:, None] for d in self._D]
        self._H = [np.zeros(w.shape[0], F32) for w in net.weights[:-1]]
        self._H2 = [h[None, :] for h in self._H]
        self._F = [np.zeros(w.shape[0], F32) for w in net.weights[:-1]]
        self._Z = np.zeros(net.output_dim, F32)
        self._bidx = layout[-1][1]  # flat index of the output bias (scalar head)
        self._zero = np.array(0.0, F32)
        self._one = np.array(1.0, F32)
        self._act = _ACT[self.activation]
        if L == 1 and self._scalar:
            self._Xa = np.empty((BLOCK, net.input_dim + 1), F32)
            self._Xa[:, -1] = 1.0
            self._T = np.empty_like(P)

    def _run(self, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        """Apply every sample of the block; return the outputs ŷ [n, out] scored before each step."""
        n = X.shape[0]
        if self._scalar:
            if self._L == 1:
                outs = self._run_linear1(X, Y)
            elif self._L == 2 and self._lo == 0 and self._maskvec is None:
                outs = self._run_mlp1(X, Y)
            else:
                outs = self._run_scalar(X, Y)
            out = np.array(outs, np.float64).reshape(n, 1)
        else:
            out = np.empty((n, self._net.output_dim), F32)
            self._run_vector(X, Y, out)
        if self._plain or not self._trainable:
            self._opt.t += n  # (the bound update counts its own steps)
        return out

    def _step_plain(self) -> None:
        for p, g, mk in self._segs:
            if mk is not None:
                np.multiply(g, mk, out=g)
            np.add(p, g, out=p)

    def _run_linear1(self, X: np.ndarray, Y: np.ndarray) -> list[float]:
        """No hidden layer, one output: θ = [w, b] flat, x_a = [x, 1], z = θ·x_a, ∇ = (ŷ − y) x_a."""
        n = X.shape[0]
        Xa = self._Xa[:n]
        Xa[:, :-1] = X
        P, G, T, c = self._P, self._G, self._T, self._c
        dot, mul, add, exp = P.dot, np.multiply, np.add, math.exp
        binary = self.task == "binary"
        train = self._trainable
        outs: list[float] = []
        put = outs.append
        ys = Y.tolist()
        if self._plain and train and self._maskvec is None:
            nlr = -self._opt.config.learning_rate
            for x, y in zip(Xa, ys, strict=True):
                z = float(dot(x))
                if binary:
                    if z >= 0.0:
                        z = 1.0 / (1.0 + exp(-z))
                    else:
                        e = exp(z)
                        z = e / (1.0 + e)
                put(z)
                c[()] = nlr * (z - y)
                mul(x, c, out=T)
                add(P, T, out=P)
            return outs
        update = self._update
        plain = self._plain
        nlr = -self._opt.config.learning_rate
        for x, y in zip(Xa, ys, strict=True):
            z = float(dot(x))
            if binary:
                if z >= 0.0:
                    z = 1.0 / (1.0 + exp(-z))
                else:
                    e = exp(z)
                    z = e / (1.0 + e)
            put(z)
            if not train:
                continue
            if plain:
                c[()] = nlr * (z - y)
                mul(x, c, out=G)
                self._step_plain()
            else:
                c[()] = z - y
                mul(x, c, out=G)
                update()
        return outs

    def _forward_hidden(self, x: np.ndarray) -> np.ndarray:
        a = x
        act, zero, one = self._act, self._zero, self._one
        for W, b, h in zip(self._net.weights[:-1], self._net.biases[:-1], self._H, strict=True):
            W.dot(a, out=h)
            np.add(h, b, out=h)
            if act == 0:
                np.maximum(h, zero, out=h)
            elif act == 1:
                np.tanh(h, out=h)
            else:  # σ(h) = 1 / (1 + e^{−h}); e^{−h} = inf gives exactly 0
                np.negative(h, out=h)
                np.exp(h, out=h)
                np.add(h, one, out=h)
                np.divide(one, h, out=h)
            a = h
        return a

    def _backward_hidden(self, top: int, x2: np.ndarray) -> None:
        """δ_top is in D[top] before f'; finish it and propagate down to the lowest trainable layer.

        For ``k = l … lo``: δ_k ← δ_k ⊙ f'(a_k); dW_k = δ_k a_{k−1}ᵀ; δ_{k−1} = δ_k W_k.
        """
        act, D, Dc, H, H2, F, GW = self._act, self._D, self._Dc, self._H, self._H2, self._F, self._GW
        Ws, lo, one, zero, mul = self._net.weights, self._lo, self._one, self._zero, np.multiply
        k = top
        while True:
            d, h, f = D[k], H[k], F[k]
            if act == 0:
                np.greater(h, zero, out=f)
            elif act == 1:
                mul(h, h, out=f)
                np.subtract(one, f, out=f)
            else:
                np.subtract(one, h, out=f)
                mul(f, h, out=f)
            mul(d, f, out=d)
            Dc[k].dot(H2[k - 1] if k else x2, out=GW[k])
            if k <= lo:
                return
            d.dot(Ws[k], out=D[k - 1])
            k -= 1

    def _run_mlp1(self, X: np.ndarray, Y: np.ndarray) -> list[float]:
        """One hidden layer, one output, everything trainable, no masks: ``_run_scalar`` inlined.

        h = f(W₀x + b₀), z = w₁·h + b₁, δ = ŷ − y; ∇w₁ = δ h, ∇b₁ = δ, δ₀ = δ w₁ ⊙ f'(h),
        ∇W₀ = δ₀ xᵀ, ∇b₀ = δ₀ (δ pre-multiplied by −η for plain sgd, then θ += G).
        """
        net, P, G, c = self._net, self._P, self._G, self._c
        W0, b0, w1 = net.weights[0], net.biases[0], net.weights[1][0]
        h, f, d0, d0c, gW0, gw1 = self._H[0], self._F[0], self._D[0], self._Dc[0], self._GW[0], self._GW[1][0]
        bidx, act, zero, one = self._bidx, self._act, self._zero, self._one
        binary, plain, update = self.task == "binary", self._plain, self._update
        nlr = -self._opt.config.learning_rate
        exp, mul, add, sub = math.exp, np.multiply, np.add, np.subtract
        dot0, dot1, outer = W0.dot, w1.dot, d0c.dot
        outs: list[float] = []
        put = outs.append
        for x, x2, y in zip(X, X[:, None, :], Y.tolist(), strict=True):
            dot0(x, out=h)
            add(h, b0, out=h)
            if act == 0:
                np.maximum(h, zero, out=h)
            elif act == 1:
                np.tanh(h, out=h)
            else:
                np.negative(h, out=h)
                np.exp(h, out=h)
                add(h, one, out=h)
                np.divide(one, h, out=h)
            z = float(dot1(h)) + float(P[bidx])
            if binary:
                if z >= 0.0:
                    z = 1.0 / (1.0 + exp(-z))
                else:
                    e = exp(z)
                    z = e / (1.0 + e)
            put(z)
            d = z - y
            if plain:
                d *= nlr
            c[()] = d
            G[bidx] = d
            mul(h, c, out=gw1)
            mul(w1, c, out=d0)
            if act == 0:
                np.greater(h, zero, out=f)
            elif act == 1:
                mul(h, h, out=f)
                sub(one, f, out=f)
            else:
                sub(one, h, out=f)
                mul(f, h, out=f)
            mul(d0, f, out=d0)
            outer(x2, out=gW0)
            if plain:
                add(P, G, out=P)
            else:
                update()
        return outs

    def _run_scalar(self, X: np.ndarray, Y: np.ndarray) -> list[float]:
        """Hidden layers and one output (binary / 1-output regression), output in Python floats."""
        L = self._L
        P, G, c = self._P, self._G, self._c
        w_out = self._net.weights[-1][0]
        bidx = self._bidx
        g_out = self._GW[-1][0]
        a_last = self._H[-1]
        binary = self.task == "binary"
        exp, mul = math.exp, np.multiply
        fwd, bwd = self._forward_hidden, self._backward_hidden
        train, plain, update = self._trainable, self._plain, self._update
        nlr = -self._opt.config.learning_rate
        below = self._lo <= L - 2
        X3 = X[:, None, :]
        outs: list[float] = []
        put = outs.append
        for i, y in enumerate(Y.tolist()):
            a = fwd(X[i])
            z = float(w_out.dot(a)) + float(P[bidx])
            if binary:
                if z >= 0.0:
                    z = 1.0 / (1.0 + exp(-z))
                else:
                    e = exp(z)
                    z = e / (1.0 + e)
            put(z)
            if not train:
                continue
            d = z - y
            if plain:
                d *= nlr
            c[()] = d
            G[bidx] = d
            mul(a_last, c, out=g_out)
            if below:
                mul(w_out, c, out=self._D[L - 2])
                bwd(L - 2, X3[i])
            if plain:
                self._step_plain()
            else:
                update()
        return outs

    def _run_vector(self, X: np.ndarray, Y: np.ndarray, out: np.ndarray) -> None:
        """Multi-output head (softmax or identity) in numpy vectors; writes ŷ rows into ``out``."""
        L = self._L
        c, Z = self._c, self._Z
        W_out, b_out = self._net.weights[-1], self._net.biases[-1]
        D_out = self._D[-1]
        multiclass = self.task == "multiclass"
        mul, sub = np.multiply, np.subtract
        fwd = self._forward_hidden
        train, plain, update = self._trainable, self._plain, self._update
        nlr = self._nlr
        X3 = X[:, None, :]
        a2_last = self._H2[-1] if L > 1 else None  # set exactly when there are hidden layers
        for i in range(X.shape[0]):
            x = X[i]
            a = fwd(x) if L > 1 else x
            W_out.dot(a, out=Z)
            np.add(Z, b_out, out=Z)
            o = out[i]
            if multiclass:  # softmax: e^{z − max} / Σ e^{z − max}
                c[()] = max(Z.tolist())
                sub(Z, c, out=o)
                np.exp(o, out=o)
                c[()] = math.fsum(o.tolist())
                np.divide(o, c, out=o)
            else:
                o[...] = Z
            if not train:
                continue
            if multiclass:
                D_out[...] = o
                k = int(Y[i])
                D_out[k] -= 1.0
            else:
                sub(o, Y[i], out=D_out)
            if plain:
                mul(D_out, nlr, out=D_out)
            self._Dc[-1].dot(a2_last if a2_last is not None else X3[i], out=self._GW[-1])
            if self._lo <= L - 2:
                D_out.dot(W_out, out=self._D[L - 2])
                self._backward_hidden(L - 2, X3[i])
            if plain:
                self._step_plain()
            else:
                update()
