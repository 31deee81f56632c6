"""``app.online.service``: the group commit of sample appends, on both databases."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from app.context import AppContext
from app.core.migrations import upgrade
from app.online.service import OnlineService, Target
from app.registry.schemas import ModelCreate

WAIT_MS = 400.0


@pytest.fixture
def ctx(make_settings):  # type: ignore[no-untyped-def]
    settings = make_settings(run_worker=False, run_learner=False, ingest_group_wait_ms=WAIT_MS)
    upgrade(settings.url)
    c = AppContext.build(settings)
    yield c
    c.close()


@pytest.fixture
def svc(ctx) -> OnlineService:  # type: ignore[no-untyped-def]
    return ctx.online


@pytest.fixture
def target(ctx) -> Target:  # type: ignore[no-untyped-def]
    ctx.models.create(ModelCreate(name="g", task="binary", input_dim=3))
    return ctx.online.target("g")


def samples(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3)).astype(np.float32), (rng.random(n) > 0.5).astype(np.float32)


def record_batches(svc: OnlineService) -> list[int]:
    sizes: list[int] = []
    commit = svc._commit

    def counting(batch):  # type: ignore[no-untyped-def]
        sizes.append(len(batch))
        return commit(batch)

    svc._commit = counting  # type: ignore[method-assign]
    return sizes


def test_an_announced_append_joins_the_waiting_commit(svc, target):
    sizes = record_batches(svc)
    later = svc.announce()  # a request still reading its body
    out: dict[str, dict] = {}
    first = threading.Thread(target=lambda: out.setdefault("a", svc.append(target, *samples(3, 1))))
    first.start()
    time.sleep(0.05)  # the first append waits for the announced one …
    assert "a" not in out
    out["b"] = svc.append(target, *samples(2, 2), announced=later)  # … which joins its transaction
    first.join(5)
    assert sizes == [2]
    assert (out["a"]["first_offset"], out["a"]["last_offset"]) == (0, 2)
    assert (out["b"]["first_offset"], out["b"]["last_offset"]) == (3, 4)
    assert not svc._announced


def test_a_withdrawn_announcement_ends_the_wait_at_once(svc, target):
    sizes = record_batches(svc)
    gone = svc.announce()
    t0 = time.monotonic()
    timer = threading.Timer(0.05, svc.withdraw, args=(gone,))
    timer.start()
    a = svc.append(target, *samples(3, 3))
    waited = time.monotonic() - t0
    assert a["accepted"] == 3 and sizes == [1]
    assert 0.04 <= waited < WAIT_MS / 1000 * 0.75  # ended by the withdrawal, not the time limit
    svc.withdraw(gone)  # idempotent
    assert not svc._announced


def test_the_wait_is_bounded_and_later_announcements_are_not_awaited(svc, target):
    stuck = svc.announce()
    t0 = time.monotonic()
    a = svc.append(target, *samples(1, 4))
    assert a["accepted"] == 1
    assert WAIT_MS / 1000 * 0.9 <= time.monotonic() - t0 < 5  # waited for `stuck`, up to the limit
    svc.withdraw(stuck)
    assert not svc._announced


def test_appends_announced_after_the_wait_began_are_not_awaited(svc, target):
    sizes = record_batches(svc)
    coming = svc.announce()
    done: dict[str, float] = {}
    t0 = time.monotonic()

    def first() -> None:
        svc.append(target, *samples(2, 6))
        done["first"] = time.monotonic() - t0

    th = threading.Thread(target=first)
    th.start()
    time.sleep(0.05)
    late = svc.announce()  # announced while the commit waits: it does not extend the wait
    time.sleep(0.05)
    svc.append(target, *samples(1, 7), announced=coming)
    th.join(5)
    assert sizes == [2]
    assert done["first"] < WAIT_MS / 1000 * 0.75, done
    svc.withdraw(late)


def test_nothing_announced_commits_at_once(svc, target):
    t0 = time.monotonic()
    for k in range(5):
        svc.append(target, *samples(1, 10 + k))
    assert time.monotonic() - t0 < WAIT_MS / 1000


def hold_first_commit(svc: OnlineService) -> tuple[threading.Event, threading.Event, list[int]]:
    """Make the committer stop inside its first commit until ``release`` is set (``inside``
    is set once it is there); returns (inside, release, sizes of every committed batch)."""
    inside, release = threading.Event(), threading.Event()
    sizes: list[int] = []
    commit = svc._commit

    def held(batch):  # type: ignore[no-untyped-def]
        if not sizes:
            inside.set()
            assert release.wait(10)
        sizes.append(len(batch))
        return commit(batch)

    svc._commit = held  # type: ignore[method-assign]
    return inside, release, sizes


def test_appends_queued_during_a_commit_are_committed_together_next(svc, target):
    """A request queues its append on the event loop (``submit``); the committer takes
    everything queued while it was committing into its next transaction."""
    inside, release, sizes = hold_first_commit(svc)
    first = svc.submit(target, *samples(1, 19))
    assert inside.wait(10)
    a, b = svc.submit(target, *samples(2, 20)), svc.submit(target, *samples(3, 21))
    release.set()
    assert svc.committed(first)["last_offset"] == 0
    assert svc.committed(a)["last_offset"] == 2
    assert svc.committed(b) == {"accepted": 3, "first_offset": 3, "last_offset": 5, "duplicate": False}
    assert sizes == [1, 2]


def carry_three(svc: OnlineService, target: Target) -> list[int]:
    """Make the committer's last commit carry 3 appends; returns the recorded batch sizes."""
    inside, release, sizes = hold_first_commit(svc)
    first = svc.submit(target, *samples(1, 40))
    assert inside.wait(10)
    queued = [svc.submit(target, *samples(1, 41 + k)) for k in range(3)]
    release.set()
    for append in (first, *queued):
        svc.committed(append)
    assert sizes == [1, 3]
    return sizes


