"""/v1/models/{name}/versions/{v}/exports: verified artifacts made by ``migrate`` jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import StreamingResponse

from app.api.deps import Ctx, ModelNamePath, ModelRead
from app.api.versions import VersionPath
from app.engine.export import MEDIA_TYPES
from app.schemas.common import problem_responses
from app.schemas.migrate import ExportList, Target

router = APIRouter(tags=["versions"])
TargetPath = Annotated[Target, Path(description="Export target: onnx, torch or npz")]


@router.get(
    "/models/{name}/versions/{version}/exports",
    response_model=ExportList,
    summary="List a version's verified exports",
    responses=problem_responses(401, 403, 404, 422),
    operation_id="list_exports",
)
def list_exports(name: ModelNamePath, version: VersionPath, ctx: Ctx, _: ModelRead) -> ExportList:
    with ctx.db.read() as s:
        return ExportList(items=ctx.migrate.list_exports(s, name, version))


@router.get(
    "/models/{name}/versions/{version}/exports/{target}",
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
    with ctx.db.read() as s:
        _m, _v, e = ctx.migrate.get_export(s, name, version, target)
    headers = {
        "Content-Length": str(e.size_bytes),
        "Content-Disposition": f'attachment; filename="{e.filename}"',
        "X-Steward-Blob-SHA256": e.blob_sha256,
    }
    err = e.meta.get("verification", {}).get("max_abs_error")
    if err is not None:
        headers["X-Steward-Max-Abs-Error"] = repr(float(err))
    return StreamingResponse(ctx.blobs.stream(e.blob_sha256), media_type=e.media_type, headers=headers)
