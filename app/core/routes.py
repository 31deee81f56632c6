"""Routes for the hot paths (``/predict``, ``/update``): FastAPI documents them, Starlette
runs them.

FastAPI resolves an endpoint's parameters and dependencies on every request, and on a
one-sample request that machinery costs more than the rest of the work (measured with
``bench/bench_ingest.py`` / ``bench_predict_http.py``). A :class:`HotRoute` endpoint takes
the request alone and reads its parameters itself (:func:`model_name`, :func:`query_float`
…); the OpenAPI document gets the same parameters and security from ``openapi_extra``
(:func:`path_name_param` …), so clients and schemathesis see one contract. Errors are
the usual problems (422 at ``["path", "name"]`` …), raised into the one error tree.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response

from app.core.errors import Invalid
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
    raw = request.query_params.get(name)
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
    raw = request.query_params.get(name)
    if raw is None:
        return default
    v = raw.lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise Invalid.at(["query", name], "Input should be a valid boolean, unable to interpret input")
