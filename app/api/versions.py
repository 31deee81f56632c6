"""/v1/models/{name}/versions: list, get, download weights, import."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.api.body import read_body
from app.api.deps import Ctx, ModelMaintain, ModelNamePath, ModelRead, PageParams
from app.errors import Invalid, UnsupportedMediaType
from app.schemas.common import Page, problem_responses
from app.schemas.models import VersionOut
from app.services.models import get_model
from app.store.models import Model, Version
from app.store.repositories import VersionRepository

router = APIRouter(tags=["versions"])
VersionPath = Annotated[int, Path(ge=1, le=2**31 - 1, description="Version number")]


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
        m = get_model(s, name)
        rows = VersionRepository(s).page(m.id, after=after, limit=limit + 1, descending=True)
        more = len(rows) > limit
        rows = rows[:limit]
        items = [version_out(m, v) for v in rows]
    return Page[VersionOut](items=items, next_cursor=str(rows[-1].version) if more and rows else None)


@router.get(
    "/models/{name}/versions/{version}",
    response_model=VersionOut,
    summary="Get a version",
    responses=problem_responses(401, 403, 404, 422),
    operation_id="get_version",
)
def get_version(name: ModelNamePath, version: VersionPath, ctx: Ctx, _: ModelRead) -> VersionOut:
    with ctx.db.read() as s:
        m = get_model(s, name)
        v = ctx.versions.get(s, m, version)
        return version_out(m, v, ctx.versions.exports(s, v))


@router.get(
    "/models/{name}/versions/{version}/weights",
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
        m = get_model(s, name)
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


IMPORT_TYPES = ("application/octet-stream", "application/vnd.safetensors", "application/safetensors")
ONNX_TYPES = ("application/onnx", "application/vnd.onnx")


@router.post(
    "/models/{name}/versions",
    status_code=201,
    response_model=VersionOut,
    summary="Import parameters as a new version (safetensors; ONNX with application/onnx)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "application/onnx": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
    responses=problem_responses(400, 401, 403, 404, 409, 413, 415, 422),
    operation_id="import_version",
)
async def import_version(
    name: ModelNamePath, request: Request, ctx: Ctx, _: ModelMaintain, response: Response
) -> VersionOut:
    ctype = request.headers.get("content-type", "application/octet-stream").split(";")[0].strip().lower()
    if ctype not in IMPORT_TYPES + ONNX_TYPES:
        raise UnsupportedMediaType(
            f"send a safetensors file as application/octet-stream or an ONNX file as application/onnx, not {ctype}"
        )
    data = await read_body(request, ctx.settings.max_body_bytes)

    def work() -> VersionOut:
        with ctx.db.write() as s:
            m = get_model(s, name, for_update=True)
            importer = ctx.extras.get("import_onnx") if ctype in ONNX_TYPES else None
            if ctype in ONNX_TYPES and importer is None:
                raise UnsupportedMediaType("ONNX import is not available in this build")
            v = importer(s, m, data) if importer else ctx.versions.import_safetensors(s, m, data)
            return version_out(m, v)

    out = await run_in_threadpool(work)
    ctx.metrics.versions.labels("import").inc()
    response.headers["Location"] = f"/v1/models/{name}/versions/{out.version}"
    return out
