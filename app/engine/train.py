"""Mini-batch training (the ``batch-update`` job) and evaluation.

:func:`train` splits the samples once into training / validation rows, then for each epoch
visits the training rows in a fresh order in batches of ``batch_size`` and takes one
optimizer step per batch on the *mean* gradient of the per-sample loss over the batch
(``network.gradients``; the last batch of an epoch may be smaller). Randomness comes only
from ``np.random.default_rng(shuffle_seed)``: first the split permutation, then one
permutation per epoch, so a run is reproducible.

Early stopping: after each epoch the validation loss (mean per-sample loss) is computed;
when it has not improved on the best so far for ``early_stopping_patience`` epochs in a row,
training stops, and whenever a patience is given the parameters (and optimizer state) of the
best epoch are restored at the end.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from app.engine.network import (
    F32,
    Network,
    accuracy,
    activate,
    per_sample_loss,
)
from app.engine.optim import Optimizer, param_layout

EVAL_CHUNK = 65536  # rows per forward pass in evaluate()
PERMUTE_MAX_BYTES = 1 << 28  # training rows are gathered once per epoch up to this size, else per batch
_add_reduce, _max_reduce = np.add.reduce, np.maximum.reduce


class Canceled(Exception):
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

    def to_dict(self) -> dict:
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


def evaluate(net: Network, X: np.ndarray, Y: np.ndarray) -> dict:
    """``{"loss": mean per-sample loss, "accuracy": share correct (classification only), "n": N}``.

    ``X`` [N, input_dim]; ``Y`` as in ``network.py``. Runs in chunks of :data:`EVAL_CHUNK` rows.
    """
    X = np.asarray(X, dtype=F32)
    n = X.shape[0]
    if n == 0:
        raise ValueError("evaluate: no samples")
    Y = np.asarray(Y)
    total, correct = 0.0, 0.0
    classify = net.task != "regression"
    with np.errstate(over="ignore"):
        for s in range(0, n, EVAL_CHUNK):
            out = net.forward(X[s : s + EVAL_CHUNK])
            yb = Y[s : s + EVAL_CHUNK]
            total += math.fsum(per_sample_loss(net.task, out, yb).tolist())
            if classify:
                correct += accuracy(net.task, out, yb) * out.shape[0]
    res: dict = {"loss": total / n}
    if classify:
        res["accuracy"] = correct / n
    res["n"] = n
    return res


class _BatchKernel:
    """``network.gradients`` + ``Optimizer.step`` for one mini-batch, without allocations.

    The parameters live in one flat float32 vector ``P`` (:func:`param_layout` order; ``view``
    is a Network of views into it) updated by :meth:`Optimizer.bind_flat`. Forward and
    backward run the same operations in the same order as ``network.gradients`` (and the
    output links of ``network.py``) into preallocated buffers of ``batch_size`` rows, so the
    mean gradient is bit-identical: ``δ_L = (ŷ − y) / n``, ``dW_i = δ_iᵀ a_{i−1}``,
    ``db_i = Σ_n δ_i``, ``δ_{i−1} = (δ_i W_i) ⊙ f'(a_{i−1})``. Layers below the lowest
    trainable one get no gradient.

    The training loss is not computed per batch: each step records what the loss needs
    (binary ŷ, multiclass ŷ_y, regression ŷ) for its rows into ``track`` and
    :meth:`epoch_loss` applies ``per_sample_loss`` once per epoch.
    """

    def __init__(self, net: Network, optimizer: Optimizer, batch_size: int, n_train: int) -> None:
        layout = param_layout(net)
        self.task, self.act = net.task, net.activation
        self.P = np.empty(layout[-1][2], F32)
        self.G = np.zeros_like(self.P)
        Ws, bs, self.GW, self.Gb = [], [], [], []
        for (ws, bst, end), W, b in zip(layout, net.weights, net.biases, strict=True):
            self.P[ws:bst] = W.reshape(-1)
            self.P[bst:end] = b
            Ws.append(self.P[ws:bst].reshape(W.shape))
            bs.append(self.P[bst:end])
            self.GW.append(self.G[ws:bst].reshape(W.shape))
            self.Gb.append(self.G[bst:end])
        self.view = Network(net.task, net.activation, Ws, bs, dict(net.meta))
        out = net.output_dim
        self.A = [np.empty((batch_size, W.shape[0]), F32) for W in net.weights]  # z, then a = f(z)
        self.D = [np.empty((batch_size, W.shape[0]), F32) for W in net.weights[:-1]]
        self.F = [np.empty((batch_size, W.shape[0]), F32) for W in net.weights[:-1]]
        self.Xb = np.empty((batch_size, net.input_dim), F32)
        self.E = np.empty((batch_size, 1), F32)  # binary σ scratch / softmax max and sum
        self.DL = np.empty((batch_size, out), F32)  # output delta
        self.NEG = np.empty((batch_size, 1), bool)
        self.base = np.arange(batch_size, dtype=np.int64) * out  # row starts in the flat output
        self.FI = np.empty(batch_size, np.int64)
        self.PY = np.empty(batch_size, F32)
        self.bs, self.L, self.inv_n = batch_size, len(net.weights), F32(batch_size)
        self.Ws, self.bs_ = Ws, bs
        self.WT = [W.T for W in Ws]
        self.track = np.empty((n_train, out) if net.task == "regression" else n_train, F32)
        self.lo = min(optimizer.trainable, default=len(net.weights))
        self.update = optimizer.bind_flat(self.P, self.G)

    def step(self, x: np.ndarray, yb: np.ndarray, pos: int) -> None:
        """One step on the batch ``x`` / ``yb`` (rows already gathered), recording loss inputs at ``track[pos:]``."""
        n = x.shape[0]
        full = n == self.bs
        Ws, bs, L, act, matmul = self.Ws, self.bs_, self.L, self.act, np.matmul
        GW, Gb, D, F = self.GW, self.Gb, self.D, self.F
        A = self.A if full else [a[:n] for a in self.A]
        acts = [x]
        a = x
        for i in range(L):
            z = matmul(a, self.WT[i], out=A[i])
            z += bs[i]
            if i < L - 1:
                if act == "relu":  # z ⊙ 1[z > 0]; the mask is f'(z) for the backward pass
                    m = np.greater(z, 0, out=F[i] if full else F[i][:n])
                    np.multiply(z, m, out=z)
                elif act == "tanh":
                    np.tanh(z, out=z)
                else:
                    z[...] = activate("sigmoid", z)
            acts.append(z)
            a = z
        out, task = a, self.task
        e = self.E if full else self.E[:n]
        if task == "binary":  # σ in place: the stable form of network._sigmoid
            neg = self.NEG if full else self.NEG[:n]
            np.less(out, 0, out=neg)
            np.abs(out, out=e)
            np.negative(e, out=e)
            np.exp(e, out=e)  # e = exp(−|z|)
            np.add(e, 1.0, out=out)
            np.divide(e, out, out=e)  # e / (1 + e)   for z < 0
            np.reciprocal(out, out=out)  # 1 / (1 + e) for z ≥ 0
            np.copyto(out, e, where=neg)
            self.track[pos : pos + n] = out[:, 0]
            delta = np.subtract(out, yb.reshape(-1, 1), out=self.DL if full else self.DL[:n])
        elif task == "multiclass":  # softmax in place: e^{z − max} / Σ e^{z − max}
            _max_reduce(out, axis=1, keepdims=True, out=e)
            np.subtract(out, e, out=out)
            np.exp(out, out=out)
            _add_reduce(out, axis=1, keepdims=True, out=e)
            np.divide(out, e, out=out)
            flat = np.add(self.base if full else self.base[:n], yb, out=self.FI if full else self.FI[:n])
            delta = self.DL if full else self.DL[:n]
            np.copyto(delta, out)
            dflat = delta.reshape(-1)
            py = np.take(dflat, flat, out=self.track[pos : pos + n])
            np.subtract(py, 1.0, out=self.PY[:n])
            dflat[flat] = self.PY[:n]
        else:
            self.track[pos : pos + n] = out
            delta = np.subtract(out, yb.reshape(out.shape), out=self.DL if full else self.DL[:n])
        if self.lo == L:  # nothing to train: still counts as a step
            self.update()
            return
        if n != 1:
            delta /= self.inv_n if full else F32(n)
        for i in range(L - 1, self.lo - 1, -1):
            matmul(delta.T, acts[i], out=GW[i])
            _add_reduce(delta, axis=0, out=Gb[i])
            if i > self.lo:
                d, f, a = (D[i - 1], F[i - 1], acts[i]) if full else (D[i - 1][:n], F[i - 1][:n], acts[i])
                if delta.shape[1] == 1:  # k = 1: one product per entry, as the matmul gives
                    np.multiply(delta, Ws[i], out=d)
                else:
                    matmul(delta, Ws[i], out=d)
                if act == "relu":
                    pass  # f = 1[z > 0], stored by the forward pass
                elif act == "tanh":
                    np.multiply(a, a, out=f)
                    np.subtract(1.0, f, out=f)
                else:
                    np.subtract(1.0, a, out=f)
                    np.multiply(a, f, out=f)
                np.multiply(d, f, out=d)
                delta = d
        self.update()

    def epoch_loss(self, Y_in_order: np.ndarray) -> float:
        """Σ per-sample loss of the epoch (rows in visiting order), from the recorded values."""
        if self.task == "regression":
            return float(per_sample_loss("regression", self.track, Y_in_order).sum())
        if self.task == "binary":
            return float(per_sample_loss("binary", self.track[:, None], Y_in_order).sum())
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
    masks: Sequence[np.ndarray | None] | dict | None = None,
    frozen: Iterable[int] | None = None,
) -> TrainResult:
    """Train ``net`` in place by mini-batch gradient descent; see the module docstring.

    ``X`` [N, input_dim] float32, ``Y`` targets as in ``network.py``. ``optimizer`` must be
    built for ``net``'s layer shapes; ``masks`` / ``frozen``, when given, replace the
    optimizer's own for this call. ``progress_cb(fraction)`` is called after every batch
    (fraction of all planned batches, 0 < f ≤ 1) and once with 1.0 at the end;
    ``should_stop()`` is polled before every batch and raises :class:`Canceled`.
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
        best = (math.inf, 0, None, None)  # (val loss, epoch, flat params, optimizer state)
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
                        raise Canceled(f"canceled in epoch {epoch} after {steps} steps")
                    e = s + batch_size
                    if Xo is not None:
                        xb = Xo[s:e]
                    else:
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
                    stats.val_loss, stats.val_accuracy = ev["loss"], ev.get("accuracy")
                history.append(stats)
                if n_val and early_stopping_patience is not None:
                    if stats.val_loss < best[0]:
                        best = (stats.val_loss, epoch, kernel.P.copy(), optimizer.state_dict())
                        bad_epochs = 0
                    else:
                        bad_epochs += 1
                        if bad_epochs >= early_stopping_patience:
                            stopped = epoch < epochs
                            break
        best_epoch = len(history)
        if best[2] is not None and best[1] != len(history):
            kernel.P[...] = best[2]
            optimizer.load_state_dict(best[3])
            best_epoch = best[1]
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
