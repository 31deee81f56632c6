"""/v1/models/{name}/pipelines and /v1/models/{name}/policy."""

from __future__ import annotations

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from app.core.jsonbody import JSONRoute
from app.core.schemas import problem_responses
from app.deps import Ctx, ModelMaintain, ModelNamePath, ModelRead
from app.jobs.router import JOB_RESPONSES, PreferHeader, job_answer
from app.jobs.schemas import JobOut
from app.pipelines.schemas import PipelineIn, PolicyIn, PolicyOut

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


@router.put(
    "/models/{name}/policy",
    response_model=PolicyOut,
    summary="Set the model's maintenance policy: run a pipeline when a trigger fires",
    description="Triggers: `on_drift` (the learner reports a transition to `drift`), `every_samples` (that "
    "many samples accepted since the last run; never while the model is paused), `every_seconds`. While a "
    "pipeline of the policy is queued or running, a trigger starts no second one (it is recorded as "
    "skipped). Each firing emits `policy.triggered`; pipelines that fail `STEWARD_POLICY_MAX_FAILURES` "
    "times in a row disable the policy (`enabled: false`, `disabled_reason`, `policy.disabled`). The "
    "pipeline is checked as `POST …/pipelines` checks one (errors under `body.pipeline`).",
    responses={
        201: {"description": "Policy created", "model": PolicyOut},
        **problem_responses(400, 401, 403, 404, 422),
    },
    operation_id="put_policy",
)
async def put_policy(name: ModelNamePath, body: PolicyIn, ctx: Ctx, _: ModelMaintain, response: Response) -> PolicyOut:
    out, created = await run_in_threadpool(ctx.policies.put, name, body)
    response.status_code = 201 if created else 200
    return out


@router.get(
    "/models/{name}/policy",
    response_model=PolicyOut,
    summary="The model's maintenance policy: triggers, last firing, when each trigger is next due",
    responses=problem_responses(401, 403, 404, 422),
    operation_id="get_policy",
)
def get_policy(name: ModelNamePath, ctx: Ctx, _: ModelRead) -> PolicyOut:
    return ctx.policies.get(name)


@router.delete(
    "/models/{name}/policy",
    status_code=204,
    summary="Remove the model's maintenance policy (a pipeline it started runs on)",
    responses=problem_responses(401, 403, 404, 422),
    operation_id="delete_policy",
)
def delete_policy(name: ModelNamePath, ctx: Ctx, _: ModelMaintain) -> Response:
    ctx.policies.delete(name)
    return Response(status_code=204)
