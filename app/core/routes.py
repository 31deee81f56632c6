"""Routes for the hot paths (``/predict``, ``/update``): FastAPI documents them, the hot
lane runs them.

FastAPI resolves an endpoint's parameters and dependencies on every request, and on a
one-sample request that machinery costs more than the rest of the work (measured with
``bench/bench_ingest.py`` / ``bench_predict_http.py``). A :class:`HotRoute` endpoint takes
the request alone and reads its parameters itself (:func:`model_name`, :func:`query_float`
…); the OpenAPI document gets the same parameters and security from ``openapi_extra``
(:func:`path_name_param` …), so clients and schemathesis see one contract. Errors are
the usual problems (422 at ``["path", "name"]`` …), raised into the one error tree.

**The hot lane.** Starlette's middleware stack and router cost more again: on a one-sample
``/update`` ~65 µs of the event loop's CPU per request — more than the endpoint's own
work (measured: 3,300 → 4,500 requests/s on one core). :class:`HotLane` holds the
:class:`HotRoute` endpoints of the routers given to it, and the app's ASGI entry
(``app.main.Steward``) runs a request that one of them matches (method and path, as
Starlette matches them) straight away: the endpoint with its request, an escaping
exception answered by :func:`app.core.errors.escaped` (the one rendering the app's
handlers give), the body limit and the metrics by the same functions as the middleware
(``app.main``). Every other request, and every request under a ``root_path``, goes the
usual way; so does OpenAPI, which documents the :class:`HotRoute` as any route.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.convertors import Convertor
from starlette.routing import compile_path
from starlette.types import Receive, Scope

from app.core.errors import Invalid, escaped
from app.core.jsonbody import JSONRoute
from app.core.schemas import NAME_PATTERN

_NAME = re.compile(NAME_PATTERN)


class HotRoute(JSONRoute):
    """An ``APIRoute`` whose endpoint is called as ``endpoint(request)``, with no parameter
    or dependency solving (see the module doc)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            response: Response = await endpoint(request)
            return response

        return handler


Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class HotPath:
    """One hot route as the lane matches it: ``method`` and the full path ``template``."""

    method: str
    template: str
    regex: re.Pattern[str]
    convertors: dict[str, Convertor[Any]]
    endpoint: Endpoint


class HotLane:
    """The :class:`HotRoute` endpoints, matched and run without the middleware stack
    (see the module doc)."""

    def __init__(self) -> None:
        self.paths: list[HotPath] = []

    def add_router(self, router: APIRouter, prefix: str = "") -> None:
        """Take the router's :class:`HotRoute` routes (included in the app with ``prefix``)."""
        for route in router.routes:
            if isinstance(route, HotRoute):
                template = prefix + route.path
                regex, _, convertors = compile_path(template)
                for method in sorted(route.methods or ()):
                    self.paths.append(HotPath(method, template, regex, convertors, route.endpoint))

    def match(self, scope: Scope) -> tuple[HotPath, dict[str, Any]] | None:
        """The hot path an HTTP request is for, with its path parameters; None for any
        other request (and under a ``root_path``, left to the router)."""
        if scope.get("root_path"):
            return None
        method, path = scope["method"], scope["path"]
        for hot in self.paths:
            if hot.method == method:
                m = hot.regex.match(path)
                if m is not None:
                    return hot, {k: hot.convertors[k].convert(v) for k, v in m.groupdict().items()}
        return None

    @staticmethod
    async def respond(hot: HotPath, params: dict[str, Any], scope: Scope, receive: Receive) -> Response:
        """The endpoint's response, or the app's answer to what it raised."""
        scope["path_params"] = params
        request = Request(scope, receive)
        try:
            return await hot.endpoint(request)
        except Exception as exc:
            return await escaped(request, exc)


def path_name_param(description: str = "Model name") -> dict[str, Any]:
    """The OpenAPI parameter of ``{name}`` (what ``ModelNamePath`` documents)."""
    return {
        "name": "name",
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "pattern": NAME_PATTERN, "maxLength": 64, "title": "Name"},
        "example": "churn",
    }


def model_name(request: Request) -> str:
    """The ``{name}`` path parameter, checked as ``ModelNamePath`` checks it."""
    name: str = request.path_params["name"]
    if len(name) > 64:
        raise Invalid.at(["path", "name"], "String should have at most 64 characters")
    if _NAME.match(name) is None:
        raise Invalid.at(["path", "name"], f"String should match pattern '{NAME_PATTERN}'")
    return name


def query_float(request: Request, name: str, default: float, *, gt: float, le: float) -> float:
    """A float query parameter in ``(gt, le]``."""
    raw = request.query_params.get(name) if request.scope.get("query_string") else None
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise Invalid.at(
            ["query", name], "Input should be a valid number, unable to parse string as a number"
        ) from None
    if not value > gt:  # NaN fails too
        raise Invalid.at(["query", name], f"Input should be greater than {gt:g}")
    if value > le:
        raise Invalid.at(["query", name], f"Input should be less than or equal to {le:g}")
    return value


def query_param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    """The OpenAPI parameter of an optional query parameter."""
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def query_bool(request: Request, name: str, default: bool) -> bool:
    """A boolean query parameter, read as pydantic reads one (``true``/``1``/``yes``/``on``…)."""
    raw = request.query_params.get(name) if request.scope.get("query_string") else None
    if raw is None:
        return default
    v = raw.lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise Invalid.at(["query", name], "Input should be a valid boolean, unable to interpret input")
