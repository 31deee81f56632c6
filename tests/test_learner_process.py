"""``STEWARD_LEARNER_PROCESS``: the learner runtime in a child process of the API process,
on both databases — samples are applied (``?wait=true``), ``/checkpoint`` answers with
the version it made and predict serves it at once, a killed learner process is replaced
and the model is learned again (after its lease expires), and stopping the app stops the
child and releases its leases."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.main import create_app
from tests.api_helpers import create_model
from tests.conftest import auth

SAMPLES = [{"x": [float(i % 3), 1.0, -1.0], "y": float(i % 2)} for i in range(30)]


def _child() -> multiprocessing.process.BaseProcess:
    """The learner process (a child of this test process, which runs the app)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        alive = [p for p in multiprocessing.active_children() if p.name == "steward-learner"]
        if alive:
            assert len(alive) == 1
            return alive[0]
        time.sleep(0.05)
    raise AssertionError("no learner process")


def _owners(url: str) -> list[str | None]:
    eng = sa.create_engine(url)
    try:
        with eng.connect() as conn:
            return list(conn.execute(sa.text("SELECT owner FROM learners")).scalars().all())
    finally:
        eng.dispose()


def test_the_learner_runs_in_a_child_process(make_settings):
    settings = make_settings(learner_process=True, learner_lease_seconds=2.0, run_worker=False)
    with TestClient(create_app(settings), headers=auth()) as c:
        child = _child()
        assert child.pid != os.getpid()
        assert c.app.state.ctx.learner is None  # type: ignore[attr-defined]  # no learner thread here
        create_model(c, task="binary")
        r = c.post("/v1/models/m/update?wait=true&timeout=60", json={"samples": SAMPLES})
        assert r.status_code == 202 and r.json()["applied"] is True, r.text
        assert [o.split(":")[1] for o in _owners(settings.url) if o] == [str(child.pid)]
        r = c.post("/v1/models/m/checkpoint?timeout=60")
        assert r.status_code == 201, r.text
        v = r.json()["version"]
        assert c.post("/v1/models/m/predict", json={"inputs": [[0.0, 1.0, 2.0]]}).json()["version"] == v

        os.kill(child.pid, signal.SIGKILL)  # a crash: the watcher starts another, which takes the lease over
        child.join(10)
        second = _child()
        assert second.pid != child.pid
        r = c.post("/v1/models/m/update?wait=true&timeout=60", json={"samples": SAMPLES})
        assert r.status_code == 202 and r.json()["applied"] is True, r.text
        assert r.json()["applied_through"] == 2 * len(SAMPLES) - 1
        assert [o.split(":")[1] for o in _owners(settings.url) if o] == [str(second.pid)]
    assert not second.is_alive()  # stopped with the app
    assert _owners(settings.url) == [None]  # and its lease released
