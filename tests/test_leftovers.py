"""Start-up removes what writes killed mid-way left in the blob store: temporary files
older than ``STEWARD_BLOB_TMP_GRACE_SECONDS`` go, younger ones (maybe another
process's write in flight) and every blob stay — in the API's lifespan and in
``steward worker``."""

from __future__ import annotations

import os
import time
from pathlib import Path

from fastapi.testclient import TestClient

from app.core.blobs import BlobStore
from app.main import create_app
from tests.conftest import auth
from tests.jobs.test_worker_process import start_worker, stop, wait_until


def _age(p: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(p, (t, t))


def leftovers(root: Path, grace: float) -> tuple[list[Path], list[Path], dict[Path, bytes]]:
    """Stale and fresh temporaries beside real (old) blobs: (stale, fresh, blobs)."""
    store = BlobStore(root)
    blobs = {}
    for data in (b"blob one", b"blob two"):
        sha, _ = store.put(data)
        blobs[store.path(sha)] = data
        _age(store.path(sha), 10 * grace)
    shard = next(iter(blobs)).parent
    stale = [shard / ".tmp-k1lled01", root / ".tmp-k1lled02", root / ".ready-k1lled03"]
    fresh = [shard / ".tmp-inflight", root / ".tmp-inflight"]
    for p in stale + fresh:
        p.write_bytes(b"half a blob")
    for p in stale:
        _age(p, grace + 60)
    _age(fresh[0], grace - 60)  # within the grace period
    return stale, fresh, blobs


def test_the_app_removes_stale_temporaries_at_start(make_settings):
    settings = make_settings(run_learner=False, run_worker=False, blob_tmp_grace_seconds=300)
    stale, fresh, blobs = leftovers(settings.blob_dir, 300)
    with TestClient(create_app(settings), headers=auth()) as c:
        assert not any(p.exists() for p in stale)
        assert all(p.exists() for p in fresh)
        assert {p: p.read_bytes() for p in blobs} == blobs
        assert c.get("/readyz").status_code == 200


def test_the_grace_period_is_a_setting(make_settings):
    settings = make_settings(run_learner=False, run_worker=False, blob_tmp_grace_seconds=24 * 3600)
    stale, fresh, _ = leftovers(settings.blob_dir, 300)  # an hour old at most: within a day
    with TestClient(create_app(settings)):
        assert all(p.exists() for p in stale + fresh)


def test_steward_worker_removes_stale_temporaries_at_start(make_settings):
    settings = make_settings()
    stale, fresh, blobs = leftovers(settings.blob_dir, 600)  # the default grace
    p = start_worker(settings, lease=5)
    try:
        wait_until(lambda: not any(s.exists() for s in stale), 60, "the worker to remove the stale temporaries")
        assert p.poll() is None
    finally:
        stop(p)
    assert all(f.exists() for f in fresh)
    assert {b: b.read_bytes() for b in blobs} == blobs
