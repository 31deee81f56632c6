"""Predict and evaluate schemas."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints, model_validator

from app.core.schemas import AliasName, Strict
from app.online.schemas import Samples

#: A recorded prediction's id: 1–128 printable ASCII characters.
PredictionId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[ -~]+$")]

# Strict: numbers only (no numeric strings, no booleans); ints are accepted.
FiniteFloat = Annotated[float, Field(allow_inf_nan=False, strict=True)]


class Target(Strict):
    version: int | None = Field(None, ge=1, le=2**31 - 1, description="A version number")
    alias: AliasName | None = Field(
        None, description="An alias (`latest` is implicit). Default: `production` if set, else `latest`."
    )

    @model_validator(mode="after")
    def _one(self) -> Target:
        if self.version is not None and self.alias is not None:
            raise ValueError("give either version or alias, not both")
        return self


class PredictIn(Target):
    model_config = {
        "extra": "forbid",
        "json_schema_extra": {"examples": [{"inputs": [[0.1, -1.2, 3.0]], "alias": "production"}]},
    }
    inputs: list[list[FiniteFloat]] = Field(min_length=1, description="Rows of input_dim numbers")
    record: bool = Field(
        False,
        strict=True,
        description="Store each input with the version that served it and its outputs, to be labelled "
        "later (POST /models/{name}/labels); needs scope `ingest`",
    )
    ids: list[PredictionId] | None = Field(
        None, description="With `record`: the client's id of each input (unique per model); default: generated"
    )


class PredictOut(BaseModel):
    model: str
    version: int
    outputs: list[list[float]]
    labels: list[int] | None = Field(None, description="binary: 1 where output ≥ 0.5; multiclass: argmax")
    prediction_ids: list[str] | None = Field(None, description="With `record`: the id of each recorded prediction")


class EvaluateIn(Target):
    model_config = {
        "extra": "forbid",
        "json_schema_extra": {"examples": [{"samples": [{"x": [0.1, -1.2, 3.0], "y": 1}], "version": 3}]},
    }
    samples: Samples


class EvaluateOut(BaseModel):
    model_config = {
        "json_schema_extra": {
            "examples": [{"model": "churn", "version": 2, "loss": 0.437, "accuracy": 0.82, "n": 200, "extra": None}]
        }
    }
    model: str
    version: int
    loss: float = Field(description="Mean per-sample loss as defined for the task")
    accuracy: float | None = None
    n: int
    extra: dict[str, Any] | None = None
