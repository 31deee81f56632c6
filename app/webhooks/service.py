"""Webhooks: subscriptions (create, list, delete), their deliveries, and the three steps
of the delivery loop (:mod:`app.webhooks.delivery`) — fan-out, claim, record.

**Fan-out** reads the event feed after each webhook's ``cursor`` and adds a delivery per
matching event, moving the cursor, in one transaction: event ids are given in commit
order (:mod:`app.core.outbox`), so nothing committed is ever skipped, and a delivery is
made once (``(webhook_id, msg_id)`` is unique). **Claim** takes due deliveries with a
lease (``FOR UPDATE SKIP LOCKED``, as jobs are claimed): with several loops, each
attempt is made by one. **Record** writes the attempt's outcome if the lease is still
held: delivered on a 2xx; else retried after an exponential backoff with jitter, until
``STEWARD_WEBHOOK_MAX_ATTEMPTS``. A loop that dies mid-attempt leaves the delivery to be
claimed again when its lease expires: at least once, and receivers deduplicate on
``webhook-id``.
"""

from __future__ import annotations

import logging
import random
import secrets
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson

from app.core import sealing
from app.core.db import Database
from app.core.errors import Invalid, NotFound
from app.core.schemas import number_cursor
from app.core.settings import Settings
from app.core.tables import Webhook, WebhookDelivery, utcnow
from app.events.feed import event_out
from app.events.filters import check_patterns, matches
from app.events.repository import EventRepository
from app.webhooks import guard, signing
from app.webhooks.repository import DELIVERED, FAILED, PENDING, SENDING, WebhookRepository
from app.webhooks.schemas import AttemptOut, DeliveryOut, WebhookCreate, WebhookCreated, WebhookOut

log = logging.getLogger("steward.webhooks")

#: Events fanned out per webhook and round.
FANOUT_BATCH = 500
#: Attempts kept in a delivery's log.
LOG_KEEP = 20


def webhook_out(w: Webhook, counts: dict[str, int] | None = None) -> WebhookOut:
    c = counts or {}
    return WebhookOut(
        id=w.id,
        url=w.url,
        events=list(w.events),
        models=list(w.models) if w.models is not None else None,
        description=w.description,
        created_at=w.created_at,
        created_by=dict(w.created_by),
        after_event=w.cursor,
        pending=c.get(PENDING, 0) + c.get(SENDING, 0),
        failed=c.get(FAILED, 0),
    )


def delivery_out(d: WebhookDelivery) -> DeliveryOut:
    return DeliveryOut(
        id=d.id,
        webhook=d.webhook_id,
        msg_id=d.msg_id,
        event=d.event_id,
        type=d.event_type,
        status=d.status,  # type: ignore[arg-type]
        attempts=d.attempts,
        last_status=d.last_status,
        last_error=d.last_error,
        next_attempt_at=d.next_attempt_at if d.status in (PENDING, SENDING) else None,
        delivered_at=d.delivered_at,
        created_at=d.created_at,
        log=[AttemptOut.model_validate(a) for a in d.log or []],
    )


def backoff(attempts: int, base: float, cap: float, rnd: random.Random | None = None) -> float:
    """Seconds before the attempt after ``attempts``: ``base·2^(attempts−1)``, at most
    ``cap``, times a random factor in [0.5, 1] (jitter: retries of many deliveries spread)."""
    d = min(base * 2 ** max(attempts - 1, 0), cap)
    return d * (rnd or random).uniform(0.5, 1.0)


@dataclass(frozen=True)
class Claimed:
    """One attempt to make: what to send where, signed with ``key``."""

    delivery_id: int
    webhook_id: str
    url: str
    key: bytes
    msg_id: str
    body: bytes
    attempt: int