def test_the_next_commit_waits_for_as_many_appends_as_the_last_carried(svc, target):
    """Clients answered together come back together: the first of them to arrive waits
    (bounded) for the others, so the three share one commit again instead of going 1 + 2."""
    sizes = carry_three(svc, target)
    t0 = time.monotonic()
    lone = svc.submit(target, *samples(1, 50))
    time.sleep(0.05)
    assert not lone.done  # waiting for company
    rest = [svc.submit(target, *samples(1, 51 + k)) for k in range(2)]
    offsets = [svc.committed(a)["first_offset"] for a in (lone, *rest)]
    assert offsets == [4, 5, 6]
    assert sizes == [1, 3, 3]
    assert time.monotonic() - t0 < WAIT_MS / 1000 * 0.75  # ended by the third append, not the limit


def test_the_wait_for_company_is_bounded_and_follows_the_load_down(svc, target):
    """When fewer clients come back, the lone append commits once the group wait is over;
    from then on each commit expects one append and none waits."""
    sizes = carry_three(svc, target)
    t0 = time.monotonic()
    assert svc.append(target, *samples(1, 60))["first_offset"] == 4
    assert WAIT_MS / 1000 * 0.9 <= time.monotonic() - t0 < 5
    t0 = time.monotonic()
    for k in range(3):
        svc.append(target, *samples(1, 61 + k))
    assert time.monotonic() - t0 < WAIT_MS / 1000
    assert sizes == [1, 3, 1, 1, 1, 1]


def test_no_group_wait_commits_at_once_whatever_the_last_commit_carried(make_settings):
    settings = make_settings(run_worker=False, run_learner=False, ingest_group_wait_ms=0)
    upgrade(settings.url)
    c = AppContext.build(settings)
    try:
        c.models.create(ModelCreate(name="g", task="binary", input_dim=3))
        t = c.online.target("g")
        carry_three(c.online, t)
        t0 = time.monotonic()
        assert c.online.append(t, *samples(1, 70))["first_offset"] == 4
        assert time.monotonic() - t0 < 1
    finally:
        c.close()


