"""API key schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from app.core.schemas import ModelName, Strict, Text

Scope = Literal["read", "ingest", "maintain", "admin"]


class KeyCreate(Strict):
    model_config = {
        "extra": "forbid",
        "json_schema_extra": {"examples": [{"name": "checkout-app", "scope": "ingest", "models": ["churn"]}]},
    }
    name: Text = Field(min_length=1, max_length=128)
    scope: Scope
    models: list[ModelName] | None = Field(
        None, max_length=1000, description="Restrict the key to these models (default: all)"
    )


class KeyOut(BaseModel):
    id: str
    name: str
    scope: Scope
    models: list[str] | None
    prefix: str = Field(description="First characters of the secret, to recognise it")
    created_at: datetime


class KeyCreated(KeyOut):
    key: str = Field(description="The secret. Shown in this answer only; stored as a hash.")
