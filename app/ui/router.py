"""The dashboard at ``/ui``: server-rendered pages (Jinja2), assets served from the package
(``/ui/static``), no CDN. A person signs in with an API key, kept in a sealed HttpOnly
cookie (:mod:`app.ui.session`); pages need any key (``read``), and a form that changes
state (an alias rollback) needs the key's scope and the session's CSRF token. Not part of
the API's OpenAPI document."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from app.context import AppContext
from app.core.errors import Forbidden, NotFound, StewardError, Unauthorized
from app.core.schemas import NAME_PATTERN
from app.keys.service import Principal
from app.ui.service import UiService
from app.ui.session import COOKIE, Sessions, UiSession

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")


def when(value: str | None) -> str:
    """An answer's RFC 3339 time, to the second: ``2026-12-05 20:13:20Z``."""
    return "—" if not value else value.replace("T", " ")[:19] + "Z"


templates.env.filters["when"] = when
router = APIRouter(prefix="/ui", include_in_schema=False)

#: sent with every page: nothing loads from elsewhere, no framing, no referrer
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
FORM_MAX = 16 * 1024
NAME_RE = re.compile(NAME_PATTERN)


def _ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


def _sessions(request: Request) -> Sessions:
    s: Sessions = request.app.state.ui_sessions
    return s


def _who(request: Request) -> tuple[Principal, UiSession] | None:
    """The signed-in key (authenticated again: a revoked key's session ends), or None."""
    sess = _sessions(request).open(request.cookies.get(COOKIE))
    if sess is None:
        return None
    try:
        return _ctx(request).keys.authenticate(sess.key), sess
    except Unauthorized:
        return None


def _root(request: Request) -> str:
    """Where the app is mounted behind a proxy (``--root-path``): every link and redirect
    of the dashboard starts with it."""
    return str(request.scope.get("root_path") or "").rstrip("/")


def _go(request: Request, path: str) -> RedirectResponse:
    """303 to ``path`` (a path of this app, ``/ui…``)."""
    return RedirectResponse(_root(request) + path, status_code=303, headers=HEADERS)


def _page(request: Request, template: str, code: int = 200, /, **context: Any) -> HTMLResponse:
    context.setdefault("root", _root(request))
    r = templates.TemplateResponse(request, template, context, status_code=code)
    r.headers.update(HEADERS)
    return r


def _sign_in(request: Request, target: str | None = None) -> RedirectResponse:
    """To the sign-in form, and back to ``target`` (default: this page) after it."""
    if target is None:
        root, path = _root(request), request.url.path
        if root and path.startswith(root + "/"):
            path = path[len(root) :]  # the app's own path, whether or not the proxy kept the prefix
        target = path + (f"?{request.url.query}" if request.url.query else "")
    return _go(request, f"/ui/login?next={quote(target)}")


def _error(request: Request, who: tuple[Principal, UiSession] | None, e: StewardError) -> HTMLResponse:
    return _page(request, "error.html", e.status, who=who, status=e.status, title=e.title, detail=e.detail)


def _named(*names: str) -> None:
    """Names in a path as the API takes them (a model's, an alias's): anything else names
    nothing (404), before it reaches a query."""
    for n in names:
        if len(n) > 64 or not NAME_RE.fullmatch(n):
            raise NotFound(f"no model or alias is named {n[:80]!r}")


