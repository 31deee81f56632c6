"""A real full disk: the data directory (SQLite database and blob store) is a small
tmpfs, filled by sample appends and model imports until writes fail.

* the failing requests answer 507 problem+json naming what is full, on every route
  that writes, while reads go on working;
* every request answered 2xx is still there after the app is reopened from the same
  directory: the sample log (every acknowledged offset, bit for bit), the versions
  (every imported blob), the Idempotency-Keys; the refused ones left nothing;
* once a filler file is deleted, the same process writes again, and a learner started
  afterwards applies every acknowledged sample.

Mounting needs root (or CAP_SYS_ADMIN); the test is skipped where it cannot mount.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy as stnp
from fastapi.testclient import TestClient
from httpx import Response

from app.core.settings import Settings
from app.main import create_app
from tests.api_helpers import assert_problem
from tests.conftest import ADMIN, auth

SIZE = "2m"
DIM, HIDDEN = 8, 16
ROWS = 100  # samples per filling /update
MAX_REQUESTS = 5000  # a 2 MiB file system is full long before


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted on a fresh directory (skipped when mounting is not allowed);
    unmounting afterwards also checks that the stopped app left no file open on it."""
    mnt = tmp_path / "data"
    mnt.mkdir()
    mount = shutil.which("mount")
    if mount is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    r = subprocess.run([mount, "-t", "tmpfs", "-o", f"size={SIZE},mode=0700", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        r = subprocess.run(["umount", str(mnt)], capture_output=True)
        if r.returncode != 0:  # do not leave it mounted, but say why it failed
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
            pytest.fail(f"could not unmount the full disk (a file left open?): {r.stderr.decode(errors='replace')}")


def settings_for(data: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = {
        "data_dir": data,
        "database_url": f"sqlite:///{data / 'steward.db'}",
        "admin_key": ADMIN,
        "run_learner": False,  # nothing writes but the requests: the filling is deterministic
        "run_worker": False,
        "gc_tuning": False,
        "learner_poll_seconds": 0.01,
    }
    base.update(kw)
    return Settings(**base)


def rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, DIM)).astype(np.float32)
    return X, (X.sum(axis=1, keepdims=True) / DIM).astype(np.float32)


def body(X: np.ndarray, Y: np.ndarray) -> dict[str, Any]:
    return {"samples": [{"x": x.tolist(), "y": y.tolist()} for x, y in zip(X, Y, strict=True)]}


def weights_of(seed: int, hidden: int = HIDDEN) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "layers.0.weight": rng.standard_normal((hidden, DIM)).astype(np.float32),
        "layers.0.bias": rng.standard_normal(hidden).astype(np.float32),
        "layers.1.weight": rng.standard_normal((1, hidden)).astype(np.float32),
        "layers.1.bias": rng.standard_normal(1).astype(np.float32),
    }


def import_version(c: TestClient, name: str, w: dict[str, np.ndarray]) -> Response:
    return c.post(
        f"/v1/models/{name}/versions", content=stnp.save(w), headers={"Content-Type": "application/octet-stream"}
    )


def full(r: Response, storage: str | None = None) -> dict[str, Any]:
    """``r`` is the 507 problem naming what is full (``storage`` when given)."""
    b = assert_problem(r, 507)
    assert b["type"].endswith("/insufficient-storage") and b["title"] == "Insufficient Storage"
    assert b["storage"] in ("data_directory", "database")
    words = {"data_directory": "the data directory is full", "database": "the database is full"}[b["storage"]]
    assert b["detail"].startswith(words) and "nothing of this request was stored" in b["detail"]
    if storage is not None:
        assert b["storage"] == storage, b
    return b


def fill_up(path: Path) -> int:
    """Write ``path`` until the file system refuses a single byte more; its size."""
    n = 0
    with path.open("wb", buffering=0) as f:
        for step in (65536, 4096, 512, 1):
            try:
                while True:
                    n += f.write(b"\0" * step)
            except OSError as e:
                assert e.errno == errno.ENOSPC
    return n


