"""The error tree, rendered once as ``application/problem+json`` (RFC 9457).

::

    StewardError            500  base; carries status, title, detail, errors
    ├── BadRequest          400  malformed JSON / NDJSON line, unreadable upload
    ├── Unauthorized        401  missing or unknown API key
    ├── Forbidden           403  key lacks the scope or the model
    ├── NotFound            404  unknown model, version, alias, job, export
    ├── Conflict            409  name exists; state does not allow the operation
    ├── PayloadTooLarge     413  body over STEWARD_MAX_BODY_BYTES
    ├── Invalid             422  well-formed but invalid (shape, dtype, non-finite…)
    ├── Unavailable         503  a needed component (e.g. the online learner) is not answering
    └── InsufficientStorage 507  the data directory or the database is full; nothing of
                                 the request was stored

Services raise these; :func:`install` registers the one handler that renders
them, plus FastAPI's own validation errors and Starlette's HTTP errors.

**A full disk** is not raised by services: it surfaces as whatever the layer that
hit it raises — ``OSError`` ``ENOSPC`` from a blob write, fsync or temporary file,
SQLite's ``database or disk is full``, PostgreSQL's SQLSTATE 53100 ``disk_full`` —
from any route, on the event loop or in a worker thread (``run_in_threadpool``,
the group commit of ``/update``). :func:`insufficient_storage` recognises those
(anywhere in the exception's cause / context chain) and :class:`StorageFull`, the
innermost middleware, answers them 507 for every route. Each write path stores
nothing it does not commit (a blob is renamed into place only when complete and
fsynced; a transaction that fails is rolled back), so a 507 means nothing of the
request was stored, and a 2xx still means durable.

A decoder of untrusted bytes wraps its work in :func:`decoding`, its one boundary:
whatever fails inside becomes a 4xx problem, never a 500.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("steward")

PROBLEM = "application/problem+json"
TYPE_BASE = "https://steward.dev/problems/"

Loc = list[str | int] | tuple[str | int, ...]


class StewardError(Exception):
    status = 500
    title = "Internal Server Error"
    slug = "internal"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": TYPE_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors is not None:
            out["errors"] = self.errors
        out.update(self.extra)
        return out


class BadRequest(StewardError):
    status, title, slug = 400, "Bad Request", "bad-request"


class Unauthorized(StewardError):
    status, title, slug = 401, "Unauthorized", "unauthorized"

    def __init__(self, detail: str, **kw: Any) -> None:
        kw.setdefault("headers", {"WWW-Authenticate": 'Bearer realm="steward"'})
        super().__init__(detail, **kw)


class Forbidden(StewardError):
    status, title, slug = 403, "Forbidden", "forbidden"


class NotFound(StewardError):
    status, title, slug = 404, "Not Found", "not-found"


class MethodNotAllowed(StewardError):
    status, title, slug = 405, "Method Not Allowed", "method-not-allowed"


class Conflict(StewardError):
    status, title, slug = 409, "Conflict", "conflict"


class PreconditionFailed(StewardError):
    """412: an ``If-Match`` that does not match the current state; nothing was changed."""

    status, title, slug = 412, "Precondition Failed", "precondition-failed"


class PayloadTooLarge(StewardError):
    status, title, slug = 413, "Content Too Large", "payload-too-large"


class UnsupportedMediaType(StewardError):
    status, title, slug = 415, "Unsupported Media Type", "unsupported-media-type"


class Invalid(StewardError):
    """422 with one or more ``{"loc": [...], "msg": ...}`` entries."""

    status, title, slug = 422, "Unprocessable Content", "validation"

    @classmethod
    def at(cls, loc: Loc, msg: str, detail: str | None = None) -> Invalid:
        where = ".".join(str(p) for p in loc)
        return cls(detail or f"{where}: {msg}", errors=[{"loc": list(loc), "msg": msg}])


class Unavailable(StewardError):
    status, title, slug = 503, "Service Unavailable", "unavailable"


class InsufficientStorage(StewardError):
    """507: a write found no space; ``storage`` names what is full (``data_directory``:
    the blob store's file system; ``database``)."""

    status, title, slug = 507, "Insufficient Storage", "insufficient-storage"


#: errno values that mean "the file system has no room for this write".
_NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: PostgreSQL's disk_full SQLSTATE (class 53, insufficient resources; 53200 out of
#: memory and 53300 too many connections are not about storage).
_PG_DISK_FULL = "53100"
_PG_NO_SPACE_TEXT = ("no space left on device", "could not extend file")
_SQLITE_FULL_TEXT = "database or disk is full"
_RETRY = "nothing of this request was stored; free space and retry"


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and everything it came from: ``__cause__``, ``__context__``, a DB-API
    error wrapped by SQLAlchemy (``.orig``), the members of an exception group."""
    out: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop()
        if any(e is seen for seen in out):
            continue
        out.append(e)
        todo += [x for x in (e.__cause__, e.__context__, getattr(e, "orig", None)) if isinstance(x, BaseException)]
        if isinstance(e, BaseExceptionGroup):
            todo += list(e.exceptions)
    return out


def insufficient_storage(exc: BaseException) -> InsufficientStorage | None:
    """The 507 for ``exc`` when it (or what it came from) means a full disk, else None.

    * ``OSError`` with ``ENOSPC`` / ``EDQUOT`` (blob writes, fsync, temporary files):
      the data directory is full;
    * SQLite ``SQLITE_FULL`` (``database or disk is full``): the database is full;
    * PostgreSQL SQLSTATE 53100 ``disk_full``, or a server error saying ``No space left
      on device`` / ``could not extend file``: the database is full.
    """
    for e in _causes(exc):
        err = _no_space(e)
        if err is not None:
            err.__cause__ = e  # what the storage layer said, for the log
            return err
    return None


def _no_space(e: BaseException) -> InsufficientStorage | None:
    if isinstance(e, OSError) and e.errno in _NO_SPACE_ERRNOS:
        why = "disk quota exceeded" if e.errno == errno.EDQUOT else "no space left on device"
        return InsufficientStorage(f"the data directory is full ({why}): {_RETRY}", storage="data_directory")
    if isinstance(e, sqlite3.Error):
        code = getattr(e, "sqlite_errorcode", None)
        if (isinstance(code, int) and code & 0xFF == sqlite3.SQLITE_FULL) or _SQLITE_FULL_TEXT in str(e):
            return InsufficientStorage(f"the database is full ({_SQLITE_FULL_TEXT}): {_RETRY}", storage="database")
        return None
    state = getattr(e, "sqlstate", None) or getattr(e, "pgcode", None)  # psycopg 3 / psycopg2
    if isinstance(state, str) and len(state) == 5:
        text = str(e).lower()
        if state == _PG_DISK_FULL or any(t in text for t in _PG_NO_SPACE_TEXT):
            return InsufficientStorage(
                f"the database is full (the database server has no space left, SQLSTATE {state}): {_RETRY}",
                storage="database",
            )
    return None


@contextmanager
def decoding(what: str, fallback: Callable[[str], StewardError] = BadRequest) -> Iterator[None]:
    """The one boundary of a decoder of untrusted bytes: inside it, any exception becomes a
    4xx problem naming ``what`` was being decoded.

    A :class:`StewardError` passes unchanged (the decoder's precise answers); a
    ``RecursionError`` (input nested too deeply) is a 400; a ``MemoryError`` is a 413;
    anything else is ``fallback(sentence)`` (400 unreadable by default; a 422 where the
    bytes were read but do not map), logged with its traceback as a warning so that a
    check the decoder lacks is visible.
    """
    try:
        yield
    except StewardError:
        raise
    except RecursionError:
        raise BadRequest(f"{what}: nested too deeply to be read") from None
    except MemoryError:
        raise PayloadTooLarge(f"{what}: decoding it needs more memory than is available") from None
    except Exception as e:
        log.warning("%s: %s", what, e, exc_info=True)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise fallback(f"{what}: {type(e).__name__}" + (f": {first}" if first else "")) from None


def problem(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=PROBLEM, headers=headers)


def _render(exc: StewardError) -> Response:
    return problem(exc.status, exc.body(), exc.headers)


def validation_problem(errors: list[dict[str, Any]]) -> StewardError:
    """Map pydantic errors to our 400 (malformed JSON) or 422 (invalid) problem."""
    items = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")} for e in errors]
    if any(e.get("type") == "json_invalid" for e in errors):
        first = errors[0]
        ctx = first.get("ctx", {}) or {}
        return BadRequest(f"malformed JSON body: {ctx.get('error', first.get('msg'))}", errors=items)
    first = items[0] if items else {"loc": [], "msg": "invalid"}
    where = ".".join(str(p) for p in first["loc"])
    more = f" (and {len(items) - 1} more)" if len(items) > 1 else ""
    return Invalid(f"{where}: {first['msg']}{more}", errors=items)


async def _steward_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StewardError)
    if exc.status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc.detail)
    return _render(exc)


async def _validation_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return _render(validation_problem(list(exc.errors())))


_HTTP = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: Invalid,
}


async def _http_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    cls = _HTTP.get(exc.status_code)
    if cls is None:
        body = {
            "type": "about:blank",
            "title": str(exc.detail),
            "status": exc.status_code,
            "detail": str(exc.detail),
        }
        return problem(exc.status_code, body, dict(exc.headers or {}))
    detail = str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no such resource: {request.url.path}"
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
        headers["Allow"] = ", ".join(allowed_methods(request))
    err = cls(detail)
    err.headers.update(headers)
    return _render(err)


#: The methods a 405's ``Allow`` may name (RFC 9110 §9; CONNECT and TRACE are never routed).
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app accepts on the request's path (RFC 9110 ``Allow``).

    Starlette answers 405 from the first route whose path matches, naming only its
    methods; FastAPI makes one route per operation, so a path with GET and DELETE has
    two routes. So each method is put to the app's routes, as routing would for a
    fresh request to this path (only ``matches``, the public contract of a route)."""
    base = {k: request.scope[k] for k in ("type", "path", "root_path", "headers") if k in request.scope}
    routes = request.app.router.routes
    return [m for m in HTTP_METHODS if any(r.matches({**base, "method": m})[0] == Match.FULL for r in routes)]


async def _unhandled(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(
        500,
        {
            "type": TYPE_BASE + "internal",
            "title": "Internal Server Error",
            "status": 500,
            "detail": "an unexpected error occurred; it has been logged",
        },
    )


class StorageFull:
    """Pure ASGI middleware, innermost: an exception that escapes a route (whatever
    raised it: the handler, a worker thread, the group commit) and means a full disk
    (:func:`insufficient_storage`) is answered 507; anything else goes on to the
    handler of unexpected errors (500). Nothing can be answered once a response has
    started: then the exception goes on too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(msg: Message) -> None:
            nonlocal started
            started = True
            await send(msg)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            answer = _storage_full(scope, exc)
            if answer is None or started:
                raise
            await answer(scope, receive, send)


def _storage_full(scope: Scope, exc: Exception) -> Response | None:
    """The 507 for an exception meaning a full disk (logged), else None."""
    err = insufficient_storage(exc)
    if err is None:
        return None
    why = err.__cause__
    log.error("%s %s failed: %s (%s: %s)", scope["method"], scope["path"], err.detail, type(why).__name__, why)
    return _render(err)


async def escaped(request: Request, exc: Exception) -> Response:
    """What the app answers when ``exc`` escapes a route: the handler registered for its
    class by :func:`install`, the 507 of :class:`StorageFull`, or the 500 — for code that
    runs an endpoint outside the middleware (the hot lane, :mod:`app.core.routes`). Call
    it in the ``except`` block (the 500 logs the traceback)."""
    if isinstance(exc, StewardError):
        return await _steward_handler(request, exc)
    if isinstance(exc, RequestValidationError):
        return await _validation_handler(request, exc)
    if isinstance(exc, StarletteHTTPException):
        return await _http_handler(request, exc)
    return _storage_full(request.scope, exc) or await _unhandled(request, exc)


def install(app: FastAPI) -> None:
    """Register the problem+json handlers on ``app`` (and the middleware answering a
    full disk; add it before any other middleware, so it is the innermost)."""
    app.add_exception_handler(StewardError, _steward_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_exception_handler(Exception, _unhandled)
    app.add_middleware(StorageFull)
