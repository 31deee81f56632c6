"""Cache generations (app.core.db) and the process-local read caches (app.core.cache), on
both databases: a commit that changes a subject bumps the shared counter and marks the
subject; this process drops it at once, another process at its next poll; a fill that
raced an invalidation is refused."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from app.core.cache import Caches
from app.core.db import KEYS_SUBJECT, Database, mark_changed, model_subject, read_generation, read_marks
from app.core.migrations import upgrade


@pytest.fixture
def two(db_url):
    """Two processes' worth of database engines and caches on one database."""
    upgrade(db_url)
    a, b = Database(db_url), Database(db_url)
    yield (a, Caches(a, refresh_seconds=60)), (b, Caches(b, refresh_seconds=60))
    a.dispose()
    b.dispose()


def generation(db: Database) -> int:
    with db.read() as s:
        return read_generation(s)


def test_a_marked_commit_bumps_the_generation_and_marks_its_subjects(two):
    (db, _), _ = two
    seen: list[tuple[set[str], int]] = []
    db.on_changes.append(lambda subjects, g: seen.append((subjects, g)))
    g0 = generation(db)
    with db.write() as s:
        mark_changed(s, model_subject(7))
        mark_changed(s, KEYS_SUBJECT)
        mark_changed(s, model_subject(7))
    assert generation(db) == g0 + 1
    assert seen == [({"model:7", "keys"}, g0 + 1)]
    with db.write() as s:
        mark_changed(s, model_subject(8))
    with db.read() as s:
        assert sorted(read_marks(s, g0)) == [("keys", g0 + 1), ("model:7", g0 + 1), ("model:8", g0 + 2)]
        assert read_marks(s, g0 + 1) == [("model:8", g0 + 2)]


def test_an_unmarked_or_rolled_back_unit_of_work_bumps_nothing(two):
    (db, _), _ = two
    seen: list[object] = []
    db.on_changes.append(lambda *a: seen.append(a))
    g0 = generation(db)
    with db.write() as s:
        s.execute(sa.text("SELECT 1"))
    with pytest.raises(RuntimeError), db.write() as s:
        mark_changed(s, model_subject(1))
        raise RuntimeError("abort")
    with db.write() as s:  # the aborted unit's mark does not leak into the next one
        pass
    assert generation(db) == g0
    assert seen == []


def test_this_process_drops_a_changed_subject_at_once_and_keeps_the_rest(two):
    (db, caches), _ = two
    store = caches.store(100)
    store.put("m7", "seven", model_subject(7), caches.epoch())
    store.put("m8", "eight", model_subject(8), caches.epoch())
    store.put("k", "key", KEYS_SUBJECT, caches.epoch())
    with db.write() as s:
        mark_changed(s, model_subject(7))
    assert store.get("m7") is None
    assert store.get("m8") == "eight" and store.get("k") == "key"
    assert caches.poll() is False  # its own commit needs no poll


def test_another_process_drops_a_changed_subject_at_its_next_poll(two):
    (db_a, _), (_, caches_b) = two
    store = caches_b.store(100)
    store.put("m7", "seven", model_subject(7), caches_b.epoch())
    store.put("m8", "eight", model_subject(8), caches_b.epoch())
    with db_a.write() as s:
        mark_changed(s, model_subject(7))
    assert store.get("m7") == "seven"  # stale until B polls: the bounded staleness
    assert caches_b.poll() is True
    assert store.get("m7") is None and store.get("m8") == "eight"
    assert caches_b.poll() is False
    with db_a.write() as s:
        mark_changed(s, KEYS_SUBJECT)
    with db_a.write() as s:
        mark_changed(s, model_subject(8))
    assert caches_b.poll() is True
    assert store.get("m8") is None


def test_a_fill_that_raced_an_invalidation_is_refused(two):
    (db, caches), _ = two
    store = caches.store(100)
    epoch = caches.epoch()  # a reader takes the epoch, then reads the old state …
    with db.write() as s:  # … a writer commits a change meanwhile …
        mark_changed(s, model_subject(3))
    store.put("m3", "old", model_subject(3), epoch)  # … and the old state is not cached
    assert store.get("m3") is None
    store.put("m3", "new", model_subject(3), caches.epoch())
    assert store.get("m3") == "new"


def test_the_poller_thread_applies_other_processes_changes(two):
    (db_a, _), (db_b, _) = two
    caches_b = Caches(db_b, refresh_seconds=0.02)
    store = caches_b.store(10)
    store.put("m1", "one", model_subject(1), caches_b.epoch())
    stop = caches_b.start()
    try:
        with db_a.write() as s:
            mark_changed(s, model_subject(1))
        dropped = threading.Event()
        for _ in range(500):  # bounded wait (10 s), not a timing assertion
            if store.get("m1") is None:
                dropped.set()
                break
            threading.Event().wait(0.02)
        assert dropped.is_set()
    finally:
        stop()


def test_a_store_keeps_at_most_its_bound_oldest_out_first(two):
    (_, caches), _ = two
    store = caches.store(3)
    for i in range(5):
        store.put(i, i, model_subject(i), caches.epoch())
    assert len(store) == 3
    assert [store.get(i) for i in range(5)] == [None, None, 2, 3, 4]
