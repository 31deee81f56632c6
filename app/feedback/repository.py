"""Queries of recorded predictions: ``prediction_batches`` (one row per recorded request,
inputs and outputs packed) and ``predictions`` (id → batch and position; label and sample
offset once labelled). Repositories never commit."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.core.tables import Prediction, PredictionBatch, table

#: ids per ``IN (...)`` query (well under SQLite's and PostgreSQL's parameter limits)
IN_CHUNK = 500

_ids = table(Prediction)


def _chunks(items: Sequence[Any], n: int = IN_CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


class PredictionRepository:
    def __init__(self, s: Session) -> None:
        self.s = s

    def find(self, model_id: int, pids: Sequence[str]) -> dict[str, tuple[int, int, Any, int | None]]:
        """``{id: (batch id, position, label, offset)}`` of the ids that are recorded."""
        out: dict[str, tuple[int, int, Any, int | None]] = {}
        q = sa.select(_ids.c.pid, _ids.c.batch_id, _ids.c.position, _ids.c.label, _ids.c.offset)
        for part in _chunks(list(pids)):
            rows: Iterable[Any] = self.s.execute(q.where(_ids.c.model_id == model_id, _ids.c.pid.in_(part)))
            for pid, batch, pos, label, offset in rows:
                out[str(pid)] = (int(batch), int(pos), label, None if offset is None else int(offset))
        return out

    def batches(self, ids: Iterable[int]) -> dict[int, PredictionBatch]:
        out: dict[int, PredictionBatch] = {}
        for part in _chunks(sorted(set(ids))):
            for b in self.s.scalars(sa.select(PredictionBatch).where(PredictionBatch.id.in_(part))):
                out[b.id] = b
        return out

    def set_labels(self, model_id: int, rows: Sequence[tuple[str, Any, int]]) -> None:
        """Mark ``(id, label, offset)``: labelled, as the sample at ``offset``. One DBAPI
        ``executemany`` (SQLAlchemy's per-row parameter processing cost more than the
        updates); the label is stored as the JSON text the ``JSON`` column type stores."""
        if not rows:
            return
        conn = self.s.connection()
        sqlite = conn.dialect.name == "sqlite"
        q = "?" if sqlite else "%s"
        label = q if sqlite else f"CAST({q} AS JSON)"
        sql = f'UPDATE predictions SET label = {label}, "offset" = {q} WHERE model_id = {q} AND pid = {q}'
        params = [(orjson.dumps(lab).decode(), o, model_id, p) for p, lab, o in rows]
        cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cur.executemany(sql, params)
        finally:
            cur.close()

    def expired(self, before: datetime, limit: int) -> list[int]:
        """Ids of up to ``limit`` recorded requests made before ``before``, oldest first."""
        q = (
            sa.select(PredictionBatch.id)
            .where(PredictionBatch.created_at < before)
            .order_by(PredictionBatch.created_at)
            .limit(limit)
        )
        return list(self.s.scalars(q))

    def delete(self, batch_ids: Sequence[int]) -> None:
        """Forget recorded requests and their ids."""
        if batch_ids:
            self.s.execute(sa.delete(_ids).where(_ids.c.batch_id.in_(list(batch_ids))))
            self.s.execute(sa.delete(PredictionBatch).where(PredictionBatch.id.in_(list(batch_ids))))
