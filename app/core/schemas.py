"""Shared schema pieces: problem documents, pagination, names."""

from __future__ import annotations

import collections.abc
import types
from collections.abc import Callable
from typing import Annotated, Any, Generic, Literal, TypeVar, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from app.core.errors import Invalid

T = TypeVar("T")


def number_cursor(cursor: str | None, digits: int = 18) -> int | None:
    """A list's ``cursor`` that is a number (a version, a row id); a 422 at
    ``["query", "cursor"]`` when it is not one this list could have made."""
    if cursor is None:
        return None
    if not cursor.isascii() or not cursor.isdigit() or len(cursor) > digits:
        raise Invalid.at(["query", "cursor"], "not a cursor from this list")
    return int(cursor)


NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
ModelName = Annotated[
    str,
    Field(
        pattern=NAME_PATTERN,
        min_length=1,
        max_length=64,
        description="1–64 of [a-z0-9._-], starting with a letter or digit.",
        examples=["churn"],
    ),
]


def _storable(v: str) -> str:
    """Free text is stored as is, but no database stores U+0000 in a text column
    (PostgreSQL refuses it): refuse it at the edge, like any other invalid value."""
    if "\x00" in v:
        raise ValueError("must not contain the NUL character (U+0000)")
    return v


#: Free text a client sends to be stored (names, descriptions, tags): any string without NUL.
Text = Annotated[str, AfterValidator(_storable)]
#: An opaque paging cursor: printable ASCII, as every list hands them out.
CURSOR_PATTERN = r"^[!-~]+$"

AliasName = Annotated[
    str,
    Field(pattern=NAME_PATTERN, min_length=1, max_length=64, examples=["production"]),
]


def _whole(v: Any) -> Any:
    """An integer-valued float (``6889.0``, ``1e3``) as the integer it is; anything else as is."""
    if type(v) is float and v.is_integer():  # finite and integral
        return int(v)
    return v


def _each(inner: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda v: [inner(x) for x in v] if type(v) is list else v


def integer_coercer(tp: Any) -> Callable[[Any], Any] | None:
    """For a field annotation: the function that turns the integer-valued floats of a
    value into the integers where the annotation has ``int`` (``int``, ``int | None``,
    ``int | AliasName``, ``list[Annotated[int, ...]]`` …), or None when it has none."""
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    if tp is int:
        return _whole
    origin, args = get_origin(tp), get_args(tp)
    if origin in (list, tuple, set, frozenset, collections.abc.Sequence) and args:
        inner = integer_coercer(args[0])
        return _each(inner) if inner is not None else None
    if origin in (Union, types.UnionType):
        found = [c for c in map(integer_coercer, args) if c is not None]
        if not found:
            return None
        if len(found) == 1:
            return found[0]
        return lambda v: next((out for c in found if (out := c(v)) is not v), v)
    return None


class Strict(BaseModel):
    """Request bodies: unknown fields are rejected, so typos do not pass silently, and
    values are taken as their JSON type says (pydantic strict mode): ``true`` is not
    the number 1 and ``"3"`` is not the integer 3; an integer is a valid float.

    An integer is what JSON Schema calls one: a number with a zero fractional part, so
    an integer field (anywhere in its annotation: ``int | None``, ``list[int]`` …) takes
    ``6889.0`` as 6889 (:meth:`_integers`, for every field of every request body; the
    schema stays ``"type": "integer"``); ``6889.5`` stays refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _integers(cls, v: Any, info: ValidationInfo) -> Any:
        if info.field_name is None:  # pragma: no cover - always set for fields
            return v
        key = (cls, info.field_name)
        if key not in _COERCERS:
            _COERCERS[key] = integer_coercer(cls.model_fields[info.field_name].annotation)
        coerce = _COERCERS[key]
        return v if coerce is None else coerce(v)


#: (model, field) → its :func:`integer_coercer`, computed once.
_COERCERS: dict[tuple[type[Strict], str], Callable[[Any], Any] | None] = {}


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str | None = None


class Problem(BaseModel):
    """An RFC 9457 problem document (``application/problem+json``)."""

    type: str = Field(examples=["https://steward.dev/problems/validation"])
    title: str = Field(examples=["Unprocessable Content"])
    status: int = Field(examples=[422])
    detail: str = Field(examples=["body.samples.17.x: expected 32 values, got 31"])
    errors: list[ErrorItem] | None = None
    storage: Literal["data_directory", "database"] | None = Field(
        None, description="507 only: what is full (the data directory's file system, or the database)."
    )


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(None, description="Pass as `cursor` to get the next page; null at the end.")


def _problem(slug: str, title: str, status: int, detail: str, **extra: Any) -> dict[str, Any]:
    return {"type": f"https://steward.dev/problems/{slug}", "title": title, "status": status, "detail": detail, **extra}


#: An example answer of each error status, as the service words it (the OpenAPI document
#: shows each status with its own).
PROBLEM_EXAMPLES: dict[int, dict[str, Any]] = {
    400: _problem("bad-request", "Bad Request", 400, "malformed JSON body: expected ',' or '}' at line 1 column 31"),
    401: _problem("unauthorized", "Unauthorized", 401, "missing API key: send 'Authorization: Bearer <key>'"),
    403: _problem("forbidden", "Forbidden", 403, "this needs a key with scope 'maintain'; this key has 'ingest'"),
    404: _problem("not-found", "Not Found", 404, "no model named 'churn'"),
    405: _problem("method-not-allowed", "Method Not Allowed", 405, "DELETE is not allowed here; use GET, PUT"),
    409: _problem("conflict", "Conflict", 409, "a model named 'churn' already exists"),
    412: _problem(
        "precondition-failed",
        "Precondition Failed",
        412,
        "If-Match: alias 'production' points to version 8, not 7",
        current_version=8,
    ),
    413: _problem("payload-too-large", "Content Too Large", 413, "body exceeds the limit of 67108864 bytes"),
    415: _problem(
        "unsupported-media-type",
        "Unsupported Media Type",
        415,
        "send application/json or application/x-ndjson, not text/csv",
    ),
    422: _problem(
        "validation",
        "Unprocessable Content",
        422,
        "body.samples.17.x: expected 32 values, got 31",
        errors=[{"loc": ["body", "samples", 17, "x"], "msg": "expected 32 values, got 31"}],
    ),
    503: _problem("unavailable", "Service Unavailable", 503, "the database does not answer"),
    507: _problem(
        "insufficient-storage",
        "Insufficient Storage",
        507,
        "the data directory is full; nothing of the request was stored",
        storage="data_directory",
    ),
}


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries declaring problem+json answers."""
    text = {
        400: "Malformed JSON or unreadable upload",
        401: "Missing or unknown API key",
        403: "The key lacks the scope or the model",
        404: "Unknown model, version, alias, job or export",
        409: "Conflict with the current state",
        412: "`If-Match` does not match the current state; nothing was changed",
        413: "Body larger than the configured limit",
        415: "Unsupported media type",
        422: "Well-formed but invalid input",
        507: "The data directory or the database is full; nothing of the request was stored",
    }
    return {
        c: {
            "description": text.get(c, "Error"),
            "model": Problem,
            "content": {"application/problem+json": {}},
        }
        for c in codes
    }
