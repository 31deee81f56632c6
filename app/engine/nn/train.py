"""Mini-batch training (the ``batch-update`` job).

:func:`train` splits the samples once into training / validation rows, then for each epoch
visits the training rows in a fresh order in batches of ``batch_size`` and takes one
optimizer step per batch on the *mean* gradient of the per-sample loss over the batch
(``network.gradients``; the last batch of an epoch may be smaller). Randomness comes only
from ``np.random.default_rng(shuffle_seed)``: first the split permutation, then one
permutation per epoch, so a run is reproducible.

Early stopping: after each epoch the validation loss (mean per-sample loss, by
:func:`app.engine.nn.evaluation.evaluate`) is computed; when it has not improved on the best
so far for ``early_stopping_patience`` epochs in a row, training stops, and whenever a
patience is given the parameters (and optimizer state) of the best epoch are restored at the
end.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np

from app.engine.nn.evaluation import evaluate
from app.engine.nn.network import F32, Network, activate, per_sample_loss
from app.engine.nn.optim import MaskSpec, Optimizer, param_layout

PERMUTE_MAX_BYTES = 1 << 28  # training rows are gathered once per epoch up to this size, else per batch
_add_reduce, _max_reduce = np.add.reduce, np.maximum.reduce
_matmul, _add, _subtract, _multiply, _greater, _less = np.matmul, np.add, np.subtract, np.multiply, np.greater, np.less
_ZERO, _ONE = np.array(0.0, F32), np.array(1.0, F32)  # 0-d operands: cheaper than Python floats


class TrainingCanceled(Exception):
    """``should_stop()`` returned True: training stopped between two batches.

    The network passed to :func:`train` is then in an intermediate state (train a copy).
    """


class Diverged(ValueError):
    """Parameters became non-finite during training (learning rate too high?)."""


@dataclass
class EpochStats:
    """One epoch: mean training loss (scored during the epoch, before each batch's step),
    validation loss and accuracy after the epoch (None without validation / for regression)."""

    epoch: int
    train_loss: float
    val_loss: float | None = None
    val_accuracy: float | None = None


@dataclass
class TrainResult:
    """What :func:`train` did.

    ``best_epoch`` is the 1-based epoch whose parameters were kept (the last one without
    early stopping); ``val_loss`` / ``val_accuracy`` are those of the kept parameters;
    ``val_indices`` are the rows of ``X`` used for validation (e.g. to evaluate another
    version on the same data before promoting).
    """

    epochs_run: int
    best_epoch: int
    stopped_early: bool
    steps: int
    n_train: int
    n_val: int
    train_loss: float
    val_loss: float | None
    val_accuracy: float | None
    history: list[EpochStats] = field(default_factory=list)
    val_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (without ``val_indices``)."""
        d = asdict(self)
        d.pop("val_indices")
        return d


def split_indices(
    n: int, validation_fraction: float, shuffle_seed: int | None
) -> tuple[np.ndarray, np.ndarray, np.random.Generator | None]:
    """``(train_idx, val_idx, rng)`` for ``n`` rows.

    ``n_val = floor(n · validation_fraction)``, at least 1 when the fraction is > 0 and
    ``n ≥ 2``, always leaving ≥ 1 training row. With a seed the rows are drawn by
    ``rng.permutation(n)`` (validation = its first ``n_val`` entries, each set sorted);
    with ``shuffle_seed=None`` validation is the last ``n_val`` rows (time-ordered hold-out)
    and ``rng`` is None.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction: expected a number in [0, 1), got {validation_fraction!r}")
    n_val = math.floor(n * validation_fraction)
    if validation_fraction > 0 and n >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, n - 1) if n >= 1 else 0
    if shuffle_seed is None:
        return np.arange(n - n_val), np.arange(n - n_val, n), None
    rng = np.random.default_rng(shuffle_seed)
    val = np.sort(rng.permutation(n)[:n_val])
    train = np.ones(n, bool)
    train[val] = False  # the sorted rest of the permutation, in O(n)
    return np.flatnonzero(train), val, rng


#: Forward work of one layer: (W_iᵀ, b_i, Z_i, M_i or None for the output layer).
_Fwd = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]
#: What δ_{i−1} needs: (W_i, k = 1 (an outer product), D_{i−1}, M_{i−1}, Z_{i−1}).
_Down = tuple[np.ndarray, bool, np.ndarray, np.ndarray, np.ndarray]
#: Backward work of one trained layer: (dW_i, db_i, a_{i−1} or None for the input, down or None).
_Bwd = tuple[np.ndarray, np.ndarray, np.ndarray | None, _Down | None]


class _Plan(NamedTuple):
    """Views of :class:`_BatchKernel`'s buffers for batches of ``n`` rows, and the per-layer work."""

    fwd: list[_Fwd]  # per layer
    bwd: list[_Bwd]  # per trained layer, top down
    delta: np.ndarray  # DL [n, out]
    dflat: np.ndarray  # DL flat [n · out]
    e: np.ndarray  # [n, 1]
    e_row: np.ndarray  # the same [n]
    zt: np.ndarray  # [out, n]: multiclass zᵀ, for the row max
    neg: np.ndarray  # [n, 1] bool
    fi: np.ndarray  # [n] int64
    py: np.ndarray  # [n]
    base: np.ndarray  # [n] int64
    ones: np.ndarray  # [n] float32 ones
    n_f32: np.ndarray | None  # n as a 0-d float32 (None for n = 1: no division)


class _BatchKernel:
    """``network.gradients`` + ``Optimizer.step`` for one mini-batch, without allocations.

    The parameters live in one flat float32 vector ``P`` (:func:`param_layout` order; ``view``
    is a Network of views into it), the gradient in ``G`` with the same layout, and
    :meth:`Optimizer.bind_flat` updates ``P`` from ``G`` in a few whole-vector operations.
    Forward and backward run the same operations in the same order as ``network.gradients``
    (and the output links of ``network.py``) into preallocated buffers, so the mean gradient
    is bit-identical: ``δ_L = (ŷ − y) / n``, ``dW_i = δ_iᵀ a_{i−1}``, ``db_i = 1ᵀ δ_i`` (= Σ_n δ_i),
    ``δ_{i−1} = (δ_i W_i) ⊙ f'(z_{i−1})``. Layers below the lowest trainable one get no gradient.

    Buffers, for ``n ≤ batch_size`` rows (views of their first ``n`` rows per batch size, see
    :meth:`_plan`): ``Z[i]`` [n, out_i] holds z_i, then a_i = f(z_i) in place (the last one
    the output pre-activation); ``M[i]`` [n, out_i] f'(z_i) of hidden layer i (relu: 1[z > 0]
    as float32, kept from the forward pass; tanh / sigmoid: computed from a_i when needed);
    ``D[i]`` [n, out_i] δ_i of hidden layer i; ``DL`` [n, out] ŷ, then δ_L.

    The training loss is not computed per batch: each step records what the loss needs
    (binary ŷ, multiclass ŷ_y, regression ŷ) for its rows into ``track`` and
    :meth:`epoch_loss` applies ``per_sample_loss`` once per epoch.
    """

    def __init__(self, net: Network, optimizer: Optimizer, batch_size: int, n_train: int) -> None:
        layout = param_layout(net)
        self.task, self.act = net.task, net.activation
        self.P = np.empty(layout[-1][2], F32)
        self.G = np.zeros_like(self.P)
        Ws: list[np.ndarray] = []
        bs: list[np.ndarray] = []
        self.GW: list[np.ndarray] = []
        self.Gb: list[np.ndarray] = []
        for (ws, bst, end), W, b in zip(layout, net.weights, net.biases, strict=True):
            self.P[ws:bst] = W.reshape(-1)
            self.P[bst:end] = b
            Ws.append(self.P[ws:bst].reshape(W.shape))
            bs.append(self.P[bst:end])
            self.GW.append(self.G[ws:bst].reshape(W.shape))
            self.Gb.append(self.G[bst:end])
        self.view = Network(net.task, net.activation, Ws, bs, dict(net.meta))
        self.Ws, self.bs_, self.WT = Ws, bs, [W.T for W in Ws]
        out, widths = net.output_dim, [W.shape[0] for W in Ws]
        self.bs, self.L = batch_size, len(Ws)
        self.lo = min(optimizer.trainable, default=self.L)
        self.Z = [np.empty((batch_size, w), F32) for w in widths]
        self.M = [np.empty((batch_size, w), F32) for w in widths[:-1]]
        self.D = [np.empty((batch_size, w), F32) for w in widths[:-1]]
        self.DL = np.empty((batch_size, out), F32)
        self.E = np.empty((batch_size, 1), F32)  # binary σ scratch / softmax max and sum
        self.ZT = np.empty(batch_size * out, F32)  # multiclass: zᵀ [out, n], rows reduce fast
        self.NEG = np.empty((batch_size, 1), bool)
        self.FI = np.empty(batch_size, np.int64)  # multiclass: flat index of ŷ_y in DL
        self.PY = np.empty(batch_size, F32)
        self.base = np.arange(batch_size, dtype=np.int64) * out  # row starts in the flat DL
        self.Xb = np.empty((batch_size, net.input_dim), F32)
        self.ones = np.ones(batch_size, F32)
        self.track = np.empty(n_train if net.task == "multiclass" else (n_train, out), F32)
        self._plans: dict[int, _Plan] = {}
        self.update = optimizer.bind_flat(self.P, self.G)

    def _plan(self, n: int) -> _Plan:
        """Buffer views and per-layer work lists for a batch of ``n`` rows (built once per ``n``)."""
        plan = self._plans.get(n)
        if plan is not None:
            return plan
        Z, M, D = [z[:n] for z in self.Z], [m[:n] for m in self.M], [d[:n] for d in self.D]
        fwd: list[_Fwd] = list(zip(self.WT, self.bs_, Z, [*M, None], strict=True))
        bwd: list[_Bwd] = []  # (dW_i, db_i, a_{i−1} (None: the input batch), what δ_{i−1} needs or None)
        for i in range(self.L - 1, self.lo - 1, -1):
            down: _Down | None = None
            if i > self.lo:
                outer = self.Ws[i].shape[0] == 1  # k = 1: δ W is one product per entry, as the matmul gives
                down = (self.Ws[i], outer, D[i - 1], M[i - 1], Z[i - 1])
            bwd.append((self.GW[i], self.Gb[i], Z[i - 1] if i else None, down))
        DL, E, out = self.DL[:n], self.E[:n], self.DL.shape[1]
        plan = _Plan(
            fwd,
            bwd,
            DL,
            DL.reshape(-1),
            E,
            E.reshape(n),
            self.ZT[: out * n].reshape(out, n),
            self.NEG[:n],
            self.FI[:n],
            self.PY[:n],
            self.base[:n],
            self.ones[:n],
            None if n == 1 else np.array(n, F32),
        )
        self._plans[n] = plan
        return plan

    def step(self, x: np.ndarray, yb: np.ndarray, pos: int) -> None:
        """One step on the batch ``x`` / ``yb`` (rows already gathered), recording loss inputs at ``track[pos:]``."""
        n = x.shape[0]
        fwd, bwd, delta, dflat, e, e_row, zt, neg, fi, py, base, ones, n_f32 = self._plans.get(n) or self._plan(n)
        act, matmul, mul = self.act, _matmul, _multiply
        a = x
        for WT, b, z, f in fwd:
            matmul(a, WT, z)
            _add(z, b, z)
            if f is not None:  # hidden layer
                if act == "relu":  # z ⊙ 1[z > 0]; the mask is f'(z) for the backward pass
                    _greater(z, _ZERO, f)
                    mul(z, f, z)
                elif act == "tanh":
                    np.tanh(z, z)
                else:
                    z[...] = activate("sigmoid", z)
            a = z
        z, task = a, self.task
        if task == "multiclass":  # softmax e^{z − max} / Σ e^{z − max} into DL, then δ = ŷ − onehot(y)
            np.copyto(zt, z.T)  # the max is exact in any order; over zᵀ's rows it is 2× faster
            _max_reduce(zt, axis=0, out=e_row)
            _subtract(z, e, z)
            np.exp(z, z)
            _add_reduce(z, axis=1, keepdims=True, out=e)
            np.divide(z, e, delta)
            _add(base, yb, fi)
            dflat.take(fi, out=self.track[pos : pos + n], mode="clip")
            _subtract(self.track[pos : pos + n], _ONE, py)
            dflat[fi] = py
        elif task == "binary":  # σ in place: the stable form of network._sigmoid
            _less(z, _ZERO, neg)
            np.abs(z, e)
            np.negative(e, e)
            np.exp(e, e)  # e = exp(−|z|)
            _add(e, _ONE, z)
            np.divide(e, z, e)  # e / (1 + e)   for z < 0
            yhat = self.track[pos : pos + n]
            np.reciprocal(z, yhat)  # 1 / (1 + e) for z ≥ 0
            np.copyto(yhat, e, where=neg)
            _subtract(yhat, yb.reshape(n, 1), delta)
        else:
            self.track[pos : pos + n] = z
            _subtract(z, yb.reshape(z.shape), delta)
        if n_f32 is not None and bwd:
            np.divide(delta, n_f32, delta)
        for GW, Gb, a_prev, down in bwd:
            matmul(delta.T, x if a_prev is None else a_prev, GW)
            matmul(ones, delta, Gb)  # Σ_n δ as 1ᵀ δ, like network.gradients
            if down is not None:
                W, outer, d, f, a = down
                (mul if outer else matmul)(delta, W, d)
                if act == "tanh":  # f' = 1 − a²
                    mul(a, a, f)
                    _subtract(_ONE, f, f)
                elif act == "sigmoid":  # f' = a (1 − a)
                    _subtract(_ONE, a, f)
                    mul(a, f, f)
                mul(d, f, d)
                delta = d
        self.update()

    def epoch_loss(self, Y_in_order: np.ndarray) -> float:
        """Σ per-sample loss of the epoch (rows in visiting order), from the recorded values."""
        if self.task == "regression":
            return float(per_sample_loss("regression", self.track, Y_in_order).sum())
        if self.task == "binary":
            return float(per_sample_loss("binary", self.track, Y_in_order).sum())
        p = self.track[:, None]
        return float(per_sample_loss("multiclass", p, np.zeros(p.shape[0], np.int64)).sum())

    def finite(self) -> bool:
        return bool(np.isfinite(self.P).all())

    def write_back(self, net: Network) -> None:
        for dst, src in zip(net.weights + net.biases, self.view.weights + self.view.biases, strict=True):
            dst[...] = src


def train(
    net: Network,
    optimizer: Optimizer,
    X: np.ndarray,
    Y: np.ndarray,
    epochs: int = 1,
    batch_size: int = 32,
    shuffle_seed: int | None = 0,
    validation_fraction: float = 0.0,
    early_stopping_patience: int | None = None,
    progress_cb: Callable[[float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    masks: MaskSpec | None = None,
    frozen: Iterable[int] | None = None,
) -> TrainResult:
    """Train ``net`` in place by mini-batch gradient descent; see the module docstring.

    ``X`` [N, input_dim] float32, ``Y`` targets as in ``network.py``. ``optimizer`` must be
    built for ``net``'s layer shapes; ``masks`` / ``frozen``, when given, replace the
    optimizer's own for this call. ``progress_cb(fraction)`` is called after every batch
    (fraction of all planned batches, 0 < f ≤ 1) and once with 1.0 at the end;
    ``should_stop()`` is polled before every batch and raises :class:`TrainingCanceled`.
    Raises :class:`Diverged` if parameters become non-finite, ``ValueError`` on bad input.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs: expected an integer ≥ 1, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an integer ≥ 1, got {batch_size!r}")
    if early_stopping_patience is not None and early_stopping_patience < 1:
        raise ValueError(f"early_stopping_patience: expected an integer ≥ 1, got {early_stopping_patience!r}")
    X = np.ascontiguousarray(X, dtype=F32)
    Y = np.asarray(Y, dtype=np.int64 if net.task == "multiclass" else F32)
    n = X.shape[0]
    if X.ndim != 2 or X.shape[1] != net.input_dim:
        raise ValueError(f"X: expected shape [n, {net.input_dim}], got {list(X.shape)}")
    if n == 0 or Y.shape[0] != n:
        raise ValueError(f"X and Y must hold the same number (≥ 1) of samples, got {n} and {Y.shape[0]}")
    tr_idx, val_idx, rng = split_indices(n, validation_fraction, shuffle_seed)
    # with a seed the rows are gathered from X per epoch (tr_idx[order]); without, they are X's first rows
    Xtr, Ytr = (X[: tr_idx.size] if rng is None else None), np.ascontiguousarray(Y[tr_idx])
    Xval, Yval = X[val_idx], Y[val_idx]
    n_tr, n_val = tr_idx.size, val_idx.size
    per_epoch = -(-n_tr // batch_size)
    total_batches = epochs * per_epoch

    saved = None
    if masks is not None or frozen is not None:
        saved = (optimizer.frozen, optimizer.masks)
        optimizer.set_constraints(
            frozen=optimizer.frozen if frozen is None else frozen,
            masks=optimizer.masks if masks is None else masks,
            net=net,
        )
    else:
        optimizer._check_net(net)
    kernel = _BatchKernel(net, optimizer, min(batch_size, n_tr), n_tr)
    Ybuf = np.empty_like(Ytr) if rng is not None else None
    row_bytes = X.shape[1] * X.itemsize
    Xbuf = np.empty((n_tr, X.shape[1]), F32) if rng is not None and n_tr * row_bytes <= PERMUTE_MAX_BYTES else None
    try:
        history: list[EpochStats] = []
        # (val loss, epoch, flat params, optimizer state)
        best: tuple[float, int, np.ndarray | None, dict[str, np.ndarray] | None] = (math.inf, 0, None, None)
        bad_epochs, steps, stopped = 0, 0, False
        with np.errstate(all="ignore"):
            for epoch in range(1, epochs + 1):
                if rng is not None:
                    order = rng.permutation(n_tr)
                    Yo = np.take(Ytr, order, axis=0, out=Ybuf, mode="clip")
                    rows = tr_idx[order]
                    Xo = np.take(X, rows, axis=0, out=Xbuf, mode="clip") if Xbuf is not None else None
                else:
                    rows, Xo, Yo = None, Xtr, Ytr
                for s in range(0, n_tr, batch_size):
                    if should_stop is not None and should_stop():
                        raise TrainingCanceled(f"canceled in epoch {epoch} after {steps} steps")
                    e = s + batch_size
                    if Xo is not None:
                        xb = Xo[s:e]
                    else:
                        assert rows is not None, "without a gathered Xo the rows are permuted"
                        idx = rows[s:e]
                        xb = np.take(X, idx, axis=0, out=kernel.Xb[: idx.size], mode="clip")
                    kernel.step(xb, Yo[s:e], s)
                    steps += 1
                    if progress_cb is not None:
                        progress_cb(min(1.0, steps / total_batches))
                if not kernel.finite():
                    raise Diverged(f"parameters became non-finite in epoch {epoch}; lower the learning rate")
                stats = EpochStats(epoch, kernel.epoch_loss(Yo) / n_tr)
                if n_val:
                    ev = evaluate(kernel.view, Xval, Yval)
                    stats.val_loss, stats.val_accuracy = ev.loss, ev.accuracy
                history.append(stats)
                if n_val and early_stopping_patience is not None:
                    assert stats.val_loss is not None, "set above when there is validation data"
                    if stats.val_loss < best[0]:
                        best = (stats.val_loss, epoch, kernel.P.copy(), optimizer.state_dict())
                        bad_epochs = 0
                    else:
                        bad_epochs += 1
                        if bad_epochs >= early_stopping_patience:
                            stopped = epoch < epochs
                            break
        best_epoch = len(history)
        _, best_ep, best_params, best_state = best
        if best_params is not None and best_ep != len(history):
            assert best_state is not None, "kept together with the parameters"
            kernel.P[...] = best_params
            optimizer.load_state_dict(best_state)
            best_epoch = best_ep
        kept = history[best_epoch - 1]
        if progress_cb is not None:
            progress_cb(1.0)
        return TrainResult(
            epochs_run=len(history),
            best_epoch=best_epoch,
            stopped_early=stopped,
            steps=steps,
            n_train=n_tr,
            n_val=n_val,
            train_loss=history[-1].train_loss,
            val_loss=kept.val_loss,
            val_accuracy=kept.val_accuracy,
            history=history,
            val_indices=val_idx,
        )
    finally:
        kernel.write_back(net)
        if saved is not None:
            optimizer.frozen, optimizer.masks = saved
