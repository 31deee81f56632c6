"""Named dependencies: the app context, the caller, scope and model checks.

The hot routes (``/predict``, ``/update``) check the caller with :func:`authorize` inside
the endpoint instead of through ``Depends``: FastAPI's dependency solving costs more than
the rest of a one-sample request. They state the same security in the OpenAPI document
(:data:`BEARER_SECURITY`), and the check is the same function the dependencies use.
"""

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from starlette.concurrency import run_in_threadpool

from app.context import AppContext
from app.core.errors import Forbidden, Invalid
from app.core.routes import model_name
from app.core.schemas import CURSOR_PATTERN, NAME_PATTERN
from app.keys.service import Principal

bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`")


async def get_ctx(request: Request) -> AppContext:
    """The app's context (``async``: a plain ``def`` dependency would cost every request a
    hop to the thread pool)."""
    ctx: AppContext = request.app.state.ctx
    return ctx


Ctx = Annotated[AppContext, Depends(get_ctx)]
VersionPath = Annotated[int, Path(ge=1, le=2**31 - 1, description="Version number")]
ModelNamePath = Annotated[str, Path(pattern=NAME_PATTERN, max_length=64, description="Model name", examples=["churn"])]


#: The OpenAPI security of an operation guarded by :func:`authorize` (``openapi_extra``).
BEARER_SECURITY: dict[str, Any] = {"security": [{bearer.scheme_name: []}]}


def bearer_token(request: Request) -> str | None:
    """The key of ``Authorization: Bearer <key>``, read as :data:`bearer` reads it."""
    scheme, credentials = get_authorization_scheme_param(request.headers.get("authorization"))
    return credentials if scheme.lower() == "bearer" and credentials else None


async def _principal(ctx: AppContext, token: str | None) -> Principal:
    """The caller: on the event loop when the key is cached (every request of a known key
    after its first), else one hop to the thread pool for the database lookup."""
    p = ctx.keys.cached(token)
    return p if p is not None else await run_in_threadpool(ctx.keys.authenticate, token)


async def get_principal(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    return await _principal(request.app.state.ctx, creds.credentials if creds is not None else None)


def _check_scope(p: Principal, scope: str) -> None:
    if not p.has(scope):
        raise Forbidden(f"this needs a key with scope {scope!r}; this key has {p.scope!r}")


async def authorize_model(request: Request, scope: str) -> str:
    """What ``Depends(require_model(scope))`` checks, for a :class:`~app.core.routes.HotRoute`
    endpoint, in the same order: the key (401), the ``{name}`` path parameter (422), the
    scope and the key's model restriction (403). Returns the model name."""
    return (await authorize_model_as(request, scope))[0]


async def authorize_model_as(request: Request, scope: str) -> tuple[str, Principal]:
    """:func:`authorize_model`, and the caller (for a further check of scope)."""
    p = await _principal(request.app.state.ctx, bearer_token(request))
    name = model_name(request)
    _check_scope(p, scope)
    p.check_model(name)
    return name, p


def require(scope: str) -> Callable[..., Any]:
    """A dependency that admits keys of ``scope`` or above."""

    async def dep(p: Annotated[Principal, Depends(get_principal)]) -> Principal:
        _check_scope(p, scope)
        return p

    dep.__name__ = f"require_{scope}"
    return dep


def require_model(scope: str) -> Callable[..., Any]:
    """Scope check plus the key's model restriction for the ``{name}`` in the path (one
    dependency: this guards the hot routes)."""

    async def dep(name: ModelNamePath, p: Annotated[Principal, Depends(get_principal)]) -> Principal:
        _check_scope(p, scope)
        p.check_model(name)
        return p

    dep.__name__ = f"require_model_{scope}"
    return dep


ReadKey = Annotated[Principal, Depends(require("read"))]
MaintainKey = Annotated[Principal, Depends(require("maintain"))]
AdminKey = Annotated[Principal, Depends(require("admin"))]
ModelRead = Annotated[Principal, Depends(require_model("read"))]
ModelIngest = Annotated[Principal, Depends(require_model("ingest"))]
ModelMaintain = Annotated[Principal, Depends(require_model("maintain"))]
ModelAdmin = Annotated[Principal, Depends(require_model("admin"))]


#: Page size when ``limit`` is not given (or ``page_limit_max`` when that is smaller).
PAGE_LIMIT_DEFAULT = 50
#: Marks the ``limit`` parameter's schema; :func:`document_page_limit` replaces it with the
#: app's bound, so the document states the one bound the server enforces.
PAGE_LIMIT_MARK = "x-steward-page-limit"


def page_params(
    request: Request,
    ctx: Ctx,
    limit: Annotated[
        int,
        Query(
            ge=1,
            description="Page size, at most `STEWARD_PAGE_LIMIT_MAX`",
            json_schema_extra={PAGE_LIMIT_MARK: True},
        ),
    ] = PAGE_LIMIT_DEFAULT,
    cursor: Annotated[
        str | None,
        Query(max_length=256, pattern=CURSOR_PATTERN, description="From a previous page's next_cursor"),
    ] = None,
) -> tuple[int, str | None]:
    """``?limit=`` is bounded by the setting ``page_limit_max`` only (the one source of
    truth: the OpenAPI document shows it, :func:`document_page_limit`)."""
    most = ctx.settings.page_limit_max
    if "limit" not in request.query_params:
        return min(limit, most), cursor
    if limit > most:
        raise Invalid.at(["query", "limit"], f"at most {most}")
    return limit, cursor


def document_page_limit(schema: dict[str, Any], most: int) -> None:
    """In an OpenAPI document: every page-size parameter (marked by :func:`page_params`)
    gets ``maximum`` = ``most`` (the app's ``page_limit_max``) and the default it gets."""
    for operations in schema.get("paths", {}).values():
        for op in operations.values():
            if not isinstance(op, dict):
                continue
            for param in op.get("parameters", []):
                sch = param.get("schema", {})
                if sch.pop(PAGE_LIMIT_MARK, None):
                    sch["maximum"] = most
                    sch["default"] = min(PAGE_LIMIT_DEFAULT, most)
                    sch["description"] = param["description"] = f"Page size, 1–{most} (`STEWARD_PAGE_LIMIT_MAX`)"


PageParams = Annotated[tuple[int, str | None], Depends(page_params)]
