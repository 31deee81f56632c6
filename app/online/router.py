"""/v1/models/{name}/update, /checkpoint, /resume, /drift/reset and /metrics/history:
online learning.

``/update`` reads its body raw: JSON whole (within the body limit), NDJSON chunk by
chunk as it arrives; orjson parses straight into float32 arrays
(:mod:`app.online.ingest`) on the event loop, and the durable append runs in
the thread pool so the commit's fsync never blocks the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from app.context import AppContext
from app.core.body import INLINE_PARSE_BYTES, JSON_TYPES, NDJSON_TYPES, body_chunks, read_body
from app.core.errors import BadRequest, Invalid, UnsupportedMediaType
from app.core.jsonbody import JSONRoute
from app.core.memory import release_free_memory
from app.core.routes import HotRoute, path_name_param, query_bool, query_float, query_param
from app.core.schemas import problem_responses
from app.deps import BEARER_SECURITY, ModelMaintain, ModelNamePath, ModelRead, authorize_model
from app.online.ingest import NDJSONParser, parse_json
from app.online.samples import SampleSpec
from app.online.schemas import (
    HISTORY_POINTS_DEFAULT,
    HISTORY_POINTS_MAX,
    UPDATE_BODY,
    MetricsHistory,
    ResumeIn,
    UpdateOut,
)
from app.registry.schemas import ModelOut, VersionOut

router = APIRouter(route_class=JSONRoute, tags=["online"])

#: After a body larger than this, the freed heap is handed back to the OS (app.core.memory).
TRIM_BODY_BYTES = 8 << 20
KEY_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F))

UPDATE_PARAMS = [
    path_name_param(),
    query_param("wait", {"type": "boolean", "default": False}, "Answer once the samples are applied"),
    query_param(
        "timeout",
        {"type": "number", "exclusiveMinimum": 0, "maximum": 600, "default": 30.0},
        "Longest wait in seconds (`wait=true`)",
    ),
    {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "Makes a retry a no-op: the retry answers 202 with the first answer and "
        '`"duplicate": true`; the same key with a different body is 409. Printable ASCII, ≤ 255 characters.',
        "schema": {"type": "string", "maxLength": 255},
    },
]


def _ctx(request: Request) -> AppContext:
    return request.app.state.ctx


def _json(body: Any, status: int) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


async def _read_samples(
    request: Request,
    limit: int,
    spec: SampleSpec,
    body_read: Callable[[], None] = lambda: None,
    size: list[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The request's samples; ``body_read()`` is called once the whole body has arrived
    (before the last of the parsing); ``size`` (if given) gets the body's length appended."""
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype in NDJSON_TYPES:
        parser = NDJSONParser(spec)
        seen = 0
        async for chunk in body_chunks(request, limit):
            seen += len(chunk)
            parser.feed(chunk)
        if size is not None:
            size.append(seen)
        body_read()
        return parser.finish()
    if ctype in JSON_TYPES:
        body = await read_body(request, limit)
        if not body:
            raise BadRequest('empty body: send {"samples": [...]} or NDJSON')
        if size is not None:
            size.append(len(body))
        body_read()
        if len(body) > INLINE_PARSE_BYTES:
            return await run_in_threadpool(parse_json, spec, body)
        return parse_json(spec, body)
    raise UnsupportedMediaType(
        f"unsupported Content-Type {ctype!r}: send application/json or application/x-ndjson",
        errors=[{"loc": ["header", "Content-Type"], "msg": "expected application/json or application/x-ndjson"}],
    )


async def update(request: Request) -> Response:
    """``{name}``, the key and the parameters are read here, not by dependencies (a hot
    route: see :mod:`app.core.routes`)."""
    name = await authorize_model(request, "ingest")
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is not None and len(idempotency_key) > 255:
        raise Invalid.at(["header", "Idempotency-Key"], "String should have at most 255 characters")
    wait = query_bool(request, "wait", False)
    wait_s = query_float(request, "timeout", 30.0, gt=0, le=600)
    ctx = _ctx(request)
    if idempotency_key is not None and (not idempotency_key or not set(idempotency_key) <= KEY_CHARS):
        raise Invalid.at(["header", "Idempotency-Key"], "expected 1–255 printable ASCII characters without spaces")

    size: list[int] = []

    async def read(spec: SampleSpec, body_read: Callable[[], None]) -> tuple[np.ndarray, np.ndarray]:
        return await _read_samples(request, ctx.settings.max_body_bytes, spec, body_read, size)

    try:
        answer = await ctx.online.update(name, read, key=idempotency_key, wait=wait, wait_seconds=wait_s)
    finally:
        if size and size[0] > TRIM_BODY_BYTES:  # its text, arrays and objects are freed by now
            release_free_memory()
    return _json(answer, 202)


