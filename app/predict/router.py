"""/v1/models/{name}/predict and /evaluate."""

from __future__ import annotations

from fastapi import APIRouter

from app.core.jsonbody import JSONRoute
from app.core.schemas import problem_responses
from app.deps import Ctx, ModelNamePath, ModelRead
from app.predict.schemas import EvaluateIn, EvaluateOut, PredictIn, PredictOut

router = APIRouter(route_class=JSONRoute, tags=["predict"])


@router.post(
    "/models/{name}/predict",
    response_model=PredictOut,
    summary="Predict with a version (default: alias production, else latest)",
    responses=problem_responses(400, 401, 403, 404, 413, 422),
    operation_id="predict",
)
def predict(name: ModelNamePath, body: PredictIn, ctx: Ctx, _: ModelRead) -> PredictOut:
    return ctx.predict.predict(name, body.inputs, version=body.version, alias=body.alias)


@router.post(
    "/models/{name}/evaluate",
    response_model=EvaluateOut,
    summary="Mean loss (and accuracy) of a version on labelled samples",
    responses=problem_responses(400, 401, 403, 404, 413, 422),
    operation_id="evaluate",
)
def evaluate(name: ModelNamePath, body: EvaluateIn, ctx: Ctx, _: ModelRead) -> EvaluateOut:
    return ctx.predict.evaluate(name, body.samples, version=body.version, alias=body.alias)
