"""The job queue is the ``jobs`` table.

Life of a job::

    queued ──claim──> running ──finish──> succeeded
      ^  │               │ └──fail (attempts left)──> queued (run_after = now + backoff)
      │  │               │ └──fail (no attempts left)─> failed
      │  └─cancel─> canceled   └──cancel requested, seen at a progress point──> canceled
      └──── lease expired (worker died) ── claimable again; attempts counted

* Enqueue happens in the caller's transaction (the request that asks for it).
* A worker claims with a lease: ``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL;
  on SQLite the claim runs in a ``BEGIN IMMEDIATE`` transaction, which serializes
  claimers (the embedded default runs one in-process worker).
* The holder heartbeats (extends ``lease_expires_at``) while it runs; a job whose
  lease expired is claimable again by anyone.
* The result is written in the same transaction as the version it made, and only
  while the lease is still held; ``versions.job_id`` is unique, so a retried job can
  never make two versions.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from app.core.db import Database
from app.core.outbox import emit
from app.core.tables import Job, utcnow
from app.jobs import contract
from app.jobs.contract import LeaseLost
from app.jobs.repository import JobRepository

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED = "queued", "running", "succeeded", "failed", "canceled"
TERMINAL = (SUCCEEDED, FAILED, CANCELED)


def new_job(
    s: Session,
    *,
    kind: str,
    model_id: int,
    model_name: str,
    params: dict[str, Any],
    max_attempts: int,
    parent: tuple[str, int] | None = None,
) -> Job:
    """Add a queued job to ``s``'s transaction (committed with the request); ``parent``:
    (pipeline job id, step) when it is a pipeline's step."""
    now = utcnow()
    job = Job(
        id=str(uuid.uuid4()),
        kind=kind,
        model_id=model_id,
        model_name=model_name,
        parent_job=parent[0] if parent else None,
        step=parent[1] if parent else None,
        status=QUEUED,
        progress=0.0,
        attempts=0,
        max_attempts=max_attempts,
        params=params,
        cancel_requested=False,
        run_after=now,
        created_at=now,
        updated_at=now,
    )
    s.add(job)
    s.flush()
    return job


def ended(s: Session, job: Job) -> None:
    """The ``job.<status>`` event of a job that just ended, in its final transaction."""
    data: dict[str, Any] = {"id": job.id, "kind": job.kind, "status": job.status, "attempts": job.attempts}
    if job.status == SUCCEEDED:
        data["result"] = job.result
    elif job.status == FAILED:
        data["error"] = job.error
    emit(s, f"job.{job.status}", job.model_name, data)


def backoff_seconds(attempts: int) -> float:
    """Delay before retry number ``attempts`` + 1: 1, 2, 4 … seconds, at most 60."""
    return float(min(2 ** max(attempts - 1, 0), 60))