class WebhookService:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._key: bytes | None = None

    @property
    def sealing_key(self) -> bytes:
        if self._key is None:
            self._key = sealing.load_key(self.settings.secrets_key, Path(self.settings.data_dir))
        return self._key

    # ---- subscriptions
    def create(self, body: WebhookCreate, by: dict[str, Any]) -> WebhookCreated:
        events = check_patterns(body.events, ["body", "events"])
        try:
            guard.check(body.url, allow_private=self.settings.webhook_allow_private)
        except guard.Refused as e:
            raise Invalid.at(["body", "url"], str(e)) from None
        secret = body.secret if body.secret is not None else signing.new_secret()
        try:
            signing.secret_key(secret)
        except ValueError as e:
            raise Invalid.at(["body", "secret"], str(e)) from None
        wid = "wh_" + secrets.token_hex(8)
        sealed = sealing.seal(self.sealing_key, secret, wid)
        with self.db.write() as s:
            w = Webhook(
                id=wid,
                url=body.url,
                events=events,
                models=sorted(set(body.models)) if body.models is not None else None,
                description=body.description,
                secret=sealed,
                cursor=EventRepository(s).head(),  # events committed from now on
                created_by=by,
                created_at=utcnow(),
            )
            WebhookRepository(s).add(w)
            return WebhookCreated(**webhook_out(w).model_dump(), secret=secret)

    def _get(self, s: Any, webhook_id: str) -> Webhook:
        w = WebhookRepository(s).get(webhook_id)
        if w is None:
            raise NotFound(f"no webhook with id {webhook_id!r}")
        return w

    def get(self, webhook_id: str) -> WebhookOut:
        with self.db.read() as s:
            w = self._get(s, webhook_id)
            return webhook_out(w, WebhookRepository(s).counts([w.id]).get(w.id))

    def page(self, *, cursor: str | None, limit: int) -> tuple[list[WebhookOut], str | None]:
        with self.db.read() as s:
            repo = WebhookRepository(s)
            rows = repo.page(after=cursor, limit=limit + 1)
            more = len(rows) > limit
            rows = rows[:limit]
            counts = repo.counts([w.id for w in rows])
        return [webhook_out(w, counts.get(w.id)) for w in rows], (rows[-1].id if more and rows else None)

    def delete(self, webhook_id: str) -> None:
        with self.db.write() as s:
            WebhookRepository(s).delete(self._get(s, webhook_id))

    def deliveries(
        self, webhook_id: str, *, cursor: str | None, limit: int, status: str | None
    ) -> tuple[list[DeliveryOut], str | None]:
        before = number_cursor(cursor)
        with self.db.read() as s:
            self._get(s, webhook_id)
            rows = WebhookRepository(s).deliveries(webhook_id, before=before, limit=limit + 1, status=status)
        more = len(rows) > limit
        rows = rows[:limit]
        return [delivery_out(d) for d in rows], (str(rows[-1].id) if more and rows else None)

    def delivery(self, webhook_id: str, delivery_id: int) -> DeliveryOut:
        with self.db.read() as s:
            d = WebhookRepository(s).delivery(delivery_id)
            if d is None or d.webhook_id != webhook_id:
                raise NotFound(f"webhook {webhook_id!r} has no delivery {delivery_id}")
            return delivery_out(d)

    def ping(self, webhook_id: str) -> DeliveryOut:
        """``POST /webhooks/{id}/test``: a ``ping`` message for this webhook alone."""
        msg_id = "ping_" + secrets.token_hex(8)
        now = utcnow()
        body = orjson.dumps(
            {
                "id": msg_id,
                "type": "ping",
                "at": now.isoformat().replace("+00:00", "Z"),
                "model": None,
                "data": {"webhook": webhook_id},
            }
        )
        with self.db.write() as s:
            self._get(s, webhook_id)
            d = WebhookDelivery(
                webhook_id=webhook_id,
                msg_id=msg_id,
                event_id=None,
                event_type="ping",
                body=body,
                status=PENDING,
                attempts=0,
                next_attempt_at=now,
                log=[],
                created_at=now,
            )
            s.add(d)
            s.flush()
            return delivery_out(d)

    # ---- the delivery loop's steps
    def fan_out(self) -> int:
        """Add the deliveries of the events committed since each webhook's cursor; returns
        how many were added."""
        added = 0
        with self.db.read() as s:  # most rounds find nothing: no write transaction for them
            if not WebhookRepository(s).behind(EventRepository(s).head()):
                return 0
        with self.db.write() as s:
            repo = WebhookRepository(s)
            hooks = repo.for_dispatch()
            if not hooks:
                return 0
            events = EventRepository(s)
            now = utcnow()
            for w in hooks:
                rows = events.after(w.cursor, FANOUT_BATCH)
                if not rows:
                    continue
                models = set(w.models) if w.models is not None else None
                new = [
                    {
                        "webhook_id": w.id,
                        "msg_id": str(e.id),
                        "event_id": e.id,
                        "event_type": e.type,
                        "body": orjson.dumps(event_out(e).model_dump(mode="json")),
                        "status": PENDING,
                        "attempts": 0,
                        "next_attempt_at": now,
                        "log": [],
                        "created_at": now,
                    }
                    for e in rows
                    if matches(w.events, e.type) and (models is None or e.model in models)
                ]
                repo.add_deliveries(new)
                w.cursor = rows[-1].id
                added += len(new)
        return added

    def claim(self, owner: str, limit: int) -> list[Claimed]:
        """Take up to ``limit`` due deliveries with a lease (their attempt counted now)."""
        now = utcnow()
        lease = timedelta(seconds=self.settings.webhook_timeout_seconds * 2 + 30)
        out: list[Claimed] = []
        with self.db.read() as s:
            if not WebhookRepository(s).any_due(now):
                return out
        with self.db.write() as s:
            repo = WebhookRepository(s)
            for d in repo.due(now, limit):
                w = repo.get(d.webhook_id)
                if w is None:
                    continue
                d.attempts += 1
                try:
                    key = signing.secret_key(sealing.unseal(self.sealing_key, w.secret, w.id))
                except (sealing.SealError, ValueError) as e:
                    # this process has another STEWARD_SECRETS_KEY: a failed attempt (another
                    # process may send it), counted like any, never a stuck loop
                    log.error("webhook %s: its secret cannot be unsealed here: %s", w.id, e)
                    d.last_error = f"the webhook's secret cannot be unsealed by this process: {e}"
                    d.log = [
                        *(d.log or []),
                        {
                            "at": now.isoformat().replace("+00:00", "Z"),
                            "status": None,
                            "error": d.last_error,
                            "ms": 0.0,
                        },
                    ][-LOG_KEEP:]
                    if d.attempts >= self.settings.webhook_max_attempts:
                        d.status, d.next_attempt_at = FAILED, None
                    else:
                        cfg = self.settings
                        wait = backoff(d.attempts, cfg.webhook_backoff_seconds, cfg.webhook_backoff_max_seconds)
                        d.next_attempt_at = now + timedelta(seconds=wait)
                    continue
                d.status = SENDING
                d.lease_owner = owner
                d.lease_expires_at = now + lease
                out.append(Claimed(d.id, w.id, w.url, key, d.msg_id, d.body, d.attempts))
        return out

    def record(self, c: Claimed, owner: str, *, status: int | None, error: str | None, ms: float) -> str | None:
        """Write an attempt's outcome if ``owner`` still holds the delivery; returns its new
        status (None: the lease was lost, or the delivery is gone with its webhook)."""
        now = utcnow()
        with self.db.write() as s:
            d = WebhookRepository(s).delivery(c.delivery_id, for_update=True)
            if d is None or d.status != SENDING or d.lease_owner != owner or d.attempts != c.attempt:
                return None
            ok = status is not None and 200 <= status < 300
            entry = {"at": now.isoformat().replace("+00:00", "Z"), "status": status, "error": error, "ms": round(ms, 1)}
            d.log = [*(d.log or []), entry][-LOG_KEEP:]
            d.last_status = status
            d.last_error = None if ok else error
            d.lease_owner = None
            d.lease_expires_at = None
            if ok:
                d.status = DELIVERED
                d.delivered_at = now
                d.next_attempt_at = None
            elif d.attempts >= self.settings.webhook_max_attempts:
                d.status = FAILED
                d.next_attempt_at = None
            else:
                d.status = PENDING
                wait = backoff(
                    d.attempts, self.settings.webhook_backoff_seconds, self.settings.webhook_backoff_max_seconds
                )
                d.next_attempt_at = now + timedelta(seconds=wait)
            return d.status
