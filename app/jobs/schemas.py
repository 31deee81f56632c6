"""Job schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

JobKind = Literal["batch_update", "prune", "quantize", "migrate", "pipeline"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]


class JobOut(BaseModel):
    id: str
    kind: JobKind
    model: str
    parent_job: str | None = Field(None, description="The pipeline this job is a step of")
    step: int | None = Field(None, description="Which step of it (from 0)")
    status: JobStatus
    progress: float = Field(ge=0, le=1)
    attempts: int
    max_attempts: int
    cancel_requested: bool
    params: dict[str, Any]
    result: dict[str, Any] | None = Field(None, description='e.g. {"version": 7, ...}')
    error: dict[str, Any] | None = None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
