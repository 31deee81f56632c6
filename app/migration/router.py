"""/v1/models/{name}/versions/{v}/exports: verified artifacts made by ``migrate`` jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.core.body import read_body
from app.core.errors import UnsupportedMediaType
from app.core.jsonbody import JSONRoute
from app.core.schemas import problem_responses
from app.deps import Ctx, ModelMaintain, ModelNamePath, ModelRead, VersionPath
from app.interop.export import MEDIA_TYPES
from app.jobs.router import JOB_RESPONSES, PreferHeader, job_answer
from app.jobs.schemas import JobOut
from app.migration.schemas import ExportList, MigrateIn, Target
from app.registry.schemas import VersionOut

router = APIRouter(route_class=JSONRoute)
TargetPath = Annotated[Target, Path(description="Export target: onnx, torch or npz")]


@router.get(
    "/models/{name}/versions/{version}/exports",
    tags=["versions"],
    response_model=ExportList,
    summary="List a version's verified exports",
    responses=problem_responses(401, 403, 404, 422),
    operation_id="list_exports",
)
def list_exports(name: ModelNamePath, version: VersionPath, ctx: Ctx, _: ModelRead) -> ExportList:
    return ExportList(items=ctx.migration.list_exports(name, version))


@router.get(
    "/models/{name}/versions/{version}/exports/{target}",
    tags=["versions"],
    summary="Download a verified export (ONNX file, PyTorch safetensors state dict, or npz)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The artifact, as a download named `{model}-v{version}.onnx|.safetensors|.npz`. "
            "`X-Steward-Max-Abs-Error` gives the verified maximum error against Steward's outputs.",
            "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in set(MEDIA_TYPES.values())},
        },
        **problem_responses(401, 403, 404, 422),
    },
    operation_id="download_export",
)
def download_export(
    name: ModelNamePath, version: VersionPath, target: TargetPath, ctx: Ctx, _: ModelRead
) -> StreamingResponse:
    e = ctx.migration.get_export(name, version, target)
    headers = {
        "Content-Length": str(e.size_bytes),
        "Content-Disposition": f'attachment; filename="{e.filename}"',
        "X-Steward-Blob-SHA256": e.blob_sha256,
    }
    err = e.meta.get("verification", {}).get("max_abs_error")
    if err is not None:
        headers["X-Steward-Max-Abs-Error"] = repr(float(err))
    return StreamingResponse(ctx.blobs.stream(e.blob_sha256), media_type=e.media_type, headers=headers)


@router.post(
    "/models/{name}/migrate",
    tags=["jobs"],
    status_code=202,
    response_model=JobOut,
    summary="Export a version to ONNX / PyTorch / npz (verified), or transfer it to a new task (a job)",
    description='Export: `{"from", "target", "opset"}`; the job verifies the artifact before offering it '
    "at `GET /v1/models/{name}/versions/{v}/exports/{target}`. Re-requesting an existing export (same "
    'target, and for onnx the same opset) succeeds at once with `"reused": true`; another opset replaces '
    'the stored onnx file. Transfer: `{"from", "mode": "transfer", "new_model", "task", '
    '"output_dim", "freeze", "samples", ...batch options}` creates a new model whose version 1 '
    "(operation `transfer`) records its lineage.",
    responses={**JOB_RESPONSES, **problem_responses(400, 401, 403, 404, 409, 413, 422)},
    operation_id="migrate",
)
async def migrate(
    name: ModelNamePath,
    body: MigrateIn,
    ctx: Ctx,
    p: ModelMaintain,
    response: Response,
    prefer: PreferHeader = None,
) -> JobOut:
    if body.new_model is not None:
        p.check_model(body.new_model)  # a transfer creates a model: the key must be allowed to use it
    job_id = await run_in_threadpool(ctx.migration.submit, name, body)
    return await job_answer(ctx.jobs, job_id, prefer, response)


IMPORT_TYPES = ("application/octet-stream", "application/vnd.safetensors", "application/safetensors")
ONNX_TYPES = ("application/onnx", "application/vnd.onnx")


@router.post(
    "/models/{name}/versions",
    tags=["versions"],
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
    out = await run_in_threadpool(ctx.migration.import_version, name, data, onnx_file=ctype in ONNX_TYPES)
    response.headers["Location"] = f"/v1/models/{name}/versions/{out.version}"
    return out
