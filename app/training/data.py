"""Training / evaluation data for jobs: given in the request body (packed into a
blob at request time, before the submitting transaction, so the job row stays small
and the job is reproducible) or a range of the model's sample log (checked in the
submitting transaction, read when the job runs; the log is append-only)."""

from __future__ import annotations

from typing import Any

import numpy as np
import safetensors.numpy as stnp
from sqlalchemy.orm import Session

from app.core.blobs import BlobStore
from app.core.errors import Invalid
from app.core.tables import Model
from app.online.log import read_log
from app.online.samples import SampleSpec, parse_samples


def pack_samples(
    blobs: BlobStore,
    model: Model,
    samples: list[Any] | None,
    loc: list[str | int],
    *,
    min_samples: int = 1,
    field: str = "samples",
) -> dict[str, Any] | None:
    """Body samples as a job's data source: checked as ``/update`` checks them (errors at
    ``[*loc, field, i, "x" | "y"]``) and stored as a blob, before the submitting
    transaction opens. None without samples."""
    if samples is None:
        return None
    X, Y = parse_samples(SampleSpec.of(model), samples, [*loc, field])
    if len(X) < min_samples:
        raise Invalid.at([*loc, field], f"need at least {min_samples} samples, got {len(X)}")
    sha, _ = blobs.put(stnp.save({"x": X, "y": Y}))
    return {"source": "samples", "n": len(X), "_blob": sha}


def log_range(model: Model, log: Any, loc: list[str | int], *, min_samples: int = 1) -> dict[str, Any]:
    """A range of the model's sample log as a job's data source, checked against what the
    log holds (``model`` read in the submitting transaction)."""
    accepted = model.next_offset
    if accepted == 0:
        raise Invalid.at([*loc, "log"], "the model's sample log is empty")
    if log.last is not None:
        first, last = max(accepted - log.last, 0), accepted - 1
    else:
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
