"""Drift through the API, on SQLite and PostgreSQL: the learner publishes its drift block on
the model answer (``GET /models/{name}``), ``/metrics`` shows it, and
``POST /models/{name}/drift/reset`` starts detection again. (The detectors' numbers —
stable, drift and a listed feature within the contract's sample counts — are tested on the
learner in tests/engine/test_drift.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.api_helpers import assert_problem
from tests.conftest import auth
from tests.online.test_learner import create
from tests.online_helpers import wait_until

NDJSON = {"Content-Type": "application/x-ndjson"}


@pytest.fixture
def lc(make_settings):  # type: ignore[no-untyped-def]
    with TestClient(create_app(make_settings(run_worker=False)), headers=auth()) as c:
        yield c


def stream(n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    y = (X[:, 0] - X[:, 1] > 0).astype(np.int64)
    X[:, 3] += shift
    return X, y


def send(c: TestClient, X: np.ndarray, Y: np.ndarray) -> None:
    lines = "".join(f'{{"x": {x.tolist()}, "y": {int(y)}}}\n' for x, y in zip(X, Y, strict=True))
    r = c.post("/v1/models/m/update?wait=true&timeout=60", content=lines, headers=NDJSON)
    assert r.status_code == 202 and r.json()["applied"], r.text


def drift(c: TestClient) -> dict:
    return c.get("/v1/models/m").json()["drift"]


def test_the_drift_block_the_metrics_and_a_reset(lc):
    create(lc, "m", task="binary", input_dim=4, hidden=[], optimizer={"kind": "sgd", "learning_rate": 0.05})
    assert drift(lc)["status"] == "stable" and drift(lc)["checked_through"] is None
    send(lc, *stream(3000, 1))
    wait_until(lambda: drift(lc)["checked_through"] == 2999, 30, "the drift block through 2999")
    d = drift(lc)
    assert d["status"] == "stable" and d["inputs"] == [] and d["reference"]["ready"]
    assert d["loss"]["detector"] == "ADWIN" and d["loss"]["width"] > 0
    send(lc, *stream(1500, 2, shift=3.0))  # feature 3 moves by 3σ
    wait_until(lambda: drift(lc)["checked_through"] == 4499, 30, "the drift block through 4499")
    d = drift(lc)
    assert d["status"] == "warning" and d["inputs"][0]["index"] == 3 and d["inputs"][0]["score"] > 0.2
    assert d["since_offset"] >= 3000 and d["transitions"][-1]["status"] == "warning"
    text = lc.get("/metrics").text
    assert 'steward_model_drift{model="m"} 1.0' in text
    assert 'steward_model_drifting_inputs{model="m"} 1.0' in text
    after = lc.post("/v1/models/m/drift/reset")
    assert after.status_code == 200 and after.json()["drift"]["status"] == "stable"
    send(lc, *stream(600, 3, shift=3.0))
    wait_until(lambda: drift(lc)["checked_through"] == 5099, 30, "the drift block through 5099")
    d = drift(lc)  # a new reference is being taken: the shifted inputs are the new normal
    assert d["status"] == "stable" and d["inputs"] == [] and not d["reference"]["ready"]


def test_reset_needs_scope_maintain(lc):
    create(lc, "m", task="binary", input_dim=4, hidden=[])
    key = lc.post("/v1/keys", json={"name": "i", "scope": "ingest"}).json()["key"]
    assert_problem(lc.post("/v1/models/m/drift/reset", headers={"Authorization": f"Bearer {key}"}), 403)
    assert_problem(lc.post("/v1/models/nope/drift/reset"), 404)


def test_each_transition_to_drift_is_one_event(lc):
    """An abrupt change of the labelling rule turns the status to ``drift``; each transition
    to ``drift`` the learner published is one ``model.drift`` event, never repeated."""
    create(lc, "m", task="binary", input_dim=4, hidden=[], optimizer={"kind": "sgd", "learning_rate": 0.01})
    send(lc, *stream(6000, 1))
    X, y = stream(3000, 4)
    send(lc, X, 1 - y)  # the rule flips at offset 6000
    wait_until(lambda: drift(lc)["checked_through"] == 8999, 30, "the drift block through 8999")
    assert drift(lc)["status"] == "drift"
    send(lc, *stream(500, 5))  # more publishing: no event again for the same transitions
    wait_until(lambda: drift(lc)["checked_through"] == 9499, 30, "the drift block through 9499")
    to_drift = [t for t in drift(lc)["transitions"] if t["status"] == "drift"]
    events = lc.get("/v1/events", params={"type": "model.drift", "limit": 500}).json()["items"]
    assert to_drift and [e["data"]["offset"] for e in events] == [t["offset"] for t in to_drift]
    assert all(e["model"] == "m" and e["data"]["detector"] == "ADWIN" for e in events)
    assert 6000 <= events[0]["data"]["offset"] < 8000


def test_a_replay_after_a_restart_announces_no_transition_twice():
    """A learner that takes the model over replays the log from its checkpoint with a new
    monitor: transitions to drift at or before the newest one already published
    (``drift_floor``) are not announced again; later ones are, once."""
    from types import SimpleNamespace

    from app.core.outbox import PENDING
    from app.online.learner import _drift_events

    monitor = SimpleNamespace(
        transitions=[("drift", 100), ("stable", 150), ("drift", 200)],
        state=lambda: {"loss": {"detector": "ADWIN"}, "inputs": []},
    )
    h = SimpleNamespace(
        learner=SimpleNamespace(drift=monitor),
        drift_monitor=None,
        drift_announced=0,
        drift_floor=100,
        name="m",
        version=3,
    )
    s = SimpleNamespace(info={})
    assert _drift_events(s, h) == 3
    assert [(t, d["offset"]) for t, _, d, _ in s.info[PENDING]] == [("model.drift", 200)]
    h.drift_announced = 3
    s2 = SimpleNamespace(info={})
    assert _drift_events(s2, h) == 3 and PENDING not in s2.info
