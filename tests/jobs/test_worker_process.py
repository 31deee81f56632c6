"""Separate worker processes (``steward worker``) against one database:
SIGKILL mid-job → the job finishes on another worker after its lease expires,
with exactly one version; two processes never run the same job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import sqlalchemy as sa

from app.context import AppContext
from app.core.migrations import upgrade
from app.core.tables import Job, Version
from app.registry.schemas import ModelCreate
from app.training.schemas import BatchUpdateIn
from tests.conftest import ADMIN

WORKER = (
    "from app.core.settings import Settings; from app.background import run_worker_process; "
    "run_worker_process(Settings())"
)


def start_worker(settings, lease: float) -> subprocess.Popen:
    env = dict(
        os.environ,
        STEWARD_DATABASE_URL=settings.url,
        STEWARD_DATA_DIR=str(settings.data_dir),
        STEWARD_ADMIN_KEY=ADMIN,
        STEWARD_JOB_LEASE_SECONDS=str(lease),
        STEWARD_WORKER_POLL_SECONDS="0.05",
    )
    return subprocess.Popen(
        [sys.executable, "-c", WORKER], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


@pytest.fixture
def ctx(make_settings):
    settings = make_settings(run_worker=False, run_learner=False)
    upgrade(settings.url)
    c = AppContext.build(settings)
    c.models.create(ModelCreate(name="m", task="regression", input_dim=8, hidden=[32]))
    yield c
    c.close()


def submit(ctx, n: int, epochs: int, batch_size: int = 16) -> str:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 8))
    body = BatchUpdateIn.model_validate(
        {"samples": [{"x": list(r), "y": float(r.sum())} for r in X], "epochs": epochs, "batch_size": batch_size}
    )
    return ctx.training.submit("m", body)


def job(ctx, jid) -> Job:
    return ctx.jobs.get(jid)


def wait_until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def test_sigkill_mid_job_then_other_worker_finishes_once(ctx):
    jid = submit(ctx, n=2000, epochs=150, batch_size=2)  # ~150k steps: several seconds
    a = start_worker(ctx.settings, lease=2.0)
    try:
        wait_until(lambda: job(ctx, jid).status == "running" and job(ctx, jid).progress > 0.05, 60, "progress")
        a.send_signal(signal.SIGKILL)
        a.wait(10)
        assert job(ctx, jid).status == "running"  # nobody told the database
        b = start_worker(ctx.settings, lease=2.0)
        try:
            wait_until(lambda: job(ctx, jid).status in ("succeeded", "failed"), 120, "the retry")
        finally:
            stop(b)
    finally:
        stop(a)
    j = job(ctx, jid)
    assert j.status == "succeeded", j.error
    assert j.attempts == 2
    with ctx.db.read() as s:
        versions = list(s.scalars(sa.select(Version).where(Version.job_id == jid)))
        all_versions = s.scalar(sa.select(sa.func.count()).select_from(Version))
    assert len(versions) == 1 and versions[0].version == j.result["version"]
    assert all_versions == 2  # init + the one batch version


def test_two_worker_processes_never_run_the_same_job(ctx):
    ids = [submit(ctx, n=40, epochs=1) for _ in range(16)]
    procs = [start_worker(ctx.settings, lease=30.0) for _ in range(2)]
    try:
        wait_until(lambda: all(job(ctx, j).status == "succeeded" for j in ids), 120, "all jobs")
    finally:
        for p in procs:
            stop(p)
    with ctx.db.read() as s:
        jobs = [ctx.jobs.get(j) for j in ids]
        n_versions = s.scalar(sa.select(sa.func.count()).select_from(Version).where(Version.job_id.is_not(None)))
    assert all(j.attempts == 1 for j in jobs)
    assert n_versions == len(ids)
    assert sorted(j.result["version"] for j in jobs) == list(range(2, 2 + len(ids)))
