"""Queries of online learning: the sample log, Idempotency-Keys, learner leases, shadows
and the metrics history (never commits: the service owns the transaction)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.core.tables import (
    IdempotencyKey,
    Learner,
    MetricPoint,
    Model,
    SampleBatch,
    ServedMetrics,
    Shadow,
    Version,
    table,
    utcnow,
)
from app.online.records import make_ids, new_token


# --------------------------------------------------------------------------- online learning
class _AppendSQL:
    """The append's three statements as the driver takes them (the committer runs them on
    its connection's DBAPI cursor, inside the SQLAlchemy transaction): Core's execution
    machinery costs more than the database's work for a one-sample append (measured:
    ~520 → ~230 µs of CPU per group commit of 8). Built once per dialect."""

    def __init__(self, dialect: sa.Dialect) -> None:
        q = "?" if dialect.paramstyle == "qmark" else "%s"
        self.q = q
        self.lock_tail = " ORDER BY id" + ("" if dialect.name == "sqlite" else " FOR UPDATE")
        self.set_next = f"UPDATE models SET next_offset = {q} WHERE id = {q}"
        cols = "model_id, first_offset, count, x, y, created_at"
        self.insert = f"INSERT INTO sample_batches ({cols}) VALUES ({', '.join([q] * 6)})"
        stamp = table(SampleBatch).c.created_at.type.bind_processor(dialect)
        self.stamp: Any = stamp if stamp is not None else (lambda v: v)
        # recorded predictions carried by the same group commit (app.feedback)
        self.record_batch = (
            "INSERT INTO prediction_batches (model_id, version, count, x, outputs, token, created_at) "
            f"VALUES ({', '.join([q] * 7)}) RETURNING id"
        )
        self.record_ids = f"INSERT INTO predictions (model_id, pid, batch_id, position) VALUES ({q}, {q}, {q}, {q})"
        self.served = (
            "INSERT INTO served_metrics (model_id, version, predictions, labelled, loss_sum, correct) "
            f"VALUES ({q}, {q}, {q}, 0, 0.0, 0) ON CONFLICT (model_id, version) "
            "DO UPDATE SET predictions = served_metrics.predictions + excluded.predictions"
        )

    def lock(self, n: int) -> str:
        return (
            f"SELECT id, task, input_dim, output_dim, next_offset FROM models WHERE id IN ({', '.join([self.q] * n)})"
            + self.lock_tail
        )


_SQL: dict[str, _AppendSQL] = {}


def raw_execute(cur: Any, sql: str, params: Any, *, many: bool = False) -> None:
    """Every statement of the append's DBAPI path goes through here (one place to see them)."""
    if many:
        cur.executemany(sql, params)
    else:
        cur.execute(sql, params)


def _append_sql(dialect: sa.Dialect) -> _AppendSQL:
    sql = _SQL.get(dialect.name)
    if sql is None:
        sql = _SQL[dialect.name] = _AppendSQL(dialect)
    return sql


_batches = table(SampleBatch).c
#: the rows holding offsets lo..hi: from the last row starting at or before lo
_COVERING = (
    sa.select(_batches.first_offset, _batches.count, _batches.x, _batches.y)
    .where(
        _batches.model_id == sa.bindparam("mid"),
        _batches.first_offset
        >= sa.func.coalesce(
            sa.select(sa.func.max(_batches.first_offset))
            .where(_batches.model_id == sa.bindparam("mid"), _batches.first_offset <= sa.bindparam("lo"))
            .scalar_subquery(),
            sa.bindparam("lo"),
        ),
        _batches.first_offset <= sa.bindparam("hi"),
    )
    .order_by(_batches.first_offset)
)


def _core(s: Session | sa.Connection) -> sa.Connection:
    return s.connection() if isinstance(s, Session) else s


