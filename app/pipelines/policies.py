"""Maintenance policies: run a pipeline when a trigger fires — the learner reported
``drift``, ``every_samples`` more samples were accepted, or ``every_seconds`` passed.

**The scheduler** runs beside every job worker (the API process's and each ``steward
worker``'s) and checks each enabled policy every ``STEWARD_POLICY_POLL_SECONDS``:

1. *Read* (no lock): the policy, its model, the learner's drift block, the last pipeline.
   The due trigger is the first of ``on_drift`` (a transition to ``drift`` at an offset
   past ``drift_mark``), ``every_samples`` (``next_offset − samples_mark``, never while
   the model is paused by its guard) and ``every_seconds`` (``seconds_mark`` + period).
2. While the policy's last pipeline is queued or running, a due trigger starts nothing:
   it is recorded as skipped (``last_skipped_at``) and its mark moves on.
3. Otherwise the pipeline's job params are made as ``POST …/pipelines`` makes them
   (every step checked against the model as it is now) — outside any transaction.
4. *Write*: the policy row is locked and fired only if its ``rev`` is still the one read
   in step 1: the pipeline job is queued, the marks move, ``policy.triggered`` is
   emitted, all in one transaction. Two schedulers that decided at once: one commits,
   the other finds ``rev`` changed and fires nothing — each firing happens once.

**Safe by default**: a pipeline that fails, or that cannot be made (a step refused), is
counted; ``STEWARD_POLICY_MAX_FAILURES`` in a row disable the policy with the reason
(``enabled: false``, a ``policy.disabled`` event) rather than retraining forever. A
success resets the count. Re-enabling is a ``PUT``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from app.core.db import Database
from app.core.errors import NotFound, StewardError
from app.core.outbox import emit
from app.core.settings import Settings
from app.core.tables import Job, Learner, Model, Policy, utcnow
from app.jobs.service import JobService
from app.pipelines.schemas import PipelineIn, PolicyIn, PolicyOut
from app.pipelines.service import PipelineService
from app.registry.models import get_model
from app.registry.repository import ModelRepository

log = logging.getLogger("steward.policies")

ACTIVE = ("queued", "running")


def drift_offsets(learner: Learner | None) -> list[int]:
    """Offsets of the transitions to ``drift`` in the learner's published drift block."""
    block = (learner.drift if learner is not None else None) or {}
    return [int(t["offset"]) for t in block.get("transitions", []) if t.get("status") == "drift"]


def due(p: Policy, m: Model, learner: Learner | None, now: datetime) -> tuple[str, dict[str, Any]] | None:
    """The trigger that fired, and the marks that firing moves to; None: nothing is due."""
    tr = p.triggers
    if tr.get("on_drift"):
        newer = [o for o in drift_offsets(learner) if o > p.drift_mark]
        if newer:
            return "on_drift", {"drift_mark": max(newer)}
    every = tr.get("every_samples")
    if every and m.status != "paused" and m.next_offset - p.samples_mark >= int(every):
        return "every_samples", {"samples_mark": int(m.next_offset)}
    period = tr.get("every_seconds")
    if period and now >= p.seconds_mark + timedelta(seconds=float(period)):
        return "every_seconds", {"seconds_mark": now}
    return None


def next_due(p: Policy) -> dict[str, Any]:
    tr = p.triggers
    out: dict[str, Any] = {}
    if tr.get("every_seconds"):
        out["every_seconds"] = (p.seconds_mark + timedelta(seconds=float(tr["every_seconds"]))).isoformat()
    if tr.get("every_samples"):
        out["every_samples"] = {"at_offset": int(p.samples_mark) + int(tr["every_samples"])}
    if tr.get("on_drift"):
        out["on_drift"] = {"after_offset": int(p.drift_mark)}
    return out


def policy_out(m: Model, p: Policy) -> PolicyOut:
    return PolicyOut(
        model=m.name,
        enabled=p.enabled,
        disabled_reason=p.disabled_reason,
        triggers=dict(p.triggers),
        pipeline=dict(p.pipeline),
        last_triggered_at=p.last_triggered_at,
        last_trigger=p.last_trigger,
        last_job=p.last_job,
        last_skipped_at=p.last_skipped_at,
        last_error=p.last_error,
        failures=p.failures,
        next_due=next_due(p),
        created_at=p.created_at,
        updated_at=p.updated_at,
    )


@dataclass
class Decision:
    model_id: int
    name: str
    rev: int
    trigger: str | None = None
    marks: dict[str, Any] | None = None
    active: bool = False
    outcome: tuple[str, str | None] | None = None  # (status, job id) of a pipeline not yet counted


