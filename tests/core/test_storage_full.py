"""A full disk answers 507 Insufficient Storage (problem+json naming what is full), from
any route, and a 507 stores nothing: the mapping of each layer's "no space" error
(``OSError`` ENOSPC, SQLite ``database or disk is full``, PostgreSQL SQLSTATE 53100),
simulated here by making a real call fail; ``tests/test_full_disk.py`` fills a real
file system."""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psycopg.errors
import pytest
import safetensors.numpy as stnp
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy import event

from app.core.errors import InsufficientStorage, insufficient_storage
from app.main import READ_ONLY_OPERATIONS, WRITE_METHODS, create_app
from tests.api_helpers import assert_problem, create_model
from tests.conftest import auth

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
SQLITE_FULL = sqlite3.OperationalError("database or disk is full")
PG_DISK_FULL = psycopg.errors.DiskFull('could not extend file "base/16384/16423": No space left on device')


def _wrapped(orig: Exception) -> sa.exc.OperationalError:
    return sa.exc.OperationalError("INSERT INTO sample_batches ...", {}, orig)


# --------------------------------------------------------------------------- the mapping
@pytest.mark.parametrize(
    ("exc", "storage", "words"),
    [
        (ENOSPC, "data_directory", "the data directory is full"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "data_directory", "quota"),
        (SQLITE_FULL, "database", "the database is full"),
        (_wrapped(SQLITE_FULL), "database", "the database is full"),
        (PG_DISK_FULL, "database", "the database is full"),
        (_wrapped(PG_DISK_FULL), "database", "53100"),
        # no SQLSTATE 53100, but the server says why
        (_wrapped(psycopg.errors.lookup("58030")("could not write to file: No space left on device")), "database", ""),
    ],
)
def test_each_layers_no_space_error_is_507(exc: Exception, storage: str, words: str):
    err = insufficient_storage(exc)
    assert isinstance(err, InsufficientStorage) and err.status == 507
    assert err.body()["storage"] == storage and words in err.detail
    assert "nothing of this request was stored" in err.detail


def test_the_cause_chain_and_exception_groups_are_followed():
    try:
        try:
            raise ENOSPC
        except OSError as e:
            raise RuntimeError("could not write the export") from e
    except RuntimeError as e:
        assert insufficient_storage(e) is not None
    group = ExceptionGroup("task group", [ValueError("x"), _wrapped(SQLITE_FULL)])
    assert insufficient_storage(group) is not None


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.EACCES, "Permission denied"),
        OSError(errno.EIO, "Input/output error"),
        sqlite3.OperationalError("database is locked"),
        _wrapped(sqlite3.OperationalError("disk I/O error")),
        _wrapped(psycopg.errors.TooManyConnections("sorry, too many clients already")),  # 53300
        _wrapped(psycopg.errors.OutOfMemory("out of memory")),  # 53200
        RuntimeError("no space left on device"),  # words alone, from no storage layer
    ],
)
def test_other_errors_are_not_507(exc: Exception):
    assert insufficient_storage(exc) is None


# --------------------------------------------------------------------------- through the app
def _full_error(db_url: str) -> Exception:
    """What the driver of ``db_url`` raises when its disk is full."""
    if db_url.startswith("sqlite"):
        return sqlite3.OperationalError("database or disk is full")
    return psycopg.errors.DiskFull('could not extend file "base/16384/16423": No space left on device')


