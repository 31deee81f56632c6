"""POST /v1/models/{name}/batch-update: a job (validated and enqueued in one transaction)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from app.core.jsonbody import JSONRoute
from app.core.schemas import problem_responses
from app.deps import Ctx, ModelMaintain, ModelNamePath
from app.jobs.router import JOB_RESPONSES, PreferHeader, job_answer
from app.jobs.schemas import JobOut
from app.training.schemas import BatchUpdateIn

router = APIRouter(route_class=JSONRoute, tags=["jobs"])


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
    job_id = await run_in_threadpool(ctx.training.submit, name, body)
    return await job_answer(ctx.jobs, job_id, prefer, response)
