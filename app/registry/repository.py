"""Queries of the registry: models, versions, aliases. Repositories take a Session,
add / flush / select, and never commit: the service that calls them owns the transaction."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.core.db import mark_changed, model_subject
from app.core.outbox import emit
from app.core.tables import (
    Alias,
    AliasEntry,
    Learner,
    Model,
    ModelTag,
    ServedMetrics,
    Version,
    VersionTag,
    utcnow,
)

#: ``(key, value)`` pairs a list is filtered by: all must match
TagFilter = Sequence[tuple[str, str]]


def tag_digest(value: str) -> str:
    """What the tag tables index a value by (``ix_*_tags_key_digest``)."""
    return hashlib.sha256(value.encode()).hexdigest()[:32]


def _tagged(owner: Any, table: type[ModelTag] | type[VersionTag], column: Any, tags: TagFilter) -> list[Any]:
    """One ``owner IN (rows with the tag)`` condition per pair, each through the index."""
    return [
        owner.in_(sa.select(column).where(table.key == k, table.digest == tag_digest(v), table.value == v))
        for k, v in tags
    ]


def _replace_tags(s: Session, owner: Any, owner_id: int, tags: dict[str, str]) -> None:
    """The tag table's rows of one owner (``owner``: its column, ``model_tags.model_id`` or
    ``version_tags.version_id``) made ``tags``."""
    s.execute(sa.delete(owner.class_).where(owner == owner_id))
    if tags:
        rows = [{owner.key: owner_id, "key": k, "value": v, "digest": tag_digest(v)} for k, v in tags.items()]
        s.execute(sa.insert(owner.class_), rows)


def _contains(column: Any, text: str) -> Any:
    """Case-insensitive substring match, ``%`` and ``_`` taken literally."""
    return column.icontains(text, autoescape=True)


class ModelRepository:
    def __init__(self, s: Session) -> None:
        self.s = s

    def get_by_name(self, name: str, *, for_update: bool = False) -> Model | None:
        q = sa.select(Model).where(Model.name == name)
        if for_update:
            q = q.with_for_update()
        return self.s.scalars(q).one_or_none()

    def get(self, model_id: int, *, for_update: bool = False) -> Model | None:
        q = sa.select(Model).where(Model.id == model_id)
        if for_update:
            q = q.with_for_update()
        return self.s.scalars(q).one_or_none()

    def page(
        self,
        *,
        after: str | None,
        limit: int,
        names: Sequence[str] | None = None,
        tags: TagFilter = (),
        q: str | None = None,
    ) -> list[Model]:
        """Models by name after ``after``: of ``names`` (if given), with every tag of ``tags``,
        and ``q`` in the name or the description (case-insensitive)."""
        stmt = sa.select(Model).order_by(Model.name).limit(limit)
        if after is not None:
            stmt = stmt.where(Model.name > after)
        if names is not None:
            stmt = stmt.where(Model.name.in_(list(names)))
        stmt = stmt.where(*_tagged(Model.id, ModelTag, ModelTag.model_id, tags))
        if q:
            stmt = stmt.where(sa.or_(_contains(Model.name, q), _contains(Model.description, q)))
        return list(self.s.scalars(stmt))

    def set_tags(self, m: Model, tags: dict[str, str]) -> None:
        """``m.tags`` and its rows in ``model_tags`` (every change of a model's tags goes here)."""
        m.tags = dict(tags)
        self.s.flush()
        _replace_tags(self.s, ModelTag.model_id, m.id, tags)

    def add(self, model: Model) -> Model:
        self.s.add(model)
        self.s.flush()
        return model

    def delete(self, model: Model) -> None:
        mark_changed(self.s, model_subject(model.id))
        self.s.delete(model)
        self.s.flush()

    def learner(self, model_id: int) -> Learner | None:
        return self.s.get(Learner, model_id)

    def learners(self, model_ids: Sequence[int]) -> dict[int, Learner]:
        return {x.model_id: x for x in self.s.scalars(sa.select(Learner).where(Learner.model_id.in_(list(model_ids))))}


class VersionRepository:
    def __init__(self, s: Session) -> None:
        self.s = s

    def get(self, model_id: int, version: int) -> Version | None:
        return self.s.scalars(
            sa.select(Version).where(Version.model_id == model_id, Version.version == version)
        ).one_or_none()

    def latest(self, model_id: int) -> Version | None:
        return self.s.scalars(
            sa.select(Version).where(Version.model_id == model_id).order_by(Version.version.desc()).limit(1)
        ).one_or_none()

    def latest_number(self, model_id: int) -> int:
        return int(
            self.s.scalar(
                sa.select(sa.func.coalesce(sa.func.max(Version.version), 0)).where(Version.model_id == model_id)
            )
            or 0
        )

    def latest_numbers(self, model_ids: Sequence[int]) -> dict[int, int]:
        rows = self.s.execute(
            sa.select(Version.model_id, sa.func.max(Version.version))
            .where(Version.model_id.in_(list(model_ids)))
            .group_by(Version.model_id)
        )
        return {int(m): int(v) for m, v in rows}

    def by_job(self, job_id: str) -> Version | None:
        return self.s.scalars(sa.select(Version).where(Version.job_id == job_id)).one_or_none()

    def page(
        self,
        model_id: int,
        *,
        after: int | None,
        limit: int,
        descending: bool = False,
        operation: str | None = None,
        tags: TagFilter = (),
    ) -> list[Version]:
        order = Version.version.desc() if descending else Version.version
        q = sa.select(Version).where(Version.model_id == model_id).order_by(order).limit(limit)
        if after is not None:
            q = q.where(Version.version < after if descending else Version.version > after)
        if operation is not None:
            q = q.where(Version.operation == operation)
        q = q.where(*_tagged(Version.id, VersionTag, VersionTag.version_id, tags))
        return list(self.s.scalars(q))

    def set_tags(self, v: Version, tags: dict[str, str]) -> None:
        """``v.tags`` and its rows in ``version_tags``."""
        v.tags = dict(tags)
        self.s.flush()
        _replace_tags(self.s, VersionTag.version_id, v.id, tags)

    def add(self, v: Version) -> Version:
        mark_changed(self.s, model_subject(v.model_id))  # `latest` moves
        self.s.add(v)
        self.s.flush()
        return v


class AliasRepository:
    """Aliases and their history. Every change goes through :meth:`put` or :meth:`delete`,
    which append the history entry and the event in the same transaction."""

    def __init__(self, s: Session) -> None:
        self.s = s

    def all(self, model_id: int) -> list[Alias]:
        return list(self.s.scalars(sa.select(Alias).where(Alias.model_id == model_id).order_by(Alias.name)))

    def for_models(self, model_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        out: dict[int, dict[str, int]] = {}
        for a in self.s.scalars(sa.select(Alias).where(Alias.model_id.in_(list(model_ids)))):
            out.setdefault(a.model_id, {})[a.name] = a.version
        return out

    def get(self, model_id: int, name: str) -> Alias | None:
        return self.s.get(Alias, (model_id, name))

    def put(
        self, model: Model, name: str, version: int, *, by: dict[str, Any], reason: str | None = None
    ) -> tuple[Alias, AliasEntry]:
        """Create or move an alias, with its history entry and ``alias.moved`` event."""
        mark_changed(self.s, model_subject(model.id))
        now = utcnow()
        a = self.get(model.id, name)
        previous = a.version if a is not None else None
        if a is None:
            a = Alias(model_id=model.id, name=name, version=version, updated_at=now)
            self.s.add(a)
        else:
            a.version = version
            a.updated_at = now
        entry = self._record(model, name, version, previous, by, reason, now)
        emit(self.s, "alias.moved", model.name, entry_data(entry))
        return a, entry

    def delete(self, model: Model, a: Alias, *, by: dict[str, Any], reason: str | None = None) -> AliasEntry:
        """Remove an alias, with its history entry (``version`` None) and ``alias.deleted`` event."""
        mark_changed(self.s, model_subject(a.model_id))
        entry = self._record(model, a.name, None, a.version, by, reason, utcnow())
        self.s.delete(a)
        self.s.flush()
        emit(self.s, "alias.deleted", model.name, entry_data(entry))
        return entry

    def _record(
        self,
        model: Model,
        name: str,
        version: int | None,
        previous: int | None,
        by: dict[str, Any],
        reason: str | None,
        at: datetime,
    ) -> AliasEntry:
        entry = AliasEntry(
            model_id=model.id, alias=name, version=version, previous=previous, at=at, by=by, reason=reason
        )
        self.s.add(entry)
        self.s.flush()
        return entry

    def history(self, model_id: int, name: str, *, before: int | None, limit: int) -> list[AliasEntry]:
        """Entries newest first; ``before`` is the id of the previous page's last entry."""
        q = (
            sa.select(AliasEntry)
            .where(AliasEntry.model_id == model_id, AliasEntry.alias == name)
            .order_by(AliasEntry.id.desc())
            .limit(limit)
        )
        if before is not None:
            q = q.where(AliasEntry.id < before)
        return list(self.s.scalars(q))

    def last(self, model_id: int, name: str, *, at: datetime | None = None) -> AliasEntry | None:
        """The newest entry (made at or before ``at`` when given): the one in force then."""
        q = sa.select(AliasEntry).where(AliasEntry.model_id == model_id, AliasEntry.alias == name)
        if at is None:
            q = q.order_by(AliasEntry.id.desc())
        else:
            q = q.where(AliasEntry.at <= at).order_by(AliasEntry.at.desc(), AliasEntry.id.desc())
        return self.s.scalars(q.limit(1)).one_or_none()


def entry_data(e: AliasEntry) -> dict[str, Any]:
    """An alias history entry as the API and its events show it (``at`` in RFC 3339)."""
    return {
        "alias": e.alias,
        "version": e.version,
        "previous": e.previous,
        "at": e.at.isoformat().replace("+00:00", "Z"),
        "by": dict(e.by),
        "reason": e.reason,
    }


class ServedRepository:
    """``served_metrics``: per version, what it really served (recorded predictions, their
    labels, the sums of the labels' losses and correct answers), read here. Counts are added
    by one upsert each (``INSERT … ON CONFLICT DO UPDATE``, so concurrent writers need no
    lock) on the write paths' DBAPI cursors: ``SampleRepository.add_records`` and
    ``PredictionRepository.add_served``."""

    def __init__(self, s: Session) -> None:
        self.s = s

    def get(self, model_id: int, versions: Sequence[int]) -> dict[int, ServedMetrics]:
        if not versions:
            return {}
        q = sa.select(ServedMetrics).where(
            ServedMetrics.model_id == model_id, ServedMetrics.version.in_(list(versions))
        )
        return {r.version: r for r in self.s.scalars(q)}

    def all(self) -> list[tuple[str, int, ServedMetrics]]:
        """``(model name, version, row)`` of every version that served recorded predictions."""
        q = sa.select(Model.name, ServedMetrics).join(Model, Model.id == ServedMetrics.model_id)
        return [(name, row.version, row) for name, row in self.s.execute(q)]
