"""``app.main``: process-wide settings the lifespan applies and undoes."""

from __future__ import annotations

import gc
import weakref

from fastapi.testclient import TestClient

from app.main import GC_GEN0_THRESHOLD, create_app, tune_gc
from tests.conftest import auth


def test_tune_gc_freezes_start_up_objects_and_is_undone() -> None:
    before = gc.get_threshold()
    restore = tune_gc()
    try:
        assert gc.get_threshold() == (GC_GEN0_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 1000  # the modules, app and libraries loaded so far

        class Node:
            pass

        node = Node()
        node.me = node  # type: ignore[attr-defined]  # a cycle made after the freeze
        alive = weakref.ref(node)
        del node
        gc.collect()
        assert alive() is None  # cyclic garbage is still collected
    finally:
        restore()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_the_lifespan_tunes_gc_when_asked(make_settings) -> None:  # type: ignore[no-untyped-def]
    before = gc.get_threshold()
    with TestClient(create_app(make_settings(gc_tuning=True)), headers=auth()) as c:
        assert gc.get_threshold()[0] == GC_GEN0_THRESHOLD
        assert gc.get_freeze_count() > 0
        assert c.get("/healthz").status_code == 200
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    with TestClient(create_app(make_settings()), headers=auth()):
        assert gc.get_threshold() == before  # the test default: off
