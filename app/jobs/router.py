"""/v1/jobs, and the shared answer of every job-creating POST (202 / Prefer: wait)."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response
from starlette.concurrency import run_in_threadpool

from app.context import AppContext
from app.core.errors import Forbidden
from app.core.schemas import NAME_PATTERN, Page, problem_responses
from app.deps import Ctx, MaintainKey, PageParams, ReadKey
from app.jobs.schemas import JobKind, JobOut, JobStatus
from app.jobs.service import job_out
from app.keys.service import Principal

router = APIRouter(tags=["jobs"])
JobIdPath = Annotated[str, Path(max_length=36, description="Job id")]
PreferHeader = Annotated[
    str | None, Header(description="`wait=N`: wait up to N seconds for the job to finish (RFC 7240)")
]
MAX_WAIT = 300.0
_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+(?:\.\d+)?)", re.I)

JOB_RESPONSES = {
    201: {"description": "Finished within `Prefer: wait=N`", "model": JobOut},
    202: {
        "description": "Queued (or still running after the wait); poll `Location`",
        "model": JobOut,
    },
}


def prefer_wait(prefer: str | None) -> float | None:
    """Seconds asked for by ``Prefer: wait=N`` (RFC 7240), capped at MAX_WAIT."""
    if not prefer:
        return None
    m = _WAIT.search(prefer)
    return min(float(m.group(1)), MAX_WAIT) if m else None


async def job_answer(ctx: AppContext, job_id: str, prefer: str | None, response: Response) -> JobOut:
    """202 + Location; with ``Prefer: wait=N`` wait and answer 201 if it finished."""
    wait = prefer_wait(prefer)
    response.headers["Location"] = f"/v1/jobs/{job_id}"
    if wait:
        job = await run_in_threadpool(ctx.jobs.wait, job_id, wait)
        response.headers["Preference-Applied"] = f"wait={prefer_wait(prefer):g}"
    else:
        with ctx.db.read() as s:
            job = ctx.jobs.get(s, job_id)
    out = job_out(job)
    response.status_code = 201 if out.status in ("succeeded", "failed", "canceled") and wait else 202
    return out


def _check_model(p: Principal, model: str) -> None:
    if not p.may_use(model):
        raise Forbidden(f"this key is not allowed to use model {model!r}")


@router.get(
    "/jobs/{job_id}",
    response_model=JobOut,
    summary="Get a job: status, progress, result, error",
    responses=problem_responses(401, 403, 404, 422),
    operation_id="get_job",
)
def get_job(job_id: JobIdPath, ctx: Ctx, p: ReadKey) -> JobOut:
    with ctx.db.read() as s:
        j = ctx.jobs.get(s, job_id)
        _check_model(p, j.model_name)
        return job_out(j)


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
) -> Page[JobOut]:
    limit, cursor = page
    if model is not None:
        _check_model(p, model)
    allowed = list(p.models) if p.models is not None else None
    with ctx.db.read() as s:
        items, nxt = ctx.jobs.page(
            s, model=model, kind=kind, status=status, cursor=cursor, limit=limit, allowed=allowed
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
    with ctx.db.write() as s:
        j = ctx.jobs.get(s, job_id)
        _check_model(p, j.model_name)
        return job_out(ctx.jobs.cancel(s, job_id))