def _same_site(request: Request) -> bool:
    """A state-changing form must come from this site's pages: a browser says where a
    request comes from (``Sec-Fetch-Site``, else ``Origin``); a request that says nothing
    (not a browser) is judged by the session's CSRF token alone."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    return origin is None or origin == f"{request.url.scheme}://{request.url.netloc}"


def _cross_site(request: Request) -> HTMLResponse:
    detail = "This form was sent from another site."
    return _error(request, None, Forbidden(detail))


def _safe_next(value: str | None) -> str:
    """Only a path of this dashboard: never another site (an open redirect)."""
    if value and value.startswith("/ui") and not value.startswith("/ui//") and "\\" not in value:
        return value
    return "/ui"


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > FORM_MAX:
        return {}
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {k: v[0] for k, v in fields.items()}


@router.get("", response_class=HTMLResponse)
def models(request: Request) -> Response:
    who = _who(request)
    if who is None:
        return _sign_in(request)
    items = UiService(_ctx(request)).models(who[0])
    return _page(request, "models.html", who=who, models=items)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None) -> Response:
    return _page(request, "login.html", who=None, next=_safe_next(next), error=None)


@router.post("/login")
async def login(request: Request) -> Response:
    if not _same_site(request):  # no signing a visitor in with someone else's key
        return _cross_site(request)
    form = await _form(request)
    key, nxt = form.get("key", "").strip(), _safe_next(form.get("next"))
    try:
        await run_in_threadpool(_ctx(request).keys.authenticate, key)
    except Unauthorized:
        return _page(request, "login.html", who=None, next=nxt, error="That key is not valid (unknown or revoked).")
    cookie, _ = _sessions(request).issue(key)
    r = _go(request, nxt)
    r.set_cookie(
        COOKIE,
        cookie,
        max_age=int(_sessions(request).seconds),
        path=_root(request) + "/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return r


@router.post("/logout")
async def logout(request: Request) -> Response:
    if not _same_site(request):
        return _cross_site(request)
    form = await _form(request)
    who = await run_in_threadpool(_who, request)
    if who is not None and not who[1].csrf_ok(form.get("csrf")):
        return _error(request, who, Forbidden("Bad CSRF token."))
    r = _go(request, "/ui/login")
    r.delete_cookie(COOKIE, path=_root(request) + "/ui")
    return r


@router.get("/models/{name}", response_class=HTMLResponse)
def model(request: Request, name: str, msg: str | None = None, error: str | None = None) -> Response:
    who = _who(request)
    if who is None:
        return _sign_in(request)
    try:
        _named(name)
        page = UiService(_ctx(request)).model(who[0], name)
    except StewardError as e:
        return _error(request, who, e)
    return _page(request, "model.html", who=who, name=name, page=page, msg=msg, error=error)


@router.get("/models/{name}/jobs.json")
def model_jobs(request: Request, name: str) -> Response:
    who = _who(request)
    if who is None:
        return JSONResponse({"detail": "sign in"}, status_code=401, headers=HEADERS)
    try:
        _named(name)
        jobs = UiService(_ctx(request)).jobs(who[0], name)
    except StewardError as e:
        return JSONResponse({"detail": e.detail}, status_code=e.status, headers=HEADERS)
    return JSONResponse({"items": jobs}, headers=HEADERS)


@router.get("/models/{name}/versions/{version}", response_class=HTMLResponse)
def version(request: Request, name: str, version: int) -> Response:
    who = _who(request)
    if who is None:
        return _sign_in(request)
    try:
        _named(name)
        v, layers = UiService(_ctx(request)).version(who[0], name, version)
    except StewardError as e:
        return _error(request, who, e)
    return _page(request, "version.html", who=who, name=name, v=v, layers=layers)


@router.post("/models/{name}/aliases/{alias}/rollback")
async def rollback(request: Request, name: str, alias: str) -> Response:
    if not _same_site(request):
        return _cross_site(request)
    form = await _form(request)
    who = await run_in_threadpool(_who, request)
    back = f"/ui/models/{quote(name, safe='')}"
    if who is None:  # the session ended: sign in again, then back to the model's page
        return _sign_in(request, back)
    if not who[1].csrf_ok(form.get("csrf")):
        return _error(request, who, Forbidden("Bad CSRF token."))
    try:
        _named(name, alias)
        e = await run_in_threadpool(UiService(_ctx(request)).rollback, who[0], name, alias, form.get("reason"))
    except StewardError as err:
        if err.status in (403, 409, 422):
            return _go(request, f"{back}?error={quote(str(err.detail))}")
        return _error(request, who, err)
    msg = f"{alias} moved back to version {e['version']} (was {e['previous']})"
    return _go(request, f"{back}?msg={quote(msg)}")
