"""``POST /v1/models/{name}/labels`` (delayed labels for recorded predictions) and
``/v1/models/{name}/shadows`` (candidates scored on live traffic)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from starlette.concurrency import run_in_threadpool

from app.context import AppContext
from app.core.body import INLINE_PARSE_BYTES, JSON_TYPES, NDJSON_TYPES, body_chunks, read_body
from app.core.errors import BadRequest, UnsupportedMediaType
from app.core.jsonbody import JSONRoute
from app.core.schemas import problem_responses
from app.deps import ModelIngest, ModelMaintain, ModelNamePath, ModelRead, VersionPath
from app.feedback.schemas import LABELS_BODY, LabelsOut, ShadowIn, ShadowList, ShadowOut
from app.feedback.service import LabelLines, json_items

router = APIRouter(route_class=JSONRoute, tags=["online"])


@router.post(
    "/models/{name}/labels",
    status_code=202,
    response_model=LabelsOut,
    summary="Label recorded predictions",
    description=(
        "Each `{id, y}` turns a prediction recorded by `predict` with `record` into a sample of the "
        "model's log — the recorded input with this `y` — exactly as `/update` appends samples: every "
        "label checked first, all or nothing, durable before the 202, learned by the online learner. "
        "The label also scores the output that was served (the version's `served` metrics). An unknown "
        'or expired id is 422 at `["body", "labels", i, "id"]`; the same label again is a '
        "duplicate and adds nothing; another `y` for a labelled id is 409."
    ),
    responses=problem_responses(400, 401, 403, 404, 409, 413, 415, 422),
    openapi_extra={"requestBody": LABELS_BODY},
    operation_id="label_predictions",
)
async def labels(
    request: Request,
    name: ModelNamePath,
    _: ModelIngest,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=255,
            pattern=r"^[!-~]+$",
            description="Makes a retry a no-op, as on /update",
        ),
    ] = None,
) -> Response:
    ctx: AppContext = request.app.state.ctx
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype not in JSON_TYPES and ctype not in NDJSON_TYPES:
        raise UnsupportedMediaType(
            f"unsupported Content-Type {ctype!r}: send application/json or application/x-ndjson",
            errors=[{"loc": ["header", "Content-Type"], "msg": "expected application/json or application/x-ndjson"}],
        )
    limit = ctx.settings.max_body_bytes
    if ctype in NDJSON_TYPES:  # read line by line as it arrives, like /update's NDJSON
        lines = LabelLines()
        async for chunk in body_chunks(request, limit):
            lines.feed(chunk)
        items = lines.finish()
    else:
        body = await read_body(request, limit)
        if not body:
            raise BadRequest('empty body: send {"labels": [...]} or NDJSON')
        items = await run_in_threadpool(json_items, body) if len(body) > INLINE_PARSE_BYTES else json_items(body)
        del body
    answer = await ctx.feedback.label(name, items, idempotency_key)
    return Response(LabelsOut(**answer).model_dump_json(), status_code=202, media_type="application/json")


@router.put(
    "/models/{name}/shadows/{version}",
    status_code=201,
    response_model=ShadowOut,
    summary="Shadow-score a version on live traffic",
    description=(
        "Version `version` scores every sample appended to the log from now on, without learning "
        "from it, and the version it is compared with (`against`: an alias or `latest`; default "
        "`production` if set, else `latest`, resolved now) scores the same samples. 201 when started, "
        "200 when an existing shadow of the version was restarted. A quantized or pruned candidate "
        "scores with its own stored parameters."
    ),
    responses={200: {"description": "Restarted", "model": ShadowOut}, **problem_responses(401, 403, 404, 422)},
    operation_id="put_shadow",
)
def put_shadow(
    request: Request, name: ModelNamePath, version: VersionPath, _: ModelMaintain, body: ShadowIn | None = None
) -> Response:
    out, created = request.app.state.ctx.feedback.put_shadow(name, version, body.against if body else None)
    return Response(out.model_dump_json(), status_code=201 if created else 200, media_type="application/json")


@router.get(
    "/models/{name}/shadows",
    response_model=ShadowList,
    summary="Shadows and how they compare",
    description="Each shadow's loss (and accuracy) beside those of the version it is compared with, "
    "both over exactly the same `n` samples.",
    responses=problem_responses(401, 403, 404, 422),
    operation_id="list_shadows",
)
def list_shadows(request: Request, name: ModelNamePath, _: ModelRead) -> ShadowList:
    return ShadowList(items=request.app.state.ctx.feedback.shadows(name))


@router.delete(
    "/models/{name}/shadows/{version}",
    status_code=204,
    summary="Stop a shadow",
    responses=problem_responses(401, 403, 404, 422),
    operation_id="delete_shadow",
)
def delete_shadow(request: Request, name: ModelNamePath, version: VersionPath, _: ModelMaintain) -> Response:
    request.app.state.ctx.feedback.delete_shadow(name, version)
    return Response(status_code=204)
