"""Queries of the ``jobs`` table (never commits: the caller owns the transaction)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.core.tables import Job

QUEUED, RUNNING = "queued", "running"


class JobRepository:
    def __init__(self, s: Session) -> None:
        self.s = s

    def get(self, job_id: str, *, for_update: bool = False) -> Job | None:
        if len(job_id) > 36:  # ids are uuids: a longer one exists nowhere
            return None
        q = sa.select(Job).where(Job.id == job_id)
        if for_update:
            q = q.with_for_update()
        return self.s.scalars(q).one_or_none()

    def next_runnable(self, kinds: tuple[str, ...], now: datetime) -> Job | None:
        """The oldest job of ``kinds`` that is queued and due, or running with an expired
        lease, locked (``FOR UPDATE SKIP LOCKED``: concurrent claimers take different jobs)."""
        q = (
            sa.select(Job)
            .where(
                Job.kind.in_(kinds),
                sa.or_(
                    sa.and_(Job.status == QUEUED, Job.run_after <= now),
                    sa.and_(Job.status == RUNNING, Job.lease_expires_at < now),
                ),
            )
            .order_by(Job.created_at, Job.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        return self.s.scalars(q).first()

    def child(self, parent: str, step: int) -> Job | None:
        """The job that is step ``step`` of pipeline ``parent`` (the newest, if several)."""
        q = sa.select(Job).where(Job.parent_job == parent, Job.step == step).order_by(Job.created_at.desc()).limit(1)
        return self.s.scalars(q).first()

    def children(self, parents: list[str], *, for_update: bool = False) -> list[Job]:
        q = sa.select(Job).where(Job.parent_job.in_(parents)).order_by(Job.step, Job.created_at)
        if for_update:
            q = q.with_for_update()
        return list(self.s.scalars(q))

    def page(
        self,
        *,
        model: str | None,
        kind: str | None,
        status: str | None,
        before: tuple[datetime, str] | None,
        limit: int,
        allowed: list[str] | None,
        parent: str | None = None,
    ) -> list[Job]:
        """Newest first, filtered; ``before`` is the (created_at, id) of the previous page's last job."""
        q = sa.select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
        if model is not None:
            q = q.where(Job.model_name == model)
        if allowed is not None:
            q = q.where(Job.model_name.in_(allowed))
        if kind is not None:
            q = q.where(Job.kind == kind)
        if status is not None:
            q = q.where(Job.status == status)
        if parent is not None:
            q = q.where(Job.parent_job == parent)
        if before is not None:
            ts, jid = before
            q = q.where(sa.or_(Job.created_at < ts, sa.and_(Job.created_at == ts, Job.id < jid)))
        return list(self.s.scalars(q))
