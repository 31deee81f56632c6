"""The one strict reading of JSON request bodies.

Every JSON body is read by :func:`loads` (pydantic-parsed bodies through
:class:`JSONRoute`, ``/update`` whenever its orjson fast path does not accept the body,
:mod:`app.online.ingest`), so these rules hold for every route alike:

* **Duplicate keys** are refused: an object naming a key twice is ambiguous (RFC 8259
  §4: the names SHOULD be unique, and parsers disagree on which value wins), so it is a
  malformed body, 400, naming the key — never a silent "the last one wins".
* **Integers of any length** are read, not refused: the body is well-formed JSON, so an
  integer too large for any field is 422 at its place, not 400. Up to
  :data:`INT_DIGITS` digits they are exact Python integers; longer ones (beyond every
  bound, and beyond Python's integer-string limit) become ±infinity.
* **NaN, Infinity, -Infinity and numbers beyond double range** (``1e999``) are read as
  the floats they name, so the checks of the value answer 422 "not a finite number" at
  its place.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

#: Longest integer read exactly (Python's default integer-string conversion limit).
INT_DIGITS = 4300


class DuplicateKey(json.JSONDecodeError):
    """A JSON object names ``key`` twice."""

    def __init__(self, key: str, doc: str, pos: int) -> None:
        super().__init__(f"duplicate key {json.dumps(key)}", doc, pos)
        self.key = key


class _Duplicate(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _Duplicate(k)
            seen.add(k)
    return out


def _int(text: str) -> int | float:
    if len(text) - text.startswith("-") <= INT_DIGITS:
        return int(text)
    return float("-inf") if text.startswith("-") else float("inf")


def loads(data: bytes | str) -> Any:
    """``data`` as JSON, by the rules of the module docstring. Raises
    :class:`json.JSONDecodeError` (:class:`DuplicateKey` for a repeated key) when it is
    not well-formed, ``RecursionError`` when it nests too deep."""
    try:
        return json.loads(data, object_pairs_hook=_unique, parse_int=_int)
    except _Duplicate as e:
        doc = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        quoted = json.dumps(e.key)
        first = doc.find(quoted)
        second = doc.find(quoted, first + 1) if first >= 0 else -1
        raise DuplicateKey(e.key, doc, max(second, 0)) from None


class JSONRequest(Request):
    """A request whose ``json()`` is :func:`loads` (FastAPI parses JSON bodies with it)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads(await self.body())
        return self._json


class JSONRoute(APIRoute):
    """The route class of every router: its JSON body is read by :func:`loads` (FastAPI
    answers a :class:`json.JSONDecodeError` as ``json_invalid``, our 400)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            return await handler(JSONRequest(request.scope, request.receive))

        return route_handler
