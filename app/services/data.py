"""Training / evaluation data for jobs: given in the request body (packed into a
blob at request time, so the job row stays small and the job is reproducible) or a
range of the model's sample log (read when the job runs; the log is append-only)."""

from __future__ import annotations

from typing import Any

import numpy as np
import safetensors.numpy as stnp
import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.errors import Invalid
from app.services.samples import parse_samples
from app.store.blobs import BlobStore
from app.store.models import Model, SampleBatch


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


def prepare(
    s: Session,
    blobs: BlobStore,
    model: Model,
    *,
    samples: list[dict[str, Any]] | None,
    log: Any | None,
    loc: list[str | int],
    min_samples: int = 1,
) -> dict[str, Any]:
    """Validate a data source at request time; return its job-params description.

    Body samples are parsed (errors at ``[*loc, "samples", i, "x"]``) and stored
    as a blob; a log range is checked against what the log holds.
    """
    if samples is not None:
        X, Y = parse_samples(model.task, model.input_dim, model.output_dim, samples, [*loc, "samples"])
        if len(X) < min_samples:
            raise Invalid.at([*loc, "samples"], f"need at least {min_samples} samples, got {len(X)}")
        sha, _ = blobs.put(stnp.save({"x": X, "y": Y}))
        return {"source": "samples", "n": len(X), "_blob": sha}
    assert log is not None
    accepted = model.next_offset
    if accepted == 0:
        raise Invalid.at([*loc, "log"], "the model's sample log is empty")
    first = log.from_offset
    last = accepted - 1 if log.to_offset is None else log.to_offset
    if first >= accepted:
        raise Invalid.at([*loc, "log", "from_offset"], f"the log holds offsets 0..{accepted - 1}")
    if last >= accepted:
        raise Invalid.at([*loc, "log", "to_offset"], f"the log holds offsets 0..{accepted - 1}")
    n = last - first + 1
    if n < min_samples:
        raise Invalid.at([*loc, "log"], f"need at least {min_samples} samples, the range holds {n}")
    return {"source": "log", "from_offset": first, "to_offset": last, "n": n}


def load(s: Session, blobs: BlobStore, model: Model, desc: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The arrays described by :func:`prepare`'s answer (called by the job)."""
    if desc["source"] == "samples":
        t = stnp.load_file(str(blobs.path(desc["_blob"])))
        return t["x"], t["y"]
    return read_log(s, model, int(desc["from_offset"]), int(desc["to_offset"]))
