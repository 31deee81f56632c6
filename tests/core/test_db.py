"""Per-dialect database setup and units of work.

SQLite: WAL, synchronous=FULL, foreign keys on, busy timeout, and writers that take the
write lock at BEGIN (``BEGIN IMMEDIATE``) while readers do not. Both databases: a write
unit of work commits on success and rolls back on error."""

from __future__ import annotations

import socket
import sqlite3

import pytest
import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from app.core.db import Database
from app.core.migrations import upgrade
from app.core.settings import Settings
from app.core.tables import ApiKey, utcnow


@pytest.fixture
def db(db_url):
    upgrade(db_url)
    d = Database(db_url, busy_timeout_ms=1234)
    yield d
    d.dispose()


def key(i: int) -> ApiKey:
    return ApiKey(
        id=f"k{i}", name="n", scope="read", models=None, key_hash=f"{i:064x}", prefix="p", created_at=utcnow()
    )


def test_sqlite_pragmas(sqlite_url):
    upgrade(sqlite_url)
    d = Database(sqlite_url, busy_timeout_ms=1234)
    try:
        with d.engine.connect() as c:
            pragma = {p: c.exec_driver_sql(f"PRAGMA {p}").scalar() for p in ("journal_mode", "synchronous")}
            pragma |= {p: c.exec_driver_sql(f"PRAGMA {p}").scalar() for p in ("foreign_keys", "busy_timeout")}
        assert pragma == {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1, "busy_timeout": 1234}
    finally:
        d.dispose()


def test_sqlite_writers_take_the_lock_at_begin_and_readers_do_not(sqlite_url):
    upgrade(sqlite_url)
    d = Database(sqlite_url)
    path = sqlite_url.split("///", 1)[1]
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        with d.read() as s:
            s.execute(sa.select(ApiKey)).all()
            other.execute("BEGIN IMMEDIATE")  # a reader holds no write lock
            other.execute("ROLLBACK")
        with d.write() as s:
            s.execute(sa.select(ApiKey)).all()  # nothing written yet: the lock is already held
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    finally:
        other.close()
        d.dispose()


def test_a_busy_sqlite_database_at_begin_is_an_operational_error(sqlite_url):
    """The BEGIN runs inside SQLAlchemy's error handling (the dialect's ``do_begin``): a
    writer that finds the write lock taken gets ``sa.exc.OperationalError`` as for any
    statement, and its connection is usable again once the lock is free."""
    upgrade(sqlite_url)
    d = Database(sqlite_url, busy_timeout_ms=50)
    other = sqlite3.connect(sqlite_url.split("///", 1)[1], timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        for _ in range(2):
            with pytest.raises(sa.exc.OperationalError, match="locked"), d.write() as s:
                s.execute(sa.select(ApiKey)).all()
        with d.read() as s:  # a reader's deferred BEGIN takes no lock
            assert s.execute(sa.select(ApiKey)).all() == []
        other.execute("ROLLBACK")
        with d.write() as s:
            s.add(key(1))
        with d.read() as s:
            assert [k.id for k in s.scalars(sa.select(ApiKey))] == ["k1"]
    finally:
        other.close()
        d.dispose()


def test_write_commits_and_rolls_back(db):
    with db.write() as s:
        s.add(key(1))
    with pytest.raises(RuntimeError), db.write() as s:
        s.add(key(2))
        s.flush()
        raise RuntimeError("boom")
    with db.read() as s:
        assert [k.id for k in s.scalars(sa.select(ApiKey))] == ["k1"]


def test_read_objects_stay_readable_after_the_unit_of_work(db):
    with db.write() as s:
        s.add(key(1))
    with db.read() as s:
        k = s.get(ApiKey, "k1")
    assert k.id == "k1" and k.created_at.tzinfo is not None and k.created_at.utcoffset().total_seconds() == 0


def test_unique_constraints_hold(db):
    with db.write() as s:
        s.add(key(1))
    dup = key(2)
    dup.key_hash = key(1).key_hash
    with pytest.raises(sa.exc.IntegrityError), db.write() as s:
        s.add(dup)


def test_ping_reaches_the_database_and_raises_when_it_cannot(db, db_url, tmp_path):
    """/readyz relies on this: ``ping`` returns on a live database, hands its connection
    back, and raises when no connection can be made."""
    for _ in range(3):
        assert db.ping() is None
        assert db.engine.pool.checkedout() == 0  # the connection went back to the pool
    with socket.socket() as sock:  # bound, never listening: connections to it are refused
        sock.bind(("127.0.0.1", 0))
        if db.is_sqlite:
            blocker = tmp_path / "a-directory"
            blocker.mkdir()
            dead = f"sqlite:///{blocker}"  # a directory is no database file
        else:
            dead = make_url(db_url).set(port=sock.getsockname()[1]).render_as_string(hide_password=False)
        unreachable = Database(dead)
        try:
            with pytest.raises(sa.exc.OperationalError):
                unreachable.ping()
        finally:
            unreachable.dispose()


def test_settings_database_url(tmp_path, monkeypatch):
    monkeypatch.delenv("STEWARD_DATABASE_URL", raising=False)
    s = Settings(data_dir=tmp_path)
    assert s.url == f"sqlite:///{tmp_path.resolve() / 'steward.db'}"
    assert s.blob_dir == tmp_path.resolve() / "blobs"
    assert Settings(database_url="postgresql://u@h/d").url == "postgresql+psycopg://u@h/d"
    assert Settings(database_url="postgres://u@h/d").url == "postgresql+psycopg://u@h/d"
    assert Settings(database_url="").database_url is None
    with pytest.raises(ValidationError):
        Settings(database_url="mysql://u@h/d")
    with pytest.raises(ValidationError):
        Settings(max_body_bytes=10)


def test_settings_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("STEWARD_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("STEWARD_MAX_BODY_BYTES", "2048")
    monkeypatch.setenv("STEWARD_RUN_WORKER", "false")
    s = Settings()
    assert s.data_dir == (tmp_path / "d").resolve() and s.max_body_bytes == 2048 and s.run_worker is False
