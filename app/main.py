"""The ASGI app. ``create_app(settings)`` builds one; ``app`` is what ``uvicorn
app.main:app`` serves. The lifespan owns every resource: database engine, blob
store, caches, and the background worker and learner threads."""

from __future__ import annotations

import base64
import gc
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.background import remove_leftovers, start_background
from app.compression import router as compression
from app.context import AppContext
from app.core import errors, sealing
from app.core.errors import PROBLEM, PayloadTooLarge
from app.core.migrations import upgraded
from app.core.routes import HotLane
from app.core.schemas import PROBLEM_EXAMPLES, problem_responses
from app.core.settings import Settings
from app.deps import document_page_limit
from app.events import router as events
from app.feedback import router as feedback
from app.jobs import router as jobs
from app.keys import router as keys
from app.migration import router as migration
from app.online import router as online
from app.operations import router as ops
from app.pipelines import router as pipelines
from app.predict import router as predict
from app.registry import router as registry
from app.training import router as training
from app.ui import router as ui
from app.ui.session import Sessions
from app.webhooks import router as webhooks

log = logging.getLogger("steward")

DESCRIPTION = """
**Steward keeps deployed models healthy after they ship.**

Production apps POST fresh labelled samples; Steward learns from them online
(test-then-train, exact per-sample steps, crash-proof replay), retrains in queued
batch jobs, prunes and quantizes models to make them smaller, and migrates them to
ONNX / PyTorch and to new tasks. Every step makes a new **immutable, traceable
version**; aliases (`production`, …) promote and roll back.

* Authenticate with `Authorization: Bearer <api key>` (the **Authorize** button).
  Scopes: `read` < `ingest` < `maintain` < `admin`.
* Every error is `application/problem+json` (RFC 9457) naming the offending field.
* Parameters travel as safetensors: `layers.{i}.weight` `[out, in]`, `layers.{i}.bias`.
"""

TAGS = [
    {"name": "models", "description": "Create, list, inspect and delete models; aliases."},
    {"name": "versions", "description": "Immutable versions: metadata, weight downloads, imports."},
    {"name": "predict", "description": "Predict and evaluate with any version."},
    {"name": "online", "description": "Online learning: append samples, checkpoint, resume."},
    {"name": "jobs", "description": "Queued maintenance work: batch-update, prune, quantize, migrate."},
    {"name": "keys", "description": "API keys (admin)."},
    {
        "name": "events",
        "description": "Every change as an event (written in the change's transaction): pages, long poll, "
        "Server-Sent Events.",
    },
    {"name": "webhooks", "description": "Signed, retried deliveries of events to your URLs (admin)."},
    {"name": "operations", "description": "Health, readiness and Prometheus metrics."},
]


def route_template(scope: Scope) -> str:
    """The matched route's full path template (``/v1/models/{name}``), or ``unmatched``.

    FastAPI keeps an included router's prefix out of ``route.path``; the prefix is the
    part of the request path before the template's segments."""
    template = getattr(scope.get("route"), "path", None)
    if not template:
        return "unmatched"
    n = template.count("/")
    parts = str(scope.get("path", "")).split("/")
    if ":path}" in template or n >= len(parts):
        return template
    return "/".join(parts[: len(parts) - n]) + template


def declared_too_large(scope: Scope, limit: int) -> Response | None:
    """The 413 for a request whose ``Content-Length`` is over ``limit``, else None."""
    for k, v in scope.get("headers", ()):
        if k == b"content-length" and v.isdigit() and int(v) > limit:
            err = PayloadTooLarge(f"body of {int(v)} bytes exceeds the limit of {limit} bytes")
            return errors.problem(413, err.body())
    return None


def measure(ctx: AppContext, method: str, template: str, status: int, t0: float) -> None:
    """Count a request and record its latency (since ``t0``, a ``perf_counter``)."""
    ctx.metrics.observe_request(method, template, status, time.perf_counter() - t0)


class LimitAndMeasure:
    """Pure ASGI middleware: refuses bodies over the limit (413) and records
    request counts and latency per route template."""

    def __init__(self, app: ASGIApp, get_ctx: Callable[[], AppContext]) -> None:
        self.app = app
        self.get_ctx = get_ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx: AppContext = self.get_ctx()
        limit = ctx.settings.max_body_bytes
        status = 500
        t0 = time.perf_counter()
        try:
            refused = declared_too_large(scope, limit)
            if refused is not None:
                status = 413
                await refused(scope, receive, send)
                return
            seen = 0
            exceeded = False

            async def limited() -> Message:
                nonlocal seen, exceeded
                msg = await receive()
                if msg["type"] == "http.request":
                    seen += len(msg.get("body", b""))
                    if seen > limit:
                        exceeded = True
                        raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
                return msg

            async def sending(msg: Message) -> None:
                nonlocal status
                if exceeded:
                    # Whatever the app made of the interrupted body (FastAPI answers 400
                    # "error parsing the body"), the answer is 413.
                    if msg["type"] == "http.response.start" and status != 413:
                        status = 413
                        err = PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
                        await errors.problem(413, err.body())(scope, receive, send)
                    return
                if msg["type"] == "http.response.start":
                    status = msg["status"]
                await send(msg)

            await self.app(scope, limited, sending)
        finally:
            measure(ctx, scope["method"], route_template(scope), status, t0)


