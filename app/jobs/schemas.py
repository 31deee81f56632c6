"""Job schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

JobKind = Literal["batch_update", "prune", "quantize", "migrate", "pipeline"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]


#: The params of an example batch-update job (its version shows them too).
BATCH_PARAMS_EXAMPLE: dict[str, Any] = {
    "from": "latest",
    "from_version": 1,
    "data": {"source": "log", "from_offset": 100, "to_offset": 599, "n": 500},
    "epochs": 3,
    "batch_size": 256,
    "learning_rate": None,
    "shuffle_seed": 0,
    "validation_fraction": 0.1,
    "early_stopping_patience": None,
    "promote": "production",
    "keep_sparsity": True,
}


class JobOut(BaseModel):
    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "id": "19101ab0-34bf-4d72-bb37-c97e3ea251ac",
                    "kind": "batch_update",
                    "model": "churn",
                    "parent_job": None,
                    "step": None,
                    "status": "succeeded",
                    "progress": 1.0,
                    "attempts": 1,
                    "max_attempts": 3,
                    "cancel_requested": False,
                    "params": BATCH_PARAMS_EXAMPLE,
                    "result": {
                        "version": 2,
                        "from_version": 1,
                        "train": {"loss": 0.412, "accuracy": 0.83, "n": 450},
                        "validation": {"loss": 0.437, "accuracy": 0.82, "n": 50, "alias_loss": 0.512},
                        "epochs_run": 3,
                        "best_epoch": 3,
                        "promote": "production",
                        "promoted": True,
                        "promotion_reason": "validation loss 0.437 ≤ 0.512 of version 1 on the same 50 samples",
                        "previous_version": 1,
                    },
                    "error": None,
                    "created_at": "2026-12-01T09:29:58Z",
                    "started_at": "2026-12-01T09:29:58Z",
                    "finished_at": "2026-12-01T09:30:00Z",
                }
            ]
        }
    }
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
