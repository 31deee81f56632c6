"""Jobs: enqueue (in the caller's transaction), read, list, cancel, wait."""

from __future__ import annotations

import base64
import time
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.core.db import Database
from app.core.errors import Conflict, Invalid, NotFound
from app.core.tables import Job, Model, utcnow
from app.jobs.queue import CANCELED, QUEUED, RUNNING, TERMINAL, Queue, new_job
from app.jobs.schemas import JobOut


def job_out(j: Job) -> JobOut:
    return JobOut(
        id=j.id,
        kind=j.kind,  # type: ignore[arg-type]
        model=j.model_name,
        status=j.status,  # type: ignore[arg-type]
        progress=j.progress,
        attempts=j.attempts,
        max_attempts=j.max_attempts,
        cancel_requested=j.cancel_requested,
        params=_public(j.params),
        result=j.result,
        error=j.error,
        created_at=j.created_at,
        started_at=j.started_at,
        finished_at=j.finished_at,
    )


def _public(d: dict[str, Any]) -> dict[str, Any]:
    """Params without internal keys (``_blob`` …), one level deep."""
    return {
        k: ({kk: vv for kk, vv in v.items() if not kk.startswith("_")} if isinstance(v, dict) else v)
        for k, v in d.items()
        if not k.startswith("_")
    }


def _cursor(j: Job) -> str:
    return base64.urlsafe_b64encode(f"{j.created_at.isoformat()}|{j.id}".encode()).decode()


def _uncursor(c: str) -> tuple[datetime, str]:
    try:
        ts, jid = base64.urlsafe_b64decode(c.encode()).decode().split("|", 1)
        return datetime.fromisoformat(ts), jid
    except Exception:
        raise Invalid.at(["query", "cursor"], "not a cursor from this list") from None


class JobService:
    def __init__(self, db: Database, queue: Queue, max_attempts: int) -> None:
        self.db = db
        self.queue = queue
        self.max_attempts = max_attempts

    def enqueue(self, s: Session, kind: str, model: Model, params: dict[str, Any]) -> Job:
        return new_job(
            s, kind=kind, model_id=model.id, model_name=model.name, params=params, max_attempts=self.max_attempts
        )

    def get(self, s: Session, job_id: str) -> Job:
        j = s.get(Job, job_id) if len(job_id) <= 36 else None
        if j is None:
            raise NotFound(f"no job with id {job_id!r}")
        return j

    def page(
        self,
        s: Session,
        *,
        model: str | None,
        kind: str | None,
        status: str | None,
        cursor: str | None,
        limit: int,
        allowed: list[str] | None,
    ) -> tuple[list[JobOut], str | None]:
        q = sa.select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
        if model is not None:
            q = q.where(Job.model_name == model)
        if allowed is not None:
            q = q.where(Job.model_name.in_(allowed))
        if kind is not None:
            q = q.where(Job.kind == kind)
        if status is not None:
            q = q.where(Job.status == status)
        if cursor is not None:
            ts, jid = _uncursor(cursor)
            q = q.where(sa.or_(Job.created_at < ts, sa.and_(Job.created_at == ts, Job.id < jid)))
        rows = list(s.scalars(q))
        more = len(rows) > limit
        rows = rows[:limit]
        return [job_out(j) for j in rows], (_cursor(rows[-1]) if more and rows else None)

    def cancel(self, s: Session, job_id: str) -> Job:
        """A queued job is canceled at once; a running one at its next progress point."""
        j = s.scalars(sa.select(Job).where(Job.id == job_id).with_for_update()).one_or_none()
        if j is None:
            raise NotFound(f"no job with id {job_id!r}")
        if j.status in TERMINAL:
            raise Conflict(f"job {job_id} is already {j.status}")
        now = utcnow()
        j.cancel_requested = True
        if j.status == QUEUED:
            j.status = CANCELED
            j.finished_at = now
        j.updated_at = now
        return j

    def wait(self, job_id: str, seconds: float) -> Job:
        """Poll until the job is terminal or ``seconds`` pass (call from a thread)."""
        deadline = time.monotonic() + seconds
        delay = 0.01
        while True:
            with self.db.read() as s:
                j = self.get(s, job_id)
            if j.status in TERMINAL or time.monotonic() >= deadline:
                return j
            time.sleep(min(delay, max(deadline - time.monotonic(), 0)))
            delay = min(delay * 1.5, 0.2)

    @staticmethod
    def is_running(j: Job) -> bool:
        return j.status == RUNNING