class PolicyService:
    def __init__(self, db: Database, settings: Settings, jobs: JobService, pipelines: PipelineService) -> None:
        self.db = db
        self.settings = settings
        self.jobs = jobs
        self.pipelines = pipelines

    # ---- requests
    def put(self, name: str, body: PolicyIn) -> tuple[PolicyOut, bool]:
        """Create or replace a model's policy. The pipeline is checked as ``POST
        …/pipelines`` checks one (errors under ``["body", "pipeline", …]``) when the log
        holds samples; before that, its log ranges are checked when it first fires."""
        with self.db.read() as s:
            m = get_model(s, name)
            learner = s.get(Learner, m.id)
        if m.next_offset > 0:
            self.pipelines.params(name, body.pipeline, ["body", "pipeline"])
        now = utcnow()
        with self.db.write() as s:
            m = get_model(s, name, for_update=True)
            p = s.get(Policy, m.id)
            created = p is None
            if p is None:
                p = Policy(model_id=m.id, created_at=now, failures=0, rev=0)
                s.add(p)
            p.enabled = body.enabled
            p.triggers = body.triggers.model_dump(exclude_none=True)
            p.pipeline = body.pipeline.model_dump(mode="json", by_alias=True, exclude_unset=True)
            p.disabled_reason = None
            p.failures = 0
            p.last_error = None
            p.samples_mark = int(m.next_offset)
            p.seconds_mark = now
            p.drift_mark = max(drift_offsets(learner), default=-1)
            p.rev = (p.rev or 0) + 1
            p.updated_at = now
            s.flush()
            return policy_out(m, p), created

    def get(self, name: str) -> PolicyOut:
        with self.db.read() as s:
            m = get_model(s, name)
            p = s.get(Policy, m.id)
            if p is None:
                raise NotFound(f"model {name!r} has no policy")
            return policy_out(m, p)

    def delete(self, name: str) -> None:
        with self.db.write() as s:
            m = get_model(s, name, for_update=True)
            p = s.get(Policy, m.id)
            if p is None:
                raise NotFound(f"model {name!r} has no policy")
            s.delete(p)

    # ---- the scheduler
    def tick(self) -> int:
        """Check every enabled policy once (see the module doc); returns the firings."""
        with self.db.read() as s:
            ids = [int(i) for i in s.scalars(sa.select(Policy.model_id).where(Policy.enabled.is_(True)))]
        fired = 0
        for mid in ids:
            try:
                fired += self._check(mid)
            except Exception:
                log.exception("policy of model %s: check failed", mid)
        return fired

    def _decide(self, mid: int) -> Decision | None:
        now = utcnow()
        with self.db.read() as s:
            p = s.get(Policy, mid)
            m = s.get(Model, mid)
            if p is None or m is None or not p.enabled:
                return None
            d = Decision(mid, m.name, p.rev)
            last = s.get(Job, p.last_job) if p.last_job else None
            if last is not None and last.status in ACTIVE:
                d.active = True
            elif last is not None and last.id != p.counted_job:
                d.outcome = (last.status, last.id)
            hit = due(p, m, s.get(Learner, mid), now)
            if hit is not None:
                d.trigger, d.marks = hit
        return d

    def _check(self, mid: int) -> int:
        d = self._decide(mid)
        if d is None or (d.trigger is None and d.outcome is None):
            return 0
        params: dict[str, Any] | None = None
        refused: str | None = None
        if d.trigger is not None and not d.active:
            try:
                with self.db.read() as s:
                    p = s.get(Policy, mid)
                    body = PipelineIn.model_validate(p.pipeline) if p is not None else None
                if body is None:
                    return 0
                params = self.pipelines.params(d.name, body, ["pipeline"])
            except StewardError as e:
                refused = f"the pipeline could not be queued: {e.detail}"
        return self._write(d, params, refused)

    def _write(self, d: Decision, params: dict[str, Any] | None, refused: str | None) -> int:
        now = utcnow()
        with self.db.write() as s:
            # the model row first, then the policy: the order PUT / DELETE and a model's
            # deletion take them in (no lock-order deadlock)
            m = ModelRepository(s).get(d.model_id, for_update=True)
            p = s.get(Policy, d.model_id, with_for_update=True) if m is not None else None
            if m is None or p is None or p.rev != d.rev or not p.enabled:
                return 0  # another scheduler acted first (or the policy changed): nothing here
            p.rev += 1
            p.updated_at = now
            failed_job: str | None = None
            if d.outcome is not None:
                status, job_id = d.outcome
                p.counted_job = job_id
                if status == "failed":
                    p.failures += 1
                    failed_job = job_id
                elif status == "succeeded":
                    p.failures = 0
                    p.last_error = None
            fire = p.failures < self.settings.policy_max_failures
            if fire and d.trigger is not None and d.marks is not None:
                for k, v in d.marks.items():
                    setattr(p, k, v)
                if d.active:
                    p.last_skipped_at = now
                elif refused is not None:
                    p.failures += 1
                    p.last_error = refused
                elif params is not None:
                    job = self.jobs.enqueue(s, "pipeline", m, {**params, "policy": d.trigger})
                    p.last_job, p.last_trigger, p.last_triggered_at = job.id, d.trigger, now
                    emit(s, "policy.triggered", m.name, {"trigger": d.trigger, "job": job.id})
            if failed_job is not None and p.failures < self.settings.policy_max_failures:
                j = s.get(Job, failed_job)
                p.last_error = f"pipeline {failed_job} failed: {(j.error or {}).get('message') if j else ''}"
            if p.failures >= self.settings.policy_max_failures:
                p.enabled = False
                p.disabled_reason = (
                    f"{p.failures} pipelines in a row failed or could not be queued; the last: {p.last_error}"
                    if failed_job is None
                    else f"{p.failures} pipelines in a row failed; the last: {failed_job}"
                )
                emit(s, "policy.disabled", m.name, {"reason": p.disabled_reason, "job": failed_job or p.last_job})
            fired = fire and d.trigger is not None and not d.active and params is not None and refused is None
            return 1 if fired else 0


class PolicyScheduler:
    """A thread of a worker calling :meth:`PolicyService.tick` every poll."""

    def __init__(self, service: PolicyService, poll_seconds: float) -> None:
        self.service = service
        self.poll = poll_seconds
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def loop(self) -> None:
        while not self.stopping.wait(self.poll):
            try:
                self.service.tick()
            except Exception:
                log.exception("policy scheduler error")

    def start(self) -> PolicyScheduler:
        self._thread = threading.Thread(target=self.loop, name="steward-policies", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(30)
