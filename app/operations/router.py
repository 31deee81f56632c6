"""/healthz, /readyz, /metrics (outside /v1)."""

from __future__ import annotations

import os

import orjson
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.core.errors import problem
from app.core.jsonbody import JSONRoute
from app.deps import Ctx

router = APIRouter(route_class=JSONRoute, tags=["operations"])


@router.get("/healthz", summary="The process is alive", operation_id="healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Database and blob store are reachable",
    operation_id="readyz",
    responses={503: {"description": "Not ready", "content": {"application/problem+json": {}}}},
)
def readyz(ctx: Ctx) -> Response:
    """Ready: ``{"status": "ok", "checks": {...}, "pid": …}``. ``pid`` is the answering
    process: with ``steward serve --workers N`` each request is served by one of N
    processes (the online learner's lease owner, ``host:pid:…``, names one of them)."""
    checks = ctx.operations.readiness()
    if all(v == "ok" for v in checks.values()):
        body = {"status": "ok", "checks": checks, "pid": os.getpid()}
        return Response(orjson.dumps(body), media_type="application/json")
    return problem(
        503,
        {
            "type": "https://steward.dev/problems/not-ready",
            "title": "Service Unavailable",
            "status": 503,
            "detail": "a dependency is unreachable",
            "checks": checks,
        },
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    operation_id="metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
def metrics(ctx: Ctx) -> Response:
    return Response(ctx.operations.metrics_text(), media_type=CONTENT_TYPE_LATEST)
