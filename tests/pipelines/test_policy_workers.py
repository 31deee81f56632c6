"""Two ``steward worker`` processes run the policy scheduler against one database: each
trigger fires once (one pipeline, one ``policy.triggered``), on both databases."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import sqlalchemy as sa

from app.context import AppContext
from app.core.migrations import upgrade
from app.core.tables import Event, Job
from app.pipelines.schemas import PolicyIn
from app.registry.schemas import ModelCreate
from tests.conftest import ADMIN


def start_worker(settings) -> subprocess.Popen:  # type: ignore[no-untyped-def]
    env = dict(
        os.environ,
        STEWARD_DATABASE_URL=settings.url,
        STEWARD_DATA_DIR=str(settings.data_dir),
        STEWARD_ADMIN_KEY=ADMIN,
        STEWARD_WORKER_POLL_SECONDS="0.02",
        STEWARD_POLICY_POLL_SECONDS="0.02",
        STEWARD_JOB_MAX_ATTEMPTS="1",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def test_two_worker_processes_fire_each_trigger_once(make_settings):
    settings = make_settings(run_worker=False, run_learner=False)
    upgrade(settings.url)
    ctx = AppContext.build(settings)
    workers: list[subprocess.Popen] = []
    try:
        ctx.models.create(ModelCreate(name="m", task="regression", input_dim=3, hidden=[4]))
        body = PolicyIn.model_validate(
            {
                "triggers": {"every_samples": 50},
                "pipeline": {"steps": [{"kind": "quantize", "dtype": "int8", "from": 1}]},
            }
        )
        ctx.policies.put("m", body)
        workers = [start_worker(settings) for _ in range(2)]
        rng = np.random.default_rng(0)
        rounds = 6
        for r in range(rounds):
            X = rng.normal(size=(50, 3)).astype(np.float32)
            ctx.online.append(ctx.online.target("m"), X, X.sum(axis=1, keepdims=True))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with ctx.db.read() as s:
                    jobs = list(s.scalars(sa.select(Job).where(Job.kind == "pipeline")))
                if len(jobs) == r + 1 and all(j.status == "succeeded" for j in jobs):
                    break
                time.sleep(0.05)
            else:
                raise AssertionError(f"round {r}: {[(j.id, j.status) for j in jobs]}")
        time.sleep(0.5)  # time for a wrong second firing to show
        with ctx.db.read() as s:
            pipelines = list(s.scalars(sa.select(Job).where(Job.kind == "pipeline")))
            fired = list(s.scalars(sa.select(Event).where(Event.type == "policy.triggered")))
        assert len(pipelines) == rounds and len(fired) == rounds
        assert sorted(e.data["job"] for e in fired) == sorted(j.id for j in pipelines)
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(30)
        ctx.close()
