"""Pipelines (API.md "Pipelines and maintenance policies") on both databases: a chain with
``previous``, validation before queueing, a failing step, cancel, guarded promotion."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.api_helpers import assert_problem, create_model
from tests.conftest import auth

NDJSON = {"Content-Type": "application/x-ndjson"}


@pytest.fixture
def pc(make_settings):  # type: ignore[no-untyped-def]
    with TestClient(create_app(make_settings(run_learner=False, job_max_attempts=1)), headers=auth()) as c:
        yield c


def data(n: int, seed: int, noise: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = X @ np.array([1.5, -2.0, 0.5]) + 0.3
    if noise:
        y = rng.normal(scale=3.0, size=n)
    return X, y


def samples(X: np.ndarray, y: np.ndarray) -> list[dict[str, Any]]:
    return [{"x": x.tolist(), "y": [float(v)]} for x, v in zip(X, y, strict=True)]


def fill_log(c: TestClient, name: str, n: int, seed: int) -> None:
    X, y = data(n, seed)
    r = c.post(f"/v1/models/{name}/update", json={"samples": samples(X, y)})
    assert r.status_code == 202, r.text


def run(c: TestClient, name: str, body: dict[str, Any], wait: int = 120) -> dict[str, Any]:
    r = c.post(f"/v1/models/{name}/pipelines", json=body, headers={"Prefer": f"wait={wait}"})
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


def jobs(c: TestClient, **params: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = c.get("/v1/jobs", params=params).json()["items"]
    return out


def test_batch_update_then_quantize_then_onnx_export_chain_with_previous(pc):
    create_model(pc, "m", hidden=[8])
    fill_log(pc, "m", 400, 1)
    job = run(
        pc,
        "m",
        {
            "steps": [
                {"kind": "batch_update", "log": {"last": 300}, "epochs": 3},
                {"kind": "quantize", "dtype": "int8"},
                {"kind": "migrate", "target": "onnx"},
            ]
        },
    )
    assert job["kind"] == "pipeline" and job["status"] == "succeeded" and job["progress"] == 1.0, job
    res = job["result"]
    assert [s["kind"] for s in res["steps"]] == ["batch_update", "quantize", "migrate"]
    assert [s["version"] for s in res["steps"]] == [2, 3, 3] and res["version"] == 3
    assert res["promoted"] is False
    steps = sorted(jobs(pc, parent_job=job["id"]), key=lambda j: j["step"])
    assert [(j["kind"], j["step"], j["parent_job"], j["status"]) for j in steps] == [
        ("batch_update", 0, job["id"], "succeeded"),
        ("quantize", 1, job["id"], "succeeded"),
        ("migrate", 2, job["id"], "succeeded"),
    ]
    assert [j["id"] for j in steps] == [s["job"] for s in res["steps"]]
    assert steps[1]["params"]["from_version"] == 2 and steps[2]["params"]["from_version"] == 3
    assert steps[0]["params"]["data"]["from_offset"] == 100 and steps[0]["params"]["data"]["n"] == 300
    v3 = pc.get("/v1/models/m/versions/3").json()
    assert v3["parent"] == 2 and v3["dtype"] == "int8" and [e["target"] for e in v3["exports"]] == ["onnx"]


def test_a_step_from_previous_is_not_refused_for_the_state_of_the_chains_start(pc):
    """Production is int8; retraining it makes a float32 version, which the next step may
    quantize: the dry run does not refuse that step for production being int8 already
    (the README's maintenance policy, after its pipeline promoted an int8 version)."""
    create_model(pc, "m", hidden=[8])
    fill_log(pc, "m", 400, 1)
    r = pc.post("/v1/models/m/quantize", json={"dtype": "int8"}, headers={"Prefer": "wait=60"})
    assert r.status_code == 201 and r.json()["result"]["version"] == 2, r.text
    assert pc.put("/v1/models/m/aliases/production", json={"version": 2}).status_code == 201
    steps = [
        {"kind": "batch_update", "from": "production", "log": {"last": 300}},
        {"kind": "quantize", "dtype": "int8"},
    ]
    job = run(pc, "m", {"steps": steps})
    assert job["status"] == "succeeded" and [s["version"] for s in job["result"]["steps"]] == [3, 4], job
    assert pc.get("/v1/models/m/versions/4").json()["dtype"] == "int8"
    # a step with its own `from` is still checked against that version
    r = pc.post("/v1/models/m/pipelines", json={"steps": [{"kind": "quantize", "dtype": "int8", "from": 2}]})
    assert_problem(r, 409)
    # and a step from `previous` still is for what does not depend on the version
    bad = [steps[0], {"kind": "quantize", "dtype": "int3"}]
    assert_problem(pc.post("/v1/models/m/pipelines", json={"steps": bad}), 422, ["body", "steps", 1])


@pytest.mark.parametrize(
    "steps, loc",
    [
        ([{"kind": "quantize", "dtype": "int8", "from": "previous"}], ["body", "steps", 0, "from"]),
        ([{"kind": "quantize", "dtype": "int8"}, {"kind": "quantize", "dtype": "int3"}], ["body", "steps", 1]),
        ([{"kind": "quantize", "dtype": "int8"}, {"kind": "nope"}], ["body", "steps", 1]),
        ([{"kind": "batch_update", "log": {"last": 10}, "promote": "production"}], ["body", "steps", 0, "promote"]),
        ([{"kind": "quantize", "dtype": "int8", "from": 99}], ["body", "steps", 0, "from"]),
        (
            [{"kind": "quantize", "dtype": "int8"}, {"kind": "batch_update", "log": {"from_offset": 5000}}],
            ["body", "steps", 1, "log", "from_offset"],
        ),
        (
            [{"kind": "quantize", "dtype": "int8"}, {"kind": "prune", "sparsity": 0.5, "structure": "neurons"}],
            ["body", "steps", 1, "structure"],
        ),
        (
            [
                {"kind": "migrate", "mode": "transfer", "new_model": "t", "task": "binary"},
                {"kind": "quantize", "dtype": "int8"},
            ],
            ["body", "steps", 0, "mode"],
        ),
        ([], ["body", "steps"]),
    ],
)
def test_a_bad_step_is_422_and_queues_nothing(pc, steps, loc):
    create_model(pc, "m", hidden=[])
    fill_log(pc, "m", 50, 1)
    before = pc.get("/v1/models/m").json()["latest_version"]
    r = pc.post("/v1/models/m/pipelines", json={"steps": steps})
    assert_problem(r, 422, loc)
    assert jobs(pc) == []
    assert pc.get("/v1/models/m").json()["latest_version"] == before


def test_a_bad_promote_is_422(pc):
    create_model(pc, "m")
    fill_log(pc, "m", 50, 1)
    for promote, loc in (
        ({"alias": "latest", "eval": {"log": {"last": 10}}}, ["body", "promote", "alias"]),
        ({"alias": "p", "eval": {}}, ["body", "promote", "eval"]),
        ({"alias": "p", "eval": {"samples": [{"x": [1, 2], "y": [1]}]}}, ["body", "promote", "eval", "samples", 0]),
        ({"alias": "p", "max_loss_increase": -1, "eval": {"log": {"last": 10}}}, ["body", "promote"]),
    ):
        r = pc.post(
            "/v1/models/m/pipelines", json={"steps": [{"kind": "quantize", "dtype": "int8"}], "promote": promote}
        )
        assert_problem(r, 422, loc)
    assert jobs(pc) == []


def test_a_failing_middle_step_stops_the_chain(pc):
    create_model(pc, "m", hidden=[8])
    fill_log(pc, "m", 100, 1)
    job = run(
        pc,
        "m",
        {
            "steps": [
                {"kind": "quantize", "dtype": "int8"},
                {"kind": "quantize", "dtype": "int8"},  # from the int8 version: refused when its turn comes
                {"kind": "migrate", "target": "onnx"},
            ]
        },
    )
    assert job["status"] == "failed", job
    assert job["error"]["step"] == 1 and "step 1 (quantize)" in job["error"]["message"]
    steps = jobs(pc, parent_job=job["id"])
    assert [(j["step"], j["status"]) for j in steps] == [(0, "succeeded")]  # no later step ran
    assert pc.get("/v1/models/m").json()["latest_version"] == 2  # the version made stays
    events = pc.get("/v1/events", params={"type": "job.*"}).json()["items"]
    assert [e["type"] for e in events] == ["job.succeeded", "job.failed"]


def test_cancel_a_running_pipeline_cancels_its_step(pc):
    create_model(pc, "m", hidden=[64, 64])
    fill_log(pc, "m", 2000, 1)
    r = pc.post(
        "/v1/models/m/pipelines",
        json={
            "steps": [
                {"kind": "batch_update", "log": {"last": 2000}, "epochs": 10000, "batch_size": 8},
                {"kind": "quantize", "dtype": "int8"},
            ]
        },
    )
    assert r.status_code == 202, r.text
    pid = r.json()["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        kids = jobs(pc, parent_job=pid)
        if kids and kids[0]["status"] == "running" and kids[0]["progress"] > 0:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the first step never ran")
    p = pc.get(f"/v1/jobs/{pid}").json()
    assert p["status"] == "running" and 0 < p["progress"] < 0.5
    assert pc.post(f"/v1/jobs/{pid}/cancel").status_code == 200
    deadline = time.monotonic() + 60
    while pc.get(f"/v1/jobs/{pid}").json()["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pc.get(f"/v1/jobs/{pid}").json()["status"] == "canceled"
    kids = jobs(pc, parent_job=pid)
    assert [(k["step"], k["status"]) for k in kids] == [(0, "canceled")]
    assert pc.get("/v1/models/m").json()["latest_version"] == 1


def test_promotion_accepted_on_good_data_and_refused_on_noise(pc):
    create_model(pc, "m", hidden=[8])
    pc.put("/v1/models/m/aliases/production", json={"version": 1})
    fill_log(pc, "m", 600, 1)
    Xe, ye = data(200, 9)
    good = run(
        pc,
        "m",
        {
            "steps": [{"kind": "batch_update", "log": {"last": 600}, "epochs": 20, "learning_rate": 0.05}],
            "promote": {"alias": "production", "eval": {"samples": samples(Xe, ye)}},
        },
    )
    res = good["result"]
    assert good["status"] == "succeeded" and res["promoted"] is True, res
    assert res["eval"]["loss"] < res["eval"]["alias_loss"] and res["eval"]["n"] == 200
    assert res["previous_version"] == 1 and res["version"] == 2
    assert pc.get("/v1/models/m/aliases/production").json()["version"] == 2
    (entry, *_) = pc.get("/v1/models/m/aliases/production/history").json()["items"]
    assert entry["by"] == {"job": good["id"]} and entry["reason"] == res["promotion_reason"]
    # noise labels: the retrained version is worse on the same eval rows, and stays unpromoted
    Xn, yn = data(600, 3, noise=True)
    bad = run(
        pc,
        "m",
        {
            "steps": [{"kind": "batch_update", "samples": samples(Xn, yn), "epochs": 20, "learning_rate": 0.05}],
            "promote": {"alias": "production", "eval": {"samples": samples(Xe, ye)}},
        },
    )
    res = bad["result"]
    assert bad["status"] == "succeeded" and res["promoted"] is False, res
    assert res["eval"]["loss"] > res["eval"]["alias_loss"] and res["version"] == 3
    assert "of version 2 on the same 200 samples" in res["promotion_reason"]
    assert pc.get("/v1/models/m/aliases/production").json()["version"] == 2
    # the losses are the versions' own on those rows (an independent numpy forward pass)
    from tests.api_helpers import ref_forward, weights

    for v, key in ((3, "loss"), (2, "alias_loss")):
        out = ref_forward(weights(pc, "m", v), "regression", "relu", Xe)
        ref = float(np.mean(0.5 * (out[:, 0] - ye) ** 2))
        assert abs(res["eval"][key] - ref) < 1e-4 * max(1.0, ref), (v, res["eval"][key], ref)


def test_a_step_retried_after_a_transient_error_keeps_the_pipeline_going(make_settings):
    """A step whose first attempt fails with a transient error goes back to the queue with
    backoff; the pipeline waits for it, runs it again, and goes on."""
    from app.background import make_worker
    from app.jobs.contract import Handlers

    st = make_settings(run_worker=False, run_learner=False, job_max_attempts=3)
    with TestClient(create_app(st), headers=auth()) as c:
        create_model(c, "m", hidden=[8])
        fill_log(c, "m", 50, 1)
        r = c.post("/v1/models/m/pipelines", json={"steps": [{"kind": "quantize", "dtype": "int8"}]})
        pid = r.json()["id"]
        ctx = c.app.state.ctx
        worker = make_worker(ctx)
        real = worker.handlers["quantize"]
        calls = []

        def flaky(job: Any, progress: Any) -> None:
            calls.append(job.attempts)
            if len(calls) == 1:
                raise RuntimeError("the disk hiccuped (test)")
            real(job, progress)

        handlers = Handlers()
        for kind in worker.handlers:
            handlers.register(kind, flaky if kind == "quantize" else worker.handlers[kind])
        worker.handlers = handlers
        assert worker.run_once() == pid  # runs the pipeline, which drives its step to the end
        p = c.get(f"/v1/jobs/{pid}").json()
        assert p["status"] == "succeeded", p
        (step,) = jobs(c, parent_job=pid)
        assert step["status"] == "succeeded" and step["attempts"] == 2 and calls == [1, 2]
        assert p["result"]["version"] == 2
