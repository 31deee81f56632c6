"""/v1/jobs, and the shared answer of every job-creating POST (202 / Prefer: wait)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response
from starlette.concurrency import run_in_threadpool

from app.core.jsonbody import JSONRoute
from app.core.schemas import NAME_PATTERN, Page, problem_responses
from app.deps import Ctx, MaintainKey, PageParams, ReadKey
from app.jobs.schemas import JobKind, JobOut, JobStatus
from app.jobs.service import JobService

router = APIRouter(route_class=JSONRoute, tags=["jobs"])
JobIdPath = Annotated[str, Path(max_length=36, description="Job id")]
PreferHeader = Annotated[
    str | None, Header(description="`wait=N`: wait up to N seconds for the job to finish (RFC 7240)")
]

JOB_RESPONSES: dict[int | str, dict[str, object]] = {
    201: {"description": "Finished within `Prefer: wait=N`", "model": JobOut},
    202: {
        "description": "Queued (or still running after the wait); poll `Location`",
        "model": JobOut,
    },
}


async def job_answer(jobs: JobService, job_id: str, prefer: str | None, response: Response) -> JobOut:
    """202 + Location; with ``Prefer: wait=N`` wait and answer 201 if it finished."""
    out, status, headers = await run_in_threadpool(jobs.answer, job_id, prefer)
    response.status_code = status
    response.headers.update(headers)
    return out


@router.get(
    "/jobs/{job_id}",
    response_model=JobOut,
    summary="Get a job: status, progress, result, error",
    responses=problem_responses(401, 403, 404, 422),
    operation_id="get_job",
)
def get_job(job_id: JobIdPath, ctx: Ctx, p: ReadKey) -> JobOut:
    return ctx.jobs.get(job_id, allowed=p.models)


@router.get(
    "/jobs",
    response_model=Page[JobOut],
    summary="List jobs, newest first, filtered by model, kind, status",
    responses=problem_responses(401, 403, 422),
    operation_id="list_jobs",
)
def list_jobs(
    ctx: Ctx,
    p: ReadKey,
    page: PageParams,
    model: Annotated[str | None, Query(pattern=NAME_PATTERN, max_length=64)] = None,
    kind: Annotated[JobKind | None, Query()] = None,
    status: Annotated[JobStatus | None, Query()] = None,
    parent_job: Annotated[str | None, Query(max_length=36, description="Only this pipeline's steps")] = None,
) -> Page[JobOut]:
    limit, cursor = page
    items, nxt = ctx.jobs.page(
        model=model, kind=kind, status=status, cursor=cursor, limit=limit, allowed=p.models, parent=parent_job
    )
    return Page[JobOut](items=items, next_cursor=nxt)


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobOut,
    summary="Cancel a job: a queued one at once, a running one at its next progress point",
    responses=problem_responses(401, 403, 404, 409, 422),
    operation_id="cancel_job",
)
def cancel_job(job_id: JobIdPath, ctx: Ctx, p: MaintainKey) -> JobOut:
    return ctx.jobs.cancel(job_id, allowed=p.models)
