"""``app.online.log``: the packed rows of the sample log, written by appends and read back by
the one reader (jobs through ``read_log``, the learner through ``read_rows`` and ``take``), on
both databases."""

from __future__ import annotations

import numpy as np
import pytest

from app.context import AppContext
from app.core.migrations import upgrade
from app.online import log
from app.online.repository import SampleRepository
from app.online.samples import SampleSpec
from app.registry.models import get_model
from app.registry.schemas import ModelCreate

SPECS = [SampleSpec("binary", 3, 1), SampleSpec("multiclass", 3, 4), SampleSpec("regression", 3, 2)]


def packed(spec: SampleSpec, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, spec.input_dim)).astype(np.float32)
    if spec.task == "binary":
        return X, (rng.random(n) > 0.5).astype(np.float32)
    if spec.task == "multiclass":
        return X, rng.integers(0, spec.output_dim, n).astype(np.int64)
    return X, rng.standard_normal((n, spec.output_dim)).astype(np.float32)


class Row:
    """A stand-in for a ``sample_batches`` row."""

    def __init__(self, d: dict) -> None:
        self.__dict__.update(d)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.task)
def test_packed_rows_unpack_to_the_same_arrays(spec: SampleSpec) -> None:
    X, Y = packed(spec, 10, 1)
    rows = log.pack_rows(7, 100, X, Y, max_rows=4)
    assert [(r["model_id"], r["first_offset"], r["count"]) for r in rows] == [(7, 100, 4), (7, 104, 4), (7, 108, 2)]
    parts = [log.unpack_row(spec, Row(r)) for r in rows]  # type: ignore[arg-type]
    assert [(p.first, p.end) for p in parts] == [(100, 104), (104, 108), (108, 110)]
    for lo, hi in ((100, 109), (101, 106), (104, 107), (109, 109)):
        Xt, Yt = log.take(parts, lo, hi)
        assert Xt.tobytes() == X[lo - 100 : hi - 99].tobytes() and Xt.dtype == np.float32
        assert Yt.tobytes() == Y[lo - 100 : hi - 99].tobytes() and Yt.dtype == Y.dtype and Yt.shape[1:] == Y.shape[1:]
    X1, _ = log.take(parts[1:2], 105, 106)
    assert not X1.flags.writeable  # a view of the row's bytes
    X2, _ = log.take(parts[1:2], 105, 106, copy=True)
    assert X2.flags.writeable and X2.tobytes() == X1.tobytes()


@pytest.fixture
def ctx(make_settings):  # type: ignore[no-untyped-def]
    settings = make_settings(run_worker=False, run_learner=False)
    upgrade(settings.url)
    c = AppContext.build(settings)
    yield c
    c.close()


def test_read_log_returns_what_the_appends_wrote(ctx) -> None:  # type: ignore[no-untyped-def]
    ctx.models.create(ModelCreate(name="r", task="regression", input_dim=3, output_dim=2))
    t = ctx.online.target("r")
    X, Y = packed(t.spec, 25, 2)
    for lo, hi in ((0, 7), (7, 8), (8, 25)):
        ctx.online.append(t, X[lo:hi], Y[lo:hi])
    with ctx.db.read() as s:
        m = get_model(s, "r")
        for lo, hi in ((0, 24), (3, 12), (8, 8), (20, 24)):
            Xr, Yr = log.read_log(s, m, lo, hi)
            assert Xr.tobytes() == X[lo : hi + 1].tobytes() and Yr.tobytes() == Y[lo : hi + 1].tobytes()
            assert Xr.flags.writeable
        Xe, Ye = log.read_log(s, m, 0, -1)
        assert Xe.shape == (0, 3) and Ye.shape == (0, 2) and Ye.dtype == np.float32
        rows = log.read_rows(s, t.spec, m.id, 3, 12)
        assert [(r.first, r.end) for r in rows] == [(0, 7), (7, 8), (8, 25)]
        with pytest.raises(RuntimeError, match="no offset 25"):
            log.read_rows(s, t.spec, m.id, 20, 30)


def test_a_missing_row_is_an_error_not_a_short_read(ctx) -> None:  # type: ignore[no-untyped-def]
    ctx.models.create(ModelCreate(name="g", task="binary", input_dim=3))
    t = ctx.online.target("g")
    X, Y = packed(t.spec, 6, 3)
    with ctx.db.write() as s:  # rows 0..2 and 4..5: offset 3 is missing
        SampleRepository(s).add_rows(log.pack_rows(t.model_id, 0, X[:3], Y[:3], max_rows=10))
        SampleRepository(s).add_rows(log.pack_rows(t.model_id, 4, X[4:], Y[4:], max_rows=10))
    with ctx.db.read() as s:
        m = get_model(s, "g")
        assert log.read_log(s, m, 0, 2)[0].tobytes() == X[:3].tobytes()
        with pytest.raises(RuntimeError, match="no offset 3"):
            log.read_log(s, m, 1, 5)
