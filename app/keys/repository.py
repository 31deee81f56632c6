"""Queries of API keys (never commits: the service owns the transaction)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.core.db import KEYS_SUBJECT, mark_changed
from app.core.tables import ApiKey


class ApiKeyRepository:
    def __init__(self, s: Session) -> None:
        self.s = s

    def by_hash(self, key_hash: str) -> ApiKey | None:
        return self.s.scalars(sa.select(ApiKey).where(ApiKey.key_hash == key_hash)).one_or_none()

    def get(self, key_id: str) -> ApiKey | None:
        return self.s.get(ApiKey, key_id)

    def page(self, *, after: str | None, limit: int) -> list[ApiKey]:
        q = sa.select(ApiKey).where(ApiKey.revoked_at.is_(None)).order_by(ApiKey.id).limit(limit)
        if after is not None:
            q = q.where(ApiKey.id > after)
        return list(self.s.scalars(q))

    def count_admin(self) -> int:
        return int(
            self.s.scalar(sa.select(sa.func.count()).where(ApiKey.scope == "admin", ApiKey.revoked_at.is_(None))) or 0
        )

    def add(self, k: ApiKey) -> ApiKey:
        self.s.add(k)
        self.s.flush()
        return k

    def revoke(self, k: ApiKey, when: datetime) -> None:
        k.revoked_at = when
        mark_changed(self.s, KEYS_SUBJECT)
        self.s.flush()
