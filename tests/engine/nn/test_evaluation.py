"""The one evaluator: loss and accuracy follow the documented formulas, the result does not
depend on the chunking, and the outputs / labels it keeps are the forward pass's."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.engine.nn import evaluation
from app.engine.nn.evaluation import evaluate
from app.engine.nn.network import TASKS, init_network, labels, per_sample_loss
from tests.engine.nn.test_train import data

F32 = np.float32
OUT = {"regression": 2, "binary": 1, "multiclass": 3}


def test_evaluate_matches_the_definitions() -> None:
    X, Y = data("multiclass", 30, 4, 3, seed=21)
    net = init_network("multiclass", "relu", 4, 3, [5], seed=22)
    out = net.forward(X)
    ev = evaluate(net, X, Y)
    assert ev.to_dict() == {
        "loss": math.fsum(per_sample_loss("multiclass", out, Y).tolist()) / 30,
        "accuracy": float((out.argmax(axis=1) == Y).mean()),
        "n": 30,
    }
    assert ev.loss == pytest.approx(per_sample_loss("multiclass", out, Y).mean(), rel=1e-12)
    assert ev.outputs is None and ev.labels is None
    reg = init_network("regression", "relu", 4, 2, [], seed=23)
    reg_ev = evaluate(reg, X, np.zeros((30, 2), F32))
    assert reg_ev.accuracy is None and set(reg_ev.to_dict()) == {"loss", "n"}
    with pytest.raises(ValueError, match="no samples"):
        evaluate(net, X[:0], Y[:0])
    with pytest.raises(ValueError, match="same number"):
        evaluate(net, X, Y[:3])


@pytest.mark.parametrize("task", TASKS)
def test_chunked_evaluation_sums_every_sample_and_keeps_the_forward_pass(task: str, monkeypatch) -> None:
    X, Y = data(task, 103, 5, OUT[task], seed=31)
    net = init_network(task, "tanh", 5, OUT[task], [7], seed=32)
    whole = evaluate(net, X, Y, keep_outputs=True)
    monkeypatch.setattr(evaluation, "EVAL_CHUNK", 10)
    chunked = evaluate(net, X, Y, keep_outputs=True)
    out = np.concatenate([net.forward(X[s : s + 10]) for s in range(0, 103, 10)])
    assert chunked.outputs is not None and chunked.outputs.tobytes() == out.tobytes()
    assert chunked.loss == math.fsum(per_sample_loss(task, out, Y).tolist()) / 103
    assert chunked.n == whole.n == 103
    # a forward pass over fewer rows may round differently (BLAS blocking), nothing more
    assert chunked.loss == pytest.approx(whole.loss, rel=1e-6)
    assert whole.outputs is not None
    np.testing.assert_allclose(whole.outputs, out, rtol=1e-5, atol=1e-6)
    want = labels(task, out)
    if want is None:
        assert chunked.labels is None and chunked.accuracy is None
    else:
        assert chunked.labels is not None and chunked.labels.tolist() == want.tolist()
        assert chunked.accuracy == float((want == Y.astype(np.int64)).mean())
