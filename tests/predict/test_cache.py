"""What ``/predict`` caches (the key, the served version per alias, the network) is never
served after it changed: within one process at once, across processes within
``STEWARD_CACHE_REFRESH_SECONDS`` — shown with two apps on one database (their caches
polled by hand, so the stale window is observed, not raced) and with two real
``steward serve`` processes (the poller thread). Both databases."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.api_helpers import assert_problem, create_model, ref_forward, safetensors_bytes, weights
from tests.conftest import ADMIN, auth

X = [[0.5, -1.0, 2.0]]


def served(c: TestClient | httpx.Client, name: str = "m", **target: object) -> tuple[int, list[list[float]]]:
    r = c.post(f"/v1/models/{name}/predict", json={"inputs": X, **target})
    assert r.status_code == 200, r.text
    return r.json()["version"], r.json()["outputs"]


def new_version(c: TestClient | httpx.Client, name: str, seed: int) -> tuple[int, dict[str, np.ndarray]]:
    """Import a version of ``name`` with random weights; returns its number and tensors."""
    r = c.get(f"/v1/models/{name}/versions/1/weights")
    assert r.status_code == 200
    import safetensors.numpy as stnp

    rng = np.random.default_rng(seed)
    t = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in stnp.load(r.content).items()}
    r = c.post(f"/v1/models/{name}/versions", content=safetensors_bytes(t))
    assert r.status_code == 201, r.text
    return r.json()["version"], t


def expect(t: dict[str, np.ndarray]) -> list[list[float]]:
    return ref_forward(t, "regression", "relu", np.asarray(X)).tolist()


def test_alias_moves_new_versions_and_deletes_are_served_at_once(client):
    create_model(client)
    for _ in range(2):  # the second answer of each pair comes from the cache
        assert served(client)[0] == 1
    v2, t2 = new_version(client, "m", 2)
    for _ in range(2):
        version, out = served(client)
        assert version == v2 and np.allclose(out, expect(t2), rtol=1e-5, atol=1e-6)
    assert client.put("/v1/models/m/aliases/production", json={"version": 1}).status_code in (200, 201)
    for _ in range(2):
        assert served(client)[0] == 1
        assert served(client, alias="production")[0] == 1
    assert client.put("/v1/models/m/aliases/production", json={"version": v2}).status_code == 200
    for _ in range(2):
        assert served(client)[0] == v2
    assert client.delete("/v1/models/m/aliases/production").status_code == 204
    for _ in range(2):
        assert served(client)[0] == v2  # latest again
        assert_problem(client.post("/v1/models/m/predict", json={"inputs": X, "alias": "production"}), 404)
    v3, _ = new_version(client, "m", 3)
    assert served(client)[0] == v3
    assert served(client, version=v2)[0] == v2
    # a deleted model is gone at once; one made again under its name is a new model
    assert client.delete("/v1/models/m").status_code == 204
    assert_problem(client.post("/v1/models/m/predict", json={"inputs": X}), 404)
    create_model(client)
    version, out = served(client)
    assert version == 1 and np.allclose(out, expect(weights(client, "m", 1)), rtol=1e-5, atol=1e-6)


def test_a_revoked_key_is_refused_at_once(client):
    create_model(client)
    made = client.post("/v1/keys", json={"name": "app", "scope": "read", "models": ["m"]}).json()
    k = {"Authorization": f"Bearer {made['key']}"}
    for _ in range(2):
        assert client.post("/v1/models/m/predict", json={"inputs": X}, headers=k).status_code == 200
    assert client.delete(f"/v1/keys/{made['id']}").status_code == 204
    assert_problem(client.post("/v1/models/m/predict", json={"inputs": X}, headers=k), 401)
    assert_problem(client.post("/v1/models/m/update", json={"samples": [{"x": X[0], "y": 1}]}, headers=k), 401)


@pytest.fixture
def two_apps(make_settings) -> Iterator[tuple[TestClient, TestClient]]:
    """Two API processes' apps on one database and blob directory; their pollers are idle
    (refresh 60 s): the test polls by hand to observe the stale window."""
    settings = make_settings(cache_refresh_seconds=60, run_learner=False, run_worker=False)
    with (
        TestClient(create_app(settings), headers=auth()) as a,
        TestClient(create_app(settings), headers=auth()) as b,
    ):
        yield a, b


def poll(c: TestClient) -> None:
    c.app.state.ctx.caches.poll()  # type: ignore[attr-defined]


def test_another_process_serves_the_change_after_its_next_poll(two_apps):
    a, b = two_apps
    create_model(a)
    made = a.post("/v1/keys", json={"name": "app", "scope": "read"}).json()
    k = {"Authorization": f"Bearer {made['key']}"}
    assert b.post("/v1/models/m/predict", json={"inputs": X}, headers=k).status_code == 200  # cached by b
    assert served(b)[0] == 1
    v2, _ = new_version(a, "m", 2)
    a.put("/v1/models/m/aliases/production", json={"version": 1})
    assert a.delete(f"/v1/keys/{made['id']}").status_code == 204
    assert served(a)[0] == 1 and a.post("/v1/models/m/predict", json={"inputs": X}, headers=k).status_code == 401
    # b has not polled: within the stated bound it may still serve what it cached
    assert served(b)[0] == 1
    poll(b)
    assert served(b)[0] == 1  # production
    assert_problem(b.post("/v1/models/m/predict", json={"inputs": X}, headers=k), 401)
    a.put("/v1/models/m/aliases/production", json={"version": v2})
    assert served(b)[0] == 1
    poll(b)
    assert served(b)[0] == v2
    a.delete("/v1/models/m")
    poll(b)
    assert_problem(b.post("/v1/models/m/predict", json={"inputs": X}), 404)


# --------------------------------------------------------------------------- real processes
REFRESH = 0.2


def _serve(port: int, db_url: str, data: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEWARD_")}
    env |= {
        "STEWARD_DATA_DIR": str(data),
        "STEWARD_DATABASE_URL": db_url,
        "STEWARD_ADMIN_KEY": ADMIN,
        "STEWARD_CACHE_REFRESH_SECONDS": str(REFRESH),
    }
    cmd = [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--no-worker", "--no-learner"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _until(check, what: str, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    """Wait for ``check()`` (a bounded wait that tolerates a slow machine, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)