@contextmanager
def database_full(engine: sa.Engine, db_url: str, table: str) -> Iterator[list[int]]:
    """Every INSERT into ``table`` fails as the driver does on a full disk (raised where
    the driver would raise it, so SQLAlchemy wraps it as it wraps the real one; the sample
    log's append runs its statements on the DBAPI cursor, through ``raw_execute``)."""
    from app.online import repository

    calls = [0]

    def fail(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith(f"INSERT INTO {table.upper()}"):
            calls[0] += 1
            raise _full_error(db_url)

    real = repository.raw_execute

    def raw(cur: Any, sql: str, params: Any, *, many: bool = False) -> None:
        fail(None, cur, sql)
        real(cur, sql, params, many=many)

    event.listen(engine, "before_cursor_execute", fail)
    repository.raw_execute = raw  # type: ignore[assignment]
    try:
        yield calls
    finally:
        event.remove(engine, "before_cursor_execute", fail)
        repository.raw_execute = real  # type: ignore[assignment]


def samples(n: int, seed: int) -> dict[str, Any]:
    X = np.random.default_rng(seed).standard_normal((n, 3)).astype(np.float32)
    return {"samples": [{"x": x.tolist(), "y": [float(x.sum())]} for x in X]}


@pytest.fixture
def quiet(make_settings) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    """An app without learner and worker (nothing writes but the requests), grouping appends."""
    app = create_app(make_settings(run_learner=False, run_worker=False, ingest_group_wait_ms=20))
    with TestClient(app, headers=auth()) as c:
        yield c


def test_a_full_database_answers_507_on_update_and_stores_nothing(quiet, db_url):
    c = quiet
    ctx = c.app.state.ctx
    create_model(c)
    assert c.post("/v1/models/m/update", json=samples(5, 0)).status_code == 202
    with database_full(ctx.db.engine, db_url, "sample_batches") as calls:
        body = assert_problem(c.post("/v1/models/m/update", json=samples(4, 1)), 507)
        assert body["storage"] == "database" and body["detail"].startswith("the database is full")
        r = c.post("/v1/models/m/update", json=samples(2, 2), headers={"Idempotency-Key": "k1"})
        assert_problem(r, 507)
        # NDJSON takes the same path
        r = c.post(
            "/v1/models/m/update",
            content=b'{"x": [1, 2, 3], "y": [6]}\n',
            headers={"Content-Type": "application/x-ndjson"},
        )
        assert_problem(r, 507)

        # concurrent appends share a group commit: every one of them gets its 507
        answers: list[int] = []
        barrier = threading.Barrier(6)

        def post(i: int) -> None:
            barrier.wait()
            answers.append(c.post("/v1/models/m/update", json=samples(3, 10 + i)).status_code)

        threads = [threading.Thread(target=post, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert answers == [507] * 6
        assert calls[0] >= 9
    # nothing of the refused requests was stored: no offsets taken, the key is unknown
    assert c.get("/v1/models/m").json()["online"]["accepted"] == 5
    r = c.post("/v1/models/m/update", json=samples(2, 2), headers={"Idempotency-Key": "k1"})
    assert r.status_code == 202 and r.json() == {"accepted": 2, "first_offset": 5, "last_offset": 6, "duplicate": False}
    assert c.get("/v1/models/m").json()["online"]["accepted"] == 7


def test_a_full_database_answers_507_on_every_write_route(quiet, db_url):
    c = quiet
    ctx = c.app.state.ctx
    create_model(c)
    with database_full(ctx.db.engine, db_url, "models"):
        body = assert_problem(c.post("/v1/models", json={"name": "n", "task": "binary", "input_dim": 2}), 507)
        assert body["storage"] == "database"
    with database_full(ctx.db.engine, db_url, "aliases"):
        assert_problem(c.put("/v1/models/m/aliases/production", json={"version": 1}), 507)
    with database_full(ctx.db.engine, db_url, "api_keys"):
        assert_problem(c.post("/v1/keys", json={"name": "app", "scope": "read"}), 507)
    with database_full(ctx.db.engine, db_url, "jobs"):  # run_in_threadpool
        assert_problem(c.post("/v1/models/m/prune", json={"from": 1, "sparsity": 0.5}), 507)
    w = {k: np.ones_like(v) for k, v in stnp.load(c.get("/v1/models/m/versions/1/weights").content).items()}
    with database_full(ctx.db.engine, db_url, "versions"):  # run_in_threadpool
        r = c.post("/v1/models/m/versions", content=stnp.save(w), headers={"Content-Type": "application/octet-stream"})
        assert_problem(r, 507)
    # none of it was stored; reads answered all along, and writes work again
    assert [m["name"] for m in c.get("/v1/models").json()["items"]] == ["m"]
    assert [a["alias"] for a in c.get("/v1/models/m/aliases").json()["items"]] == ["latest"]
    assert c.get("/v1/jobs").json()["items"] == []
    assert c.get("/v1/models/m").json()["latest_version"] == 1
    r = c.post("/v1/models/m/versions", content=stnp.save(w), headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201 and r.json()["version"] == 2


def test_a_full_data_directory_answers_507_and_leaves_no_temporary_file(quiet, monkeypatch):
    c = quiet
    ctx = c.app.state.ctx
    create_model(c)
    w = {k: np.full_like(v, 0.5) for k, v in stnp.load(c.get("/v1/models/m/versions/1/weights").content).items()}

    def files() -> list[Path]:  # an empty shard directory may stay; no file does
        return sorted(p.relative_to(ctx.blobs.root) for p in ctx.blobs.root.rglob("*") if p.is_file())

    before = files()
    real_fsync = os.fsync

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    r = c.post("/v1/models/m/versions", content=stnp.save(w), headers={"Content-Type": "application/octet-stream"})
    body = assert_problem(r, 507)
    assert body["storage"] == "data_directory" and body["detail"].startswith("the data directory is full")
    assert_problem(c.post("/v1/models", json={"name": "n", "task": "binary", "input_dim": 2, "seed": 7}), 507)
    r = c.post("/v1/models/m/batch-update", json={"from": 1, "samples": samples(4, 0)["samples"]})
    assert_problem(r, 507)  # the samples' blob, written before the job is queued
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert files() == before
    assert c.get("/v1/models/m").json()["latest_version"] == 1
    assert c.get("/v1/models/n").status_code == 404 and c.get("/v1/jobs").json()["items"] == []
    r = c.post("/v1/models/m/versions", content=stnp.save(w), headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201


def test_a_failed_key_purge_does_not_fail_a_committed_append(quiet, monkeypatch):
    """The once-a-minute purge of expired Idempotency-Keys runs after an append commits:
    if it fails (a full disk), the append still answers 202, since it is stored."""
    c = quiet
    online = c.app.state.ctx.online
    create_model(c)

    def full() -> int:
        raise _wrapped(SQLITE_FULL)

    monkeypatch.setattr(online, "purge_keys", full)
    online._last_purge = float("-inf")
    r = c.post("/v1/models/m/update", json=samples(3, 0), headers={"Idempotency-Key": "p"})
    assert r.status_code == 202 and r.json()["last_offset"] == 2
    assert c.get("/v1/models/m").json()["online"]["accepted"] == 3


def test_other_errors_stay_500(make_settings):
    app = create_app(make_settings(run_learner=False, run_worker=False))

    @app.post("/v1/denied")
    def denied() -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    with TestClient(app, raise_server_exceptions=False) as c:
        assert_problem(c.post("/v1/denied"), 500)


def test_openapi_documents_507_on_every_route_that_writes(anon):
    paths = anon.get("/openapi.json").json()["paths"]
    writing = []
    for path, ops in paths.items():
        for method, op in ops.items():
            codes = op["responses"]
            if method.upper() in WRITE_METHODS and op["operationId"] not in READ_ONLY_OPERATIONS:
                writing.append(op["operationId"])
                assert "507" in codes, (method, path)
                assert codes["507"]["content"]["application/problem+json"]["schema"] == {
                    "$ref": "#/components/schemas/Problem"
                }
            else:
                assert "507" not in codes, (method, path)
    assert {"update_model", "import_version", "create_model", "put_alias", "batch_update", "create_key"} <= set(writing)
    assert {op["operationId"] for ops in paths.values() for op in ops.values()} >= READ_ONLY_OPERATIONS
