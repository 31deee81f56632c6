"""The sample log's packed rows: one ``sample_batches`` row per request (or per
:data:`MAX_ROW_SAMPLES` samples), ``x`` float32 ``[count, input_dim]`` and ``y`` per task
(float32 ``[count, output_dim]`` for regression, float32 ``[count]`` in {0, 1} for binary,
int64 ``[count]`` class indices for multiclass), as raw little-endian bytes."""

from __future__ import annotations

from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.core.tables import Model, SampleBatch


def y_dtype(task: str) -> Any:
    return np.int64 if task == "multiclass" else np.float32


def unpack_batch(model: Model, b: SampleBatch) -> tuple[np.ndarray, np.ndarray]:
    """Arrays of one sample_batches row: X [count, input_dim], Y per task."""
    X = np.frombuffer(b.x, dtype=np.float32).reshape(b.count, model.input_dim)
    Y = np.frombuffer(b.y, dtype=y_dtype(model.task))
    if model.task == "regression":
        Y = Y.reshape(b.count, model.output_dim)
    return X, Y


def read_log(s: Session, model: Model, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
    """Samples with offsets first..last (inclusive) from the log, in offset order."""
    rows = s.scalars(
        sa.select(SampleBatch)
        .where(
            SampleBatch.model_id == model.id,
            SampleBatch.first_offset <= last,
            SampleBatch.first_offset + SampleBatch.count > first,
        )
        .order_by(SampleBatch.first_offset)
    )
    xs, ys = [], []
    for b in rows:
        X, Y = unpack_batch(model, b)
        lo = max(first - b.first_offset, 0)
        hi = min(last - b.first_offset + 1, b.count)
        xs.append(X[lo:hi])
        ys.append(Y[lo:hi])
    if not xs:
        return np.empty((0, model.input_dim), np.float32), np.empty((0,), y_dtype(model.task))
    return np.concatenate(xs), np.concatenate(ys)
