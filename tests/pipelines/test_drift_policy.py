"""End to end, on both databases: a model with a drift policy is fed a stream whose
labelling rule changes halfway — predictions recorded, labels sent later, nothing else.
With no other call, the learner reports drift, the policy retrains on the newest samples,
the guard promotes the retrained version, and both the loss it serves and the learner's
prequential loss recover after the change."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from app.main import create_app
from tests.api_helpers import create_model
from tests.conftest import auth

CHUNK = 500


def stream(n: int, seed: int, flipped: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    y = (X[:, 0] - X[:, 1] > 0).astype(np.int64)
    return X, (1 - y if flipped else y)


def serve_and_label(c: TestClient, X: np.ndarray, y: np.ndarray) -> None:
    """What the production app does: predict (recorded), later send the truth."""
    for s in range(0, len(X), CHUNK):
        r = c.post("/v1/models/m/predict", json={"inputs": X[s : s + CHUNK].tolist(), "record": True})
        assert r.status_code == 200, r.text
        ids = r.json()["prediction_ids"]
        labels = [{"id": i, "y": int(v)} for i, v in zip(ids, y[s : s + CHUNK], strict=True)]
        assert c.post("/v1/models/m/labels", json={"labels": labels}).status_code == 202


def wait_for(c: TestClient, pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {c.get('/v1/models/m/policy').json()}")


def sums(block: dict[str, Any], n_key: str) -> tuple[float, int]:
    """(sum of losses, count) of a served or prequential block (its mean times its count)."""
    n = int(block[n_key] or 0)
    return (float(block["loss"] or 0.0) * n, n)


def mean_between(a: tuple[float, int], b: tuple[float, int]) -> float:
    return (b[0] - a[0]) / (b[1] - a[1])


def test_a_drift_policy_retrains_promotes_and_the_loss_recovers(make_settings):
    st = make_settings(job_max_attempts=1, policy_poll_seconds=0.1)
    with TestClient(create_app(st), headers=auth()) as c:
        create_model(c, "m", task="binary", input_dim=4, hidden=[], optimizer={"kind": "sgd", "learning_rate": 0.01})
        # set-up: production is a version trained on the first rule
        X0, y0 = stream(2000, 0, flipped=False)
        first = [{"x": x.tolist(), "y": int(v)} for x, v in zip(X0, y0, strict=True)]
        r = c.post(
            "/v1/models/m/pipelines",
            json={
                "steps": [{"kind": "batch_update", "samples": first, "epochs": 20, "learning_rate": 0.1}],
                "promote": {"alias": "production", "eval": {"samples": first[:500]}},
            },
            headers={"Prefer": "wait=60"},
        )
        assert r.status_code == 201 and r.json()["result"]["promoted"], r.text
        prod = r.json()["result"]["version"]
        policy = {
            "triggers": {"on_drift": True},
            "pipeline": {
                "steps": [
                    {
                        "kind": "batch_update",
                        "from": "latest",
                        "log": {"last": 1500},
                        "epochs": 20,
                        "learning_rate": 0.1,
                    }
                ],
                "promote": {"alias": "production", "eval": {"log": {"last": 500}}},
            },
        }
        assert c.put("/v1/models/m/policy", json=policy).status_code == 201

        def model() -> dict[str, Any]:
            out: dict[str, Any] = c.get("/v1/models/m").json()
            return out

        def applied(n: int) -> None:
            wait_for(c, lambda: model()["online"]["applied"] == n, 60, f"the learner through {n}")

        def served(v: int) -> tuple[float, int]:
            return sums(c.get(f"/v1/models/m/versions/{v}").json()["served"], "labelled")

        # the stream: predictions recorded, labels sent later — no other call from here on
        serve_and_label(c, *stream(6000, 1, flipped=False))
        applied(6000)
        pre0, served0 = sums(model()["online"]["prequential"], "count"), served(prod)
        serve_and_label(c, *stream(3000, 2, flipped=True))  # the labelling rule changes at offset 6000

        def promoted() -> Any:
            v = c.get("/v1/models/m/aliases/production").json()["version"]
            return v if v != prod else None

        new = wait_for(c, promoted, 120, "a promotion")
        applied(9000)
        pre1, served1 = sums(model()["online"]["prequential"], "count"), served(prod)
        serve_and_label(c, *stream(2000, 3, flipped=True))
        applied(11000)
        pre2 = sums(model()["online"]["prequential"], "count")

        p = c.get("/v1/models/m/policy").json()
        assert p["last_trigger"] == "on_drift" and p["failures"] == 0
        job = c.get(f"/v1/jobs/{p['last_job']}").json()
        assert job["kind"] == "pipeline" and job["status"] == "succeeded" and job["result"]["promoted"]
        assert job["result"]["version"] == new and job["result"]["eval"]["loss"] < job["result"]["eval"]["alias_loss"]
        drift = c.get("/v1/events", params={"type": "model.drift"}).json()["items"]
        assert drift and 6000 <= drift[0]["data"]["offset"] < 8000
        (entry, *_) = c.get("/v1/models/m/aliases/production/history").json()["items"]
        assert entry["by"] == {"job": job["id"]} and entry["version"] == new
        # served: production was good on the first rule, bad after the change, and the
        # promoted version serves the new rule well
        before_change = served0[0] / served0[1]
        after_change = mean_between(served0, served1)
        retrained = served(new)
        assert retrained[1] >= 2000
        assert before_change < 0.4 < 0.7 < after_change, (before_change, after_change)
        assert retrained[0] / retrained[1] < 0.4, retrained
        # prequential (the learner's test-then-train loss): up at the change, back down after
        pre_before = pre0[0] / pre0[1]
        pre_change = mean_between(pre0, pre1)
        pre_after = mean_between(pre1, pre2)
        assert pre_after < 0.4 < pre_change and pre_after < pre_change, (pre_before, pre_change, pre_after)