class SampleRepository:
    """The sample log: ``sample_batches`` rows of packed arrays, offsets allocated
    from ``models.next_offset`` (the number of samples ever accepted). The append's
    queries run on a Core connection — the committer's own (no ORM session per commit)
    or a session's."""

    def __init__(self, s: Session | sa.Connection) -> None:
        self.s = s

    def _cursor(self) -> tuple[Any, _AppendSQL]:
        conn = _core(self.s)
        return conn.connection.driver_connection.cursor(), _append_sql(conn.dialect)  # type: ignore[union-attr]

    def lock_models(self, model_ids: Sequence[int]) -> dict[int, tuple[str, int, int, int]]:
        """Lock the models' rows for an append (``FOR UPDATE``, in id order so concurrent
        appenders never deadlock; SQLite's ``BEGIN IMMEDIATE`` already serializes writers).

        Returns ``{id: (task, input_dim, output_dim, next_offset)}`` for the models that exist.
        """
        cur, sql = self._cursor()
        try:
            raw_execute(cur, sql.lock(len(model_ids)), list(model_ids))
            return {int(r[0]): (r[1], int(r[2]), int(r[3]), int(r[4])) for r in cur.fetchall()}
        finally:
            cur.close()

    def set_next_offset(self, model_id: int, next_offset: int) -> None:
        """``models.next_offset`` after an append (the caller holds the row lock)."""
        cur, sql = self._cursor()
        try:
            raw_execute(cur, sql.set_next, (next_offset, model_id))
        finally:
            cur.close()

    def add_rows(self, rows: list[dict[str, Any]]) -> None:
        """Insert rows made by :func:`app.online.log.pack_rows`."""
        if not rows:
            return
        cur, sql = self._cursor()
        try:
            stamp = sql.stamp
            values = [
                (r["model_id"], r["first_offset"], r["count"], r["x"], r["y"], stamp(r["created_at"])) for r in rows
            ]
            raw_execute(cur, sql.insert, values, many=True)
        finally:
            cur.close()

    def add_records(
        self, records: Sequence[tuple[int, int, np.ndarray, np.ndarray, Sequence[str] | None]]
    ) -> list[list[str]]:
        """Store recorded predictions ``(model_id, version, X, outputs, ids)``: one
        ``prediction_batches`` row each and their count in the version's served metrics
        (the group commit's and FeedbackService.record's one way). ``ids`` None: Steward
        makes them (:mod:`app.online.records`, no row per id); else the client's, one
        ``predictions`` row each. Returns each record's ids."""
        if not records:
            return []
        cur, sql = self._cursor()
        made: list[list[str]] = []
        try:
            now = sql.stamp(utcnow())
            for mid, version, X, out, pids in records:
                x = np.ascontiguousarray(X, dtype=np.float32).tobytes()
                o = np.ascontiguousarray(out, dtype=np.float32).tobytes()
                token = new_token() if pids is None else None
                raw_execute(cur, sql.record_batch, (mid, version, len(X), x, o, token, now))
                batch_id = int(cur.fetchone()[0])
                if token is not None:
                    made.append(make_ids(batch_id, token, len(X)))
                else:
                    assert pids is not None
                    raw_execute(cur, sql.record_ids, [(mid, p, batch_id, k) for k, p in enumerate(pids)], many=True)
                    made.append(list(pids))
                raw_execute(cur, sql.served, (mid, version, len(X)))
        finally:
            cur.close()
        return made

    def covering(self, model_id: int, lo: int, hi: int) -> Sequence[sa.Row[tuple[int, int, bytes, bytes]]]:
        """Rows holding any offset in ``lo..hi`` (inclusive), in offset order, as
        ``(first_offset, count, x, y)`` (a Core query built once: no ORM objects, the
        learner reads the log with it on every slice)."""
        return _core(self.s).execute(_COVERING, {"mid": model_id, "lo": lo, "hi": hi}).all()  # type: ignore[return-value]


_KEYS = table(IdempotencyKey)
_GET_KEY = sa.select(_KEYS.c.request_hash, _KEYS.c.response, _KEYS.c.created_at).where(
    _KEYS.c.model_id == sa.bindparam("mid"), _KEYS.c.key == sa.bindparam("key")
)
_DELETE_KEY = sa.delete(_KEYS).where(_KEYS.c.model_id == sa.bindparam("mid"), _KEYS.c.key == sa.bindparam("key"))


