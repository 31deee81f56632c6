"""What the event feed answers: events, one example payload per type."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from app.core.outbox import EVENT_TYPES, EventType

_KEY = {"key_id": "9f2c61d0a4b3e8f1", "key_name": "release-bot"}
_JOB = "5b0e7c8e-2f4d-4b6a-9a61-0c8f3e2d1a77"

#: One example ``data`` per event type (the OpenAPI document shows each).
EXAMPLES: dict[str, dict[str, Any]] = {
    "model.created": {
        "task": "binary",
        "input_dim": 30,
        "output_dim": 1,
        "hidden": [64, 32],
        "operation": "init",
    },
    "model.deleted": {"latest_version": 12, "by": _KEY},
    "model.paused": {
        "offset": 182_311,
        "reason": "non_finite_loss: the loss of sample 182311 is not finite",
        "version": 9,
    },
    "model.resumed": {
        "skipped_offset": 182_311,
        "from_version": None,
        "paused_reason": "offset 182311: non_finite_loss: the loss of sample 182311 is not finite",
    },
    "model.drift": {
        "offset": 240_512,
        "since_offset": 240_512,
        "version": 11,
        "detector": "ADWIN",
        "inputs": [{"index": 3, "score": 0.41}],
    },
    "version.created": {
        "version": 12,
        "operation": "quantize",
        "parent": 11,
        "sha256": "3b1f0c2d9e8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c",
        "size_bytes": 10_912,
        "dtype": "int8",
        "sparsity": 0.0,
        "job": _JOB,
    },
    "alias.moved": {
        "alias": "production",
        "version": 12,
        "previous": 11,
        "at": "2026-12-01T09:30:00Z",
        "by": _KEY,
        "reason": "beats v11 on last week's labels",
    },
    "alias.deleted": {
        "alias": "staging",
        "version": None,
        "previous": 10,
        "at": "2026-12-01T09:31:00Z",
        "by": _KEY,
        "reason": None,
    },
    "job.succeeded": {
        "id": _JOB,
        "kind": "quantize",
        "status": "succeeded",
        "attempts": 1,
        "result": {"version": 12, "from_version": 11},
    },
    "job.failed": {
        "id": _JOB,
        "kind": "batch_update",
        "status": "failed",
        "attempts": 3,
        "error": {"type": "job_error", "message": "the log range 0..99 was dropped"},
    },
    "job.canceled": {"id": _JOB, "kind": "prune", "status": "canceled", "attempts": 1},
    "policy.triggered": {"trigger": "on_drift", "job": _JOB},
    "policy.disabled": {"reason": "3 pipelines in a row failed; the last: step 0 (batch_update) failed", "job": _JOB},
}
assert tuple(EXAMPLES) == EVENT_TYPES


class EventOut(BaseModel):
    """A change: ``id`` increases in the order readers see events (no gaps, no repeats)."""

    model_config = {
        "json_schema_extra": {
            "examples": [
                {"id": 1041, "type": t, "at": "2026-12-01T09:30:00Z", "model": "churn", "data": d}
                for t, d in EXAMPLES.items()
            ]
        }
    }
    id: int
    type: EventType = Field(description="One of: " + ", ".join(f"`{t}`" for t in EVENT_TYPES))
    at: datetime
    model: str | None = Field(description="The model's name (null for events of no model)")
    data: dict[str, Any]


class EventPage(BaseModel):
    """Events after ``after``, oldest first. Pass ``next_after`` as ``after`` to read on."""

    items: list[EventOut]
    next_after: int = Field(description="The `after` of the next read: the last id here, else the `after` given")
