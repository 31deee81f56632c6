"""/v1/models and aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from app.api.deps import (
    Ctx,
    MaintainKey,
    ModelAdmin,
    ModelMaintain,
    ModelNamePath,
    ModelRead,
    PageParams,
    ReadKey,
)
from app.errors import Forbidden
from app.schemas.common import NAME_PATTERN, Page, problem_responses
from app.schemas.models import AliasList, AliasOut, AliasPut, ModelCreate, ModelOut
from app.services.models import get_model as load_model

router = APIRouter(tags=["models"])
AliasPath = Annotated[str, Path(pattern=NAME_PATTERN, max_length=64, examples=["production"])]


@router.post(
    "/models",
    status_code=201,
    response_model=ModelOut,
    summary="Create a model and its version 1",
    responses=problem_responses(400, 401, 403, 409, 422),
    operation_id="create_model",
)
def create_model(body: ModelCreate, ctx: Ctx, p: MaintainKey, response: Response) -> ModelOut:
    if not p.may_use(body.name):
        raise Forbidden(f"this key is not allowed to use model {body.name!r}")
    with ctx.db.write() as s:
        m = ctx.models.create(s, body)
        out = ctx.models.view(s, m)
    ctx.metrics.versions.labels("init").inc()
    response.headers["Location"] = f"/v1/models/{m.name}"
    return out


@router.get(
    "/models",
    response_model=Page[ModelOut],
    summary="List models",
    responses=problem_responses(401, 403, 422),
    operation_id="list_models",
)
def list_models(ctx: Ctx, p: ReadKey, page: PageParams) -> Page[ModelOut]:
    limit, cursor = page
    allowed = list(p.models) if p.models is not None else None
    with ctx.db.read() as s:
        items, nxt = ctx.models.page(s, cursor=cursor, limit=limit, allowed=allowed)
    return Page[ModelOut](items=items, next_cursor=nxt)


@router.get(
    "/models/{name}",
    response_model=ModelOut,
    summary="Get a model: spec, latest version, aliases, online state",
    responses=problem_responses(401, 403, 404, 422),
    operation_id="get_model",
)
def get_model(name: ModelNamePath, ctx: Ctx, _: ModelRead) -> ModelOut:
    with ctx.db.read() as s:
        return ctx.models.view(s, load_model(s, name))


@router.delete(
    "/models/{name}",
    status_code=204,
    summary="Delete a model with its versions, log and jobs (admin)",
    responses=problem_responses(401, 403, 404, 422),
    operation_id="delete_model",
)
def delete_model(name: ModelNamePath, ctx: Ctx, _: ModelAdmin) -> Response:
    with ctx.db.write() as s:
        ctx.models.delete(s, name)
    ctx.extras.get("on_model_deleted", lambda n: None)(name)
    return Response(status_code=204)


@router.get(
    "/models/{name}/aliases",
    response_model=AliasList,
    summary="List aliases (with the implicit `latest`)",
    responses=problem_responses(401, 403, 404, 422),
    operation_id="list_aliases",
)
def list_aliases(name: ModelNamePath, ctx: Ctx, _: ModelRead) -> AliasList:
    with ctx.db.read() as s:
        return AliasList(items=ctx.models.list_aliases(s, name))


@router.get(
    "/models/{name}/aliases/{alias}",
    response_model=AliasOut,
    summary="Get an alias",
    responses=problem_responses(401, 403, 404, 422),
    operation_id="get_alias",
)
def get_alias(name: ModelNamePath, alias: AliasPath, ctx: Ctx, _: ModelRead) -> AliasOut:
    with ctx.db.read() as s:
        return ctx.models.get_alias(s, name, alias)


@router.put(
    "/models/{name}/aliases/{alias}",
    response_model=AliasOut,
    summary="Point an alias at a version (promote / roll back)",
    responses={
        201: {"description": "Alias created", "model": AliasOut},
        **problem_responses(400, 401, 403, 404, 422),
    },
    operation_id="put_alias",
)
def put_alias(
    name: ModelNamePath, alias: AliasPath, body: AliasPut, ctx: Ctx, _: ModelMaintain, response: Response
) -> AliasOut:
    with ctx.db.write() as s:
        out, created = ctx.models.put_alias(s, name, alias, body.version)
    response.status_code = 201 if created else 200
    return out


@router.delete(
    "/models/{name}/aliases/{alias}",
    status_code=204,
    summary="Remove an alias",
    responses=problem_responses(401, 403, 404, 422),
    operation_id="delete_alias",
)
def delete_alias(name: ModelNamePath, alias: AliasPath, ctx: Ctx, _: ModelMaintain) -> Response:
    with ctx.db.write() as s:
        ctx.models.delete_alias(s, name, alias)
    return Response(status_code=204)