class Steward(FastAPI):
    """The app: FastAPI with the hot lane in front (:class:`app.core.routes.HotLane`).

    A request for a hot route is answered here, as the middleware and the router would
    answer it — the 413 of :func:`declared_too_large`, the endpoint (whose body reading
    enforces the limit as it streams), the app's error answers, :func:`measure` — without
    running them; every other request goes through the whole stack."""

    hot_lane: HotLane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hit = self.hot_lane.match(scope) if scope["type"] == "http" else None
        ctx: AppContext | None = getattr(self.state, "ctx", None)
        if hit is None or ctx is None:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        hot, params = hit
        status = 500
        t0 = time.perf_counter()
        try:
            response = declared_too_large(scope, ctx.settings.max_body_bytes)
            if response is None:
                response = await HotLane.respond(hot, params, scope, receive)
            status = response.status_code
            await response(scope, receive, send)
        finally:
            measure(ctx, hot.method, hot.template, status, t0)


#: Allocations (net of deallocations) between two collections of the youngest generation.
GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> Any:
    """Make the cyclic garbage collector cheap for this service; returns the undo.

    A 1,000-sample JSON body parses into ~34,000 Python objects that live until the
    arrays are built. With CPython's default threshold (700) they trigger dozens of
    young collections per request and get promoted, which soon triggers full
    collections over every object of the process (modules, app, ORM, ONNX…): a
    measured ~20 % of the ingestion path. So, once start-up is done: collect, then
    ``gc.freeze()`` what exists (moved to a permanent generation the collector never
    scans; reference counting still frees it), and raise the first threshold so a
    request's short-lived objects are freed by reference counting before a young
    collection comes (cyclic garbage still gets collected, a little later).
    """
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *before[1:])

    def restore() -> None:
        gc.set_threshold(*before)
        gc.unfreeze()

    return restore


def announce_admin_key(secret: str) -> None:
    msg = (
        "\n" + "=" * 72 + "\nSteward generated an admin API key. It is shown ONCE; store it now:\n\n"
        f"    {secret}\n\n" + "=" * 72 + "\n"
    )
    sys.stderr.write(msg)
    sys.stderr.flush()


WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Operations sent with a writing method that store nothing (so never answer 507).
READ_ONLY_OPERATIONS = frozenset({"predict", "evaluate"})


def _document_common_errors(app: FastAPI, settings: Settings) -> None:
    """Make the OpenAPI document tell the truth about errors, for every route alike.

    * Every operation that takes a body can answer 400 (malformed JSON / unreadable
      upload) and 413 (body over the limit): the middleware and the one error handler
      do that for all routes, so the document says so for all of them.
    * Every operation that writes (POST, PUT, PATCH, DELETE but :data:`READ_ONLY_OPERATIONS`)
      can answer 507 when the data directory or the database is full (the ``StorageFull``
      middleware, for all routes alike).
    * Error answers are ``application/problem+json`` with the ``Problem`` schema
      (FastAPI files a ``responses=`` model, and its own 422, under ``application/json``).
    """
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = base()
        document_page_limit(schema, settings.page_limit_max)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        problem_schema: dict[str, Any] = (
            {"$ref": "#/components/schemas/Problem"} if "Problem" in components else {"type": "object"}
        )
        for operations in schema.get("paths", {}).values():
            for method, op in operations.items():
                if not isinstance(op, dict):
                    continue
                responses = op.setdefault("responses", {})
                codes: tuple[int, ...] = (400, 413) if "requestBody" in op else ()
                if method.upper() in WRITE_METHODS and op.get("operationId") not in READ_ONLY_OPERATIONS:
                    codes += (507,)
                for code, resp in problem_responses(*codes).items():
                    responses.setdefault(str(code), {"description": resp["description"]})
                for code, resp in responses.items():
                    if not code.startswith(("4", "5")):
                        continue
                    content = resp.setdefault("content", {})
                    content.pop("application/json", None)  # FastAPI's HTTPValidationError, or our Problem
                    content[PROBLEM] = {**content.get(PROBLEM, {}), "schema": problem_schema}
                    if code.isdigit() and int(code) in PROBLEM_EXAMPLES:  # each status its own example
                        content[PROBLEM]["example"] = PROBLEM_EXAMPLES[int(code)]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


#: Where the dashboard's stylesheet, script and icon are served from (files of :mod:`app.ui`).
UI_ASSETS = "/ui/static"

