"""Jobs, request side: enqueue (inside the caller's transaction), read, list, cancel, and
the answer of every job-creating POST (202, or 201 after ``Prefer: wait=N``)."""

from __future__ import annotations

import base64
import contextlib
import contextvars
import re
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from app.core.db import Database
from app.core.errors import Conflict, Forbidden, Invalid, NotFound
from app.core.tables import Job, Model, utcnow
from app.jobs.queue import CANCELED, QUEUED, TERMINAL, Queue, ended, new_job
from app.jobs.repository import JobRepository
from app.jobs.schemas import JobOut

#: Longest ``Prefer: wait=N`` honoured, seconds.
MAX_WAIT = 300.0
_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+(?:\.\d+)?)", re.I)


def public_params(d: dict[str, Any]) -> dict[str, Any]:
    """Job params without internal keys (``_blob`` …), one level deep: what clients see."""
    return {
        k: ({kk: vv for kk, vv in v.items() if not kk.startswith("_")} if isinstance(v, dict) else v)
        for k, v in d.items()
        if not k.startswith("_")
    }


def job_out(j: Job, children: list[Job] | None = None) -> JobOut:
    """The one mapping of a job row to its public answer. A pipeline's progress (with its
    ``children``, the step jobs) is the fraction of steps done plus the running step's."""
    progress = j.progress
    if j.kind == "pipeline" and j.status not in TERMINAL and children is not None:
        n = max(len(j.params.get("steps", [])), 1)
        done = sum(1 for c in children if c.status == "succeeded")
        running = sum(c.progress for c in children if c.status == "running")
        progress = min((done + running) / n, 1.0)
    return JobOut(
        id=j.id,
        kind=j.kind,  # type: ignore[arg-type]
        model=j.model_name,
        parent_job=j.parent_job,
        step=j.step,
        status=j.status,  # type: ignore[arg-type]
        progress=progress,
        attempts=j.attempts,
        max_attempts=j.max_attempts,
        cancel_requested=j.cancel_requested,
        params=public_params(j.params),
        result=j.result,
        error=j.error,
        created_at=j.created_at,
        started_at=j.started_at,
        finished_at=j.finished_at,
    )


def prefer_wait(prefer: str | None) -> float | None:
    """Seconds asked for by ``Prefer: wait=N`` (RFC 7240), capped at :data:`MAX_WAIT`."""
    if not prefer:
        return None
    m = _WAIT.search(prefer)
    return min(float(m.group(1)), MAX_WAIT) if m else None


def _cursor(j: Job) -> str:
    return base64.urlsafe_b64encode(f"{j.created_at.isoformat()}|{j.id}".encode()).decode()


def _uncursor(c: str) -> tuple[datetime, str]:
    try:
        ts, jid = base64.urlsafe_b64decode(c.encode()).decode().split("|", 1)
        return datetime.fromisoformat(ts), jid
    except Exception:
        raise Invalid.at(["query", "cursor"], "not a cursor from this list") from None


def _check_model(allowed: tuple[str, ...] | None, model: str) -> None:
    if allowed is not None and model not in allowed:
        raise Forbidden(f"this key is not allowed to use model {model!r}")


class DryRun(Exception):
    """Raised by :meth:`JobService.enqueue` in a dry run: the submission was valid; its
    transaction rolls back and nothing is queued."""


#: What :meth:`JobService.enqueue` does in this thread: queue for real (None), check only
#: (``"dry"``), or queue a pipeline's step (``(pipeline id, step)``).
_MODE: contextvars.ContextVar[str | tuple[str, int] | None] = contextvars.ContextVar("steward_enqueue", default=None)