class IdempotencyRepository:
    """Idempotency-Keys, in Core (the append's queries: see :class:`SampleRepository`)."""

    def __init__(self, s: Session | sa.Connection) -> None:
        self.s = s

    def get(self, model_id: int, key: str) -> tuple[str, dict[str, Any], datetime] | None:
        """``(request_hash, response, created_at)`` of a remembered key."""
        row = _core(self.s).execute(_GET_KEY, {"mid": model_id, "key": key}).first()
        return None if row is None else (str(row[0]), dict(row[1]), row[2])

    def add_many(self, rows: list[dict[str, Any]]) -> None:
        """Insert ``{"model_id", "key", "request_hash", "response"}`` rows."""
        if rows:
            now = utcnow()
            _core(self.s).execute(sa.insert(_KEYS), [{**r, "created_at": now} for r in rows])

    def delete(self, model_id: int, key: str) -> None:
        _core(self.s).execute(_DELETE_KEY, {"mid": model_id, "key": key})

    def purge(self, before: datetime) -> int:
        """Forget keys created before ``before``; returns how many."""
        res = _core(self.s).execute(sa.delete(_KEYS).where(_KEYS.c.created_at < before))
        return int(res.rowcount or 0)


_models, _learners, _versions = table(Model).c, table(Learner).c, table(Version).c
#: what the learner reads once per turn about its held models (built once: see :data:`_COVERING`)
_CONTROLS = (
    sa.select(
        _models.id,
        _models.status,
        _models.paused_offset,
        _models.next_offset,
        sa.select(sa.func.max(_versions.version)).where(_versions.model_id == _models.id).scalar_subquery(),
        _learners.owner,
        _learners.mailbox,
        _learners.applied_through,
    )
    .select_from(table(Model).join(table(Learner), _learners.model_id == _models.id))
    .where(_models.id.in_(sa.bindparam("ids", expanding=True)))
)
#: the learner's progress, written only while ``owner`` holds the lease (one statement: the
#: UPDATE takes the row lock and checks the owner at once)
_PUBLISH = (
    sa.update(table(Learner))
    .where(_learners.model_id == sa.bindparam("mid"), _learners.owner == sa.bindparam("me"))
    .values(
        prequential=sa.bindparam("prequential", type_=sa.JSON()),
        drift=sa.bindparam("drift", type_=sa.JSON()),
        applied_through=sa.bindparam("applied_through"),
        updated_at=sa.bindparam("now"),
    )
)


