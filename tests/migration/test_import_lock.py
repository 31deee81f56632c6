"""An import's CPU work (parsing, ``onnx.checker``, ONNX Runtime verification) and its blob
write run before its write transaction: while a long ONNX import is being verified,
``/update`` on another model commits as usual (on SQLite the import would otherwise hold
the one write lock for the whole verification). The import's verification is held open
by the test itself, so the ordering is proven, not timed."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.interop.export import to_onnx
from app.main import create_app
from app.migration import service as migration_service
from tests.conftest import auth
from tests.interop.test_export import make_net


def test_update_on_another_model_commits_while_an_onnx_import_is_verified(make_settings, monkeypatch):
    # a short busy timeout: a writer blocked behind the import would fail fast (500), not hang
    settings = make_settings(run_learner=False, run_worker=False, sqlite_busy_timeout_ms=1000)
    entered, release = threading.Event(), threading.Event()
    verify = migration_service.verify_import

    def held_open(*args, **kwargs):  # the import is inside its verification until released
        entered.set()
        assert release.wait(30), "the test did not release the import"
        return verify(*args, **kwargs)

    monkeypatch.setattr(migration_service, "verify_import", held_open)
    net = make_net("binary", "relu", hidden=[12, 7])
    onnx_file = to_onnx(net, name="imp", version=1)
    with TestClient(create_app(settings), headers=auth()) as c:
        for name in ("imp", "other"):
            body = {"name": name, "task": "binary", "input_dim": 9, "hidden": [12, 7], "activation": "relu"}
            assert c.post("/v1/models", json=body).status_code == 201
        answers: dict[str, object] = {}

        def do_import() -> None:
            r = c.post("/v1/models/imp/versions", content=onnx_file, headers={"Content-Type": "application/onnx"})
            answers["import"] = (r.status_code, r.json())

        t = threading.Thread(target=do_import)
        t.start()
        try:
            assert entered.wait(30), "the import never reached its verification"
            X = np.random.default_rng(0).standard_normal((50, 9)).tolist()
            samples = [{"x": x, "y": i % 2} for i, x in enumerate(X)]
            r = c.post("/v1/models/other/update", json={"samples": samples})
            # committed (durable) while the import still holds its verification open
            assert r.status_code == 202, r.text
            assert r.json()["accepted"] == 50 and not release.is_set()
            assert c.get("/v1/models/other").json()["online"]["accepted"] == 50
            assert c.get("/v1/models/imp").json()["latest_version"] == 1  # nothing half-stored meanwhile
        finally:
            release.set()
            t.join(60)
        status, version = answers["import"]  # type: ignore[misc]
        assert status == 201, version
        assert version["version"] == 2 and version["operation"] == "import"  # type: ignore[index]
        assert version["params"]["verification"]["ok"] is True  # type: ignore[index]


@pytest.mark.parametrize("content_type", ["application/onnx", "application/octet-stream"])
def test_a_refused_import_stores_no_row(client, content_type):
    """Everything an import checks happens before its transaction: a refusal leaves the model as it was."""
    body = {"name": "m", "task": "binary", "input_dim": 9, "hidden": [12, 7], "activation": "relu"}
    assert client.post("/v1/models", json=body).status_code == 201
    r = client.post("/v1/models/m/versions", content=b"\x08\x07garbage", headers={"Content-Type": content_type})
    assert r.status_code == 400, r.text
    assert client.get("/v1/models/m").json()["latest_version"] == 1
