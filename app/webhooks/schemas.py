"""Webhook requests and answers."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.core.schemas import ModelName, Strict, Text

DeliveryStatus = Literal["pending", "sending", "delivered", "failed"]


class WebhookCreate(Strict):
    model_config = {
        "extra": "forbid",
        "json_schema_extra": {
            "examples": [
                {
                    "url": "https://hooks.example.com/steward",
                    "events": ["version.created", "alias.*", "job.*"],
                    "models": ["churn"],
                    "description": "release channel",
                }
            ]
        },
    }
    url: Text = Field(min_length=1, max_length=2048, description="http(s) URL the events are POSTed to")
    events: list[str] = Field(
        min_length=1, max_length=64, description="Event types, groups such as `job.*`, or `*` for all"
    )
    models: list[ModelName] | None = Field(None, max_length=1000, description="Only these models' events")
    secret: str | None = Field(
        None,
        max_length=128,
        description="`whsec_` + base64 of a 24–64 byte key; generated when not given. Shown once.",
    )
    description: Text = Field("", max_length=1000)


class WebhookOut(BaseModel):
    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "id": "wh_5f0c2a9e41d7b3c8",
                    "url": "https://hooks.example.com/steward",
                    "events": ["version.created", "alias.*", "job.*"],
                    "models": ["churn"],
                    "description": "release channel",
                    "created_at": "2026-12-01T09:00:00Z",
                    "created_by": {"key_id": "9f2c61d0a4b3e8f1", "key_name": "ops"},
                    "after_event": 1040,
                    "pending": 0,
                    "failed": 0,
                }
            ]
        }
    }
    id: str
    url: str
    events: list[str]
    models: list[str] | None
    description: str
    created_at: datetime
    created_by: dict[str, Any]
    after_event: int = Field(description="The last event id fanned out to this webhook's deliveries")
    pending: int = Field(0, description="Deliveries waiting for their next attempt (or being sent)")
    failed: int = Field(0, description="Deliveries that used up their attempts")


class WebhookCreated(WebhookOut):
    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    **WebhookOut.model_config["json_schema_extra"]["examples"][0],  # type: ignore[index,dict-item]
                    "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                }
            ]
        }
    }
    secret: str = Field(description="The signing secret, shown in this answer only")


class AttemptOut(BaseModel):
    at: datetime
    status: int | None = Field(description="The HTTP status answered (null: no answer)")
    error: str | None
    ms: float


class DeliveryOut(BaseModel):
    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "id": 77,
                    "webhook": "wh_5f0c2a9e41d7b3c8",
                    "msg_id": "1041",
                    "event": 1041,
                    "type": "alias.moved",
                    "status": "pending",
                    "attempts": 2,
                    "last_status": 503,
                    "last_error": "HTTP 503",
                    "next_attempt_at": "2026-12-01T09:30:07Z",
                    "delivered_at": None,
                    "created_at": "2026-12-01T09:30:00Z",
                    "log": [
                        {"at": "2026-12-01T09:30:00Z", "status": 503, "error": "HTTP 503", "ms": 12.5},
                        {"at": "2026-12-01T09:30:02Z", "status": 503, "error": "HTTP 503", "ms": 11.0},
                    ],
                }
            ]
        }
    }
    id: int
    webhook: str
    msg_id: str = Field(description="The `webhook-id` header: the event id (receivers deduplicate on it)")
    event: int | None = Field(description="The event's id (null for a `ping`)")
    type: str
    status: DeliveryStatus
    attempts: int
    last_status: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime
    log: list[AttemptOut] = Field(description="The latest attempts, oldest first")
