"""Models: create (with version 1), list, get, delete, aliases, and their public view."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.errors import Conflict, Invalid, NotFound
from app.core.tables import Learner, Model, utcnow
from app.engine.nn.network import init_network
from app.registry.repository import AliasRepository, ModelRepository, VersionRepository
from app.registry.schemas import AliasOut, ModelCreate, ModelOut, OnlineState, Prequential
from app.registry.versions import VersionService


def get_model(s: Session, name: str, *, for_update: bool = False) -> Model:
    m = ModelRepository(s).get_by_name(name, for_update=for_update)
    if m is None:
        raise NotFound(f"no model named {name!r}")
    return m


def online_state(m: Model, learner: Learner | None) -> OnlineState:
    applied_through = learner.applied_through if learner is not None else -1
    metrics: dict[str, Any] = dict(learner.metrics) if learner is not None else {}
    applied = applied_through + 1
    return OnlineState(
        accepted=m.next_offset,
        applied=applied,
        lag=max(m.next_offset - applied, 0),
        applied_through=applied_through if applied_through >= 0 else None,
        prequential=Prequential.model_validate(metrics.get("prequential", {})),
    )


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
        created_at=m.created_at,
        updated_at=m.updated_at,
    )


class ModelService:
    def __init__(self, versions: VersionService, max_params: int) -> None:
        self.versions = versions
        self.max_params = max_params

    def view(self, s: Session, m: Model) -> ModelOut:
        latest = VersionRepository(s).latest_number(m.id)
        aliases = {a.name: a.version for a in AliasRepository(s).all(m.id)}
        return model_out(m, latest, aliases, s.get(Learner, m.id))

    def create(
        self,
        s: Session,
        spec: ModelCreate,
        *,
        lineage: dict[str, Any] | None = None,
        first: dict[str, Any] | None = None,
    ) -> Model:
        """Add the model, its learner row and version 1 to ``s``'s transaction.

        Version 1 is the seeded initialization unless ``first`` gives the keyword
        arguments of :meth:`VersionService.create` for it (e.g. a transfer job's
        ``operation``, ``net``, ``params``, ``metrics``, ``job_id``)."""
        if spec.n_params() > self.max_params:
            raise Invalid.at(
                ["body", "hidden"],
                f"the network would have {spec.n_params():,} parameters; the limit is {self.max_params:,}",
            )
        if ModelRepository(s).get_by_name(spec.name) is not None:
            raise Conflict(f"a model named {spec.name!r} already exists")
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
        s.add(Learner(model_id=m.id, applied_through=-1, metrics={}, updated_at=now))
        if first is None:
            net = init_network(spec.task, spec.activation, spec.input_dim, spec.output_dim, spec.hidden, spec.seed)
            first = {
                "operation": "init",
                "net": net,
                "params": {"seed": spec.seed, "init": "he-normal (relu hidden) / glorot-uniform"},
            }
        self.versions.create(s, m, parent=None, **first)
        return m

    def page(
        self, s: Session, *, cursor: str | None, limit: int, allowed: list[str] | None
    ) -> tuple[list[ModelOut], str | None]:
        rows = ModelRepository(s).page(after=cursor, limit=limit + 1, names=allowed)
        more = len(rows) > limit
        rows = rows[:limit]
        ids = [m.id for m in rows]
        latest = VersionRepository(s).latest_numbers(ids)
        aliases = AliasRepository(s).for_models(ids)
        learners = {x.model_id: x for x in s.scalars(sa.select(Learner).where(Learner.model_id.in_(ids)))}
        items = [model_out(m, latest.get(m.id, 0), aliases.get(m.id, {}), learners.get(m.id)) for m in rows]
        return items, (rows[-1].name if more and rows else None)

    def delete(self, s: Session, name: str) -> None:
        ModelRepository(s).delete(get_model(s, name, for_update=True))

    # ---- aliases
    def put_alias(self, s: Session, name: str, alias: str, version: int) -> tuple[AliasOut, bool]:
        if alias == "latest":
            raise Invalid.at(["path", "alias"], "`latest` is implicit and cannot be set")
        m = get_model(s, name, for_update=True)
        self.versions.get(s, m, version)
        a, created = AliasRepository(s).put(m.id, alias, version)
        return AliasOut(model=m.name, alias=a.name, version=a.version, updated_at=a.updated_at), created

    def get_alias(self, s: Session, name: str, alias: str) -> AliasOut:
        m = get_model(s, name)
        if alias == "latest":
            return AliasOut(model=m.name, alias="latest", version=VersionRepository(s).latest_number(m.id))
        a = AliasRepository(s).get(m.id, alias)
        if a is None:
            raise NotFound(f"model {name!r} has no alias {alias!r}")
        return AliasOut(model=m.name, alias=a.name, version=a.version, updated_at=a.updated_at)

    def list_aliases(self, s: Session, name: str) -> list[AliasOut]:
        m = get_model(s, name)
        out = [
            AliasOut(model=m.name, alias=a.name, version=a.version, updated_at=a.updated_at)
            for a in AliasRepository(s).all(m.id)
        ]
        out.append(AliasOut(model=m.name, alias="latest", version=VersionRepository(s).latest_number(m.id)))
        return out

    def delete_alias(self, s: Session, name: str, alias: str) -> None:
        if alias == "latest":
            raise Invalid.at(["path", "alias"], "`latest` is implicit and cannot be removed")
        m = get_model(s, name, for_update=True)
        a = AliasRepository(s).get(m.id, alias)
        if a is None:
            raise NotFound(f"model {name!r} has no alias {alias!r}")
        AliasRepository(s).delete(a)
