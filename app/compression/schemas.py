"""Request bodies of the compression jobs: ``POST /models/{name}/prune`` and ``/quantize``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from app.core.schemas import AliasName, Strict
from app.online.schemas import Samples
from app.training.schemas import DataSource, TrainOptions

#: Default size of the "newest samples of the log" used as evaluation data.
DEFAULT_EVAL_LAST = 1000

FromRef = Annotated[int, Field(ge=1, le=2**31 - 1)] | AliasName | None


class EvalLog(Strict):
    """Evaluation data from the model's sample log: the newest ``last`` samples, or an
    inclusive offset range. ``{}`` means the newest 1000."""

    last: int | None = Field(None, ge=1, le=1_000_000, description="The newest N samples of the log")
    from_offset: int | None = Field(None, ge=0, le=2**62)
    to_offset: int | None = Field(None, ge=0, le=2**62, description="Inclusive; default: the last accepted offset")

    @model_validator(mode="after")
    def _one_form(self) -> EvalLog:
        if self.last is not None and (self.from_offset is not None or self.to_offset is not None):
            raise ValueError("give either last or from_offset / to_offset, not both")
        if self.from_offset is not None and self.to_offset is not None and self.to_offset < self.from_offset:
            raise ValueError("to_offset must be ≥ from_offset")
        return self


class EvalData(Strict):
    eval_samples: Samples | None = Field(
        None, description="Labelled samples to measure loss / accuracy before and after"
    )
    eval_log: EvalLog | None = Field(
        None,
        description=(
            "Or: evaluation samples from the model's log. Without either, the newest "
            f"{DEFAULT_EVAL_LAST} samples of the log are used when it holds any"
        ),
    )

    @model_validator(mode="after")
    def _one_eval_source(self) -> EvalData:
        if self.eval_samples is not None and self.eval_log is not None:
            raise ValueError("give at most one of eval_samples or eval_log")
        return self


class FineTune(TrainOptions, DataSource):
    """Mini-batch training after pruning, with the pruning mask kept fixed; the batch-update
    options and data source (``samples`` or ``log``)."""


class PruneIn(EvalData):
    model_config = {
        "extra": "forbid",
        "populate_by_name": True,
        "json_schema_extra": {
            "examples": [
                {"from": 3, "sparsity": 0.8, "scope": "global", "structure": "unstructured"},
                {
                    "from": "production",
                    "sparsity": 0.9,
                    "scope": "global",
                    "max_loss_increase": 0.02,
                    "fine_tune": {"log": {"from_offset": 0}, "epochs": 3, "batch_size": 64},
                    "eval_log": {"last": 1000},
                },
            ]
        },
    }

    from_: FromRef = Field(None, alias="from", description="Version number or alias to prune (default: latest)")
    sparsity: float | None = Field(
        None,
        ge=0,
        lt=1,
        allow_inf_nan=False,
        description=(
            "Share of weights zeroed (unstructured) or of hidden units removed, relative to the model's "
            "spec (neurons), in [0, 1). With max_loss_increase: the highest sparsity the search may try"
        ),
    )
    scope: Literal["layer", "global"] = Field(
        "layer", description="`layer`: each matrix to the sparsity; `global`: one threshold over all"
    )
    structure: Literal["unstructured", "neurons"] = Field(
        "unstructured", description="`neurons` removes whole hidden units, so layers really shrink"
    )
    fine_tune: FineTune | None = Field(None, description="Train after pruning, keeping pruned weights at zero")
    max_loss_increase: float | None = Field(
        None,
        ge=0,
        le=1e6,
        allow_inf_nan=False,
        description="Search for the highest sparsity whose evaluation loss rises by at most this much",
    )


class QuantizeIn(EvalData):
    model_config = {
        "extra": "forbid",
        "populate_by_name": True,
        "json_schema_extra": {
            "examples": [{"from": 3, "dtype": "int8", "scheme": "symmetric", "granularity": "per_channel"}]
        },
    }

    from_: FromRef = Field(None, alias="from", description="Version number or alias to quantize (default: latest)")
    dtype: Literal["int8", "uint8", "float16"] = "int8"
    scheme: Literal["symmetric", "asymmetric"] = Field(
        "symmetric", description="Ignored for float16. Symmetric: scale = max|W| / 127, no zero point"
    )
    granularity: Literal["per_channel", "per_tensor"] = Field(
        "per_channel", description="One scale per output row, or one per matrix. Ignored for float16"
    )
