"""batch-update through the HTTP API, on both databases: quality on real data,
guarded promotion, Prefer: wait, cancel, and bad input that queues nothing."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import StratifiedKFold, train_test_split


def samples(X, y):
    return [
        {"x": [float(v) for v in row], "y": (int(t) if float(t).is_integer() else float(t))}
        for row, t in zip(X, y, strict=True)
    ]


def wait_job(client, job_id, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        j = client.get(f"/v1/jobs/{job_id}").json()
        if j["status"] in ("succeeded", "failed", "canceled"):
            return j
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {j}")


def n_jobs(client):
    return len(client.get("/v1/jobs").json()["items"])


@pytest.fixture
def digits():
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    return train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)


def test_digits_multiclass_reaches_95(client, digits):
    Xtr, Xte, ytr, yte = digits
    r = client.post(
        "/v1/models",
        json={
            "name": "digits",
            "task": "multiclass",
            "input_dim": 64,
            "output_dim": 10,
            "hidden": [64],
            "optimizer": {"kind": "adam", "learning_rate": 0.005},
        },
    )
    assert r.status_code == 201, r.text
    r = client.post(
        "/v1/models/digits/batch-update",
        json={"samples": samples(Xtr, ytr), "epochs": 40, "batch_size": 32, "validation_fraction": 0.1},
        headers={"Prefer": "wait=120"},
    )
    assert r.status_code == 201, r.text
    assert r.headers["Preference-Applied"] == "wait=120"
    assert r.headers["Location"] == f"/v1/jobs/{r.json()['id']}"
    job = r.json()
    assert job["status"] == "succeeded", job
    assert job["kind"] == "batch_update" and job["progress"] == 1.0 and job["attempts"] == 1
    v = job["result"]["version"]
    assert v == 2 and job["result"]["from_version"] == 1
    ver = client.get(f"/v1/models/digits/versions/{v}").json()
    assert ver["operation"] == "batch" and ver["parent"] == 1
    assert ver["metrics"]["validation"]["n"] == int(len(Xtr) * 0.1)
    ev = client.post("/v1/models/digits/evaluate", json={"samples": samples(Xte, yte), "version": v}).json()
    assert ev["accuracy"] >= 0.95, ev
    # predict agrees with evaluate's accuracy
    labels = client.post("/v1/models/digits/predict", json={"inputs": Xte.tolist(), "version": v}).json()["labels"]
    assert np.mean(np.array(labels) == yte) == pytest.approx(ev["accuracy"])


def test_breast_cancer_binary_reaches_96(client):
    """Stratified 5-fold cross-validation, each fold a model of its own trained by
    ``batch-update`` and scored on its held-out fold: the mean accuracy is ≥ 0.96. (One
    143-sample split is too coarse a measure: on scikit-learn's own split with
    random_state 0 its LogisticRegression scores 0.958 and its MLPClassifier 0.958–0.972
    by seed.)"""
    X, y = load_breast_cancer(return_X_y=True)
    accs = []
    for k, (tr, te) in enumerate(StratifiedKFold(5, shuffle=True, random_state=0).split(X, y)):
        mu, sd = X[tr].mean(0), X[tr].std(0)
        Xtr, Xte = (X[tr] - mu) / sd, (X[te] - mu) / sd
        name = f"bc{k}"
        spec = {"name": name, "task": "binary", "input_dim": 30, "hidden": [16], "seed": k}
        r = client.post("/v1/models", json={**spec, "optimizer": {"kind": "adam", "learning_rate": 0.01}})
        assert r.status_code == 201, r.text
        r = client.post(
            f"/v1/models/{name}/batch-update",
            json={
                "samples": samples(Xtr, y[tr]),
                "epochs": 60,
                "batch_size": 32,
                "early_stopping_patience": 10,
                "shuffle_seed": 3,
            },
            headers={"Prefer": "wait=120"},
        )
        job = r.json()
        assert job["status"] == "succeeded", job
        ev = client.post(
            f"/v1/models/{name}/evaluate", json={"samples": samples(Xte, y[te]), "version": job["result"]["version"]}
        ).json()
        accs.append(ev["accuracy"])
    assert np.mean(accs) >= 0.96, accs
    assert min(accs) >= 0.93, accs


def test_guarded_promotion_refuses_worse_version(client, digits):
    Xtr, _, ytr, _ = digits
    Xtr, ytr = Xtr[:600], ytr[:600]
    client.post(
        "/v1/models",
        json={
            "name": "p",
            "task": "multiclass",
            "input_dim": 64,
            "output_dim": 10,
            "hidden": [32],
            "optimizer": {"kind": "adam", "learning_rate": 0.01},
        },
    )
    body = {"samples": samples(Xtr, ytr), "epochs": 20, "batch_size": 32, "promote": "production"}
    good = client.post("/v1/models/p/batch-update", json=body, headers={"Prefer": "wait=120"}).json()
    assert good["status"] == "succeeded", good
    assert good["result"]["promoted"] is True and "did not exist" in good["result"]["promotion_reason"]
    assert client.get("/v1/models/p/aliases/production").json()["version"] == good["result"]["version"]
    # a barely trained version from the random init, judged on the same validation split: worse
    bad_body = dict(body, **{"from": 1, "epochs": 1, "learning_rate": 1e-6})
    bad = client.post("/v1/models/p/batch-update", json=bad_body, headers={"Prefer": "wait=120"}).json()
    assert bad["status"] == "succeeded", bad
    res = bad["result"]
    assert res["promoted"] is False and res["previous_version"] == good["result"]["version"]
    assert res["validation"]["loss"] > res["validation"]["alias_loss"]
    assert "of version" in res["promotion_reason"]
    assert client.get("/v1/models/p/aliases/production").json()["version"] == good["result"]["version"]
    # default predict follows production, not latest
    pred = client.post("/v1/models/p/predict", json={"inputs": [Xtr[0].tolist()]}).json()
    assert pred["version"] == good["result"]["version"]


def test_without_prefer_answers_202_and_job_is_listed(client):
    client.post("/v1/models", json={"name": "q", "task": "regression", "input_dim": 2})
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 2))
    body = {"samples": samples(X, X @ np.array([1.0, -2.0]) + 0.5), "epochs": 2}
    r = client.post("/v1/models/q/batch-update", json=body)
    assert r.status_code == 202
    assert r.headers["Location"] == f"/v1/jobs/{r.json()['id']}"
    assert r.json()["status"] in ("queued", "running", "succeeded")
    done = wait_job(client, r.json()["id"])
    assert done["status"] == "succeeded"
    items = client.get("/v1/jobs", params={"model": "q", "kind": "batch_update", "status": "succeeded"}).json()
    assert [j["id"] for j in items["items"]] == [done["id"]]
    assert client.get("/v1/jobs", params={"status": "failed", "model": "q"}).json()["items"] == []
    assert "_blob" not in str(done["params"])


def test_cancel_running_job_leaves_no_version(client):
    client.post("/v1/models", json={"name": "c", "task": "regression", "input_dim": 8, "hidden": [64]})
    rng = np.random.default_rng(1)
    X = rng.normal(size=(4000, 8))
    body = {"samples": samples(X, X.sum(1)), "epochs": 5000, "batch_size": 8}
    job = client.post("/v1/models/c/batch-update", json=body).json()
    deadline = time.monotonic() + 30
    while client.get(f"/v1/jobs/{job['id']}").json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    r = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["cancel_requested"] is True
    done = wait_job(client, job["id"], timeout=30)
    assert done["status"] == "canceled"
    assert client.get("/v1/models/c").json()["latest_version"] == 1
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 409


@pytest.mark.parametrize(
    ("patch", "loc"),
    [
        ({"epochs": 0}, ["body", "epochs"]),
        ({"epochs": 10**9}, ["body", "epochs"]),
        ({"batch_size": 0}, ["body", "batch_size"]),
        ({"validation_fraction": 0}, ["body", "validation_fraction"]),
        ({"validation_fraction": 1.5}, ["body", "validation_fraction"]),
        ({"learning_rate": -1}, ["body", "learning_rate"]),
        ({"from": 99}, ["body", "from"]),
        ({"from": "nope"}, ["body", "from"]),
        ({"samples": []}, ["body", "samples"]),
        ({"samples": [{"x": [1.0], "y": 1}, {"x": [1.0, 2.0], "y": 0}]}, ["body", "samples", 0, "x"]),
        ({"samples": [{"x": [1.0, 2.0], "y": 1}, {"x": [1.0, 2.0], "y": 7}]}, ["body", "samples", 1, "y"]),
        ({"samples": [{"x": [1.0, 2.0], "y": 1}]}, ["body", "samples"]),
        ({"log": {"from_offset": 0}, "samples": None}, ["body", "log"]),
        ({"log": {"from_offset": 0}}, ["body"]),
        ({"samples": None}, ["body"]),
        ({"promote": "latest"}, ["body", "promote"]),
        ({"bogus": 1}, ["body", "bogus"]),
    ],
)
def test_bad_input_queues_nothing(client, patch, loc):
    client.post("/v1/models", json={"name": "b", "task": "binary", "input_dim": 2})
    body = {"samples": [{"x": [1.0, 2.0], "y": 1}, {"x": [0.0, 1.0], "y": 0}], **patch}
    if body.get("samples") is None:
        body.pop("samples")
    r = client.post("/v1/models/b/batch-update", json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"][0]["loc"][: len(loc)] == loc
    assert n_jobs(client) == 0


def test_unknown_model_and_job(client):
    assert client.post("/v1/models/none/batch-update", json={"samples": [{"x": [1], "y": 1}]}).status_code == 404
    assert client.get("/v1/jobs/does-not-exist").status_code == 404
    assert client.post("/v1/jobs/does-not-exist/cancel").status_code == 404


def test_batch_from_log_range(client):
    client.post(
        "/v1/models",
        json={"name": "lg", "task": "regression", "input_dim": 3, "optimizer": {"kind": "adam", "learning_rate": 0.05}},
    )
    rng = np.random.default_rng(5)
    X = rng.normal(size=(300, 3))
    w = np.array([1.5, -2.0, 0.5])
    r = client.post("/v1/models/lg/update", json={"samples": samples(X, X @ w + 1.0)})
    assert r.status_code == 202, r.text
    body = {"log": {"from_offset": 100, "to_offset": 299}, "epochs": 60, "batch_size": 16}
    job = client.post("/v1/models/lg/batch-update", json=body, headers={"Prefer": "wait=60"}).json()
    assert job["status"] == "succeeded", job
    assert job["params"]["data"] == {"source": "log", "from_offset": 100, "to_offset": 299, "n": 200}
    ver = client.get(f"/v1/models/lg/versions/{job['result']['version']}").json()
    assert ver["metrics"]["train"]["n"] + ver["metrics"]["validation"]["n"] == 200
    # the fitted linear model recovers the generating weights (checked on the downloaded blob)
    import safetensors.numpy as stnp

    t = stnp.load(client.get(f"/v1/models/lg/versions/{ver['version']}/weights").content)
    np.testing.assert_allclose(t["layers.0.weight"][0], w, atol=0.05)
    np.testing.assert_allclose(t["layers.0.bias"], [1.0], atol=0.05)
    bad = client.post("/v1/models/lg/batch-update", json={"log": {"from_offset": 250, "to_offset": 300}})
    assert bad.status_code == 422 and bad.json()["errors"][0]["loc"] == ["body", "log", "to_offset"]
