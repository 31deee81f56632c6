"""Maintenance policies (API.md "Pipelines and maintenance policies") on both databases:
the triggers, one pipeline at a time, each firing once with concurrent schedulers,
disabling after repeated failure, no every_samples firing while paused."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.core.tables import Job, Learner
from app.main import create_app
from tests.api_helpers import assert_problem, create_model
from tests.conftest import auth

QUANTIZE = {"steps": [{"kind": "quantize", "dtype": "int8", "from": 1}]}  # runs again and again


@pytest.fixture
def pc(make_settings):  # type: ignore[no-untyped-def]
    """Jobs run (a worker), the scheduler is driven by the test (its own thread sleeps)."""
    st = make_settings(run_learner=False, job_max_attempts=1, policy_poll_seconds=3600)
    with TestClient(create_app(st), headers=auth()) as c:
        yield c


def push(c: TestClient, n: int, seed: int = 0, name: str = "m") -> None:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    body = {"samples": [{"x": x.tolist(), "y": [float(x.sum())]} for x in X]}
    assert c.post(f"/v1/models/{name}/update", json=body).status_code == 202


def tick(c: TestClient) -> int:
    return int(c.app.state.ctx.policies.tick())


def pipelines(c: TestClient) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = c.get("/v1/jobs", params={"kind": "pipeline"}).json()["items"]
    return out


def settle(c: TestClient, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        j: dict[str, Any] = c.get(f"/v1/jobs/{job_id}").json()
        if j["status"] in ("succeeded", "failed", "canceled"):
            return j
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end")


def test_put_get_delete_and_validation(pc):
    create_model(pc, "m", hidden=[4])
    assert_problem(pc.get("/v1/models/m/policy"), 404)
    body = {"triggers": {"every_samples": 100, "every_seconds": 3600}, "pipeline": QUANTIZE}
    r = pc.put("/v1/models/m/policy", json=body)
    assert r.status_code == 201, r.text
    p = r.json()
    assert p["enabled"] and p["last_job"] is None and p["failures"] == 0
    assert p["next_due"]["every_samples"] == {"at_offset": 100} and "every_seconds" in p["next_due"]
    assert pc.put("/v1/models/m/policy", json=body).status_code == 200
    assert pc.get("/v1/models/m/policy").json()["triggers"] == {"on_drift": False, **body["triggers"]}
    push(pc, 10)  # the log holds samples: the pipeline is checked in full
    for bad, loc in (
        ({**body, "triggers": {}}, ["body", "triggers"]),
        ({**body, "triggers": {"every_samples": 0}}, ["body", "triggers", "every_samples"]),
        ({**body, "pipeline": {"steps": [{"kind": "quantize", "dtype": "int3"}]}}, ["body", "pipeline", "steps", 0]),
        (
            {**body, "pipeline": {"steps": [{"kind": "quantize", "dtype": "int8", "from": 7}]}},
            ["body", "pipeline", "steps", 0, "from"],
        ),
    ):
        assert_problem(pc.put("/v1/models/m/policy", json=bad), 422, loc)
    assert pc.delete("/v1/models/m/policy").status_code == 204
    assert_problem(pc.delete("/v1/models/m/policy"), 404)
    assert_problem(pc.put("/v1/models/nope/policy", json=body), 404)


def test_every_samples_fires_once_per_threshold_and_not_while_one_runs(pc):
    create_model(pc, "m", hidden=[4])
    pc.put("/v1/models/m/policy", json={"triggers": {"every_samples": 100}, "pipeline": QUANTIZE})
    push(pc, 99)
    assert tick(pc) == 0 and pipelines(pc) == []
    push(pc, 1)
    assert tick(pc) == 1
    (job,) = pipelines(pc)
    p = pc.get("/v1/models/m/policy").json()
    assert (p["last_job"], p["last_trigger"]) == (job["id"], "every_samples") and p["last_triggered_at"]
    assert p["next_due"]["every_samples"] == {"at_offset": 200}
    events = pc.get("/v1/events", params={"type": "policy.*"}).json()["items"]
    assert [(e["type"], e["data"]) for e in events] == [
        ("policy.triggered", {"trigger": "every_samples", "job": job["id"]})
    ]
    assert settle(pc, job["id"])["status"] == "succeeded"
    push(pc, 150)
    assert tick(pc) == 1 and tick(pc) == 0  # once per crossing
    assert len(pipelines(pc)) == 2


def test_a_trigger_while_a_pipeline_runs_is_skipped(make_settings):
    st = make_settings(run_learner=False, run_worker=False, policy_poll_seconds=3600)
    with TestClient(create_app(st), headers=auth()) as c:  # no worker: the pipeline stays queued
        create_model(c, "m", hidden=[4])
        c.put("/v1/models/m/policy", json={"triggers": {"every_samples": 10}, "pipeline": QUANTIZE})
        push(c, 10)
        assert tick(c) == 1
        push(c, 10)
        assert tick(c) == 0
        p = c.get("/v1/models/m/policy").json()
        assert p["last_skipped_at"] is not None and len(pipelines(c)) == 1
        assert p["next_due"]["every_samples"] == {"at_offset": 30}  # the skipped crossing moved the mark


def test_every_seconds_fires(pc):
    create_model(pc, "m", hidden=[4])
    push(pc, 5)
    pc.put("/v1/models/m/policy", json={"triggers": {"every_seconds": 1}, "pipeline": QUANTIZE})
    assert tick(pc) == 0
    time.sleep(1.1)
    assert tick(pc) == 1
    (job,) = pipelines(pc)
    assert pc.get("/v1/models/m/policy").json()["last_trigger"] == "every_seconds"
    settle(pc, job["id"])
    assert tick(pc) == 0


def test_on_drift_fires_on_a_new_transition_to_drift(pc):
    create_model(pc, "m", hidden=[4])
    push(pc, 5)
    db = pc.app.state.ctx.db

    def publish(transitions: list[dict[str, Any]]) -> None:  # what the learner publishes
        with db.write() as s:
            row = s.scalars(sa.select(Learner)).one()
            row.drift = {"status": transitions[-1]["status"], "transitions": transitions}

    publish([{"status": "drift", "offset": 3}])  # before the policy: not new
    pc.put("/v1/models/m/policy", json={"triggers": {"on_drift": True}, "pipeline": QUANTIZE})
    assert tick(pc) == 0
    publish([{"status": "drift", "offset": 3}, {"status": "warning", "offset": 4}])
    assert tick(pc) == 0
    publish([{"status": "drift", "offset": 3}, {"status": "stable", "offset": 4}, {"status": "drift", "offset": 5}])
    assert tick(pc) == 1
    assert pc.get("/v1/models/m/policy").json()["last_trigger"] == "on_drift"
    assert tick(pc) == 0


def test_concurrent_schedulers_fire_each_trigger_once(make_settings):
    st = make_settings(run_learner=False, run_worker=False, policy_poll_seconds=3600)
    with TestClient(create_app(st), headers=auth()) as c:
        create_model(c, "m", hidden=[4])
        c.put("/v1/models/m/policy", json={"triggers": {"every_samples": 10}, "pipeline": QUANTIZE})
        ctx = c.app.state.ctx

        def race() -> int:
            fired: list[int] = []
            barrier = threading.Barrier(3)

            def run() -> None:
                barrier.wait()
                fired.append(ctx.policies.tick())

            threads = [threading.Thread(target=run) for _ in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return sum(fired)

        for round_ in range(4):
            push(c, 10, seed=round_)
            assert race() == (1 if round_ == 0 else 0)  # later rounds: the first is still queued
        assert len(pipelines(c)) == 1
        with ctx.db.write() as s:  # the pipeline ends: the next crossing fires once again
            s.execute(sa.update(Job).values(status="succeeded"))
        push(c, 10, seed=9)
        assert race() == 1 and len(pipelines(c)) == 2


def test_repeated_failure_disables_the_policy(pc):
    create_model(pc, "m", hidden=[4])
    push(pc, 5)
    twice = [{"kind": "quantize", "dtype": "int8", "from": 1}, {"kind": "quantize", "dtype": "int8"}]
    failing = {"steps": twice}  # the second step quantizes the first's int8 version: refused when it runs
    pc.put("/v1/models/m/policy", json={"triggers": {"every_samples": 5}, "pipeline": failing})
    for i in range(3):
        push(pc, 5, seed=i + 1)
        assert tick(pc) == 1, (i, pc.get("/v1/models/m/policy").json())
        job = pipelines(pc)[0]
        assert settle(pc, job["id"])["status"] == "failed"
    push(pc, 5, seed=7)
    assert tick(pc) == 0  # the third failure is counted here, and the policy stops
    p = pc.get("/v1/models/m/policy").json()
    assert p["enabled"] is False and p["failures"] == 3 and "3 pipelines in a row failed" in p["disabled_reason"]
    assert len(pipelines(pc)) == 3
    events = pc.get("/v1/events", params={"type": "policy.disabled"}).json()["items"]
    assert len(events) == 1 and events[0]["data"]["reason"] == p["disabled_reason"]
    push(pc, 5, seed=8)
    assert tick(pc) == 0 and len(pipelines(pc)) == 3


def test_a_paused_model_fires_no_every_samples(pc):
    create_model(pc, "m", hidden=[4])
    pc.put("/v1/models/m/policy", json={"triggers": {"every_samples": 10}, "pipeline": QUANTIZE})
    push(pc, 10)
    db = pc.app.state.ctx.db
    with db.write() as s:  # as the learner's guard pauses it
        s.execute(sa.text("UPDATE models SET status = 'paused', paused_offset = 3"))
    assert tick(pc) == 0 and pipelines(pc) == []
    with db.write() as s:
        s.execute(sa.text("UPDATE models SET status = 'active', paused_offset = NULL"))
    assert tick(pc) == 1
