"""Loss and accuracy of a network on labelled samples — the one evaluator.

Used by ``/evaluate``, by training (validation after each epoch, the train / validation
metrics of a batch-update, the promotion guard) and by the compression jobs (before /
after, the pruning search).

Shapes (as in :mod:`app.engine.nn.network`): ``X`` ``[N, input_dim]`` (cast to float32);
``Y`` ``[N, output_dim]`` float for regression, ``[N]`` in {0, 1} for binary, ``[N]``
integer class indices for multiclass. ``N ≥ 1``.

Formulas, with ``ŷ_n = net.forward(X)[n]`` (``[output_dim]`` float32):

* per-sample loss ``ℓ_n`` (:func:`~app.engine.nn.network.per_sample_loss`, in float64):
  regression ``½‖ŷ_n − y_n‖²``; binary ``−y_n log p_n − (1 − y_n) log(1 − p_n)`` with
  ``p_n = clip(ŷ_n, ε, 1 − ε)``; multiclass ``−log clip(ŷ_{n, y_n}, ε, 1)``; ε = 1e-7;
* ``loss = fsum_n(ℓ_n) / N``: the mean, from the correctly rounded sum (``math.fsum``) of
  every sample's loss, so adding up the chunks' losses loses nothing;
* labels (classification; :func:`~app.engine.nn.network.labels`): binary
  ``1[ŷ_n ≥ 0.5]``, multiclass ``argmax ŷ_n``;
* ``accuracy = #{n : label_n = y_n} / N`` (None for regression).

The forward pass runs in chunks of :data:`EVAL_CHUNK` rows, so memory stays bounded unless
the outputs are asked for.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.engine.nn.network import F32, Network, labels, per_sample_loss

EVAL_CHUNK = 65536  # rows per forward pass


@dataclass
class Evaluation:
    """What :func:`evaluate` measured. ``outputs`` ``[N, output_dim]`` float32 and ``labels``
    ``[N]`` int64 (None for regression) only when asked for (``keep_outputs=True``)."""

    loss: float
    accuracy: float | None
    n: int
    outputs: np.ndarray | None = None
    labels: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"loss", "accuracy" (classification only), "n"}``: the JSON form of metrics."""
        d: dict[str, Any] = {"loss": self.loss}
        if self.accuracy is not None:
            d["accuracy"] = self.accuracy
        d["n"] = self.n
        return d


def evaluate(net: Network, X: np.ndarray, Y: np.ndarray, *, keep_outputs: bool = False) -> Evaluation:
    """Loss and accuracy of ``net`` on ``(X, Y)`` (see the module docstring); with
    ``keep_outputs`` also the outputs and labels. Raises ``ValueError`` without samples."""
    X = np.asarray(X, dtype=F32)
    n = X.shape[0]
    if n == 0:
        raise ValueError("evaluate: no samples")
    Y = np.asarray(Y)
    if Y.shape[0] != n:
        raise ValueError(f"evaluate: X and Y must hold the same number of samples, got {n} and {Y.shape[0]}")
    classify = net.task != "regression"
    correct = [0]
    outs: list[np.ndarray] = []
    labs: list[np.ndarray] = []

    def losses() -> Iterator[float]:
        """Every sample's loss, one chunk's forward pass at a time (counting the correct
        labels and keeping the outputs on the way)."""
        for s in range(0, n, EVAL_CHUNK):
            out = net.forward(X[s : s + EVAL_CHUNK])
            yb = Y[s : s + EVAL_CHUNK]
            lab = labels(net.task, out)
            if lab is not None:
                correct[0] += int(np.count_nonzero(lab == yb.reshape(-1).astype(np.int64)))
            if keep_outputs:
                outs.append(out)
                if lab is not None:
                    labs.append(lab)
            yield from per_sample_loss(net.task, out, yb).tolist()

    with np.errstate(over="ignore"):
        total = math.fsum(losses())  # one correctly rounded sum over all chunks
    res = Evaluation(loss=total / n, accuracy=correct[0] / n if classify else None, n=n)
    if keep_outputs:
        res.outputs = outs[0] if len(outs) == 1 else np.concatenate(outs)
        if labs:
            res.labels = labs[0] if len(labs) == 1 else np.concatenate(labs)
    return res
