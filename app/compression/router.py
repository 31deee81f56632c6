"""POST /v1/models/{name}/prune and /quantize: jobs (validated and enqueued in one transaction)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from app.compression.schemas import PruneIn, QuantizeIn
from app.core.jsonbody import JSONRoute
from app.core.schemas import problem_responses
from app.deps import Ctx, ModelMaintain, ModelNamePath
from app.jobs.router import JOB_RESPONSES, PreferHeader, job_answer
from app.jobs.schemas import JobOut

router = APIRouter(route_class=JSONRoute, tags=["jobs"])


@router.post(
    "/models/{name}/prune",
    status_code=202,
    response_model=JobOut,
    summary="Prune a version (magnitude or whole neurons), optionally fine-tuned or searched within a loss budget",
    description=(
        "A job making a version with operation `prune`. Unstructured: the smallest-magnitude weights are zeroed "
        "(biases untouched) per layer or over all layers; `neurons`: whole hidden units are removed, so layers "
        "shrink. `fine_tune` trains afterwards with the pruning mask fixed. With `max_loss_increase` the job "
        "searches for the highest sparsity whose evaluation loss rises by at most that much and reports the "
        "curve. A version at sparsity ≥ 0.5 is stored sparse-encoded (downloads stay dense). 409 when the "
        "version is already sparser (or narrower) than asked."
    ),
    responses={**JOB_RESPONSES, **problem_responses(400, 401, 403, 404, 409, 413, 422)},
    operation_id="prune",
)
async def prune(
    name: ModelNamePath,
    body: PruneIn,
    ctx: Ctx,
    _: ModelMaintain,
    response: Response,
    prefer: PreferHeader = None,
) -> JobOut:
    job_id = await run_in_threadpool(ctx.compression.submit_prune, name, body)
    return await job_answer(ctx.jobs, job_id, prefer, response)


@router.post(
    "/models/{name}/quantize",
    status_code=202,
    response_model=JobOut,
    summary="Quantize a version's weights to int8 / uint8 / float16 (a job)",
    description=(
        "A job making a version with operation `quantize`: integer weights plus float32 scales (and zero points "
        "for asymmetric schemes), biases float32. The result reports the stored size ratio, the weight error "
        "per layer and, with evaluation data, loss / accuracy before and after and the share of labels that "
        "changed. 409 when the version is already quantized to that width or narrower."
    ),
    responses={**JOB_RESPONSES, **problem_responses(400, 401, 403, 404, 409, 413, 422)},
    operation_id="quantize",
)
async def quantize(
    name: ModelNamePath,
    body: QuantizeIn,
    ctx: Ctx,
    _: ModelMaintain,
    response: Response,
    prefer: PreferHeader = None,
) -> JobOut:
    job_id = await run_in_threadpool(ctx.compression.submit_quantize, name, body)
    return await job_answer(ctx.jobs, job_id, prefer, response)