class JobService:
    def __init__(self, db: Database, queue: Queue, max_attempts: int) -> None:
        self.db = db
        self.queue = queue
        self.max_attempts = max_attempts

    def enqueue(self, s: Session, kind: str, model: Model, params: dict[str, Any]) -> Job:
        """Add a queued job to ``s``'s transaction (the submitting service's) — or, inside
        :meth:`dry_run`, stop there (everything was checked), or inside
        :meth:`children_of`, queue it as a pipeline's step."""
        mode = _MODE.get()
        if mode == "dry":
            raise DryRun()
        return new_job(
            s,
            kind=kind,
            model_id=model.id,
            model_name=model.name,
            params=params,
            max_attempts=self.max_attempts,
            parent=mode if isinstance(mode, tuple) else None,
        )

    @contextlib.contextmanager
    def dry_run(self) -> Iterator[None]:
        """A submission inside is checked as for real and queues nothing (its transaction
        rolls back)."""
        token = _MODE.set("dry")
        try:
            yield
        except DryRun:
            pass
        finally:
            _MODE.reset(token)

    @contextlib.contextmanager
    def children_of(self, pipeline: str, step: int) -> Iterator[None]:
        """The job a submission inside queues is step ``step`` of ``pipeline``."""
        token = _MODE.set((pipeline, step))
        try:
            yield
        finally:
            _MODE.reset(token)

    def child(self, pipeline: str, step: int) -> Job | None:
        with self.db.read() as s:
            return JobRepository(s).child(pipeline, step)

    def _get(self, s: Session, job_id: str, *, for_update: bool = False) -> Job:
        j = JobRepository(s).get(job_id, for_update=for_update)
        if j is None:
            raise NotFound(f"no job with id {job_id!r}")
        return j

    def get(self, job_id: str, *, allowed: tuple[str, ...] | None = None) -> JobOut:
        with self.db.read() as s:
            j = self._get(s, job_id)
            _check_model(allowed, j.model_name)
            return job_out(j, JobRepository(s).children([j.id]) if j.kind == "pipeline" else None)

    def page(
        self,
        *,
        model: str | None,
        kind: str | None,
        status: str | None,
        cursor: str | None,
        limit: int,
        allowed: tuple[str, ...] | None,
        parent: str | None = None,
    ) -> tuple[list[JobOut], str | None]:
        if model is not None:
            _check_model(allowed, model)
        before = _uncursor(cursor) if cursor is not None else None
        with self.db.read() as s:
            rows = JobRepository(s).page(
                model=model,
                kind=kind,
                status=status,
                before=before,
                limit=limit + 1,
                allowed=list(allowed) if allowed is not None else None,
                parent=parent,
            )
            more = len(rows) > limit
            rows = rows[:limit]
            pipelines = [j.id for j in rows if j.kind == "pipeline"]
            kids: dict[str, list[Job]] = {}
            for c in JobRepository(s).children(pipelines) if pipelines else []:
                kids.setdefault(c.parent_job or "", []).append(c)
        return [job_out(j, kids.get(j.id, [])) for j in rows], (_cursor(rows[-1]) if more and rows else None)

    def cancel(self, job_id: str, *, allowed: tuple[str, ...] | None = None) -> JobOut:
        """A queued job is canceled at once; a running one at its next progress point."""
        with self.db.write() as s:
            j = self._get(s, job_id, for_update=True)
            _check_model(allowed, j.model_name)
            if j.status in TERMINAL:
                raise Conflict(f"job {job_id} is already {j.status}")
            now = utcnow()
            targets = [j]
            if j.kind == "pipeline":  # cancelling a pipeline cancels its step
                targets += [c for c in JobRepository(s).children([j.id], for_update=True) if c.status not in TERMINAL]
            for x in targets:
                x.cancel_requested = True
                if x.status == QUEUED:
                    x.status = CANCELED
                    x.finished_at = now
                    ended(s, x)
                x.updated_at = now
            return job_out(j, JobRepository(s).children([j.id]) if j.kind == "pipeline" else None)

    def wait(self, job_id: str, seconds: float) -> JobOut:
        """Poll until the job is terminal or ``seconds`` pass (blocking: call from a thread)."""
        deadline = time.monotonic() + seconds
        delay = 0.01
        while True:
            out = self.get(job_id)
            if out.status in TERMINAL or time.monotonic() >= deadline:
                return out
            time.sleep(min(delay, max(deadline - time.monotonic(), 0)))
            delay = min(delay * 1.5, 0.2)

    def answer(self, job_id: str, prefer: str | None) -> tuple[JobOut, int, dict[str, str]]:
        """The answer of a job-creating POST (blocking: call from a thread): the job, 202
        with ``Location``, or after ``Prefer: wait=N`` 201 when it finished in time."""
        wait = prefer_wait(prefer)
        headers = {"Location": f"/v1/jobs/{job_id}"}
        if wait:
            out = self.wait(job_id, wait)
            headers["Preference-Applied"] = f"wait={wait:g}"
        else:
            out = self.get(job_id)
        return out, (201 if wait and out.status in TERMINAL else 202), headers