class LearnerRepository:
    """``learners`` rows: which process holds a model's online learner (a lease) and
    the progress it publishes. Leases are taken and renewed by conditional UPDATEs,
    so exactly one owner wins on SQLite and PostgreSQL alike."""

    def __init__(self, s: Session) -> None:
        self.s = s

    def get(self, model_id: int, *, for_update: bool = False) -> Learner | None:
        q = sa.select(Learner).where(Learner.model_id == model_id)
        if for_update:
            q = q.with_for_update()
        return self.s.scalars(q).one_or_none()

    def with_model(self, model_id: int) -> tuple[Model, Learner | None] | None:
        """The model row and its learner row (None: no such model)."""
        row = self.s.execute(
            sa.select(Model, Learner).outerjoin(Learner, Learner.model_id == Model.id).where(Model.id == model_id)
        ).one_or_none()
        return None if row is None else (row[0], row[1])

    def controls(self, model_ids: list[int]) -> list[Any]:
        """Per held model, what the learner reads once per turn: ``(id, status,
        paused_offset, next_offset, latest version, lease owner, mailbox, published
        applied_through)``."""
        return list(self.s.connection().execute(_CONTROLS, {"ids": list(model_ids)}).all())

    def publish(
        self,
        model_id: int,
        owner: str,
        applied_through: int,
        prequential: dict[str, Any],
        drift: dict[str, Any] | None = None,
    ) -> bool:
        """Write the learner's progress if ``owner`` still holds the lease (False: it does not)."""
        res = self.s.connection().execute(
            _PUBLISH,
            {
                "mid": model_id,
                "me": owner,
                "applied_through": applied_through,
                "prequential": prequential,
                "drift": drift,
                "now": utcnow(),
            },
        )
        return bool(res.rowcount)

    def progress_all(self) -> list[Any]:
        """Every model's ``(name, next_offset, status, applied_through, drift)`` (for /metrics)."""
        return list(
            self.s.execute(
                sa.select(
                    Model.name, Model.next_offset, Model.status, Learner.applied_through, Learner.drift
                ).outerjoin(Learner, Learner.model_id == Model.id)
            ).all()
        )

    def ensure_rows(self) -> int:
        """Create missing ``learners`` rows (models made without one); returns how many."""
        missing = list(self.s.scalars(sa.select(Model.id).where(~sa.exists().where(Learner.model_id == Model.id))))
        now = utcnow()
        for mid in missing:
            self.s.add(Learner(model_id=mid, applied_through=-1, updated_at=now))
        if missing:
            self.s.flush()
        return len(missing)

    def claimable(self, owner: str, now: datetime, limit: int, *, skip_locked: bool) -> list[int]:
        """Model ids whose learner is free, expired or already ours."""
        q = (
            sa.select(Learner.model_id)
            .where(sa.or_(Learner.owner.is_(None), Learner.owner == owner, Learner.lease_expires_at < now))
            .order_by(Learner.model_id)
            .limit(limit)
        )
        if skip_locked:
            q = q.with_for_update(skip_locked=True)
        return list(self.s.scalars(q))

    def claim(self, model_id: int, owner: str, now: datetime, until: datetime) -> bool:
        t = table(Learner)
        res = self.s.execute(
            sa.update(t)
            .where(
                t.c.model_id == model_id,
                sa.or_(t.c.owner.is_(None), t.c.owner == owner, t.c.lease_expires_at < now),
            )
            .values(owner=owner, lease_expires_at=until)
        )
        return bool(res.rowcount)  # type: ignore[attr-defined]

    def renew(self, model_id: int, owner: str, until: datetime) -> bool:
        t = table(Learner)
        res = self.s.execute(
            sa.update(t).where(t.c.model_id == model_id, t.c.owner == owner).values(lease_expires_at=until)
        )
        return bool(res.rowcount)  # type: ignore[attr-defined]

    def release(self, model_id: int, owner: str) -> None:
        t = table(Learner)
        self.s.execute(
            sa.update(t).where(t.c.model_id == model_id, t.c.owner == owner).values(owner=None, lease_expires_at=None)
        )


class ShadowRepository:
    """``shadows`` rows: candidates scoring the log beside the version they are compared
    with (the API puts and deletes them; the learner adds to their sums)."""

    def __init__(self, s: Session) -> None:
        self.s = s

    def of(self, model_id: int) -> list[Shadow]:
        return list(self.s.scalars(sa.select(Shadow).where(Shadow.model_id == model_id).order_by(Shadow.version)))

    def get(self, model_id: int, version: int) -> Shadow | None:
        return self.s.get(Shadow, (model_id, version))

    def put(self, model_id: int, version: int, against: int, since: int) -> tuple[Shadow, bool]:
        """Start (or restart, from ``since``) the shadow of ``version``; (row, created)."""
        row = self.get(model_id, version)
        created = row is None
        if row is None:
            row = Shadow(model_id=model_id, version=version)
            self.s.add(row)
        row.against_version, row.since_offset, row.through = against, since, since - 1
        row.n, row.loss_sum, row.correct, row.against_loss_sum, row.against_correct = 0, 0.0, 0, 0.0, 0
        row.created_at = utcnow()
        self.s.flush()
        return row, created

    def delete(self, row: Shadow) -> None:
        self.s.delete(row)
        self.s.flush()

    def save(self, model_id: int, version: int, since: int, sums: dict[str, Any]) -> None:
        """The learner's sums of a shadow (only if it was not restarted since: ``since``)."""
        self.s.execute(
            sa.update(Shadow)
            .where(Shadow.model_id == model_id, Shadow.version == version, Shadow.since_offset == since)
            .values(**sums)
        )


