"""The DB-backed job queue: lifecycle, leases, retries, cancel, races — on both databases."""

from __future__ import annotations

import functools
import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from app.context import AppContext
from app.core.migrations import upgrade
from app.core.tables import Job, utcnow
from app.jobs import runner
from app.jobs.contract import JobError, Progress
from app.jobs.queue import Queue, backoff_seconds
from app.jobs.repository import JobRepository
from app.registry.schemas import ModelCreate

KINDS = ("batch_update",)


@pytest.fixture
def ctx(make_settings):
    settings = make_settings(job_lease_seconds=60, job_max_attempts=3, worker_poll_seconds=0.01)
    upgrade(settings.url)
    c = AppContext.build(settings)
    c.models.create(ModelCreate(name="m", task="binary", input_dim=2))
    yield c
    c.close()


def enqueue(ctx, n=1, kind="batch_update", params=None):
    ids = []
    with ctx.db.write() as s:
        from app.registry.models import get_model

        m = get_model(s, "m")
        for i in range(n):
            ids.append(ctx.jobs.enqueue(s, kind, m, dict(params or {}, i=i)).id)
    return ids


def expire_leases(ctx) -> None:
    """The worker holding a job "dies": its lease runs out now (no waiting on the clock)."""
    with ctx.db.write() as s:
        past = utcnow() - timedelta(seconds=1)
        s.execute(sa.update(Job).where(Job.lease_owner.is_not(None)).values(lease_expires_at=past))


def job(ctx, job_id) -> Job:
    with ctx.db.read() as s:
        return JobRepository(s).get(job_id)


def Worker(ctx, handlers, **kw):
    bound = {kind: functools.partial(fn, ctx) for kind, fn in handlers.items()}
    return runner.Worker(ctx.jobs.queue, bound, poll_seconds=ctx.settings.worker_poll_seconds, **kw)


def test_lifecycle_success(ctx):
    (jid,) = enqueue(ctx)
    assert job(ctx, jid).status == "queued"
    seen = []

    def handler(c, j, progress: Progress):
        assert job(c, j.id).status == "running"
        progress(0.5, force=True)
        seen.append(job(c, j.id).progress)
        with c.db.write() as s:
            c.jobs.queue.finish_in(s, j.id, j.owner, {"ok": True})

    w = Worker(ctx, {"batch_update": handler})
    assert w.run_once() == jid
    j = job(ctx, jid)
    assert (j.status, j.result, j.progress, j.attempts) == ("succeeded", {"ok": True}, 1.0, 1)
    assert seen == [0.5]
    assert j.started_at is not None and j.finished_at is not None and j.finished_at >= j.started_at
    assert w.run_once() is None


def test_retry_with_backoff_then_fail(ctx):
    (jid,) = enqueue(ctx)
    calls = []

    def boom(c, j, progress):
        calls.append(j.attempts)
        raise RuntimeError("transient")

    w = Worker(ctx, {"batch_update": boom})
    assert w.run_once() == jid
    j = job(ctx, jid)
    assert j.status == "queued" and j.error["message"] == "transient"
    assert j.run_after > utcnow() + timedelta(seconds=backoff_seconds(1) - 0.5)
    assert w.run_once() is None  # not due yet
    for _ in range(2):
        with ctx.db.write() as s:
            s.execute(sa.update(Job).where(Job.id == jid).values(run_after=utcnow()))
        assert w.run_once() == jid
    j = job(ctx, jid)
    assert j.status == "failed" and calls == [1, 2, 3] and j.attempts == 3


def test_job_error_is_not_retried(ctx):
    (jid,) = enqueue(ctx)

    def bad(c, j, progress):
        raise JobError("no good", field="x")

    Worker(ctx, {"batch_update": bad}).run_once()
    j = job(ctx, jid)
    assert j.status == "failed" and j.attempts == 1 and j.error["field"] == "x"


def test_cancel_queued_and_running(ctx):
    a, b = enqueue(ctx, 2)
    assert ctx.jobs.cancel(a).status == "canceled"
    started = threading.Event()

    def slow(c, j, progress):
        started.set()
        for i in range(500):
            time.sleep(0.01)
            progress(i / 500, force=True)

    w = Worker(ctx, {"batch_update": slow})
    t = threading.Thread(target=w.run_once)
    t.start()
    assert started.wait(5)
    j = ctx.jobs.cancel(b)
    assert j.status == "running" and j.cancel_requested
    t.join(10)
    assert not t.is_alive()
    assert job(ctx, b).status == "canceled"
    assert job(ctx, a).status == "canceled" and job(ctx, a).attempts == 0


def test_expired_lease_is_reclaimed_and_old_owner_cannot_finish(ctx):
    (jid,) = enqueue(ctx)
    q: Queue = ctx.jobs.queue
    first = q.claim("dead-worker", KINDS)
    assert first is not None and first.id == jid
    assert q.claim("other", KINDS) is None  # lease still held
    expire_leases(ctx)  # the worker "died"
    second = q.claim("other", KINDS)
    assert second is not None and second.id == jid and second.attempts == 2
    from app.jobs.contract import LeaseLost

    with pytest.raises(LeaseLost), ctx.db.write() as s:
        q.finish_in(s, jid, "dead-worker", {"late": True})
    with ctx.db.write() as s:
        q.finish_in(s, jid, "other", {"ok": 1})
    assert job(ctx, jid).result == {"ok": 1}


def test_worker_lost_every_attempt_fails(ctx):
    (jid,) = enqueue(ctx)
    q: Queue = ctx.jobs.queue
    for i in range(3):
        assert q.claim(f"w{i}", KINDS) is not None
        expire_leases(ctx)
    assert q.claim("w-last", KINDS) is None
    j = job(ctx, jid)
    assert j.status == "failed" and j.error["type"] == "worker_lost"


def test_graceful_stop_releases_running_job(ctx):
    (jid,) = enqueue(ctx)
    started = threading.Event()

    def slow(c, j, progress):
        started.set()
        while True:
            time.sleep(0.01)
            progress(0.1)

    w = Worker(ctx, {"batch_update": slow}).start()
    assert started.wait(5)
    w.stop(timeout=10)
    j = job(ctx, jid)
    assert j.status == "queued" and j.attempts == 0 and j.lease_owner is None


def test_two_workers_race_no_job_runs_twice(ctx):
    ids = enqueue(ctx, 40)
    runs: list[tuple[str, str]] = []  # (job, the worker that ran it)
    lock = threading.Lock()

    def handler(c, j, progress):
        with lock:
            runs.append((j.id, j.owner))
        time.sleep(0.005)
        with c.db.write() as s:
            c.jobs.queue.finish_in(s, j.id, j.owner, {"by": j.owner})

    workers = [Worker(ctx, {"batch_update": handler}, name=f"w{i}") for i in range(3)]
    for w in workers:
        w.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with ctx.db.read() as s:
            left = s.scalar(sa.select(sa.func.count()).where(Job.status != "succeeded"))
        if left == 0:
            break
        time.sleep(0.05)
    for w in workers:
        w.stop()
    assert sorted(jid for jid, _ in runs) == sorted(ids)  # each job ran once
    ran_by = dict(runs)
    assert set(ran_by.values()) <= {w.owner for w in workers}
    with ctx.db.read() as s:
        rows = {j.id: (j.status, j.attempts, j.result["by"]) for j in s.scalars(sa.select(Job))}
    # claimed once (one attempt each) and finished by the worker that ran it
    assert rows == {jid: ("succeeded", 1, ran_by[jid]) for jid in ids}
