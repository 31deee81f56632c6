"""Shared schema pieces: problem documents, pagination, names."""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")

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
AliasName = Annotated[
    str,
    Field(pattern=NAME_PATTERN, min_length=1, max_length=64, examples=["production"]),
]


class Strict(BaseModel):
    """Request bodies: unknown fields are rejected, so typos do not pass silently, and
    values are taken as their JSON type says (pydantic strict mode): ``true`` is not
    the number 1 and ``"3"`` is not the integer 3; an integer is a valid float."""

    model_config = ConfigDict(extra="forbid", strict=True)


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


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries declaring problem+json answers."""
    text = {
        400: "Malformed JSON or unreadable upload",
        401: "Missing or unknown API key",
        403: "The key lacks the scope or the model",
        404: "Unknown model, version, alias, job or export",
        409: "Conflict with the current state",
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
