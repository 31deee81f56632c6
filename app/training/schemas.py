"""Schemas of the training-data part shared by batch-update, prune fine-tuning and transfer."""

from __future__ import annotations

from pydantic import Field, model_validator

from app.core.schemas import AliasName, Strict
from app.online.schemas import Samples


class LogRange(Strict):
    """A range of the model's sample log; both ends inclusive. Or ``last``: the newest N
    samples when the job is queued (what a policy's pipeline wants: a range that moves)."""

    from_offset: int = Field(0, ge=0, le=2**62)
    to_offset: int | None = Field(None, ge=0, le=2**62, description="Inclusive; default: the last accepted offset")
    last: int | None = Field(None, ge=1, le=2**40, description="Or: the newest N samples (fewer if the log is shorter)")

    @model_validator(mode="after")
    def _order(self) -> LogRange:
        if self.to_offset is not None and self.to_offset < self.from_offset:
            raise ValueError("to_offset must be ≥ from_offset")
        if self.last is not None and ({"from_offset", "to_offset"} & self.model_fields_set):
            raise ValueError("give either last or from_offset / to_offset, not both")
        return self


class TrainOptions(Strict):
    """Mini-batch gradient descent options (mean gradient per batch)."""

    epochs: int = Field(5, ge=1, le=10_000)
    batch_size: int = Field(256, ge=1, le=1_000_000)
    learning_rate: float | None = Field(
        None, gt=0, le=10, allow_inf_nan=False, description="Default: the model's optimizer learning rate"
    )
    shuffle_seed: int = Field(0, ge=0, le=2**63 - 1)
    validation_fraction: float = Field(0.1, gt=0, lt=1, allow_inf_nan=False)
    early_stopping_patience: int | None = Field(None, ge=1, le=10_000)


class DataSource(Strict):
    samples: Samples | None = Field(None, description="Labelled samples")
    log: LogRange | None = Field(None, description="Or: a range of the model's sample log")

    @model_validator(mode="after")
    def _one_source(self) -> DataSource:
        if (self.samples is None) == (self.log is None):
            raise ValueError("give exactly one of samples or log")
        return self


class BatchUpdateIn(TrainOptions, DataSource):
    model_config = {
        "extra": "forbid",
        "populate_by_name": True,
        "json_schema_extra": {
            "examples": [
                {
                    "from": "production",
                    "log": {"from_offset": 0, "to_offset": 99999},
                    "epochs": 5,
                    "batch_size": 256,
                    "learning_rate": 0.01,
                    "shuffle_seed": 0,
                    "validation_fraction": 0.1,
                    "early_stopping_patience": 2,
                    "promote": "production",
                }
            ]
        },
    }

    from_: int | AliasName | None = Field(
        None, alias="from", description="Version number or alias to start from (default: latest)"
    )
    promote: AliasName | None = Field(
        None, description="Move this alias to the new version if its validation loss is not worse"
    )
    keep_sparsity: bool = Field(True, description="Keep pruned weights at zero when starting from a sparse version")
