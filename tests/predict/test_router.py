"""/v1/models/{name}/predict and /evaluate: outputs equal an independent numpy forward pass
on the downloaded weights, for each task × activation (and ``hidden: []``); labels; the
evaluation loss equals the formula of API.md; bad inputs are precise 422s."""

from __future__ import annotations

import numpy as np
import pytest

from tests.api_helpers import assert_problem, create_model, ref_forward, safetensors_bytes, weights

CASES = [
    pytest.param(task, act, hidden, id=f"{task}-{act}-{'x'.join(map(str, hidden)) or 'linear'}")
    for task in ("regression", "binary", "multiclass")
    for act, hidden in (("relu", [6, 5]), ("tanh", [7]), ("sigmoid", [4, 4]), ("relu", []))
]
OUT = {"regression": 2, "binary": 1, "multiclass": 4}


def _shift_biases(client, name: str, seed: int) -> None:
    """Import version 2 = version 1 with random non-zero biases (init biases are 0)."""
    t = weights(client, name, 1)
    rng = np.random.default_rng(seed)
    for k in t:
        if k.endswith(".bias"):
            t[k] = rng.normal(size=t[k].shape).astype(np.float32)
    r = client.post(f"/v1/models/{name}/versions", content=safetensors_bytes(t))
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(("task", "activation", "hidden"), CASES)
def test_predict_equals_an_independent_forward_pass(client, task, activation, hidden):
    create_model(client, task=task, activation=activation, hidden=hidden, input_dim=5, output_dim=OUT[task], seed=11)
    _shift_biases(client, "m", 1)
    X = np.random.default_rng(2).normal(scale=2.0, size=(16, 5)).astype(np.float32)
    for version in (1, 2):
        expected = ref_forward(weights(client, "m", version), task, activation, X)
        r = client.post("/v1/models/m/predict", json={"inputs": X.tolist(), "version": version})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "m" and body["version"] == version
        out = np.array(body["outputs"])
        assert out.shape == (16, OUT[task])
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
        if task == "binary":
            assert body["labels"] == [int(p >= 0.5) for p in out[:, 0]]
        elif task == "multiclass":
            assert body["labels"] == out.argmax(axis=1).tolist()
            np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
        else:
            assert body.get("labels") is None


def _loss(task: str, out: np.ndarray, y: list) -> np.ndarray:
    if task == "regression":
        return 0.5 * ((out - np.array(y, dtype=np.float64).reshape(out.shape)) ** 2).sum(axis=1)
    if task == "binary":
        p, t = out[:, 0], np.array(y, dtype=np.float64)
        return -(t * np.log(p) + (1 - t) * np.log(1 - p))
    return -np.log(out[np.arange(len(y)), np.array(y)])


