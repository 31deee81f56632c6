"""/v1/models, their aliases and versions (list, get, download weights)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response
from fastapi.responses import StreamingResponse

from app.core.jsonbody import JSONRoute
from app.core.schemas import NAME_PATTERN, Page, problem_responses
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
from app.registry.schemas import AliasList, AliasOut, AliasPut, ModelCreate, ModelOut, VersionOut

router = APIRouter(route_class=JSONRoute)
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
    p.check_model(body.name)
    out = ctx.models.create(body)
    ctx.metrics.versions.labels("init").inc()
    response.headers["Location"] = f"/v1/models/{out.name}"
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
    items, nxt = ctx.models.page(cursor=cursor, limit=limit, allowed=p.models)
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
    return ctx.models.view(name)


@router.delete(
    "/models/{name}",
    tags=["models"],
    status_code=204,
    summary="Delete a model with its versions, log and jobs (admin)",
    responses=problem_responses(401, 403, 404, 422),
    operation_id="delete_model",
)
def delete_model(name: ModelNamePath, ctx: Ctx, _: ModelAdmin) -> Response:
    ctx.models.delete(name)
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
    return AliasList(items=ctx.models.list_aliases(name))


@router.get(
    "/models/{name}/aliases/{alias}",
    tags=["models"],
    response_model=AliasOut,
    summary="Get an alias",
    responses=problem_responses(401, 403, 404, 422),
    operation_id="get_alias",
)
def get_alias(name: ModelNamePath, alias: AliasPath, ctx: Ctx, _: ModelRead) -> AliasOut:
    return ctx.models.get_alias(name, alias)


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
    out, created = ctx.models.put_alias(name, alias, body.version)
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
    ctx.models.delete_alias(name, alias)
    return Response(status_code=204)


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
    items, nxt = ctx.models.list_versions(name, cursor=cursor, limit=limit)
    return Page[VersionOut](items=items, next_cursor=nxt)


@router.get(
    "/models/{name}/versions/{version}",
    tags=["versions"],
    response_model=VersionOut,
    summary="Get a version",
    responses=problem_responses(401, 403, 404, 422),
    operation_id="get_version",
)
def get_version(name: ModelNamePath, version: VersionPath, ctx: Ctx, _: ModelRead) -> VersionOut:
    return ctx.models.get_version(name, version)


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
    m, v, chunks, length = ctx.models.download(name, version)
    return StreamingResponse(
        chunks,
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(length),
            "Content-Disposition": f'attachment; filename="{m.name}-v{v.version}.safetensors"',
            "X-Steward-Blob-SHA256": v.blob_sha256,
        },
    )
