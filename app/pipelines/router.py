"""/v1/models/{name}/pipelines and /v1/models/{name}/policy."""

from __future__ import annotations

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from app.core.jsonbody import JSONRoute
from app.core.schemas import problem_responses
from app.deps import Ctx, ModelMaintain, ModelNamePath
from app.jobs.router import JOB_RESPONSES, PreferHeader, job_answer
from app.jobs.schemas import JobOut
from app.pipelines.schemas import PipelineIn

router = APIRouter(route_class=JSONRoute, tags=["jobs"])


@router.post(
    "/models/{name}/pipelines",
    status_code=202,
    response_model=JobOut,
    summary="Run jobs in order, each from the version the step before made, then promote guarded",
    description="A job of kind `pipeline`. Each step (`batch_update`, `prune`, `quantize`, `migrate`, with "
    "that endpoint's body) runs as a job of its own whose `parent_job` is the pipeline; a later step's `from` "
    "defaults to `previous`. The whole body is checked before anything is queued (an error names "
    '`["body", "steps", i, …]`). A failed step fails the pipeline and runs no later step; cancelling the '
    "pipeline cancels its running step. With `promote`, the alias moves to the final version only if its loss "
    "on the `eval` data is at most the alias's current version's plus `max_loss_increase`; the result says "
    "which, with both losses.",
    responses={**JOB_RESPONSES, **problem_responses(400, 401, 403, 404, 409, 422)},
    operation_id="run_pipeline",
)
async def run_pipeline(
    name: ModelNamePath, body: PipelineIn, ctx: Ctx, _: ModelMaintain, response: Response, prefer: PreferHeader = None
) -> JobOut:
    job_id = await run_in_threadpool(ctx.pipelines.submit, name, body)
    return await job_answer(ctx.jobs, job_id, prefer, response)
