"""Model, version and alias schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from app.core.schemas import ModelName, Strict, Text
from app.jobs.schemas import BATCH_PARAMS_EXAMPLE

Task = Literal["regression", "binary", "multiclass"]
Activation = Literal["relu", "tanh", "sigmoid"]
Operation = Literal["init", "online", "batch", "prune", "quantize", "import", "transfer"]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class OptimizerSpec(Strict):
    """How the model learns. With ``sgd``, momentum 0 and no clipping each online
    step is exactly θ ← θ − η (∇ℓ(θ; x, y) + l2·W)."""

    kind: Literal["sgd", "adam"] = "sgd"
    learning_rate: float = Field(0.01, gt=0, le=10, allow_inf_nan=False)
    momentum: float = Field(0.0, ge=0, lt=1, allow_inf_nan=False, description="sgd only (PyTorch convention)")
    l2: float = Field(0.0, ge=0, le=10, allow_inf_nan=False, description="Weight decay on weights, never biases")
    clip_norm: float | None = Field(
        None, gt=0, le=1e6, allow_inf_nan=False, description="Clip the global gradient norm"
    )
    beta1: float = Field(0.9, ge=0, lt=1, allow_inf_nan=False, description="adam only")
    beta2: float = Field(0.999, ge=0, lt=1, allow_inf_nan=False, description="adam only")
    eps: float = Field(1e-8, gt=0, le=1, allow_inf_nan=False, description="adam only")


class GuardSpec(Strict):
    """When the online learner pauses instead of applying a step.

    A step that would make any parameter non-finite is never applied. After
    ``warmup`` samples the recent-window prequential loss becomes the baseline;
    when the window loss later exceeds ``loss_ratio`` × baseline the learner pauses.
    """

    enabled: bool = True
    loss_ratio: float = Field(10.0, gt=1, le=1e6, allow_inf_nan=False)
    warmup: int = Field(1000, ge=10, le=10_000_000)


#: a tag's key and value (free text without NUL); a model or version has at most TAGS_MAX
TagKey = Annotated[Text, Field(min_length=1, max_length=128)]
TagValue = Annotated[Text, Field(max_length=1024)]
TAGS_MAX = 64


class MetadataPatch(Strict):
    """``PATCH /models/{name}`` and ``PATCH /models/{name}/versions/{v}``: only the
    description and the tags change (any other field is a 422 naming it). ``tags`` is a JSON
    merge patch: a key set to a string sets that tag, to null removes it, and the tags it
    does not name stay."""

    model_config = {
        "extra": "forbid",
        "json_schema_extra": {
            "examples": [{"description": "churn risk, retrained weekly", "tags": {"team": "growth", "stage": None}}]
        },
    }
    description: Text | None = Field(None, max_length=10_000)
    tags: dict[TagKey, TagValue | None] | None = Field(None, max_length=TAGS_MAX)


class ModelCreate(Strict):
    model_config = {
        "extra": "forbid",
        "json_schema_extra": {
            "examples": [
                {
                    "name": "churn",
                    "task": "binary",
                    "input_dim": 30,
                    "output_dim": 1,
                    "hidden": [64, 32],
                    "activation": "relu",
                    "optimizer": {"kind": "sgd", "learning_rate": 0.01, "momentum": 0.0, "l2": 0.0},
                    "checkpoint_every": 1000,
                    "checkpoint_seconds": 1.0,
                    "seed": 0,
                    "description": "",
                    "tags": {},
                }
            ]
        },
    }

    name: ModelName
    task: Task
    input_dim: int = Field(ge=1, le=1_000_000)
    output_dim: int = Field(1, ge=1, le=100_000)
    hidden: list[Annotated[int, Field(ge=1, le=1_000_000)]] = Field(default_factory=list, max_length=64)
    activation: Activation = "relu"
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    checkpoint_every: int = Field(1000, ge=1, le=1_000_000_000)
    checkpoint_seconds: float = Field(
        1.0,
        ge=0,
        le=86_400,
        allow_inf_nan=False,
        description="An online version is committed once checkpoint_every samples were applied since the newest"
        " version and at least this many seconds passed since the learner's last version; 0: by count only",
    )
    seed: int = Field(0, ge=0, le=2**63 - 1)
    description: Text = Field("", max_length=10_000)
    tags: dict[TagKey, TagValue] = Field(default_factory=dict, max_length=TAGS_MAX)
    guard: GuardSpec = Field(default_factory=GuardSpec)

    @model_validator(mode="after")
    def _task_shape(self) -> ModelCreate:
        if self.task == "binary" and self.output_dim != 1:
            raise ValueError("a binary model has output_dim 1")
        if self.task == "multiclass" and self.output_dim < 2:
            raise ValueError("a multiclass model has output_dim ≥ 2")
        return self

    def n_params(self) -> int:
        sizes = [self.input_dim, *self.hidden, self.output_dim]
        return sum(sizes[i] * sizes[i + 1] + sizes[i + 1] for i in range(len(sizes) - 1))


class PrequentialWindow(BaseModel):
    size: int
    count: int | None = Field(None, description="Samples in the window so far (≤ size)")
    loss: float | None
    accuracy: float | None = None


class Prequential(BaseModel):
    count: int | None = Field(None, description="Samples scored (test-then-train) since the learner's metrics began")
    loss: float | None = Field(None, description="Mean test-then-train loss over all applied samples")
    accuracy: float | None = None
    window: PrequentialWindow | None = None


class OnlineState(BaseModel):
    accepted: int = Field(description="Samples accepted into the log")
    applied: int = Field(description="Samples the learner has applied")
    lag: int = Field(description="accepted − applied")
    applied_through: int | None = Field(None, description="Inclusive last applied offset")
    prequential: Prequential


class DriftInput(BaseModel):
    index: int = Field(description="The input feature's index")
    score: float = Field(description="Its population stability index against the reference window")


#: An example drift block (the model answer shows it too).
DRIFT_EXAMPLE: dict[str, Any] = {
    "status": "stable",
    "since_offset": None,
    "checked_through": 599,
    "loss": {
        "detector": "ADWIN",
        "delta": 0.002,
        "width": 18,
        "mean": 0.41,
        "detections": 0,
        "group": 32,
        "scale": 0.12,
    },
    "inputs": [],
    "reference": {"size": 2000, "stride": 4, "ready": False},
    "transitions": [],
}


class DriftState(BaseModel):
    model_config = {"json_schema_extra": {"examples": [DRIFT_EXAMPLE]}}
    status: Literal["stable", "warning", "drift"] = Field(
        "stable", description="drift: the loss rose (ADWIN); warning: some input drifted; else stable"
    )
    since_offset: int | None = Field(None, description="Offset where the current status began")
    checked_through: int | None = Field(None, description="Last offset the detectors saw")
    loss: dict[str, Any] = Field(default_factory=dict, description="The loss detector's state (`detector` names it)")
    inputs: list[DriftInput] = Field(default_factory=list, description="Features over the PSI threshold, worst first")
    reference: dict[str, Any] | None = Field(None, description="The input reference window: size, ready")
    transitions: list[dict[str, Any]] = Field(
        default_factory=list, description="Recent changes of status: {status, offset}"
    )


class ModelOut(BaseModel):
    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "name": "churn",
                    "task": "binary",
                    "input_dim": 4,
                    "output_dim": 1,
                    "hidden": [8],
                    "activation": "relu",
                    "optimizer": {
                        "kind": "sgd",
                        "learning_rate": 0.01,
                        "momentum": 0.0,
                        "l2": 0.0,
                        "clip_norm": None,
                        "beta1": 0.9,
                        "beta2": 0.999,
                        "eps": 1e-08,
                    },
                    "checkpoint_every": 1000,
                    "checkpoint_seconds": 1.0,
                    "seed": 0,
                    "description": "churn risk of an account",
                    "tags": {"team": "growth"},
                    "guard": {"enabled": True, "loss_ratio": 10.0, "warmup": 1000},
                    "lineage": None,
                    "latest_version": 2,
                    "aliases": {"production": 2},
                    "status": "active",
                    "status_reason": None,
                    "paused_offset": None,
                    "online": {
                        "accepted": 600,
                        "applied": 600,
                        "lag": 0,
                        "applied_through": 599,
                        "prequential": {
                            "count": 600,
                            "loss": 0.649,
                            "accuracy": 0.67,
                            "window": {"size": 1000, "count": 600, "loss": 0.649, "accuracy": 0.67},
                        },
                    },
                    "drift": DRIFT_EXAMPLE,
                    "created_at": "2026-12-01T09:00:00Z",
                    "updated_at": "2026-12-01T09:30:00Z",
                }
            ]
        }
    }
    name: str
    task: Task
    input_dim: int
    output_dim: int
    hidden: list[int]
    activation: Activation
    optimizer: dict[str, Any]
    checkpoint_every: int
    checkpoint_seconds: float
    seed: int
    description: str
    tags: dict[str, str]
    guard: dict[str, Any]
    lineage: dict[str, Any] | None = Field(None, description="Source model/version for transferred models")
    latest_version: int
    aliases: dict[str, int]
    status: Literal["active", "paused"]
    status_reason: str | None
    paused_offset: int | None = None
    online: OnlineState
    drift: DriftState = Field(default_factory=DriftState)
    created_at: datetime
    updated_at: datetime


class ServedOut(BaseModel):
    """What the version really served: recorded predictions and the labels they got."""

    predictions: int = Field(0, description="Recorded predictions it served")
    labelled: int = Field(0, description="How many of them were labelled (POST /labels)")
    loss: float | None = Field(None, description="Mean loss of the served outputs on their labels (as evaluate)")
    accuracy: float | None = Field(None, description="Share of labelled classifications it got right")


class VersionOut(BaseModel):
    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "model": "churn",
                    "version": 2,
                    "parent": 1,
                    "operation": "batch",
                    "params": BATCH_PARAMS_EXAMPLE,
                    "metrics": {
                        "train": {"loss": 0.412, "accuracy": 0.83, "n": 450},
                        "validation": {"loss": 0.437, "accuracy": 0.82, "n": 50},
                        "epochs_run": 3,
                        "best_epoch": 3,
                        "stopped_early": False,
                        "steps": 6,
                        "learning_rate": 0.01,
                    },
                    "sha256": "1e72d373b2cb30d9e7e7da5cf3b256e7c7aeb09c64012aa3853658d42f681e39",
                    "size_bytes": 548,
                    "sparsity": 0.0,
                    "dtype": "float32",
                    "encoding": "dense",
                    "architecture": [4, 8, 1],
                    "applied_through": None,
                    "description": "weekly retrain",
                    "tags": {"reviewed": "yes"},
                    "exports": [
                        {
                            "target": "onnx",
                            "sha256": "1c484f9a724354e1b350dc384d3758649fcc9f54c6d12594b3d0f27d13818e5c",
                            "size_bytes": 991,
                            "media_type": "application/onnx",
                            "created_at": "2026-12-01T09:31:00Z",
                        }
                    ],
                    "served": {"predictions": 1000, "labelled": 800, "loss": 0.44, "accuracy": 0.81},
                    "created_at": "2026-12-01T09:30:00Z",
                }
            ]
        }
    }
    model: str
    version: int
    parent: int | None
    operation: Operation
    params: dict[str, Any]
    metrics: dict[str, Any]
    sha256: str = Field(description="sha256 of the stored blob")
    size_bytes: int
    sparsity: float
    dtype: str
    encoding: str = Field(description="Storage encoding: dense, sparse or quantized")
    architecture: list[int] = Field(description="Layer widths, input first: [input_dim, *hidden, output_dim]")
    applied_through: int | None = None
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    exports: list[dict[str, Any]] = Field(default_factory=list)
    served: ServedOut = Field(default_factory=ServedOut)
    created_at: datetime


#: Longest ``reason`` of an alias change.
REASON_MAX = 1000


class AliasPut(Strict):
    model_config = {
        "extra": "forbid",
        "json_schema_extra": {"examples": [{"version": 5, "reason": "beats v4 on last week's labels"}]},
    }
    version: int = Field(ge=1, le=2**31 - 1)
    reason: Text | None = Field(None, max_length=REASON_MAX, description="Why (kept in the alias history)")


class AliasRollback(Strict):
    model_config = {"extra": "forbid", "json_schema_extra": {"examples": [{"reason": "v7 mislabels returns"}]}}
    reason: Text | None = Field(None, max_length=REASON_MAX, description="Why (kept in the alias history)")


class AliasEntryOut(BaseModel):
    """One change of an alias: where it points since (``version``, null once deleted), where
    it pointed before (``previous``), when, by whom (a key or a job) and why."""

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "id": 42,
                    "model": "churn",
                    "alias": "production",
                    "version": 7,
                    "previous": 6,
                    "at": "2026-12-01T09:30:00Z",
                    "by": {"key_id": "9f2c61d0a4b3e8f1", "key_name": "release-bot"},
                    "reason": "beats v6 on last week's labels",
                }
            ]
        }
    }
    id: int = Field(description="Increases with every change of the model's aliases")
    model: str
    alias: str
    version: int | None
    previous: int | None
    at: datetime
    by: dict[str, Any] = Field(description='`{"key_id", "key_name"}` or `{"job": id}`')
    reason: str | None


class AliasOut(BaseModel):
    model: str
    alias: str
    version: int
    updated_at: datetime | None = None


class AliasList(BaseModel):
    items: list[AliasOut]