def test_a_full_disk_answers_507_loses_nothing_acknowledged_and_recovers(small_disk: Path):
    data = small_disk
    settings = settings_for(data)
    acked: list[tuple[int, np.ndarray, np.ndarray]] = []  # (first offset, X, Y) of every 202
    versions: dict[int, dict[str, np.ndarray]] = {}  # every 201 import
    refused: list[dict[str, Any]] = []  # the 507 problems
    seed = 0

    def update(c: TestClient, n: int, key: str | None = None) -> Response:
        nonlocal seed
        seed += 1
        X, Y = rows(n, seed)
        r = c.post("/v1/models/m/update", json=body(X, Y), headers={"Idempotency-Key": key} if key else {})
        if r.status_code == 202:
            a = r.json()
            assert a["first_offset"] == sum(len(x) for _, x, _ in acked) and a["accepted"] == n
            acked.append((a["first_offset"], X, Y))
        return r

    def add_version(c: TestClient) -> Response:
        nonlocal seed
        seed += 1
        w = weights_of(seed)
        r = import_version(c, "m", w)
        if r.status_code == 201:
            versions[r.json()["version"]] = w
        return r

    with TestClient(create_app(settings), headers=auth()) as c:
        r = c.post("/v1/models", json={"name": "m", "task": "regression", "input_dim": DIM, "hidden": [HIDDEN]})
        assert r.status_code == 201
        versions[1] = {k: v.copy() for k, v in stnp.load(c.get("/v1/models/m/versions/1/weights").content).items()}
        filler = data / "filler"
        filler.write_bytes(os.urandom(512 * 1024))

        # 1. fill: sample appends, a model import every tenth request, until one fails
        for i in range(1, MAX_REQUESTS):
            r = add_version(c) if i % 10 == 0 else update(c, ROWS, key=f"fill-{i}")
            if r.status_code not in (201, 202):
                break
        else:
            pytest.fail("the disk never filled up")
        refused.append(full(r))
        assert len(acked) > 10 and len(versions) > 1
        # then one sample at a time until the database refuses even that, then imports
        for _ in range(MAX_REQUESTS):
            if (r := update(c, 1)).status_code != 202:
                break
        refused.append(full(r, "database"))
        for _ in range(100):
            if (r := add_version(c)).status_code != 201:
                break
        refused.append(full(r))
        # and whatever the database left of its last page: not one byte is free now
        topup = data / "topup"
        fill_up(topup)
        assert shutil.disk_usage(data).free == 0

        # 2. every route that writes answers 507, naming what is full; reads work
        n_samples = sum(len(x) for _, x, _ in acked)
        refused.append(full(update(c, 3), "database"))
        refused.append(full(update(c, 3, key="refused-key"), "database"))
        X, _ = rows(1, 999)
        r = c.post("/v1/models/m/update", content=b'{"x": %s, "y": [0]}\n' % str(X[0].tolist()).encode(),
                   headers={"Content-Type": "application/x-ndjson"})  # fmt: skip
        refused.append(full(r, "database"))
        refused.append(full(import_version(c, "m", weights_of(10_000)), "data_directory"))
        big = {"name": "big", "task": "regression", "input_dim": DIM, "hidden": [512]}
        refused.append(full(c.post("/v1/models", json=big), "data_directory"))
        r = c.post("/v1/models/m/batch-update", json={"from": 1, **body(*rows(4, 7))})
        refused.append(full(r, "data_directory"))  # its samples' blob comes first
        refused.append(full(c.post("/v1/models/m/prune", json={"from": 1, "sparsity": 0.5}), "database"))
        refused.append(full(c.put("/v1/models/m/aliases/production", json={"version": 1}), "database"))
        refused.append(full(c.post("/v1/keys", json={"name": "app", "scope": "read"}), "database"))
        # /checkpoint writes a few bytes to the learner's mailbox: when they fit in WAL space
        # SQLite had already claimed (a refused transaction leaves it for reuse), the request
        # is recorded and, with no learner running here, times out (503) and is withdrawn
        r = c.post("/v1/models/m/checkpoint?timeout=1")
        if r.status_code == 503:
            assert "did not answer" in r.json()["detail"], r.text
        else:
            refused.append(full(r, "database"))
        r = c.get("/readyz")
        assert r.status_code == 503 and "full" in r.json()["checks"]["blob_store"]
        assert c.get("/v1/models/m").json()["online"]["accepted"] == n_samples
        assert c.post("/v1/models/m/predict", json={"inputs": [[0.0] * DIM]}).status_code == 200
        assert c.get(f"/v1/models/m/versions/{max(versions)}/weights").status_code == 200
        # a retried acknowledged request is recognised, even now (nothing to write)
        first, X0, Y0 = acked[0]
        r = c.post("/v1/models/m/update", json=body(X0, Y0), headers={"Idempotency-Key": "fill-1"})
        assert r.status_code == 202 and r.json()["duplicate"] and r.json()["first_offset"] == first

    # 3. reopen from the same (still full) directory: everything acknowledged is there
    with TestClient(create_app(settings), headers=auth()) as c:
        assert c.get("/v1/models/m").json()["online"]["accepted"] == n_samples
        listed = c.get("/v1/models/m/versions?limit=500").json()["items"]
        assert sorted(v["version"] for v in listed) == sorted(versions)
        for number, w in versions.items():
            got = stnp.load(c.get(f"/v1/models/m/versions/{number}/weights").content)
            assert all(np.array_equal(got[k], w[k]) for k in w), number
        assert [m["name"] for m in c.get("/v1/models").json()["items"]] == ["m"]
        assert c.get("/v1/jobs").json()["items"] == [] and len(c.get("/v1/keys").json()["items"]) == 0

    con = sqlite3.connect(f"file:{data / 'steward.db'}?mode=ro", uri=True)
    try:
        log = con.execute("SELECT first_offset, count, x, y FROM sample_batches ORDER BY first_offset").fetchall()
    finally:
        con.close()
    stored_x = np.frombuffer(b"".join(x for *_, x, _ in log), dtype=np.float32).reshape(-1, DIM)
    stored_y = np.frombuffer(b"".join(y for *_, y in log), dtype=np.float32).reshape(-1, 1)
    assert [(f, n) for f, n, *_ in log] == [(f, len(X)) for f, X, _ in acked]  # one row each, nothing else
    assert np.array_equal(stored_x, np.concatenate([X for _, X, _ in acked]))
    assert np.array_equal(stored_y, np.concatenate([Y for *_, Y in acked]))

    # 4. free space: the same process writes again, from where it stopped
    with TestClient(create_app(settings), headers=auth()) as c:
        assert_problem(c.post("/v1/models/m/update", json=body(*rows(2, 5))), 507)
        filler.unlink()
        topup.unlink()
        assert update(c, ROWS, key="refused-key").json()["duplicate"] is False  # it was never stored
        assert update(c, 1).status_code == 202
        assert add_version(c).status_code == 201
        assert c.put("/v1/models/m/aliases/production", json={"version": 1}).status_code == 201
        assert c.get("/readyz").status_code == 200
        n_samples = sum(len(x) for _, x, _ in acked)
        assert c.get("/v1/models/m").json()["online"]["accepted"] == n_samples

    # 5. a learner started now applies every acknowledged sample
    with TestClient(create_app(settings_for(data, run_learner=True)), headers=auth()) as c:
        r = c.post("/v1/models/m/checkpoint?timeout=120")
        assert r.status_code == 201, r.text
        assert r.json()["applied_through"] == n_samples - 1
    print(
        f"\nfull disk ({SIZE}): {len(acked)} appends ({n_samples} samples) and {len(versions) - 1} imports "
        f"acknowledged; {len(refused)} requests refused with 507 "
        f"({sum(p['storage'] == 'database' for p in refused)} database, "
        f"{sum(p['storage'] == 'data_directory' for p in refused)} data directory): "
        + ", ".join(p["storage"] for p in refused)
    )
