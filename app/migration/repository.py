"""Queries of exports (never commits: the service owns the transaction)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.core.tables import Export


class ExportRepository:
    def __init__(self, s: Session) -> None:
        self.s = s

    def get(self, version_id: int, target: str) -> Export | None:
        return self.s.scalars(
            sa.select(Export).where(Export.version_id == version_id, Export.target == target)
        ).one_or_none()

    def for_version(self, version_id: int) -> list[Export]:
        return list(self.s.scalars(sa.select(Export).where(Export.version_id == version_id)))

    def add(self, e: Export) -> Export:
        self.s.add(e)
        self.s.flush()
        return e