def test_a_commit_stores_each_models_appends_as_one_row(ctx, svc, target):
    """Appends a group commit carries for one model have contiguous offsets: one row each
    model, read back as the requests' samples in offset order."""
    import sqlalchemy as sa

    from app.core.tables import Model, SampleBatch
    from app.online.log import read_log

    ctx.models.create(ModelCreate(name="h", task="binary", input_dim=3))
    other = svc.target("h")
    inside, release, sizes = hold_first_commit(svc)
    first = svc.submit(target, *samples(1, 80))
    assert inside.wait(10)
    parts = [(target, samples(2, 81)), (other, samples(3, 82)), (target, samples(1, 83)), (other, samples(4, 84))]
    appends = [svc.submit(t, *xy) for t, xy in parts]
    release.set()
    answers = [svc.committed(a) for a in (first, *appends)]
    assert sizes == [1, 4]
    assert [(a["first_offset"], a["last_offset"]) for a in answers] == [(0, 0), (1, 2), (0, 2), (3, 3), (3, 6)]
    with ctx.db.read() as s:
        rows = s.execute(sa.select(SampleBatch.model_id, SampleBatch.first_offset, SampleBatch.count)).all()
        assert sorted(rows) == sorted([(target.model_id, 0, 1), (target.model_id, 1, 3), (other.model_id, 0, 7)])
        for t, lo, hi, got in ((target, 1, 3, [0, 2]), (other, 0, 6, [1, 3])):
            X, Y = read_log(s, s.get(Model, t.model_id), lo, hi)
            np.testing.assert_array_equal(X, np.concatenate([parts[k][1][0] for k in got]))
            np.testing.assert_array_equal(Y, np.concatenate([parts[k][1][1] for k in got]))


def test_an_append_is_awaited_on_the_event_loop_without_a_thread(svc, target):
    import asyncio

    async def go() -> dict:
        loop = asyncio.get_running_loop()
        return await svc.wait_committed(svc.submit(target, *samples(2, 30), loop=loop))

    assert asyncio.run(go()) == {"accepted": 2, "first_offset": 0, "last_offset": 1, "duplicate": False}


def test_an_abandoned_append_is_never_committed(svc, target):
    inside, release, _ = hold_first_commit(svc)
    first = svc.submit(target, *samples(1, 22))
    assert inside.wait(10)
    gone = svc.submit(target, *samples(4, 22))
    svc.abandon(gone)
    release.set()
    assert svc.committed(first)["first_offset"] == 0
    assert svc.append(target, *samples(1, 23))["first_offset"] == 1  # the abandoned offsets were never taken
    assert not gone.done
    with pytest.raises(RuntimeError, match="abandoned"):
        svc.committed(gone)


def test_a_failed_commit_fails_its_batch_and_is_not_retried(svc, target, monkeypatch):
    """A COMMIT that raises may have committed: retrying job by job could append twice."""
    from contextlib import contextmanager

    real = svc._unit
    calls = {"write": 0}

    @contextmanager
    def failing_write():  # type: ignore[no-untyped-def]
        calls["write"] += 1
        with real() as conn:
            yield conn
            raise RuntimeError("commit failed")

    svc._last_purge = time.monotonic()  # no housekeeping write in this test
    inside, release, _ = hold_first_commit(svc)
    before = svc.submit(target, *samples(1, 23))
    assert inside.wait(10)
    monkeypatch.setattr(svc, "_unit", failing_write)
    a, b = svc.submit(target, *samples(1, 24)), svc.submit(target, *samples(1, 25))
    release.set()  # the held commit fails too (it opens its transaction after the patch)
    with pytest.raises(RuntimeError, match="commit failed"):
        svc.committed(before)
    with pytest.raises(RuntimeError, match="commit failed"):
        svc.committed(a)
    with pytest.raises(RuntimeError, match="commit failed"):
        svc.committed(b)
    assert calls["write"] == 2  # one per batch, never one per append
    monkeypatch.setattr(svc, "_unit", real)
    assert svc.append(target, *samples(1, 26))["first_offset"] == 0  # nothing of the batch was stored