router.add_api_route(
    "/models/{name}/update",
    update,
    methods=["POST"],
    status_code=202,
    response_model=UpdateOut,
    response_model_exclude_none=True,
    summary="Append labelled samples to the model's log (online learning)",
    description=(
        "Validates every sample (length, finite float32 values, label), appends them durably to the "
        "model's sample log and answers 202 with their offsets. One bad sample rejects the whole "
        'request (422 at `["body", "samples", i, "x" | "y"]`, for NDJSON as for JSON) and nothing is '
        "stored. The learner then applies them in offset order, one step per sample, test-then-train.\n\n"
        "With `?wait=true` the answer comes once the samples are applied (or the model is paused, or "
        "`timeout` seconds passed: then `applied` is false) and adds `applied_through`, `status` and "
        "the running `prequential` metrics. Samples are accepted while the model is paused."
    ),
    responses={
        202: {"description": "Accepted and durably logged (or, with `?wait=true`, also applied)"},
        **problem_responses(400, 401, 403, 404, 409, 413, 415, 422),
    },
    openapi_extra={"parameters": UPDATE_PARAMS, "requestBody": UPDATE_BODY, **BEARER_SECURITY},
    operation_id="update_model",
    route_class_override=HotRoute,
)


@router.post(
    "/models/{name}/checkpoint",
    status_code=201,
    response_model=VersionOut,
    summary="Commit an `online` version now",
    description=(
        "Waits until the learner has applied every sample accepted before the call, then answers 201 "
        "with the new `online` version (its `applied_through` says which offsets it includes), or 200 "
        "with the current version if nothing was applied since it. On a paused model it checkpoints "
        "the last good parameters (through the offset before the refused one). 503 when no learner "
        "answers within `timeout` seconds."
    ),
    responses={
        200: {"description": "Nothing applied since the current version: that version", "model": VersionOut},
        **problem_responses(401, 403, 404, 422, 503),
    },
    operation_id="checkpoint_model",
)
async def checkpoint(
    request: Request,
    name: ModelNamePath,
    _: ModelMaintain,
    wait_s: Annotated[
        float, Query(alias="timeout", gt=0, le=600, description="Longest wait for the learner, seconds")
    ] = 60.0,
) -> Response:
    out, created = await _ctx(request).online.checkpoint(name, wait_s)
    return Response(out.model_dump_json(), status_code=201 if created else 200, media_type="application/json")


@router.post(
    "/models/{name}/resume",
    response_model=ModelOut,
    summary="Restart a paused model's online learning",
    description=(
        "Skips the sample that made the guard pause the model and restarts learning from the last good "
        "parameters, or from `from_version`'s parameters (with a fresh optimizer state). Answers with "
        "the model, now `active`. 409 when the model is not paused."
    ),
    responses=problem_responses(401, 403, 404, 409, 422),
    operation_id="resume_model",
)
def resume(request: Request, name: ModelNamePath, _: ModelMaintain, body: ResumeIn | None = None) -> ModelOut:
    return _ctx(request).online.resume(name, body.from_version if body is not None else None)


@router.post(
    "/models/{name}/drift/reset",
    response_model=ModelOut,
    summary="Start drift detection again",
    description=(
        "Drift detection restarts: the loss detector forgets its window, the next samples become the "
        "input reference, and the status is `stable`. Answers with the model. (Detection also restarts "
        "when the learner starts from a new version and on `/resume`.)"
    ),
    responses=problem_responses(401, 403, 404, 422),
    operation_id="reset_drift",
)
def reset_drift(request: Request, name: ModelNamePath, _: ModelMaintain) -> ModelOut:
    return _ctx(request).online.reset_drift(name)


#: The largest offset a query names (as the job bodies bound them).
OFFSET_MAX = 2**62


@router.get(
    "/models/{name}/metrics/history",
    response_model=MetricsHistory,
    summary="The model's learning curve: prequential and served loss and accuracy over offsets",
    description=(
        "As the online learner applies the log it records a point each time its progress has moved "
        "`STEWARD_METRICS_POINT_SAMPLES` samples (default 100) past the last point: its running "
        "test-then-train sums and the model's served totals (recorded predictions and the labels they "
        "got, over all versions) at that offset.\n\n"
        "The range `from_offset` .. `to_offset` (inclusive; default 0 .. the newest point's offset) is "
        "cut into `points` equal-width buckets of offsets; each bucket holding a point answers with its "
        "last point: `samples` the learner scored in the bucket, their mean `loss` and `accuracy` "
        "(exact, from the differences of the cumulative sums with the point before: the previous "
        "answered point, or the last one before `from_offset`), the running means at the point "
        "(`running_loss`, `running_accuracy`: since the learner's metrics began), and `served`: the "
        "labels that came in during the bucket and the mean loss and accuracy of the outputs they "
        "scored (null when none came). Where the learner's metrics began again, a point's step is its "
        "own sums. `recorded` counts the points in the range. Accuracy is null for a regression. "
        "422 for a negative offset, `from_offset` > `to_offset`, or `points` outside 1–2000."
    ),
    responses=problem_responses(401, 403, 404, 422),
    operation_id="get_metrics_history",
)
def metrics_history(
    request: Request,
    name: ModelNamePath,
    _: ModelRead,
    from_offset: Annotated[
        int | None, Query(ge=0, le=OFFSET_MAX, description="First offset of the range (default 0)")
    ] = None,
    to_offset: Annotated[
        int | None, Query(ge=0, le=OFFSET_MAX, description="Last offset, inclusive (default: the newest point's)")
    ] = None,
    points: Annotated[
        int, Query(ge=1, le=HISTORY_POINTS_MAX, description="Buckets the range is cut into: the most points answered")
    ] = HISTORY_POINTS_DEFAULT,
) -> MetricsHistory:
    return _ctx(request).online.metrics_history(name, from_offset=from_offset, to_offset=to_offset, points=points)
