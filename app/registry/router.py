"""/v1/models, their aliases and versions (list, get, download weights)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response
from fastapi.responses import StreamingResponse

from app.core.errors import Forbidden, Invalid
from app.core.schemas import NAME_PATTERN, Page, problem_responses
from app.core.tables import Model, Version
from app.deps import (
    Ctx,
    MaintainKey,
    ModelAdmin,
    ModelMaintain,
    ModelNamePath,
    ModelRead,
    PageParams,
    ReadKey,
    VersionPath,
)
from app.registry.models import get_model as load_model
from app.registry.repository import VersionRepository
from app.registry.schemas import AliasList, AliasOut, AliasPut, ModelCreate, ModelOut, VersionOut

router = APIRouter()
AliasPath = Annotated[str, Path(pattern=NAME_PATTERN, max_length=64, examples=["production"])]


@router.post(
    "/models",
    tags=["models"],
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
    tags=["models"],
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
    tags=["models"],
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
    tags=["models"],
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
    tags=["models"],
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
    tags=["models"],
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
    tags=["models"],
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
    tags=["models"],
    status_code=204,
    summary="Remove an alias",
    responses=problem_responses(401, 403, 404, 422),
    operation_id="delete_alias",
)
def delete_alias(name: ModelNamePath, alias: AliasPath, ctx: Ctx, _: ModelMaintain) -> Response:
    with ctx.db.write() as s:
        ctx.models.delete_alias(s, name, alias)
    return Response(status_code=204)


def version_out(m: Model, v: Version, exports: list[dict] | None = None) -> VersionOut:
    return VersionOut(
        model=m.name,
        version=v.version,
        parent=v.parent,
        operation=v.operation,  # type: ignore[arg-type]
        params=v.params,
        metrics=v.metrics,
        sha256=v.blob_sha256,
        size_bytes=v.size_bytes,
        sparsity=v.sparsity,
        dtype=v.dtype,
        encoding=v.encoding,
        architecture=list(v.architecture),
        applied_through=v.applied_through,
        exports=exports or [],
        created_at=v.created_at,
    )


@router.get(
    "/models/{name}/versions",
    tags=["versions"],
    response_model=Page[VersionOut],
    summary="List versions, newest first",
    responses=problem_responses(401, 403, 404, 422),
    operation_id="list_versions",
)
def list_versions(name: ModelNamePath, ctx: Ctx, _: ModelRead, page: PageParams) -> Page[VersionOut]:
    limit, cursor = page
    after = None
    if cursor is not None:
        if not cursor.isdigit() or len(cursor) > 10:
            raise Invalid.at(["query", "cursor"], "not a cursor from this list")
        after = int(cursor)
    with ctx.db.read() as s:
        m = load_model(s, name)
        rows = VersionRepository(s).page(m.id, after=after, limit=limit + 1, descending=True)
        more = len(rows) > limit
        rows = rows[:limit]
        items = [version_out(m, v) for v in rows]
    return Page[VersionOut](items=items, next_cursor=str(rows[-1].version) if more and rows else None)


@router.get(
    "/models/{name}/versions/{version}",
    tags=["versions"],
    response_model=VersionOut,
    summary="Get a version",
    responses=problem_responses(401, 403, 404, 422),
    operation_id="get_version",
)
def get_version(name: ModelNamePath, version: VersionPath, ctx: Ctx, _: ModelRead) -> VersionOut:
    with ctx.db.read() as s:
        m = load_model(s, name)
        v = ctx.versions.get(s, m, version)
        return version_out(m, v, ctx.versions.exports(s, v))


@router.get(
    "/models/{name}/versions/{version}/weights",
    tags=["versions"],
    summary="Download a version's parameters (safetensors)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "safetensors file: layers.{i}.weight [out, in], layers.{i}.bias [out]",
            "content": {"application/octet-stream": {}},
        },
        **problem_responses(401, 403, 404, 422),
    },
    operation_id="download_weights",
)
def download_weights(name: ModelNamePath, version: VersionPath, ctx: Ctx, _: ModelRead) -> StreamingResponse:
    with ctx.db.read() as s:
        m = load_model(s, name)
        v = ctx.versions.get(s, m, version)
        chunks, length = ctx.versions.download(m, v)
    return StreamingResponse(
        chunks,
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(length),
            "Content-Disposition": f'attachment; filename="{m.name}-v{v.version}.safetensors"',
            "X-Steward-Blob-SHA256": v.blob_sha256,
        },
    )
