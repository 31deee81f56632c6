"""Queries of ``webhooks`` and ``webhook_deliveries`` (never commits)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.core.tables import Webhook, WebhookDelivery, table

PENDING, SENDING, DELIVERED, FAILED = "pending", "sending", "delivered", "failed"


class WebhookRepository:
    def __init__(self, s: Session) -> None:
        self.s = s

    # ---- webhooks
    def add(self, w: Webhook) -> Webhook:
        self.s.add(w)
        self.s.flush()
        return w

    def get(self, webhook_id: str) -> Webhook | None:
        return self.s.get(Webhook, webhook_id) if len(webhook_id) <= 32 else None

    def page(self, *, after: str | None, limit: int) -> list[Webhook]:
        q = sa.select(Webhook).order_by(Webhook.id).limit(limit)
        if after is not None:
            q = q.where(Webhook.id > after)
        return list(self.s.scalars(q))

    def delete(self, w: Webhook) -> None:
        self.s.delete(w)
        self.s.flush()

    def for_dispatch(self) -> list[Webhook]:
        """Every webhook, locked for this transaction's fan-out (PostgreSQL: rows another
        process is fanning out are skipped; SQLite: one writer at a time)."""
        q = sa.select(Webhook).order_by(Webhook.id).with_for_update(skip_locked=True)
        return list(self.s.scalars(q))

    def behind(self, head: int) -> bool:
        """Whether some webhook has not fanned out the events up to ``head`` yet."""
        return self.s.scalar(sa.select(sa.exists().where(Webhook.cursor < head))) is True

    def any_due(self, now: datetime) -> bool:
        """Whether some delivery is due (pending and due, or its sender's lease expired)."""
        d = WebhookDelivery
        cond = sa.or_(
            sa.and_(d.status == PENDING, d.next_attempt_at <= now),
            sa.and_(d.status == SENDING, d.lease_expires_at < now),
        )
        return self.s.scalar(sa.select(sa.exists().where(cond))) is True

    def counts(self, webhook_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """``{webhook id: {status: deliveries}}``."""
        d = WebhookDelivery
        q = (
            sa.select(d.webhook_id, d.status, sa.func.count())
            .where(d.webhook_id.in_(list(webhook_ids)))
            .group_by(d.webhook_id, d.status)
        )
        out: dict[str, dict[str, int]] = {}
        for wid, status, n in self.s.execute(q):
            out.setdefault(wid, {})[status] = int(n)
        return out

    # ---- deliveries
    def add_deliveries(self, rows: list[dict[str, Any]]) -> None:
        """Insert deliveries; one that exists already (same webhook and message) is kept."""
        if not rows:
            return
        insert = sqlite_insert if self.s.get_bind().dialect.name == "sqlite" else pg_insert
        stmt = insert(table(WebhookDelivery)).on_conflict_do_nothing(index_elements=["webhook_id", "msg_id"])
        self.s.execute(stmt, rows)

    def due(self, now: datetime, limit: int) -> list[WebhookDelivery]:
        """Deliveries to attempt now: pending and due, or being sent by a loop whose lease
        expired (it died); locked, skipping those another loop is claiming."""
        d = WebhookDelivery
        q = (
            sa.select(d)
            .where(
                sa.or_(
                    sa.and_(d.status == PENDING, d.next_attempt_at <= now),
                    sa.and_(d.status == SENDING, d.lease_expires_at < now),
                )
            )
            .order_by(d.next_attempt_at, d.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return list(self.s.scalars(q))

    def delivery(self, delivery_id: int, *, for_update: bool = False) -> WebhookDelivery | None:
        q = sa.select(WebhookDelivery).where(WebhookDelivery.id == delivery_id)
        if for_update:
            q = q.with_for_update()
        return self.s.scalars(q).one_or_none()

    def deliveries(
        self, webhook_id: str, *, before: int | None, limit: int, status: str | None = None
    ) -> list[WebhookDelivery]:
        """A webhook's deliveries, newest first."""
        d = WebhookDelivery
        q = sa.select(d).where(d.webhook_id == webhook_id).order_by(d.id.desc()).limit(limit)
        if before is not None:
            q = q.where(d.id < before)
        if status is not None:
            q = q.where(d.status == status)
        return list(self.s.scalars(q))