@pytest.mark.parametrize("task", ["regression", "binary", "multiclass"])
def test_evaluate_loss_and_accuracy_follow_the_formulas(client, task):
    create_model(client, task=task, hidden=[6], input_dim=4, output_dim=OUT[task], activation="tanh", seed=5)
    _shift_biases(client, "m", 3)
    rng = np.random.default_rng(4)
    X = rng.normal(size=(20, 4)).astype(np.float32)
    if task == "regression":
        y = rng.normal(size=(20, 2)).round(3).tolist()
    elif task == "binary":
        y = rng.integers(0, 2, size=20).tolist()
    else:
        y = rng.integers(0, 4, size=20).tolist()
    samples = [{"x": x, "y": t} for x, t in zip(X.tolist(), y, strict=True)]
    out = ref_forward(weights(client, "m", 2), task, "tanh", X)
    r = client.post("/v1/models/m/evaluate", json={"samples": samples, "version": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["n"] == 20 and body["version"] == 2 and body["model"] == "m"
    assert body["loss"] == pytest.approx(_loss(task, out, y).mean(), rel=1e-5)
    if task == "regression":
        assert body.get("accuracy") is None
    else:
        labels = (out[:, 0] >= 0.5).astype(int) if task == "binary" else out.argmax(axis=1)
        assert body["accuracy"] == pytest.approx(float((labels == np.array(y)).mean()))
    # default target is latest (no production alias) and 1-output regression takes a bare number
    assert client.post("/v1/models/m/evaluate", json={"samples": samples}).json()["version"] == 2


def test_regression_with_one_output_takes_bare_numbers(client):
    create_model(client, hidden=[])
    t = weights(client, "m", 1)
    x, y = [1.0, -2.0, 0.5], 0.25
    pred = float(np.array(x) @ t["layers.0.weight"][0].astype(np.float64) + t["layers.0.bias"][0])
    for target in (y, [y]):
        r = client.post("/v1/models/m/evaluate", json={"samples": [{"x": x, "y": target}]})
        assert r.status_code == 200, r.text
        assert r.json()["loss"] == pytest.approx(0.5 * (pred - y) ** 2, rel=1e-5)


BAD_PREDICT = [
    ({"inputs": []}, ["body", "inputs"]),
    ({}, ["body", "inputs"]),
    ({"inputs": [1.0, 2.0, 3.0]}, ["body", "inputs", 0]),
    ({"inputs": [[1.0, 2.0, 3.0], [1.0, 2.0]]}, ["body", "inputs", 1]),
    ({"inputs": [[1.0, "a", 3.0]]}, ["body", "inputs", 0, 1]),
    ({"inputs": [[1.0, None, 3.0]]}, ["body", "inputs", 0, 1]),
    ({"inputs": [[1.0, "2.0", 3.0]]}, ["body", "inputs", 0, 1]),
    ({"inputs": [[1.0, True, 3.0]]}, ["body", "inputs", 0, 1]),
    ({"inputs": [[1.0, 2.0, 1e39]]}, ["body", "inputs", 0, 2]),
    ({"inputs": [[1.0, 2.0, 3.0]], "version": 0}, ["body", "version"]),
    ({"inputs": [[1.0, 2.0, 3.0]], "alias": "Prod"}, ["body", "alias"]),
    ({"inputs": [[1.0, 2.0, 3.0]], "version": 1, "alias": "production"}, ["body"]),
    ({"inputs": [[1.0, 2.0, 3.0]], "colour": 1}, ["body", "colour"]),
]


def test_predict_bad_inputs(client, subtests):
    create_model(client)
    for body, loc in BAD_PREDICT:
        with subtests.test(body=body):
            assert_problem(client.post("/v1/models/m/predict", json=body), 422, loc)


def test_predict_non_finite_numbers_are_422(client):
    create_model(client)
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        body = b'{"inputs": [[1.0, ' + literal + b", 3.0]]}"
        r = client.post("/v1/models/m/predict", content=body, headers={"Content-Type": "application/json"})
        assert_problem(r, 422, ["body", "inputs", 0, 1])


def test_predict_errors_outside_the_body(client):
    create_model(client)
    X = {"inputs": [[1.0, 2.0, 3.0]]}
    assert_problem(client.post("/v1/models/nope/predict", json=X), 404)
    assert_problem(client.post("/v1/models/m/predict", json=X | {"version": 2}), 404)
    r = client.post("/v1/models/m/predict", content=b"{inputs", headers={"Content-Type": "application/json"})
    assert_problem(r, 400)


BAD_SAMPLES = [
    ("binary", [{"x": [1, 2, 3], "y": 1}, {"x": [1, 2, 3], "y": 2}], ["body", "samples", 1, "y"]),
    ("binary", [{"x": [1, 2, 3], "y": 0.5}], ["body", "samples", 0, "y"]),
    ("binary", [{"x": [1, 2, 3], "y": True}], ["body", "samples", 0, "y"]),
    ("multiclass", [{"x": [1, 2, 3], "y": 1.5}], ["body", "samples", 0, "y"]),
    ("multiclass", [{"x": [1, 2, 3], "y": 3}], ["body", "samples", 0, "y"]),
    ("multiclass", [{"x": [1, 2, 3], "y": -1}], ["body", "samples", 0, "y"]),
    ("regression", [{"x": [1, 2, 3], "y": 1}, {"x": [1, 2], "y": 1}], ["body", "samples", 1, "x"]),
    ("regression", [{"x": [1, 2, 3], "y": [1, 2]}], ["body", "samples", 0, "y"]),
    ("regression", [{"x": [1, 2, 3]}], ["body", "samples", 0, "y"]),
    ("regression", [{"x": [1, 2, 3], "y": 1, "w": 2}], ["body", "samples", 0, "w"]),
    ("regression", [{"x": [1, 2, "3"], "y": 1}], ["body", "samples", 0, "x"]),
    ("regression", [{"x": [1, 2, 3e39], "y": 1}], ["body", "samples", 0, "x"]),
    ("regression", [[1, 2, 3]], ["body", "samples", 0]),
    ("regression", [], ["body", "samples"]),
]


def test_evaluate_bad_samples(client, subtests):
    for task in ("regression", "binary", "multiclass"):
        create_model(client, task, task=task, output_dim=3 if task == "multiclass" else 1)
    for task, samples, loc in BAD_SAMPLES:
        with subtests.test(task=task, samples=samples):
            body = assert_problem(client.post(f"/v1/models/{task}/evaluate", json={"samples": samples}), 422, loc)
            assert body["errors"][0]["loc"] == loc  # exactly: /update's format, no value index
