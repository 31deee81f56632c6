"""Schemas of ``POST /models/{name}/labels`` and of shadows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from app.core.schemas import AliasName
from app.online.schemas import SAMPLE_SCHEMA

LABEL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "y"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "minLength": 1, "maxLength": 128, "description": "A recorded prediction's id"},
        "y": SAMPLE_SCHEMA["properties"]["y"],
    },
}

LABELS_BODY: dict[str, Any] = {
    "required": True,
    "description": "The truth for recorded predictions, as one JSON object or as NDJSON (one label object per "
    "line). Every label is checked before any is stored; each new one becomes a sample of the log.",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["labels"],
                "additionalProperties": False,
                "properties": {"labels": {"type": "array", "minItems": 1, "items": LABEL_SCHEMA}},
            },
            "example": {"labels": [{"id": "order-1", "y": 1}, {"id": "order-2", "y": 0}]},
        },
        "application/x-ndjson": {
            "schema": {"type": "string", "description": "One label object per line"},
            "example": '{"id": "order-1", "y": 1}\n{"id": "order-2", "y": 0}\n',
        },
    },
}


class LabelsOut(BaseModel):
    accepted: int = Field(description="Labels that became samples of the log")
    duplicates: int = Field(description="Labels given before with the same y: nothing added")
    first_offset: int | None = Field(description="Offset of the first new sample (null when none)")
    last_offset: int | None = Field(description="Offset of the last new sample (null when none)")
    duplicate: bool = Field(False, description="A retry with the same Idempotency-Key: the first answer")


class ShadowIn(BaseModel):
    model_config = {"extra": "forbid", "json_schema_extra": {"examples": [{"against": "production"}]}}
    against: AliasName | None = Field(
        None, description="The alias (or `latest`) to compare with; default `production` if set, else `latest`"
    )


class ShadowOut(BaseModel):
    model: str
    version: int = Field(description="The candidate")
    against_version: int = Field(description="The version it is compared with (resolved when the shadow started)")
    since_offset: int = Field(description="The first offset both score")
    through: int | None = Field(description="The last offset both have scored (null: none yet)")
    n: int = Field(description="Samples both have scored: the same ones")
    loss: float | None
    accuracy: float | None = None
    against_loss: float | None
    against_accuracy: float | None = None
    created_at: datetime


class ShadowList(BaseModel):
    items: list[ShadowOut]