class Queue:
    def __init__(self, db: Database, lease_seconds: float) -> None:
        self.db = db
        self.lease = timedelta(seconds=lease_seconds)

    def claim(self, owner: str, kinds: tuple[str, ...]) -> contract.Job | None:
        """Take the oldest runnable job (queued and due, or running with an expired lease)."""
        now = utcnow()
        with self.db.write() as s:
            job = JobRepository(s).next_runnable(kinds, now)
            if job is None:
                return None
            taken = self._take(s, job, owner, now)
            return taken if isinstance(taken, contract.Job) else None

    def claim_one(self, job_id: str, owner: str) -> contract.Job | str:
        """Claim this job (a pipeline's step, run by the pipeline's worker): the job, or why
        not — its final status, ``busy`` when another worker holds its lease, ``waiting``
        while a retry's backoff runs."""
        now = utcnow()
        with self.db.write() as s:
            job = JobRepository(s).get(job_id, for_update=True)
            if job is None:
                return "gone"
            if job.status in TERMINAL:
                return job.status
            leased = job.lease_expires_at is not None and job.lease_expires_at >= now
            if job.status == RUNNING and job.lease_owner != owner and leased:
                return "busy"
            if job.status == QUEUED and job.run_after > now and not job.cancel_requested:
                return "waiting"  # put back for a retry: not before its backoff
            return self._take(s, job, owner, now)

    def _take(self, s: Session, job: Job, owner: str, now: datetime) -> contract.Job | str:
        """Lease a claimable ``job`` (locked in ``s``) to ``owner`` — unless its worker died
        on every attempt (then it fails, with the evidence) or cancel was requested (then it
        ends canceled): the job as its handler sees it, or that final status."""
        if job.status == RUNNING and job.attempts >= job.max_attempts:
            job.status = FAILED
            job.error = {
                "type": "worker_lost",
                "message": f"the worker running this job stopped {job.attempts} times (lease expired)",
            }
        elif job.cancel_requested:
            job.status = CANCELED
        if job.status in TERMINAL:
            job.finished_at = now
            job.lease_owner = None
            job.updated_at = now
            ended(s, job)
            return job.status
        job.status = RUNNING
        job.attempts += 1
        job.lease_owner = owner
        job.lease_expires_at = now + self.lease
        job.started_at = job.started_at or now
        job.updated_at = now
        return contract.Job(job.id, job.kind, job.model_id, job.model_name, dict(job.params), job.attempts, owner)

    def _held(self, s: Session, job_id: str, owner: str) -> Job:
        job = JobRepository(s).get(job_id, for_update=True)
        if job is None or job.status != RUNNING or job.lease_owner != owner:
            raise LeaseLost(job_id)
        return job

    def heartbeat(self, job_id: str, owner: str, progress: float | None = None) -> bool:
        """Extend the lease (and record progress). Returns True if cancel was requested."""
        with self.db.write() as s:
            job = self._held(s, job_id, owner)
            now = utcnow()
            job.lease_expires_at = now + self.lease
            if progress is not None:
                job.progress = float(min(max(progress, 0.0), 1.0))
            job.updated_at = now
            return bool(job.cancel_requested)

    def finish_in(self, s: Session, job_id: str, owner: str, result: dict[str, Any]) -> None:
        """Mark the job succeeded inside ``s`` (the transaction that stores its version)."""
        job = self._held(s, job_id, owner)
        now = utcnow()
        job.status = SUCCEEDED
        job.result = result
        job.progress = 1.0
        job.finished_at = now
        job.lease_owner = None
        job.lease_expires_at = None
        job.updated_at = now
        ended(s, job)

    def fail(self, job_id: str, owner: str, error: dict[str, Any], *, retry: bool) -> str:
        """Record a failure: back to the queue with backoff while attempts remain
        (and ``retry``), else ``failed``. Returns the new status."""
        with self.db.write() as s:
            try:
                job = self._held(s, job_id, owner)
            except LeaseLost:
                return "lost"
            now = utcnow()
            job.error = error
            job.lease_owner = None
            job.lease_expires_at = None
            job.updated_at = now
            if retry and job.attempts < job.max_attempts:
                job.status = QUEUED
                job.run_after = now + timedelta(seconds=backoff_seconds(job.attempts))
            else:
                job.status = FAILED
                job.finished_at = now
                ended(s, job)
            return job.status

    def mark_canceled(self, job_id: str, owner: str) -> None:
        with self.db.write() as s:
            try:
                job = self._held(s, job_id, owner)
            except LeaseLost:
                return
            now = utcnow()
            job.status = CANCELED
            job.finished_at = now
            job.lease_owner = None
            job.lease_expires_at = None
            job.updated_at = now
            ended(s, job)

    def release(self, job_id: str, owner: str) -> None:
        """Give a running job back (graceful shutdown): queued again, this attempt not counted."""
        with self.db.write() as s:
            try:
                job = self._held(s, job_id, owner)
            except LeaseLost:
                return
            job.status = QUEUED
            job.attempts = max(job.attempts - 1, 0)
            job.lease_owner = None
            job.lease_expires_at = None
            job.run_after = utcnow()
            job.updated_at = utcnow()
