"""Schemas of POST /models/{name}/migrate (export or transfer) and of exports."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from app.core.schemas import AliasName, ModelName, Text
from app.interop.export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from app.online.schemas import Samples
from app.registry.schemas import OptimizerSpec, Task
from app.training.schemas import LogRange, TrainOptions

Target = Literal["onnx", "torch", "npz"]

#: fields that only mean something for ``mode: transfer`` (refused with ``mode: export``)
TRANSFER_FIELDS = (
    "new_model",
    "task",
    "output_dim",
    "freeze",
    "copy_layers",
    "hidden_head",
    "seed",
    "optimizer",
    "description",
    "samples",
    "log",
    *TrainOptions.model_fields,
)


class MigrateIn(TrainOptions):
    """One body for both modes; fields of the other mode are refused (422 naming them).

    **Export** (`mode` omitted or `"export"`): `from`, `target`, `opset` (onnx only;
    ignored for torch / npz). **Transfer** (`mode: "transfer"`): `from`, `new_model`,
    `task`, `output_dim`, `freeze`, `copy_layers`, `hidden_head`, `seed`,
    `optimizer`, the data (`samples`, or `log` when the new task and output size
    equal the source's) and the batch options.
    """

    model_config = {
        "extra": "forbid",
        "populate_by_name": True,
        "json_schema_extra": {
            "examples": [
                {"from": "production", "target": "onnx", "opset": 17},
                {
                    "from": 3,
                    "mode": "transfer",
                    "new_model": "digits-parity",
                    "task": "binary",
                    "output_dim": 1,
                    "freeze": 1,
                    "samples": [{"x": [0.0, 0.5], "y": 1}],
                    "epochs": 20,
                    "batch_size": 32,
                },
            ]
        },
    }

    from_: int | AliasName | None = Field(
        None, alias="from", description="Version number or alias to migrate (default: latest)"
    )
    mode: Literal["export", "transfer"] = Field("export", description="`export` (default) or `transfer`")
    # ---- export
    target: Target | None = Field(None, description="export: `onnx`, `torch` (safetensors state dict) or `npz`")
    opset: int | None = Field(
        None,
        ge=MIN_OPSET,
        le=MAX_OPSET,
        description=f"export, onnx only: the ONNX opset ({MIN_OPSET}..{MAX_OPSET}, default {DEFAULT_OPSET}); "
        "ignored for torch and npz",
    )
    # ---- transfer
    new_model: ModelName | None = Field(None, description="transfer: name of the model to create (must not exist)")
    task: Task | None = Field(None, description="transfer: the new model's task")
    output_dim: int | None = Field(
        None, ge=1, le=100_000, description="transfer: the new head's size (default 1; required for multiclass)"
    )
    copy_layers: int | None = Field(
        None,
        ge=1,
        le=64,
        description="transfer: how many of the source's layers to copy, input side first "
        "(default: all its hidden layers, i.e. everything but its output layer)",
    )
    freeze: int | None = Field(
        None,
        ge=0,
        le=64,
        description="transfer: the first `freeze` copied layers are not trained (default: all copied)",
    )
    hidden_head: list[Annotated[int, Field(ge=1, le=1_000_000)]] = Field(
        default_factory=list,
        max_length=16,
        description="transfer: widths of new hidden layers between the copied ones and the new output layer",
    )
    seed: int = Field(0, ge=0, le=2**63 - 1, description="transfer: seed of the new layers' initialization")
    optimizer: OptimizerSpec | None = Field(None, description="transfer: default the source model's optimizer")
    description: Text | None = Field(None, max_length=10_000, description="transfer: the new model's description")
    samples: Samples | None = Field(
        None, description="transfer: labelled samples for the NEW task (x of the source's input_dim)"
    )
    log: LogRange | None = Field(
        None, description="transfer: or a range of the source's sample log (same task and output size only)"
    )


class ExportOut(BaseModel):
    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "model": "churn",
                    "version": 2,
                    "target": "onnx",
                    "sha256": "1c484f9a724354e1b350dc384d3758649fcc9f54c6d12594b3d0f27d13818e5c",
                    "size_bytes": 991,
                    "media_type": "application/onnx",
                    "filename": "churn-v2.onnx",
                    "url": "/v1/models/churn/versions/2/exports/onnx",
                    "meta": {
                        "opset": 17,
                        "job": "7d1c2a44-0b8e-4a8e-9f0a-3c6f1e2b9d10",
                        "verification": {
                            "runtime": "onnxruntime",
                            "max_abs_error": 2.4e-07,
                            "tolerance": 1e-05,
                            "probes": 64,
                        },
                    },
                    "created_at": "2026-12-01T09:31:00Z",
                }
            ]
        }
    }
    model: str
    version: int
    target: Target
    sha256: str = Field(description="sha256 of the artifact (content-addressed in the blob store)")
    size_bytes: int
    media_type: str
    filename: str
    url: str = Field(description="Where to download it")
    meta: dict[str, Any] = Field(description="opset, verification (max_abs_error, tolerance, probes), job id …")
    created_at: datetime


class ExportList(BaseModel):
    items: list[ExportOut]
