"""/v1/models/{name}/predict and /evaluate.

``/predict`` is a hot path: it reads its body raw and answers bytes (orjson), so a valid
request with a cached key and target costs no pydantic model and no thread hop
(:mod:`app.predict.service`); the request and answer schemas are still the documented ones.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.context import AppContext
from app.core.body import JSON_TYPES, read_body
from app.core.errors import UnsupportedMediaType
from app.core.jsonbody import JSONRoute
from app.core.routes import HotRoute, path_name_param
from app.core.schemas import problem_responses
from app.deps import BEARER_SECURITY, Ctx, ModelNamePath, ModelRead, authorize_model_as
from app.predict.schemas import EvaluateIn, EvaluateOut, PredictIn, PredictOut

router = APIRouter(route_class=JSONRoute, tags=["predict"])


PREDICT_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": PredictIn.model_json_schema(),
            "example": PredictIn.model_config["json_schema_extra"]["examples"][0],  # type: ignore[index]
        }
    },
}


async def predict(request: Request) -> Response:
    """``{name}`` and the key are checked here, not by dependencies (a hot route: see
    :mod:`app.core.routes`)."""
    name, caller = await authorize_model_as(request, "read")
    ctx: AppContext = request.app.state.ctx
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype not in JSON_TYPES:
        raise UnsupportedMediaType(
            f"unsupported Content-Type {ctype!r}: send application/json",
            errors=[{"loc": ["header", "Content-Type"], "msg": "expected application/json"}],
        )
    body = await read_body(request, ctx.settings.max_body_bytes)
    answer = await ctx.predict.predict_body(name, body, may_record=caller.has("ingest"))
    return Response(answer, media_type="application/json")


router.add_api_route(
    "/models/{name}/predict",
    predict,
    methods=["POST"],
    response_model=PredictOut,
    summary="Predict with a version (default: alias production, else latest)",
    responses=problem_responses(400, 401, 403, 404, 413, 415, 422),
    openapi_extra={"parameters": [path_name_param()], "requestBody": PREDICT_BODY, **BEARER_SECURITY},
    operation_id="predict",
    route_class_override=HotRoute,
)


@router.post(
    "/models/{name}/evaluate",
    response_model=EvaluateOut,
    summary="Mean loss (and accuracy) of a version on labelled samples",
    responses=problem_responses(400, 401, 403, 404, 413, 422),
    operation_id="evaluate",
)
def evaluate(name: ModelNamePath, body: EvaluateIn, ctx: Ctx, _: ModelRead) -> EvaluateOut:
    return ctx.predict.evaluate(name, body.samples, version=body.version, alias=body.alias)
