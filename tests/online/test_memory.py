"""Bounded learner memory, on SQLite and PostgreSQL: an idle learner is evicted (its lease
kept), the held learners stay within ``learner_memory_bytes`` (least recently active out
first, a model too big for it learned alone), and a model reloaded after eviction replays
to parameters bit-identical to an uninterrupted run; /checkpoint and /update?wait=true
work for an evicted model."""

from __future__ import annotations

import time

import numpy as np
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.context import AppContext
from app.core.tables import Learner, Version
from app.main import create_app
from app.online import learner as learner_mod
from app.online.learner import LearnerRuntime
from app.online.log import read_log
from app.registry.models import get_model
from tests.conftest import auth
from tests.online.test_learner import checkpoint, create, data, engine_run, model_params, send
from tests.online_helpers import wait_until

SPEC = {"task": "multiclass", "input_dim": 4, "output_dim": 3, "hidden": [6], "checkpoint_every": 150,
        "checkpoint_seconds": 0}  # fmt: skip


def runtime(ctx: AppContext, owner: str = "A") -> LearnerRuntime:
    return LearnerRuntime(ctx.db, ctx.settings, ctx.blobs, ctx.versions, ctx.metrics, owner=owner)


def assert_uninterrupted(ctx: AppContext, name: str) -> None:
    """The model's newest version equals the engine over its whole log from version 1, bit for bit."""
    with ctx.db.read() as s:
        m = get_model(s, name)
        latest = int(s.scalar(sa.select(sa.func.max(Version.version)).where(Version.model_id == m.id)))
        v = s.scalars(sa.select(Version).where(Version.model_id == m.id, Version.version == latest)).one()
        Xl, Yl = read_log(s, m, 0, int(v.applied_through))
    got = model_params(ctx, name, latest)
    want = engine_run(SPEC, model_params(ctx, name, 1), Xl, Yl)
    for g, w in zip(got.weights + got.biases, want.weights + want.biases, strict=True):
        np.testing.assert_array_equal(g, w)


def test_an_idle_learner_is_evicted_keeps_its_lease_and_replays_bit_identically(make_settings):
    st = make_settings(run_worker=False, run_learner=False, learner_idle_seconds=0.2)
    with TestClient(create_app(st), headers=auth()) as c:
        ctx: AppContext = c.app.state.ctx  # type: ignore[attr-defined]
        create(c, "m", **SPEC)
        X, Y = data("multiclass", 400, 4)
        send(c, "m", X[:340], Y[:340], wait=False)
        a = runtime(ctx)
        a.drain()
        assert a.held[1].applied_through == 339 and a.held[1].nbytes > 0  # checkpoints at 149 and 299
        time.sleep(0.25)
        a.run_once()  # idle past the setting: evicted
        assert not a.held and set(a.parked) == {1} and a.evictions == 1
        with ctx.db.read() as s:
            row = s.scalars(sa.select(Learner)).one()
            assert row.owner == "A" and row.applied_through == 339  # the lease is kept, the progress published
        b = runtime(ctx, "B")
        b.run_once()
        assert not b.held and not b.parked  # nobody else takes it over
        a.run_once()
        assert not a.held  # nothing to do: stays evicted
        send(c, "m", X[340:], Y[340:], wait=False)
        a.drain()  # reloads from version 3 (offset 299), replays 300..339, applies 340..399
        assert set(a.held) == {1} and a.held[1].applied_through == 399
        a._checkpoint(a.held[1], cause="test")
        assert_uninterrupted(ctx, "m")
        a.stop()
        with ctx.db.read() as s:
            assert s.scalars(sa.select(Learner)).one().owner is None  # released on stop


def test_memory_bound_holds_the_least_recently_active_out(make_settings, monkeypatch):
    monkeypatch.setattr(learner_mod, "TURN_SAMPLES", 100)  # models take turns: evicted with samples left
    monkeypatch.setattr(learner_mod, "READ_SAMPLES", 64)
    st = make_settings(run_worker=False, run_learner=False, learner_memory_bytes=1)  # smaller than any model
    with TestClient(create_app(st), headers=auth()) as c:
        ctx: AppContext = c.app.state.ctx  # type: ignore[attr-defined]
        names = ["m0", "m1", "m2"]
        for k, name in enumerate(names):
            create(c, name, **SPEC)
            X, Y = data("multiclass", 500, 4, seed=k)
            send(c, name, X, Y, wait=False)
        a = runtime(ctx)
        most = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            busy = a.run_once()
            most = max(most, len(a.held))
            if not busy and all(a._idle(h) for h in a.held.values()) and len(a.parked) == 2:
                break
        assert most == 1  # one at a time: each is too big for the bound, so learned alone
        assert a.evictions >= 2
        with ctx.db.read() as s:  # evicted with samples still to apply: a checkpoint first (progress)
            causes = [v.params.get("checkpoint") for v in s.scalars(sa.select(Version))]
        assert "evicted" in causes
        for name in names:
            with ctx.db.read() as s:
                m = get_model(s, name)
                row = s.scalars(sa.select(Learner).where(Learner.model_id == m.id)).one()
            assert row.applied_through == 499, name
            assert row.owner == "A"
        a.stop()
        b = runtime(ctx, "B")  # takes the leases over and replays each model after its newest version
        b.run_once()
        assert not b.held and len(b.parked) == 3  # claimed, loaded only when there is work
        for name in names:
            with ctx.db.read() as s:
                mid = get_model(s, name).id
            b._load(mid)
            b.drain()
            assert len(b.held) == 1 and b.held[mid].applied_through == 499
            b._checkpoint(b.held[mid], cause="test")
            assert_uninterrupted(ctx, name)
        b.stop()


def test_checkpoint_and_wait_work_for_an_evicted_model(make_settings):
    st = make_settings(run_worker=False, learner_idle_seconds=0.3)
    with TestClient(create_app(st), headers=auth()) as c:
        ctx: AppContext = c.app.state.ctx  # type: ignore[attr-defined]
        rt = ctx.learner
        assert rt is not None
        create(c, "m", **SPEC)
        X, Y = data("multiclass", 300, 4)
        send(c, "m", X[:100], Y[:100])
        wait_until(lambda: rt.parked and not rt.held, 20, "the idle learner to be evicted")
        out = send(c, "m", X[100:200], Y[100:200])  # ?wait=true reloads it
        assert out["applied"] is True and out["applied_through"] == 199
        wait_until(lambda: rt.parked and not rt.held, 20, "the idle learner to be evicted again")
        v = checkpoint(c, "m")  # a /checkpoint reloads it too
        assert v["applied_through"] == 199
        wait_until(lambda: rt.parked and not rt.held, 20, "evicted again")
        send(c, "m", X[200:], Y[200:])
        v = checkpoint(c, "m")
        assert v["applied_through"] == 299
        assert_uninterrupted(ctx, "m")
