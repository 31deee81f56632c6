"""The sample log's packed rows: how samples are stored and the one way they are read back.

A ``sample_batches`` row holds the samples with offsets ``first_offset ..
first_offset + count − 1`` of one model: one row per group commit and model (the
``/update`` requests it carried), or per :data:`app.online.service.MAX_ROW_SAMPLES`
samples of more. ``x`` is float32
``[count, input_dim]`` and ``y`` the packed labels of :mod:`app.online.samples` (float32
``[count, output_dim]`` for regression, float32 ``[count]`` in {0, 1} for binary, int64
``[count]`` class indices for multiclass), both as raw little-endian bytes in C order.

:func:`pack_rows` makes the rows an append inserts; :func:`read_rows` reads back the rows
covering an offset range (its query is :meth:`SampleRepository.covering`) and :func:`take`
cuts the range out of them. :func:`read_log` is the two together: what jobs read. The online
learner calls the two itself so it can keep the last row for its next read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app.core.tables import utcnow
from app.online.repository import SampleRepository
from app.online.samples import SampleSpec


@dataclass(frozen=True)
class LogRows:
    """The unpacked samples of one ``sample_batches`` row: offsets ``first .. end − 1``."""

    first: int
    X: np.ndarray
    Y: np.ndarray

    @property
    def end(self) -> int:
        return self.first + len(self.X)


def pack_rows(model_id: int, first_offset: int, X: np.ndarray, Y: np.ndarray, *, max_rows: int) -> list[dict[str, Any]]:
    """``sample_batches`` rows (for :meth:`SampleRepository.add_rows`) holding the packed
    samples ``X`` / ``Y`` at offsets ``first_offset ..``, at most ``max_rows`` samples each."""
    now = utcnow()
    out = []
    for lo in range(0, len(X), max_rows):
        hi = min(lo + max_rows, len(X))
        out.append(
            {
                "model_id": model_id,
                "first_offset": first_offset + lo,
                "count": hi - lo,
                "x": np.ascontiguousarray(X[lo:hi]).tobytes(),
                "y": np.ascontiguousarray(Y[lo:hi]).tobytes(),
                "created_at": now,
            }
        )
    return out


def unpack_row(spec: SampleSpec, row: Any) -> LogRows:
    """The arrays of one ``sample_batches`` row (a :class:`SampleBatch` or a row with its
    ``first_offset``, ``count``, ``x``, ``y``), as read-only views of its bytes."""
    X = np.frombuffer(row.x, dtype=np.float32).reshape(row.count, spec.input_dim)
    Y = np.frombuffer(row.y, dtype=spec.y_dtype).reshape(row.count, *spec.y_shape)
    return LogRows(int(row.first_offset), X, Y)


def read_rows(s: Session, spec: SampleSpec, model_id: int, lo: int, hi: int) -> list[LogRows]:
    """The rows holding offsets ``lo..hi`` (inclusive, ``lo ≤ hi``), unpacked, in offset
    order. A missing offset (the log is append-only: it cannot happen) is a RuntimeError."""
    rows = [unpack_row(spec, b) for b in SampleRepository(s).covering(model_id, lo, hi)]
    at = lo
    for r in rows:
        if r.first > at:
            break
        at = max(at, r.end)
    if at <= hi:
        raise RuntimeError(f"the sample log of model {model_id} has no offset {at}")
    return rows


def take(rows: list[LogRows], lo: int, hi: int, *, copy: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Samples ``lo..hi`` (inclusive) out of ``rows`` (in offset order, covering them): a
    read-only view of a row's bytes when one row holds them all, unless ``copy``."""
    xs, ys = [], []
    for r in rows:
        a, b = max(lo - r.first, 0), min(hi - r.first + 1, len(r.X))
        if a < b:
            xs.append(r.X[a:b])
            ys.append(r.Y[a:b])
    if len(xs) == 1 and not copy:
        return xs[0], ys[0]
    return np.concatenate(xs), np.concatenate(ys)


def read_log(s: Session, model: Any, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Samples with offsets ``lo..hi`` (inclusive) of ``model``'s log, in offset order, as
    new packed arrays (empty when ``hi < lo``)."""
    spec = SampleSpec.of(model)
    if hi < lo:
        return np.empty((0, spec.input_dim), np.float32), np.empty((0, *spec.y_shape), spec.y_dtype)
    return take(read_rows(s, spec, model.id, lo, hi), lo, hi, copy=True)
