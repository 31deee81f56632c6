"""Models: create (with version 1), list, get, delete, aliases, versions, and their
public view. :class:`ModelService` owns the transactions of these requests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, Literal

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.db import Database
from app.core.errors import Conflict, Invalid, NotFound, PreconditionFailed
from app.core.outbox import emit
from app.core.schemas import number_cursor
from app.core.tables import AliasEntry, Learner, Model, Version, utcnow
from app.engine.nn.network import init_network
from app.registry.repository import (
    AliasRepository,
    ModelRepository,
    ServedRepository,
    TagFilter,
    VersionRepository,
)
from app.registry.schemas import (
    TAGS_MAX,
    AliasEntryOut,
    AliasOut,
    DriftState,
    MetadataPatch,
    ModelCreate,
    ModelOut,
    OnlineState,
    Prequential,
    VersionOut,
)
from app.registry.versions import StoredBlob, VersionService, version_out

#: What the seeded initialisation of version 1 is (API.md: PyTorch's nn.Linear default).
INIT = "U(±1/√fan_in) weights and biases (PyTorch nn.Linear default)"


def get_model(s: Session, name: str, *, for_update: bool = False) -> Model:
    m = ModelRepository(s).get_by_name(name, for_update=for_update)
    if m is None:
        raise NotFound(f"no model named {name!r}")
    return m


def read_model(db: Database, name: str) -> Model:
    """The model, read in a unit of work of its own and detached: for the checks and the
    CPU work a service does before its write transaction opens (404 when unknown)."""
    with db.read() as s:
        return get_model(s, name)


def online_state(m: Model, learner: Learner | None) -> OnlineState:
    applied_through = learner.applied_through if learner is not None else -1
    published: dict[str, Any] = dict(learner.prequential or {}) if learner is not None else {}
    applied = applied_through + 1
    return OnlineState(
        accepted=m.next_offset,
        applied=applied,
        lag=max(m.next_offset - applied, 0),
        applied_through=applied_through if applied_through >= 0 else None,
        prequential=Prequential.model_validate(published),
    )


def apply_metadata(row: Any, body: MetadataPatch, set_tags: Callable[[Any, dict[str, str]], None]) -> None:
    """A metadata ``PATCH`` on a model's or a version's row: the description, and the tags
    merged (:func:`merged_tags`) and stored with ``set_tags`` (which keeps the tag rows)."""
    if body.description is not None:
        row.description = body.description
    if body.tags is not None:
        set_tags(row, merged_tags(row.tags, body.tags))


def merged_tags(old: dict[str, Any], patch: dict[str, str | None]) -> dict[str, str]:
    """JSON merge patch (RFC 7396) of a tag map: a key set to a string sets it, to null
    removes it; the keys the patch does not name stay. At most :data:`TAGS_MAX` keys."""
    out = {str(k): str(v) for k, v in old.items()}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    if len(out) > TAGS_MAX:
        raise Invalid.at(["body", "tags"], f"at most {TAGS_MAX} tags; this would make {len(out)}")
    return out


def model_out(m: Model, latest: int, aliases: dict[str, int], learner: Learner | None = None) -> ModelOut:
    return ModelOut(
        name=m.name,
        task=m.task,  # type: ignore[arg-type]
        input_dim=m.input_dim,
        output_dim=m.output_dim,
        hidden=list(m.hidden),
        activation=m.activation,  # type: ignore[arg-type]
        optimizer=dict(m.optimizer),
        checkpoint_every=m.checkpoint_every,
        checkpoint_seconds=m.checkpoint_seconds,
        seed=m.seed,
        description=m.description,
        tags=dict(m.tags),
        guard=dict(m.guard),
        lineage=m.lineage,
        latest_version=latest,
        aliases=aliases,
        status=m.status,  # type: ignore[arg-type]
        status_reason=m.status_reason,
        paused_offset=m.paused_offset,
        online=online_state(m, learner),
        drift=DriftState.model_validate(learner.drift) if learner is not None and learner.drift else DriftState(),
        created_at=m.created_at,
        updated_at=m.updated_at,
    )


def _alias_out(m: Model, name: str, version: int, updated_at: Any = None) -> AliasOut:
    return AliasOut(model=m.name, alias=name, version=version, updated_at=updated_at)


def entry_out(m: Model, e: AliasEntry) -> AliasEntryOut:
    return AliasEntryOut(
        id=e.id,
        model=m.name,
        alias=e.alias,
        version=e.version,
        previous=e.previous,
        at=e.at,
        by=dict(e.by),
        reason=e.reason,
    )


#: An ``If-Match`` read at the edge: None (no header), ``"*"`` (any current version) or
#: the versions it names.
Precondition = frozenset[int] | Literal["*"] | None


def check_precondition(expected: Precondition, current: int | None, alias: str) -> None:
    """412 unless the alias's ``current`` version satisfies ``If-Match`` (RFC 9110: ``*``
    matches any current version, and nothing matches an alias that does not exist)."""
    if expected is None:
        return
    if current is None:
        raise PreconditionFailed(f"If-Match: alias {alias!r} does not exist")
    if expected != "*" and current not in expected:
        raise PreconditionFailed(
            f"If-Match: alias {alias!r} points to version {current}, not "
            + " or ".join(str(v) for v in sorted(expected)),
            current_version=current,
        )


class ModelService:
    """Models, aliases and versions as the registry's routes see them."""

    def __init__(self, db: Database, versions: VersionService, max_params: int) -> None:
        self.db = db
        self.versions = versions
        self.max_params = max_params
        #: Called with a model's name after it was deleted (caches, the learner).
        self.on_deleted: list[Callable[[str], None]] = []

    # ---- views
    def view_in(self, s: Session, m: Model) -> ModelOut:
        latest = VersionRepository(s).latest_number(m.id)
        aliases = {a.name: a.version for a in AliasRepository(s).all(m.id)}
        return model_out(m, latest, aliases, ModelRepository(s).learner(m.id))

    def view(self, name: str) -> ModelOut:
        with self.db.read() as s:
            return self.view_in(s, get_model(s, name))

    def page(
        self,
        *,
        cursor: str | None,
        limit: int,
        allowed: tuple[str, ...] | None,
        tags: TagFilter = (),
        q: str | None = None,
    ) -> tuple[list[ModelOut], str | None]:
        with self.db.read() as s:
            rows = ModelRepository(s).page(after=cursor, limit=limit + 1, names=allowed, tags=tags, q=q)
            more = len(rows) > limit
            rows = rows[:limit]
            ids = [m.id for m in rows]
            latest = VersionRepository(s).latest_numbers(ids)
            aliases = AliasRepository(s).for_models(ids)
            learners = ModelRepository(s).learners(ids)
        items = [model_out(m, latest.get(m.id, 0), aliases.get(m.id, {}), learners.get(m.id)) for m in rows]
        return items, (rows[-1].name if more and rows else None)

    # ---- create / delete
    def check_spec(self, spec: ModelCreate, loc: str = "hidden") -> None:
        if spec.n_params() > self.max_params:
            raise Invalid.at(
                ["body", loc],
                f"the network would have {spec.n_params():,} parameters; the limit is {self.max_params:,}",
            )

    def create(self, spec: ModelCreate) -> ModelOut:
        """``POST /models``: the model, its learner row and version 1 (the seeded
        initialisation, stored before the transaction opens)."""
        self.check_spec(spec)
        with self.db.read() as s:
            if ModelRepository(s).get_by_name(spec.name) is not None:
                raise Conflict(f"a model named {spec.name!r} already exists")
        net = init_network(spec.task, spec.activation, spec.input_dim, spec.output_dim, spec.hidden, spec.seed)
        blob = self.versions.store(net=net)
        with self.db.write() as s:
            m = self.add(s, spec, blob, operation="init", params={"seed": spec.seed, "init": INIT})
            return self.view_in(s, m)

    def add(
        self,
        s: Session,
        spec: ModelCreate,
        blob: StoredBlob,
        *,
        operation: str,
        params: dict[str, Any],
        lineage: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        job_id: str | None = None,
    ) -> Model:
        """Add the model, its learner row and version 1 (``blob``, already stored) to ``s``'s
        transaction (``POST /models``, and a transfer job's new model)."""
        self.check_spec(spec)
        now = utcnow()
        m = Model(
            name=spec.name,
            task=spec.task,
            input_dim=spec.input_dim,
            output_dim=spec.output_dim,
            hidden=list(spec.hidden),
            activation=spec.activation,
            optimizer=spec.optimizer.model_dump(),
            checkpoint_every=spec.checkpoint_every,
            checkpoint_seconds=spec.checkpoint_seconds,
            seed=spec.seed,
            description=spec.description,
            tags=dict(spec.tags),
            guard=spec.guard.model_dump(),
            lineage=lineage,
            status="active",
            next_offset=0,
            created_at=now,
            updated_at=now,
        )
        try:
            with s.begin_nested():
                ModelRepository(s).add(m)
        except IntegrityError:
            raise Conflict(f"a model named {spec.name!r} already exists") from None
        s.add(Learner(model_id=m.id, applied_through=-1, updated_at=now))
        ModelRepository(s).set_tags(m, dict(spec.tags))
        emit(
            s,
            "model.created",
            m.name,
            {
                "task": m.task,
                "input_dim": m.input_dim,
                "output_dim": m.output_dim,
                "hidden": list(m.hidden),
                "operation": operation,
                **({"job": job_id} if job_id else {}),
            },
        )
        self.versions.add(s, m, blob, operation=operation, parent=None, params=params, metrics=metrics, job_id=job_id)
        return m

    def delete(self, name: str, *, by: dict[str, Any] | None = None) -> None:
        with self.db.write() as s:
            m = get_model(s, name, for_update=True)
            latest = VersionRepository(s).latest_number(m.id)
            ModelRepository(s).delete(m)
            emit(s, "model.deleted", name, {"latest_version": latest, "by": by})
        for fn in self.on_deleted:
            fn(name)

    # ---- aliases
    def put_alias(
        self,
        name: str,
        alias: str,
        version: int,
        *,
        by: dict[str, Any],
        reason: str | None = None,
        if_match: Precondition = None,
    ) -> tuple[AliasOut, bool]:
        """Point ``alias`` at ``version`` (created when new), recorded in its history; with
        ``if_match`` only if the alias points at one of those versions now (``*``: exists)."""
        if alias == "latest":
            raise Invalid.at(["path", "alias"], "`latest` is implicit and cannot be set")
        with self.db.write() as s:
            m = get_model(s, name, for_update=True)
            self.versions.get(s, m, version)
            repo = AliasRepository(s)
            current = repo.get(m.id, alias)
            check_precondition(if_match, current.version if current is not None else None, alias)
            a, _ = repo.put(m, alias, version, by=by, reason=reason)
            return _alias_out(m, a.name, a.version, a.updated_at), current is None

    def get_alias(self, name: str, alias: str) -> AliasOut:
        with self.db.read() as s:
            m = get_model(s, name)
            if alias == "latest":
                return _alias_out(m, "latest", VersionRepository(s).latest_number(m.id))
            a = AliasRepository(s).get(m.id, alias)
            if a is None:
                raise NotFound(f"model {name!r} has no alias {alias!r}")
            return _alias_out(m, a.name, a.version, a.updated_at)

    def list_aliases(self, name: str) -> list[AliasOut]:
        with self.db.read() as s:
            m = get_model(s, name)
            out = [_alias_out(m, a.name, a.version, a.updated_at) for a in AliasRepository(s).all(m.id)]
            out.append(_alias_out(m, "latest", VersionRepository(s).latest_number(m.id)))
            return out

    def delete_alias(
        self, name: str, alias: str, *, by: dict[str, Any], reason: str | None = None, if_match: Precondition = None
    ) -> None:
        if alias == "latest":
            raise Invalid.at(["path", "alias"], "`latest` is implicit and cannot be removed")
        with self.db.write() as s:
            m = get_model(s, name, for_update=True)
            repo = AliasRepository(s)
            a = repo.get(m.id, alias)
            if a is None:
                raise NotFound(f"model {name!r} has no alias {alias!r}")
            check_precondition(if_match, a.version, alias)
            repo.delete(m, a, by=by, reason=reason)

    def alias_history(
        self, name: str, alias: str, *, cursor: str | None, limit: int
    ) -> tuple[list[AliasEntryOut], str | None]:
        """The alias's changes, newest first (404 when it never existed)."""
        before = number_cursor(cursor)
        with self.db.read() as s:
            m = get_model(s, name)
            rows = AliasRepository(s).history(m.id, alias, before=before, limit=limit + 1)
            if not rows and before is None:
                raise NotFound(f"model {name!r} has no alias {alias!r} and never had")
        more = len(rows) > limit
        rows = rows[:limit]
        return [entry_out(m, e) for e in rows], (str(rows[-1].id) if more and rows else None)

    def alias_at(self, name: str, alias: str, at: datetime) -> AliasEntryOut:
        """The entry in force at ``at`` (404 when the alias did not exist then)."""
        with self.db.read() as s:
            m = get_model(s, name)
            e = AliasRepository(s).last(m.id, alias, at=at)
        if e is None or e.version is None:
            when = at.isoformat().replace("+00:00", "Z")
            raise NotFound(f"model {name!r} had no alias {alias!r} at {when}")
        return entry_out(m, e)

    def rollback_alias(self, name: str, alias: str, *, by: dict[str, Any], reason: str | None) -> AliasEntryOut:
        """Move ``alias`` back to where its last change found it (``previous``): an undo, as
        ``kubectl rollout undo`` is; a second rollback undoes the first. A deleted alias is
        restored. 409 when the last change has no previous version (the alias was created)."""
        if alias == "latest":
            raise Invalid.at(["path", "alias"], "`latest` is implicit and cannot be rolled back")
        with self.db.write() as s:
            m = get_model(s, name, for_update=True)
            repo = AliasRepository(s)
            last = repo.last(m.id, alias)
            if last is None:
                raise NotFound(f"model {name!r} has no alias {alias!r} and never had")
            if last.previous is None:
                raise Conflict(f"alias {alias!r} has no previous version to roll back to (it was just created)")
            target = last.previous
            _, entry = repo.put(m, alias, target, by=by, reason=reason or f"rollback of the change {last.id}")
            return entry_out(m, entry)

    # ---- versions
    def list_versions(
        self,
        name: str,
        *,
        cursor: str | None,
        limit: int,
        operation: str | None = None,
        tags: TagFilter = (),
    ) -> tuple[list[VersionOut], str | None]:
        after = number_cursor(cursor, digits=10)
        with self.db.read() as s:
            m = get_model(s, name)
            rows = VersionRepository(s).page(
                m.id, after=after, limit=limit + 1, descending=True, operation=operation, tags=tags
            )
            more = len(rows) > limit
            rows = rows[:limit]
            served = ServedRepository(s).get(m.id, [v.version for v in rows])
        return [version_out(m, v, served=served.get(v.version)) for v in rows], (
            str(rows[-1].version) if more and rows else None
        )

    # ---- metadata
    def patch(self, name: str, body: MetadataPatch) -> ModelOut:
        """``PATCH /models/{name}``: ``description`` and ``tags`` (merged; a null removes a key)."""
        with self.db.write() as s:
            m = get_model(s, name, for_update=True)
            apply_metadata(m, body, ModelRepository(s).set_tags)
            m.updated_at = utcnow()
            s.flush()
            return self.view_in(s, m)

    def patch_version(self, name: str, number: int, body: MetadataPatch) -> VersionOut:
        """``PATCH /models/{name}/versions/{v}``: as :meth:`patch`; the parameters never change."""
        with self.db.write() as s:
            m = get_model(s, name, for_update=True)
            v = self.versions.get(s, m, number)
            apply_metadata(v, body, VersionRepository(s).set_tags)
            s.flush()
            served = ServedRepository(s).get(m.id, [v.version]).get(v.version)
            return version_out(m, v, self.versions.exports(s, v), served)

    def get_version(self, name: str, number: int) -> VersionOut:
        with self.db.read() as s:
            m = get_model(s, name)
            v = self.versions.get(s, m, number)
            served = ServedRepository(s).get(m.id, [v.version]).get(v.version)
            return version_out(m, v, self.versions.exports(s, v), served)

    def download(self, name: str, number: int) -> tuple[Model, Version, Iterator[bytes], int]:
        """A version's safetensors download: (model, version, chunks, length)."""
        with self.db.read() as s:
            m = get_model(s, name)
            v = self.versions.get(s, m, number)
        chunks, length = self.versions.download(m, v)
        return m, v, chunks, length
