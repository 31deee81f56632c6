"""Pipeline and policy bodies and answers."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, Tag, model_validator

from app.compression.schemas import EvalLog, PruneIn, QuantizeIn
from app.core.schemas import AliasName, Strict
from app.migration.schemas import MigrateIn
from app.online.schemas import Samples
from app.training.schemas import BatchUpdateIn

#: A later step's ``from`` default: the version the step before made.
PREVIOUS = "previous"
MAX_STEPS = 16


def _step_config(body: type[BaseModel], kind: str) -> Any:
    """A step's config: its endpoint body's, with ``kind`` in the examples (without
    ``promote``: a pipeline promotes with its own)."""
    extra: dict[str, Any] = dict(body.model_config.get("json_schema_extra") or {})  # type: ignore[arg-type]
    given: list[dict[str, Any]] = extra.get("examples", [])
    examples = [{"kind": kind, **{k: v for k, v in ex.items() if k != "promote"}} for ex in given]
    return {**body.model_config, "json_schema_extra": {**extra, "examples": examples}}


class BatchUpdateStep(BatchUpdateIn):
    model_config = _step_config(BatchUpdateIn, "batch_update")
    kind: Literal["batch_update"]


class PruneStep(PruneIn):
    model_config = _step_config(PruneIn, "prune")
    kind: Literal["prune"]


class QuantizeStep(QuantizeIn):
    model_config = _step_config(QuantizeIn, "quantize")
    kind: Literal["quantize"]


class MigrateStep(MigrateIn):
    model_config = _step_config(MigrateIn, "migrate")
    kind: Literal["migrate"]


def _step_kind(v: Any) -> str | None:
    kind = v.get("kind") if isinstance(v, dict) else getattr(v, "kind", None)
    return kind if isinstance(kind, str) else None


#: A step: one of the job endpoints' bodies, with its ``kind`` (a callable discriminator:
#: the bodies' shared ``mode="before"`` validators rule out a field discriminator).
Step = Annotated[
    Annotated[BatchUpdateStep, Tag("batch_update")]
    | Annotated[PruneStep, Tag("prune")]
    | Annotated[QuantizeStep, Tag("quantize")]
    | Annotated[MigrateStep, Tag("migrate")],
    Discriminator(
        _step_kind,
        custom_error_type="step_kind",
        custom_error_message="kind must be one of batch_update, prune, quantize, migrate",
    ),
]


class PipelineEval(Strict):
    """The data the promotion guard scores both versions on: the newest ``log.last``
    samples of the log when the promotion runs, or samples given here."""

    log: EvalLog | None = None
    samples: Samples | None = None

    @model_validator(mode="after")
    def _one(self) -> PipelineEval:
        if (self.log is None) == (self.samples is None):
            raise ValueError("give exactly one of log or samples")
        return self


class PromoteSpec(Strict):
    alias: AliasName = Field(description="The alias to move to the final version")
    max_loss_increase: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="How much worse than the alias's version the final one may be"
    )
    eval: PipelineEval = Field(description='`{"log": {"last": 1000}}` or `{"samples": [...]}`')


class PipelineIn(Strict):
    model_config = {
        "extra": "forbid",
        "json_schema_extra": {
            "examples": [
                {
                    "steps": [
                        {"kind": "batch_update", "from": "production", "log": {"last": 50000}, "epochs": 3},
                        {"kind": "quantize", "dtype": "int8"},
                        {"kind": "migrate", "target": "onnx"},
                    ],
                    "promote": {"alias": "production", "max_loss_increase": 0.0, "eval": {"log": {"last": 1000}}},
                }
            ]
        },
    }
    steps: list[Step] = Field(
        min_length=1,
        max_length=MAX_STEPS,
        description="Jobs run in order; a later step's `from` defaults to `previous` (the version the step "
        "before made)",
    )
    promote: PromoteSpec | None = Field(None, description="Move an alias to the final version, guarded")


class StepOut(BaseModel):
    job: str
    kind: str
    version: int | None


class Triggers(Strict):
    on_drift: bool = Field(False, description="Run when the learner reports a transition to `drift`")
    every_samples: int | None = Field(
        None, ge=1, le=2**40, description="Run when this many samples were accepted since the last run"
    )
    every_seconds: float | None = Field(
        None, ge=1, le=10 * 365 * 86400, allow_inf_nan=False, description="Run this often"
    )

    @model_validator(mode="after")
    def _some(self) -> Triggers:
        if not self.on_drift and self.every_samples is None and self.every_seconds is None:
            raise ValueError("give at least one trigger: on_drift, every_samples or every_seconds")
        return self


class PolicyIn(Strict):
    model_config = {
        "extra": "forbid",
        "json_schema_extra": {
            "examples": [
                {
                    "enabled": True,
                    "triggers": {"on_drift": True, "every_samples": 50000, "every_seconds": 86400},
                    "pipeline": {
                        "steps": [
                            {"kind": "batch_update", "from": "production", "log": {"last": 50000}, "epochs": 3},
                            {"kind": "quantize", "dtype": "int8"},
                            {"kind": "migrate", "target": "onnx"},
                        ],
                        "promote": {"alias": "production", "eval": {"log": {"last": 2000}}},
                    },
                }
            ]
        },
    }
    enabled: bool = True
    triggers: Triggers
    pipeline: PipelineIn


class PolicyOut(BaseModel):
    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "model": "churn",
                    "enabled": True,
                    "disabled_reason": None,
                    "triggers": {"on_drift": True, "every_samples": 50000},
                    "pipeline": {
                        "steps": [
                            {"kind": "batch_update", "from": "production", "log": {"last": 50000}, "epochs": 3},
                            {"kind": "quantize", "dtype": "int8"},
                        ],
                        "promote": {"alias": "production", "eval": {"log": {"last": 2000}}},
                    },
                    "last_triggered_at": "2026-12-01T09:30:00Z",
                    "last_trigger": "on_drift",
                    "last_job": "5b0e7c8e-2f4d-4b6a-9a61-0c8f3e2d1a77",
                    "last_skipped_at": None,
                    "last_error": None,
                    "failures": 0,
                    "next_due": {"every_samples": {"at_offset": 290512}, "on_drift": {"after_offset": 240512}},
                    "created_at": "2026-11-20T08:00:00Z",
                    "updated_at": "2026-12-01T09:30:00Z",
                }
            ]
        }
    }
    model: str
    enabled: bool
    disabled_reason: str | None
    triggers: dict[str, Any]
    pipeline: dict[str, Any]
    last_triggered_at: datetime | None
    last_trigger: str | None
    last_job: str | None
    last_skipped_at: datetime | None = Field(description="When a trigger last fired while a pipeline was active")
    last_error: str | None = Field(description="Why the last pipeline failed or could not be queued")
    failures: int = Field(description="Pipelines of this policy that failed in a row")
    next_due: dict[str, Any] = Field(
        description="When each trigger is next due: `every_seconds` a time, `every_samples` the offset"
    )
    created_at: datetime
    updated_at: datetime