#: ReDoc's bundle, served with no address outside the service (see :func:`add_offline_docs`)
REDOC_JS = "/docs-redoc/redoc.standalone.js"
REDOC_CDN_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
#: what it draws instead: the dashboard's icon, inline (no request, wherever the app is mounted)
REDOC_LOGO = b"data:image/svg+xml;base64," + base64.b64encode(
    (Path(__file__).parent / "ui" / "static" / "favicon.svg").read_bytes()
)

#: Where the documentation pages' assets are served from (the ``fastapi-offline`` package's files).
DOCS_ASSETS = "/docs-assets"


def add_offline_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI, with ``persistAuthorization``) and ``/redoc`` with their
    JavaScript, CSS and icon served by the service itself, from the files the maintained
    ``fastapi-offline`` package ships (FastAPI's defaults load them from a CDN: a blank
    page without internet). No Google fonts either."""
    import fastapi_offline
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
    from fastapi.responses import HTMLResponse

    static = Path(fastapi_offline.__file__).parent / "static"
    app.mount(DOCS_ASSETS, StaticFiles(directory=static), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    redirect = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} — API",
            oauth2_redirect_url=f"{root}{redirect}",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    # ReDoc's bundle draws its sidebar's "API docs by Redocly" logo from a CDN, whatever
    # its options: serve the bundle with that one image pointed at the dashboard's icon.
    redoc_js: list[bytes] = []

    @app.get(REDOC_JS, include_in_schema=False)
    async def redoc_bundle() -> Response:
        if not redoc_js:
            js = (static / "redoc.standalone.js").read_bytes()
            # the dashboard's icon instead, inline: no request, wherever the app is mounted
            icon = (Path(__file__).parent / "ui" / "static" / "favicon.svg").read_bytes()
            redoc_js.append(js.replace(REDOC_CDN_LOGO, b"data:image/svg+xml;base64," + base64.b64encode(icon)))
        return Response(redoc_js[0], media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} — API",
            redoc_js_url=f"{root}{REDOC_JS}",
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )


def create_app(settings: Settings | None = None) -> Steward:
    """Build the app for ``settings`` (default: from the environment / .env)."""
    holder: dict[str, AppContext] = {}
    # Read once, when the app is built: the OpenAPI document states this app's bounds.
    cfg = settings if settings is not None else Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        # Under the start-up lock: N processes starting at once on a fresh database
        # migrate it once and make one bootstrap admin key (app.core.migrations).
        with upgraded(cfg.url):
            ctx = AppContext.build(cfg)
            secret = ctx.keys.ensure_admin()
        remove_leftovers(ctx)
        if secret:
            announce_admin_key(secret)
        holder["ctx"] = ctx
        app.state.ctx = ctx
        app.state.ui_sessions = Sessions(sealing.load_key(cfg.secrets_key, cfg.data_dir), cfg.ui_session_seconds)
        # before the background threads start: what they hold is not frozen
        restore_gc = tune_gc() if cfg.gc_tuning else None
        try:
            stop = start_background(ctx)
            try:
                yield
            finally:
                await ctx.events.close()
                stop()
        finally:
            if restore_gc is not None:
                restore_gc()
            ctx.close()

    app = Steward(
        docs_url=None,  # served by add_offline_docs: assets from the package, never a CDN
        redoc_url=None,
        # no validator badge: Swagger UI would send the document to validator.swagger.io
        swagger_ui_parameters={"persistAuthorization": True, "validatorUrl": None},
        title="Steward",
        version="0.1.0",
        summary="Keeps deployed ML models healthy: online learning, retraining, pruning, quantization, migration.",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    errors.install(app)
    add_offline_docs(app)
    _document_common_errors(app, cfg)
    app.add_middleware(LimitAndMeasure, get_ctx=lambda: holder["ctx"])
    # Routes are matched in order: the ingestion and predict routes (the hot paths) come
    # first. No two routers share a path, so the order changes nothing else.
    app.hot_lane = HotLane()
    for module in (
        online,
        predict,
        feedback,
        registry,
        training,
        compression,
        migration,
        pipelines,
        jobs,
        keys,
        events,
        webhooks,
    ):
        app.include_router(module.router, prefix="/v1")
        app.hot_lane.add_router(module.router, prefix="/v1")
    app.include_router(ops.router)
    app.mount(UI_ASSETS, StaticFiles(directory=Path(ui.__file__).parent / "static"), name="ui-static")
    app.include_router(ui.router)

    @app.get("/", include_in_schema=False)
    async def home(request: Request) -> Response:
        """A person who opens the service's address lands on the dashboard."""
        return Response(status_code=307, headers={"Location": f"{request.scope.get('root_path', '')}/ui"})

    return app


def __getattr__(name: str) -> Any:
    # ``uvicorn app.main:app`` builds the app lazily, so importing this module
    # creates no engine, session or settings object.
    if name == "app":
        return create_app()
    raise AttributeError(name)
