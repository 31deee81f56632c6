"""SQLAlchemy 2 typed table models. The schema itself exists only through Alembic
migrations (``migrations/``); a test checks that both agree on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on both databases (SQLite drops the zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING)
    type_annotation_map = {
        datetime: UTCDateTime(),
        float: sa.Float(),
        dict[str, Any]: sa.JSON(),
        list[Any]: sa.JSON(),
    }


def table(model: type[Base]) -> sa.Table:
    """The Core table of an ORM class (typed: ``__table__`` is declared as a FromClause)."""
    return cast(sa.Table, model.__table__)


class Model(Base):
    """A named dense network and its online-learning state."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), unique=True)
    task: Mapped[str] = mapped_column(sa.String(16))
    input_dim: Mapped[int]
    output_dim: Mapped[int]
    hidden: Mapped[list[Any]]
    activation: Mapped[str] = mapped_column(sa.String(16))
    optimizer: Mapped[dict[str, Any]]
    checkpoint_every: Mapped[int]
    checkpoint_seconds: Mapped[float] = mapped_column(sa.Float, default=1.0, server_default="1.0")
    seed: Mapped[int] = mapped_column(sa.BigInteger)
    description: Mapped[str] = mapped_column(sa.Text, default="")
    tags: Mapped[dict[str, Any]]
    guard: Mapped[dict[str, Any]]
    lineage: Mapped[dict[str, Any] | None]
    status: Mapped[str] = mapped_column(sa.String(16), default="active")
    status_reason: Mapped[str | None] = mapped_column(sa.Text)
    paused_offset: Mapped[int | None] = mapped_column(sa.BigInteger)
    next_offset: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Version(Base):
    """An immutable version: a blob (by sha256) plus metadata and lineage."""

    __tablename__ = "versions"
    __table_args__ = (sa.UniqueConstraint("model_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(sa.ForeignKey("models.id", ondelete="CASCADE"), index=True)
    version: Mapped[int]
    parent: Mapped[int | None]
    operation: Mapped[str] = mapped_column(sa.String(16))
    params: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any]]
    blob_sha256: Mapped[str] = mapped_column(sa.String(64))
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    dtype: Mapped[str] = mapped_column(sa.String(16))
    sparsity: Mapped[float]
    encoding: Mapped[str] = mapped_column(sa.String(16), default="dense")
    architecture: Mapped[list[Any]]
    applied_through: Mapped[int | None] = mapped_column(sa.BigInteger)
    state_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    job_id: Mapped[str | None] = mapped_column(sa.String(36), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: metadata a user may change (``PATCH``); the parameters never change
    description: Mapped[str] = mapped_column(sa.Text, default="", server_default="")
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")


class ModelTag(Base):
    """A model's tag, one row per key, beside ``models.tags`` (the answer's source): what
    ``GET /models?tag=key:value`` finds through ``ix_model_tags_key_digest``. ``digest`` is
    the value's sha256 (32 hex): an index entry of bounded size whatever the value."""

    __tablename__ = "model_tags"
    __table_args__ = (sa.Index("ix_model_tags_key_digest", "key", "digest"),)

    model_id: Mapped[int] = mapped_column(sa.ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    value: Mapped[str] = mapped_column(sa.Text)
    digest: Mapped[str] = mapped_column(sa.String(32))


class VersionTag(Base):
    """A version's tag (as :class:`ModelTag`, beside ``versions.tags``)."""

    __tablename__ = "version_tags"
    __table_args__ = (sa.Index("ix_version_tags_key_digest", "key", "digest"),)

    version_id: Mapped[int] = mapped_column(sa.ForeignKey("versions.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    value: Mapped[str] = mapped_column(sa.Text)
    digest: Mapped[str] = mapped_column(sa.String(32))


class Alias(Base):
    __tablename__ = "aliases"

    model_id: Mapped[int] = mapped_column(sa.ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    version: Mapped[int]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(128))
    scope: Mapped[str] = mapped_column(sa.String(16))
    models: Mapped[list[Any] | None]
    key_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    prefix: Mapped[str] = mapped_column(sa.String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class SampleBatch(Base):
    """Samples of one model's log accepted by one group commit (the /update requests it
    carried; see :mod:`app.online.log`): packed float32 inputs and targets, offsets
    ``first_offset .. first_offset + count − 1``."""

    __tablename__ = "sample_batches"
    __table_args__ = (sa.UniqueConstraint("model_id", "first_offset"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(sa.ForeignKey("models.id", ondelete="CASCADE"))
    first_offset: Mapped[int] = mapped_column(sa.BigInteger)
    count: Mapped[int]
    x: Mapped[bytes] = mapped_column(sa.LargeBinary)
    y: Mapped[bytes] = mapped_column(sa.LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"

    model_id: Mapped[int] = mapped_column(sa.ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(sa.String(64))
    response: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class PredictionBatch(Base):
    """One recorded ``/predict`` request (``"record": true``): the inputs it got and the
    outputs the version served, packed (float32 ``x`` ``[count, input_dim]`` and
    ``outputs`` ``[count, output_dim]``, raw little-endian bytes in C order).

    ``token``: the random 48 bits of the ids Steward made for the request
    (:mod:`app.online.records`: an id names its batch, position and token, so it needs
    no row of its own); None when the client named its ids (``predictions`` rows)."""

    __tablename__ = "prediction_batches"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(sa.ForeignKey("models.id", ondelete="CASCADE"), index=True)
    version: Mapped[int]
    count: Mapped[int]
    x: Mapped[bytes] = mapped_column(sa.LargeBinary)
    outputs: Mapped[bytes] = mapped_column(sa.LargeBinary)
    token: Mapped[int | None] = mapped_column(sa.BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Prediction(Base):
    """A client-named recorded prediction's id: where its input and output are (batch and
    position). Ids Steward made have no row (see :class:`PredictionBatch`)."""

    __tablename__ = "predictions"

    model_id: Mapped[int] = mapped_column(sa.ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    pid: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    batch_id: Mapped[int] = mapped_column(sa.ForeignKey("prediction_batches.id", ondelete="CASCADE"), index=True)
    position: Mapped[int]


class PredictionLabels(Base):
    """The labels a recorded request's predictions got so far, one row per labelled batch
    (kept apart from the batch so a label never rewrites its inputs): ``y`` the packed
    labels ``[count, *y_shape]`` (the sample log's packing, :mod:`app.online.log`) and
    ``offsets`` int64 ``[count]``, the offset of the sample each label became, −1 while
    unlabelled."""

    __tablename__ = "prediction_labels"

    batch_id: Mapped[int] = mapped_column(
        sa.ForeignKey("prediction_batches.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    y: Mapped[bytes] = mapped_column(sa.LargeBinary)
    offsets: Mapped[bytes] = mapped_column(sa.LargeBinary)


class ServedMetrics(Base):
    """What a version really served: recorded predictions, how many were labelled, and the
    sums of their losses and correct labels (``served`` of the version answer)."""

    __tablename__ = "served_metrics"

    model_id: Mapped[int] = mapped_column(sa.ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[int] = mapped_column(primary_key=True)
    predictions: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    labelled: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    loss_sum: Mapped[float] = mapped_column(sa.Float, default=0.0)
    correct: Mapped[int] = mapped_column(sa.BigInteger, default=0)


class MetricPoint(Base):
    """A point of a model's learning curve, written by the learner in the transaction that
    publishes its progress, once ``applied_through`` has moved ``STEWARD_METRICS_POINT_SAMPLES``
    past the previous point. ``offset`` is the learner's ``applied_through``; ``count``,
    ``loss_sum`` and ``correct`` are its prequential sums since its metrics began (``correct``
    None for regression); ``served_*`` are the model's served totals over all its versions
    (``served_metrics``) at that moment. Differences of two points give exact means between
    them (``GET /models/{name}/metrics/history``)."""

    __tablename__ = "metric_points"

    model_id: Mapped[int] = mapped_column(sa.ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    offset: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime]
    count: Mapped[int] = mapped_column(sa.BigInteger)
    loss_sum: Mapped[float]
    correct: Mapped[int | None] = mapped_column(sa.BigInteger)
    served_labelled: Mapped[int] = mapped_column(sa.BigInteger)
    served_loss_sum: Mapped[float]
    served_correct: Mapped[int | None] = mapped_column(sa.BigInteger)


class Shadow(Base):
    """A candidate version scoring the samples appended to its model's log from
    ``since_offset`` on, beside ``against_version``: both score exactly the same samples
    (offsets ``since_offset .. through``), without learning; the sums are the learner's."""

    __tablename__ = "shadows"

    model_id: Mapped[int] = mapped_column(sa.ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[int] = mapped_column(primary_key=True)
    against_version: Mapped[int]
    since_offset: Mapped[int] = mapped_column(sa.BigInteger)
    through: Mapped[int] = mapped_column(sa.BigInteger)
    n: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    loss_sum: Mapped[float] = mapped_column(sa.Float, default=0.0)
    correct: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    against_loss_sum: Mapped[float] = mapped_column(sa.Float, default=0.0)
    against_correct: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Learner(Base):
    """Who holds a model's online learner (lease), what it has published, and its mailbox.

    ``prequential``: the running metrics the learner publishes with ``applied_through``.
    ``base``: ``{"version", "applied_through", "state_sha256"}``, the cut of a non-online
    version the learner continues from (None once an online version supersedes it).
    ``mailbox``: messages between request handlers and the learner, changed only under the
    row lock: ``checkpoint_requests`` ``{request id: offset}``, ``checkpoint_replies``
    ``{request id: {"version", "created"}}``, ``resume`` ``{"offset", "from_version", …}``,
    ``drift_reset`` (a request id: start drift detection again).
    ``drift``: the drift block the learner publishes with its progress
    (:meth:`app.engine.drift.DriftMonitor.state`, with its recent ``transitions``).
    """

    __tablename__ = "learners"

    model_id: Mapped[int] = mapped_column(sa.ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    owner: Mapped[str | None] = mapped_column(sa.String(64))
    lease_expires_at: Mapped[datetime | None]
    applied_through: Mapped[int] = mapped_column(sa.BigInteger, default=-1)
    prequential: Mapped[dict[str, Any]] = mapped_column(default=dict)
    base: Mapped[dict[str, Any] | None]
    mailbox: Mapped[dict[str, Any]] = mapped_column(default=dict)
    drift: Mapped[dict[str, Any] | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (sa.Index("ix_jobs_status_run_after", "status", "run_after"),)

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(16))
    model_id: Mapped[int] = mapped_column(sa.ForeignKey("models.id", ondelete="CASCADE"), index=True)
    model_name: Mapped[str] = mapped_column(sa.String(64))
    #: the pipeline this job is step ``step`` of (None: a job of its own)
    parent_job: Mapped[str | None] = mapped_column(sa.String(36), index=True)
    step: Mapped[int | None]
    status: Mapped[str] = mapped_column(sa.String(16))
    progress: Mapped[float] = mapped_column(default=0.0)
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int]
    params: Mapped[dict[str, Any]]
    result: Mapped[dict[str, Any] | None]
    error: Mapped[dict[str, Any] | None]
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    lease_owner: Mapped[str | None] = mapped_column(sa.String(64))
    lease_expires_at: Mapped[datetime | None]
    run_after: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Export(Base):
    """A verified artifact of a version for another runtime (content-addressed blob)."""

    __tablename__ = "exports"
    __table_args__ = (sa.UniqueConstraint("version_id", "target"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(sa.ForeignKey("versions.id", ondelete="CASCADE"))
    target: Mapped[str] = mapped_column(sa.String(16))
    blob_sha256: Mapped[str] = mapped_column(sa.String(64))
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    media_type: Mapped[str] = mapped_column(sa.String(64))
    filename: Mapped[str] = mapped_column(sa.String(128))
    meta: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CacheGeneration(Base):
    """One row (``id`` 1): a counter bumped by every transaction that changes what the
    request caches hold (:mod:`app.core.cache`). Its row lock orders those commits, so
    generations become visible in increasing order."""

    __tablename__ = "cache_generation"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    value: Mapped[int] = mapped_column(sa.BigInteger)


class CacheMark(Base):
    """What changed at a generation: ``subject`` is ``keys`` or ``model:<id>``; the poller
    of every process reads the marks above the generation it has seen."""

    __tablename__ = "cache_marks"

    subject: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    generation: Mapped[int] = mapped_column(sa.BigInteger, index=True)


class AliasEntry(Base):
    """One change of an alias (append-only, written in the change's transaction):
    ``version`` where it points since (None: deleted), ``previous`` where it pointed
    before, ``by`` the key (``{"key_id", "key_name"}``) or the job (``{"job": id}``)."""

    __tablename__ = "alias_history"
    __table_args__ = (sa.Index("ix_alias_history_model_id_alias_id", "model_id", "alias", "id"),)

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True)
    model_id: Mapped[int] = mapped_column(sa.ForeignKey("models.id", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(sa.String(64))
    version: Mapped[int | None]
    previous: Mapped[int | None]
    at: Mapped[datetime] = mapped_column(default=utcnow)
    by: Mapped[dict[str, Any]]
    reason: Mapped[str | None] = mapped_column(sa.Text)


class Event(Base):
    """The outbox: one row per change, written in the change's transaction. ``id`` is given
    at commit from :class:`EventSequence` (see :mod:`app.core.outbox`), so ids become visible
    in increasing order with no gaps; ``model`` is the model's name (events outlive it)."""

    __tablename__ = "events"
    __table_args__ = (sa.Index("ix_events_model_id", "model", "id"),)

    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    type: Mapped[str] = mapped_column(sa.String(32))
    model: Mapped[str | None] = mapped_column(sa.String(64))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    data: Mapped[dict[str, Any]]


class EventSequence(Base):
    """One row (``id`` 1): the last event id given. A committing transaction that writes
    events takes its ids here last, and its row lock orders those commits."""

    __tablename__ = "event_sequence"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    value: Mapped[int] = mapped_column(sa.BigInteger)


class Webhook(Base):
    """A subscription: the events (types, ``*`` patterns) of some models (None: all)
    POSTed to ``url``. ``secret`` is the signing key sealed with the secrets key
    (:mod:`app.webhooks.secrets`); ``cursor`` the last event id fanned out to deliveries."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    url: Mapped[str] = mapped_column(sa.Text)
    events: Mapped[list[Any]]
    models: Mapped[list[Any] | None]
    description: Mapped[str] = mapped_column(sa.Text, default="")
    secret: Mapped[bytes] = mapped_column(sa.LargeBinary)
    cursor: Mapped[int] = mapped_column(sa.BigInteger)
    created_by: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One message to one webhook: the exact body (signed anew at each attempt), its
    attempts, and a lease while a delivery loop sends it (claimed once, like jobs)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        sa.UniqueConstraint("webhook_id", "msg_id"),
        sa.Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True)
    webhook_id: Mapped[str] = mapped_column(sa.ForeignKey("webhooks.id", ondelete="CASCADE"))
    msg_id: Mapped[str] = mapped_column(sa.String(64))
    event_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    event_type: Mapped[str] = mapped_column(sa.String(32))
    body: Mapped[bytes] = mapped_column(sa.LargeBinary)
    status: Mapped[str] = mapped_column(sa.String(16))
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None]
    last_status: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    log: Mapped[list[Any]] = mapped_column(default=list)
    lease_owner: Mapped[str | None] = mapped_column(sa.String(64))
    lease_expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]


class Policy(Base):
    """A model's maintenance policy: the pipeline (a ``POST …/pipelines`` body) to run when
    a trigger fires, and the scheduler's marks — what was seen when it last ran (the log's
    ``next_offset``, the time, the newest drift transition). ``rev`` changes with every
    write: a scheduler that decided on an older ``rev`` fires nothing (exactly once)."""

    __tablename__ = "policies"

    model_id: Mapped[int] = mapped_column(
        sa.ForeignKey("models.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    enabled: Mapped[bool]
    triggers: Mapped[dict[str, Any]]
    pipeline: Mapped[dict[str, Any]]
    disabled_reason: Mapped[str | None] = mapped_column(sa.Text)
    rev: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    samples_mark: Mapped[int] = mapped_column(sa.BigInteger)
    seconds_mark: Mapped[datetime]
    drift_mark: Mapped[int] = mapped_column(sa.BigInteger)
    last_triggered_at: Mapped[datetime | None]
    last_trigger: Mapped[str | None] = mapped_column(sa.String(16))
    last_job: Mapped[str | None] = mapped_column(sa.String(36))
    last_skipped_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    failures: Mapped[int] = mapped_column(default=0)
    counted_job: Mapped[str | None] = mapped_column(sa.String(36))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
