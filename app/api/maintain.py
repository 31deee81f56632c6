"""Job-creating routes: POST /v1/models/{name}/batch-update (prune, quantize and
migrate join here). Each validates everything at the edge, enqueues in the same
transaction, and answers with :func:`app.api.jobs.job_answer`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Response

from app.api.deps import Ctx, ModelMaintain, ModelNamePath
from app.api.jobs import JOB_RESPONSES, job_answer
from app.schemas.batch import BatchUpdateIn
from app.schemas.common import problem_responses
from app.schemas.compress import PruneIn, QuantizeIn
from app.schemas.jobs import JobOut
from app.schemas.migrate import MigrateIn
from app.services import prune as prune_service
from app.services import quantize as quantize_service

router = APIRouter(tags=["jobs"])
PreferHeader = Annotated[
    str | None, Header(description="`wait=N`: wait up to N seconds for the job to finish (RFC 7240)")
]


@router.post(
    "/models/{name}/batch-update",
    status_code=202,
    response_model=JobOut,
    summary="Retrain a version by mini-batch gradient descent (a job); optionally promote an alias",
    responses={**JOB_RESPONSES, **problem_responses(400, 401, 403, 404, 413, 422)},
    operation_id="batch_update",
)
async def batch_update(
    name: ModelNamePath,
    body: BatchUpdateIn,
    ctx: Ctx,
    _: ModelMaintain,
    response: Response,
    prefer: PreferHeader = None,
) -> JobOut:
    from starlette.concurrency import run_in_threadpool

    job_id = await run_in_threadpool(ctx.batch.submit, name, body)
    return await job_answer(ctx, job_id, prefer, response)


@router.post(
    "/models/{name}/migrate",
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
    _: ModelMaintain,
    response: Response,
    prefer: PreferHeader = None,
) -> JobOut:
    from starlette.concurrency import run_in_threadpool

    job_id = await run_in_threadpool(ctx.migrate.submit, name, body)
    return await job_answer(ctx, job_id, prefer, response)


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
    from starlette.concurrency import run_in_threadpool

    job_id = await run_in_threadpool(prune_service.submit, ctx, name, body)
    return await job_answer(ctx, job_id, prefer, response)


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
    from starlette.concurrency import run_in_threadpool

    job_id = await run_in_threadpool(quantize_service.submit, ctx, name, body)
    return await job_answer(ctx, job_id, prefer, response)
