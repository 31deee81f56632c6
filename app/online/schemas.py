"""Online learning: /update answers, /resume body, the metrics history, the documented request
bodies, and the one type of labelled samples in other JSON bodies (:data:`Samples`).

``/update`` reads its body raw (orjson straight into numpy arrays), so its
request schemas here exist for the OpenAPI document only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from app.core.schemas import Strict
from app.registry.schemas import Prequential


class UpdateOut(BaseModel):
    """202 answer of ``POST /models/{name}/update``."""

    model_config = {
        "json_schema_extra": {
            "examples": [
                {"accepted": 2, "first_offset": 1200, "last_offset": 1201, "duplicate": False},
                {
                    "accepted": 2,
                    "first_offset": 1200,
                    "last_offset": 1201,
                    "duplicate": False,
                    "applied": True,
                    "applied_through": 1201,
                    "status": "active",
                    "status_reason": None,
                    "prequential": {
                        "loss": 0.21,
                        "accuracy": 0.91,
                        "window": {"size": 1000, "loss": 0.19, "accuracy": 0.93},
                    },
                },
            ]
        }
    }

    accepted: int = Field(description="Samples appended to the log by this request")
    first_offset: int = Field(description="Offset of the request's first sample")
    last_offset: int = Field(description="Offset of its last sample (inclusive)")
    duplicate: bool = Field(description="True when an Idempotency-Key retry repeated an earlier answer")
    applied: bool | None = Field(
        None, description="`?wait=true` only: all of the request's samples are applied (false: timed out or paused)"
    )
    applied_through: int | None = Field(None, description="`?wait=true` only: the learner's inclusive last offset")
    status: Literal["active", "paused"] | None = Field(None, description="`?wait=true` only: the model's status")
    status_reason: str | None = Field(None, description="`?wait=true` only: why the model is paused")
    paused_offset: int | None = Field(None, description="`?wait=true` only: the offset the guard refused")
    prequential: Prequential | None = Field(None, description="`?wait=true` only: running test-then-train metrics")


class ResumeIn(Strict):
    model_config = {"extra": "forbid", "json_schema_extra": {"examples": [{}, {"from_version": 5}]}}

    from_version: int | None = Field(
        None,
        ge=1,
        le=2**31 - 1,
        description="Restart from this version's parameters (default: the last good parameters)",
    )


# --------------------------------------------------------------------------- metrics history
#: Longest ``points`` of ``GET /models/{name}/metrics/history`` (and its default).
HISTORY_POINTS_MAX = 2000
HISTORY_POINTS_DEFAULT = 200


class PointPrequential(BaseModel):
    loss: float | None = Field(description="Mean test-then-train loss of the bucket's samples (null: none)")
    accuracy: float | None = Field(description="Their share of right labels (null: none, or a regression)")
    running_loss: float | None = Field(description="Mean loss since the learner's metrics began, at the point")
    running_accuracy: float | None = Field(description="Share of right labels since then, at the point")


class PointServed(BaseModel):
    labelled: int = Field(description="Labels the model's recorded predictions got in the bucket (POST /labels)")
    loss: float = Field(description="Mean loss of those served outputs on their labels")
    accuracy: float | None = Field(description="Their share of right labels (null for a regression)")


class MetricsPoint(BaseModel):
    offset: int = Field(description="The learner's `applied_through` at the point (the bucket's last point)")
    at: datetime = Field(description="When the learner recorded it")
    samples: int = Field(description="Samples the learner scored (test-then-train) in the bucket")
    prequential: PointPrequential
    served: PointServed | None = Field(description="The served predictions labelled in the bucket (null: none)")


class MetricsHistory(BaseModel):
    """``GET /models/{name}/metrics/history``."""

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "model": "churn",
                    "from_offset": 0,
                    "to_offset": 9999,
                    "recorded": 100,
                    "points": [
                        {
                            "offset": 4999,
                            "at": "2026-12-05T18:02:10.250000Z",
                            "samples": 5000,
                            "prequential": {
                                "loss": 0.31,
                                "accuracy": 0.87,
                                "running_loss": 0.31,
                                "running_accuracy": 0.87,
                            },
                            "served": None,
                        },
                        {
                            "offset": 9999,
                            "at": "2026-12-05T18:04:12.500000Z",
                            "samples": 5000,
                            "prequential": {
                                "loss": 0.19,
                                "accuracy": 0.93,
                                "running_loss": 0.25,
                                "running_accuracy": 0.9,
                            },
                            "served": {"labelled": 20, "loss": 0.35, "accuracy": 0.9},
                        },
                    ],
                }
            ]
        }
    }

    model: str
    from_offset: int = Field(description="The first offset of the range")
    to_offset: int = Field(description="Its last (inclusive; default: the newest point's offset)")
    recorded: int = Field(description="Points recorded in the range (the answer has at most `points` of them)")
    points: list[MetricsPoint] = Field(description="Per non-empty bucket, in offset order")


# --------------------------------------------------------------------------- samples in request bodies
SAMPLE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["x", "y"],
    "additionalProperties": False,
    "properties": {
        "x": {"type": "array", "items": {"type": "number"}, "description": "`input_dim` finite float32 values"},
        "y": {
            "description": "binary: 0 or 1; multiclass: class index; regression: a number, or a list of "
            "`output_dim` numbers",
            "anyOf": [{"type": "number"}, {"type": "array", "items": {"type": "number"}}],
        },
    },
}

#: Labelled samples in a JSON request body (``/evaluate``, job data). Pydantic checks only
#: that it is a non-empty list: each sample is checked by :func:`app.online.samples.parse_samples`,
#: the one definition of a valid sample, so every endpoint reports a bad sample as ``/update`` does.
Samples = Annotated[list[Any], Field(min_length=1, json_schema_extra={"items": SAMPLE_SCHEMA})]

UPDATE_BODY: dict[str, Any] = {
    "required": True,
    "description": "Labelled samples, as one JSON object or as NDJSON (one sample object per line, "
    "streamed; any size up to `STEWARD_MAX_BODY_BYTES`). Every sample is validated before any is stored.",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["samples"],
                "additionalProperties": False,
                "properties": {"samples": {"type": "array", "minItems": 1, "items": SAMPLE_SCHEMA}},
            },
            "examples": {
                "binary": {
                    "summary": "Two samples of a binary model with input_dim 3",
                    "value": {"samples": [{"x": [0.1, -1.2, 3.0], "y": 1}, {"x": [0.0, 0.5, -0.7], "y": 0}]},
                },
                "multi-output regression": {
                    "summary": "A regression model with output_dim 2",
                    "value": {"samples": [{"x": [0.1, -1.2, 3.0], "y": [0.5, 1.5]}]},
                },
            },
        },
        "application/x-ndjson": {
            "schema": {"type": "string", "description": "One sample object per line"},
            "example": '{"x": [0.1, -1.2, 3.0], "y": 1}\n{"x": [0.0, 0.5, -0.7], "y": 0}\n',
        },
    },
}
