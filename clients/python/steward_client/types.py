"""What the service answers, as typed dicts (the OpenAPI document has every field)."""

from __future__ import annotations

from typing import Any, TypedDict


class Model(TypedDict, total=False):
    name: str
    task: str
    input_dim: int
    output_dim: int
    hidden: list[int]
    latest_version: int
    aliases: dict[str, int]
    status: str
    online: dict[str, Any]
    drift: dict[str, Any]


class Version(TypedDict, total=False):
    model: str
    version: int
    parent: int | None
    operation: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    sha256: str
    size_bytes: int
    dtype: str
    sparsity: float
    served: dict[str, Any]
    description: str
    tags: dict[str, str]


class Job(TypedDict, total=False):
    id: str
    kind: str
    model: str
    parent_job: str | None
    step: int | None
    status: str
    progress: float
    result: dict[str, Any] | None
    error: dict[str, Any] | None


class Event(TypedDict):
    id: int
    type: str
    at: str
    model: str | None
    data: dict[str, Any]


class Appended(TypedDict):
    accepted: int
    first_offset: int | None
    last_offset: int | None
    requests: int