_points, _served = table(MetricPoint).c, table(ServedMetrics).c


@dataclass(frozen=True)
class Bucket:
    """One answer point of :meth:`MetricPointRepository.buckets`: the bucket's last recorded
    point (``offset``, ``at``, its cumulative sums) and the sums over the bucket."""

    offset: int
    at: datetime
    count: int
    loss_sum: float
    correct: int | None
    samples: int  # prequential samples in the bucket
    bucket_loss_sum: float
    bucket_correct: int | None
    labelled: int  # labels the model's served predictions got in the bucket
    served_loss_sum: float
    served_correct: int | None


def _delta(cur: Any, prev: Any, restarted: Any) -> Any:
    """``cur − prev`` of a cumulative sum, or ``cur`` itself where the sums restarted."""
    return sa.case((restarted, cur), else_=cur - prev)


class MetricPointRepository:
    """``metric_points``: the learner appends points of a model's learning curve (idempotent:
    a replay after a crash meets its points again), the metrics history reads them back
    bucketed."""

    def __init__(self, s: Session) -> None:
        self.s = s

    def last_offset(self, model_id: int) -> int | None:
        """The offset of the model's newest point (None: none recorded)."""
        got = self.s.scalar(sa.select(sa.func.max(_points.offset)).where(_points.model_id == model_id))
        return None if got is None else int(got)

    def add_many(self, model_id: int, points: Sequence[tuple[int, int, float, int | None]]) -> None:
        """Record points ``(offset, count, loss_sum, correct)`` — the learner's prequential
        sums — each with the model's served totals over all its versions as they are now, in
        one statement; a point already recorded at an offset is kept as it is (``ON
        CONFLICT DO NOTHING``)."""
        if not points:
            return
        totals: Any = self.s.execute(
            sa.select(
                sa.func.coalesce(sa.func.sum(_served.labelled), 0),
                sa.func.coalesce(sa.func.sum(_served.loss_sum), 0.0),
                sa.func.coalesce(sa.func.sum(_served.correct), 0),
            ).where(_served.model_id == model_id)
        ).one()
        labelled, served_loss, served_correct = int(totals[0]), float(totals[1]), int(totals[2])
        at = utcnow()
        rows = [
            {
                "model_id": model_id,
                "offset": offset,
                "at": at,
                "count": count,
                "loss_sum": loss_sum,
                "correct": correct,
                "served_labelled": labelled,
                "served_loss_sum": served_loss,
                # like the prequential ``correct``: none for a regression
                "served_correct": None if correct is None else served_correct,
            }
            for offset, count, loss_sum, correct in points
        ]
        insert = sqlite_insert if self.s.get_bind().dialect.name == "sqlite" else pg_insert
        stmt = insert(table(MetricPoint)).on_conflict_do_nothing(index_elements=["model_id", "offset"])
        self.s.execute(stmt, rows)  # executemany: one statement compiled, the rows batched

    def count(self, model_id: int, lo: int, hi: int) -> int:
        """Points recorded at offsets ``lo..hi``."""
        q = sa.select(sa.func.count()).where(_points.model_id == model_id, _points.offset.between(lo, hi))
        return int(self.s.scalar(q) or 0)

    def buckets(self, model_id: int, lo: int, hi: int, n: int) -> list[Bucket]:
        """The offsets ``lo..hi`` cut into ``n`` equal-width buckets (point at offset ``o`` in
        bucket ``⌊(o − lo)·n / (hi − lo + 1)⌋``); per bucket holding a point, its last point
        and the sums over the bucket, in offset order.

        A bucket's sums are the sums of its points' steps, a step being a point's cumulative
        sums minus those of the point before it (the first point of the range steps from the
        last point before ``lo``): exact means over any stretch of offsets, whatever the
        bucketing. Where a cumulative count went down (the learner's metrics began again,
        or the served totals), the step is the point's own sums. One query (window
        functions, on SQLite and PostgreSQL): the points never come to Python one by one.
        """
        big = sa.BigInteger()
        lo_, hi_, n_ = sa.literal(lo, big), sa.literal(hi, big), sa.literal(n, big)
        before = (
            sa.select(sa.func.max(_points.offset))
            .where(_points.model_id == model_id, _points.offset < lo_)
            .scalar_subquery()
        )
        cols = [_points.offset, _points.at, _points.count, _points.loss_sum, _points.correct]
        served = [_points.served_labelled, _points.served_loss_sum, _points.served_correct]
        sums = [_points.count, _points.loss_sum, _points.correct, *served]
        lags = [sa.func.lag(c).over(order_by=_points.offset).label(f"p_{c.name}") for c in sums]
        ranged = (
            sa.select(*cols, *served, *lags)
            .where(
                _points.model_id == model_id,
                _points.offset >= sa.func.coalesce(before, lo_),
                _points.offset <= hi_,
            )
            .subquery()
        )
        r = ranged.c
        restarted = sa.or_(r.p_count.is_(None), r.count < r.p_count)
        served_restarted = sa.or_(r.p_served_labelled.is_(None), r.served_labelled < r.p_served_labelled)
        steps = (
            sa.select(
                r.offset,
                r.at,
                r.count,
                r.loss_sum,
                r.correct,
                ((r.offset - lo_) * n_ // (hi_ - lo_ + 1)).label("bucket"),
                _delta(r.count, r.p_count, restarted).label("d_count"),
                _delta(r.loss_sum, r.p_loss_sum, restarted).label("d_loss"),
                _delta(r.correct, r.p_correct, restarted).label("d_correct"),
                _delta(r.served_labelled, r.p_served_labelled, served_restarted).label("d_labelled"),
                _delta(r.served_loss_sum, r.p_served_loss_sum, served_restarted).label("d_served_loss"),
                _delta(r.served_correct, r.p_served_correct, served_restarted).label("d_served_correct"),
            )
            .where(r.offset >= lo_)
            .subquery()
        )
        t = steps.c
        per_bucket = sa.select(
            t.offset,
            t.at,
            t.count,
            t.loss_sum,
            t.correct,
            *[
                sa.func.sum(c).over(partition_by=t.bucket).label(f"b_{c.name}")
                for c in (t.d_count, t.d_loss, t.d_correct, t.d_labelled, t.d_served_loss, t.d_served_correct)
            ],
            sa.func.row_number().over(partition_by=t.bucket, order_by=t.offset.desc()).label("rank"),
        ).subquery()
        b = per_bucket.c
        rows: Sequence[Any] = self.s.execute(
            sa.select(
                b.offset,
                b.at,
                b.count,
                b.loss_sum,
                b.correct,
                b.b_d_count,
                b.b_d_loss,
                b.b_d_correct,
                b.b_d_labelled,
                b.b_d_served_loss,
                b.b_d_served_correct,
            )
            .where(b.rank == 1)
            .order_by(b.offset)
        ).all()
        return [
            Bucket(
                offset=int(o),
                at=at,
                count=int(cnt),
                loss_sum=float(ls),
                correct=_int(cr),
                samples=int(dc),
                bucket_loss_sum=float(dl),
                bucket_correct=_int(dcr),
                labelled=int(dlab),
                served_loss_sum=float(dsl),
                served_correct=_int(dsc),
            )
            for o, at, cnt, ls, cr, dc, dl, dcr, dlab, dsl, dsc in rows
        ]


def _int(v: Any) -> int | None:
    """An integer sum as Python's int (PostgreSQL sums BIGINTs as NUMERIC), or None."""
    return None if v is None else int(v)