def test_two_serve_processes_share_changes_within_the_refresh_bound(db_url, tmp_path):
    from tests.test_cli import free_port, wait_ready

    procs = []
    try:
        urls = []
        for _ in range(2):
            port = free_port()
            procs.append(_serve(port, db_url, tmp_path / "data"))
            urls.append(f"http://127.0.0.1:{port}")
            wait_ready(procs[-1], urls[-1] + "/readyz", timeout=60)
        with (
            httpx.Client(base_url=urls[0], headers=auth(), timeout=30) as a,
            httpx.Client(base_url=urls[1], headers=auth(), timeout=30) as b,
        ):
            create_model(a)  # type: ignore[arg-type]
            made = a.post("/v1/keys", json={"name": "app", "scope": "read"}).json()
            k = {"Authorization": f"Bearer {made['key']}"}
            assert b.post("/v1/models/m/predict", json={"inputs": X}, headers=k).status_code == 200
            assert served(b)[0] == 1
            v2, t2 = new_version(a, "m", 2)
            _until(lambda: served(b)[0] == v2, "b serves the new latest version")
            assert np.allclose(served(b)[1], expect(t2), rtol=1e-5, atol=1e-6)
            a.put("/v1/models/m/aliases/production", json={"version": 1})
            _until(lambda: served(b)[0] == 1, "b serves the moved alias")
            a.delete(f"/v1/keys/{made['id']}")
            _until(
                lambda: b.post("/v1/models/m/predict", json={"inputs": X}, headers=k).status_code == 401,
                "b refuses the revoked key",
            )
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def test_a_version_the_learner_commits_is_served_at_once(client):
    create_model(client, task="binary")
    assert served(client)[0] == 1
    samples = [{"x": [float(i % 3), 1.0, -1.0], "y": float(i % 2)} for i in range(20)]
    assert client.post("/v1/models/m/update?wait=true", json={"samples": samples}).status_code == 202
    r = client.post("/v1/models/m/checkpoint")
    assert r.status_code == 201, r.text
    v = r.json()["version"]
    assert v > 1 and served(client)[0] == v
    assert np.allclose(
        served(client)[1], ref_forward(weights(client, "m", v), "binary", "relu", np.asarray(X)), rtol=1e-5, atol=1e-6
    )


def test_a_key_revoked_by_the_command_line_is_refused_after_the_next_poll(two_apps, settings):
    """``steward keys revoke`` runs in a process of its own, with no cache: its revocation
    bumps the generation like the API's does."""
    from app.core.db import Database
    from app.keys.service import KeyService

    a, _ = two_apps
    create_model(a)
    made = a.post("/v1/keys", json={"name": "app", "scope": "read"}).json()
    k = {"Authorization": f"Bearer {made['key']}"}
    assert a.post("/v1/models/m/predict", json={"inputs": X}, headers=k).status_code == 200
    db = Database(settings.url)
    try:
        KeyService(db, None).revoke(made["id"])
    finally:
        db.dispose()
    poll(a)
    assert_problem(a.post("/v1/models/m/predict", json={"inputs": X}, headers=k), 401)
