"""Queries of recorded predictions: ``prediction_batches`` (one row per recorded request,
inputs and outputs packed), ``predictions`` (a client-named id → batch and position) and
``prediction_labels`` (the labels a batch got, packed). Ids Steward made name their batch
themselves (:mod:`app.online.records`). Repositories never commit.

The queries run on the session connection's DBAPI cursor, like the sample log's append
(:mod:`app.online.repository`): a label request reads and writes a row per recorded
request it touches, and SQLAlchemy's per-row processing cost more than the database's
work (measured: 1,000 labels ≈ 17 → 5 ms)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.core.tables import Prediction, PredictionBatch, PredictionLabels, table
from app.online.records import parse

#: ids per ``IN (...)`` query (well under SQLite's and PostgreSQL's parameter limits)
IN_CHUNK = 500

_ids = table(Prediction)
_labels = table(PredictionLabels)


def _chunks(items: Sequence[Any], n: int = IN_CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


@dataclass
class Batch:
    """One recorded request as a label needs it: where it came from and what was served,
    and its labels so far (``y`` / ``offsets`` None while none)."""

    id: int
    model_id: int
    version: int
    count: int
    token: int | None
    x: bytes
    outputs: bytes
    y: bytes | None
    offsets: bytes | None


class PredictionRepository:
    def __init__(self, s: Session | sa.Connection) -> None:
        self.s = s
        self.conn = s.connection() if isinstance(s, Session) else s
        self._q = "?" if self.conn.dialect.paramstyle == "qmark" else "%s"

    def _run(self, sql: str, params: Sequence[Any], *, many: bool = False) -> list[Any]:
        cur = self.conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            if many:
                cur.executemany(sql, params)
                return []
            cur.execute(sql, params)
            return list(cur.fetchall()) if cur.description is not None else []
        finally:
            cur.close()

    def _marks(self, n: int) -> str:
        return ", ".join([self._q] * n)

    def locate(self, model_id: int, pids: Sequence[str]) -> tuple[dict[str, tuple[int, int]], dict[int, Batch]]:
        """Where the recorded ids among ``pids`` are: ``({id: (batch id, position)},
        {batch id: batch})``. An id of Steward's form is its own batch's when that batch is
        the model's, holds the position and has the id's token; every other id is looked
        up among the client-named ones."""
        unique = list(dict.fromkeys(pids))
        made = {p: parsed for p in unique if (parsed := parse(p)) is not None}
        batches = self.batches({b for b, _, _ in made.values()})
        where: dict[str, tuple[int, int]] = {}
        rest: list[str] = []
        for p in unique:
            g = made.get(p)
            b = batches.get(g[0]) if g is not None else None
            if g is not None and b is not None and b.model_id == model_id and b.token == g[2] and g[1] < b.count:
                where[p] = (g[0], g[1])
            else:
                rest.append(p)
        if rest:
            named = self.named(model_id, rest)
            where.update(named)
            batches.update(self.batches({b for b, _ in named.values()} - batches.keys()))
        return where, batches

    def named(self, model_id: int, pids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """``{id: (batch id, position)}`` of the client-named ids among ``pids``."""
        out: dict[str, tuple[int, int]] = {}
        for part in _chunks(pids):
            sql = (
                f"SELECT pid, batch_id, position FROM predictions WHERE model_id = {self._q} "
                f"AND pid IN ({self._marks(len(part))})"
            )
            for pid, batch, pos in self._run(sql, [model_id, *part]):
                out[str(pid)] = (int(batch), int(pos))
        return out

    def batches(self, ids: Iterable[int]) -> dict[int, Batch]:
        """The recorded requests ``ids`` that exist, with their labels so far."""
        out: dict[int, Batch] = {}
        for part in _chunks(sorted(set(ids))):
            sql = (
                "SELECT b.id, b.model_id, b.version, b.count, b.token, b.x, b.outputs, l.y, l.offsets "
                "FROM prediction_batches b LEFT JOIN prediction_labels l ON l.batch_id = b.id "
                f"WHERE b.id IN ({self._marks(len(part))})"
            )
            for r in self._run(sql, part):
                out[int(r[0])] = Batch(
                    int(r[0]),
                    int(r[1]),
                    int(r[2]),
                    int(r[3]),
                    None if r[4] is None else int(r[4]),
                    bytes(r[5]),
                    bytes(r[6]),
                    None if r[7] is None else bytes(r[7]),
                    None if r[8] is None else bytes(r[8]),
                )
        return out

    def put_labels(self, rows: Sequence[tuple[int, np.ndarray, np.ndarray]]) -> None:
        """Store ``(batch id, packed labels, offsets)``: the batch's labels as they are now."""
        if not rows:
            return
        sql = (
            f"INSERT INTO prediction_labels (batch_id, y, offsets) VALUES ({self._marks(3)}) "
            "ON CONFLICT (batch_id) DO UPDATE SET y = excluded.y, offsets = excluded.offsets"
        )
        self._run(sql, [(b, y.tobytes(), o.tobytes()) for b, y, o in rows], many=True)

    def add_served(self, model_id: int, rows: Sequence[tuple[int, int, float, int]]) -> None:
        """``(version, labelled, loss sum, correct)``: more of the versions' recorded
        predictions labelled, with the sums of their losses and hits (``served``)."""
        sql = (
            "INSERT INTO served_metrics (model_id, version, predictions, labelled, loss_sum, correct) "
            f"VALUES ({self._marks(6)}) ON CONFLICT (model_id, version) DO UPDATE SET "
            "labelled = served_metrics.labelled + excluded.labelled, "
            "loss_sum = served_metrics.loss_sum + excluded.loss_sum, "
            "correct = served_metrics.correct + excluded.correct"
        )
        self._run(sql, [(model_id, v, 0, n, loss, right) for v, n, loss, right in rows], many=True)

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
        """Forget recorded requests, their ids and labels."""
        if batch_ids:
            ids = list(batch_ids)
            self.s.execute(sa.delete(_ids).where(_ids.c.batch_id.in_(ids)))
            self.s.execute(sa.delete(_labels).where(_labels.c.batch_id.in_(ids)))
            self.s.execute(sa.delete(PredictionBatch).where(PredictionBatch.id.in_(ids)))
