"""Queries of the ``events`` table (reads only: events are written by the outbox at
commit, :mod:`app.core.outbox`)."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.core.tables import Event


class EventRepository:
    def __init__(self, s: Session) -> None:
        self.s = s

    def after(
        self,
        after: int,
        limit: int,
        *,
        models: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
        prefixes: Sequence[str] | None = None,
    ) -> list[Event]:
        """Events with ``id > after``, oldest first; ``models`` / ``types`` filter
        (``prefixes``: type prefixes such as ``job.``, or-ed with ``types``)."""
        q = sa.select(Event).where(Event.id > after).order_by(Event.id).limit(limit)
        if models is not None:
            q = q.where(Event.model.in_(list(models)))
        conds: list[sa.ColumnElement[bool]] = []
        if types:
            conds.append(Event.type.in_(list(types)))
        for p in prefixes or ():
            conds.append(Event.type.startswith(p, autoescape=True))
        if conds:
            q = q.where(sa.or_(*conds))
        return list(self.s.scalars(q))

    def head(self) -> int:
        """The newest event id (0: none yet)."""
        return int(self.s.scalar(sa.select(sa.func.coalesce(sa.func.max(Event.id), 0))) or 0)
