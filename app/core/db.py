"""Database engine and units of work, one setup per dialect.

SQLite is configured, not defaulted: WAL journal, ``foreign_keys=ON``, a busy
timeout, ``synchronous=FULL`` (every commit is fsynced before it returns, so a
2xx survives power loss), and writers start with ``BEGIN IMMEDIATE`` so two
writers never deadlock on a lock upgrade. PostgreSQL uses psycopg 3.

Services own the transaction: ``with db.write() as s: ...`` commits on success
and rolls back on any exception; repositories never commit.

**Cache generations.** A unit of work that changes what the request caches hold (an
API key revoked, an alias moved, a version added, a model deleted) says so with
:func:`mark_changed` (the repositories do, at every such write). Just before it commits,
the ``cache_generation`` counter is bumped and each changed subject is marked with the
new generation in ``cache_marks`` — last, so the counter's row lock is held only for the
commit and never taken before another lock; it orders those commits, so generations
become visible in increasing order. After the commit, the database's
:attr:`Database.on_changes` callbacks get the subjects and the generation (this
process's caches drop them at once); other processes read the marks
(:mod:`app.core.cache`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.core import outbox

#: ``info`` key of a pooled SQLite connection: the BEGIN its next transaction runs.
_BEGIN = "steward.sqlite_begin"


def make_engine(url: str, *, busy_timeout_ms: int = 30_000) -> Engine:
    """Create the SQLAlchemy engine for ``url`` with the per-dialect setup above."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000},
            pool_size=8,
            max_overflow=16,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:  # a sqlite3.Connection
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cur.close()

        # pysqlite's own BEGIN is off (isolation_level None): the transaction begins here.
        # The "begin" event only picks the statement; the dialect's ``do_begin`` runs it on
        # the driver connection, inside SQLAlchemy's error handling (a busy database is an
        # ``OperationalError`` as for any statement). Running it through
        # ``exec_driver_sql`` instead (the documented recipe) costs ~60 µs of CPU per
        # transaction in SQLAlchemy's execution machinery, more than SQLite's BEGIN itself —
        # measured on the sample log's group commit.
        @event.listens_for(engine, "begin")
        def _on_begin(conn: sa.Connection) -> None:
            if conn.get_execution_options().get("sqlite_immediate", False):
                conn.connection.info[_BEGIN] = "BEGIN IMMEDIATE"

        def _do_begin(dbapi_conn: Any) -> None:  # the pool's proxy of a sqlite3.Connection
            dbapi_conn.execute(dbapi_conn.info.pop(_BEGIN, "BEGIN"))

        engine.dialect.do_begin = _do_begin  # type: ignore[method-assign,assignment]
        return engine
    return sa.create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


#: ``Session.info`` key: the cache subjects a unit of work changes (see the module doc).
CHANGES = "steward.cache_changes"
#: ``Session.info`` key: the generation the commit got.
GENERATION = "steward.cache_generation"

_generation = sa.table("cache_generation", sa.column("id", sa.Integer()), sa.column("value", sa.BigInteger()))
_marks = sa.table("cache_marks", sa.column("subject", sa.String()), sa.column("generation", sa.BigInteger()))


def mark_changed(s: Session, subject: str) -> None:
    """This unit of work changes what is cached of ``subject`` (``keys``, ``model:<id>``)."""
    s.info.setdefault(CHANGES, set()).add(subject)


#: The cache subject of every API key.
KEYS_SUBJECT = "keys"


def model_subject(model_id: int) -> str:
    """The cache subject of a model: its aliases, versions and existence."""
    return f"model:{model_id}"


def read_generation(s: Session) -> int:
    value: int = s.execute(sa.select(_generation.c.value).where(_generation.c.id == 1)).scalar_one()
    return value


def read_marks(s: Session, after: int) -> list[tuple[str, int]]:
    """``(subject, generation)`` of the marks above generation ``after``."""
    q = sa.select(_marks.c.subject, _marks.c.generation).where(_marks.c.generation > after)
    return [(str(row[0]), int(row[1])) for row in s.execute(q)]


class Database:
    """The engine plus read and write units of work."""

    def __init__(self, url: str, *, busy_timeout_ms: int = 30_000) -> None:
        self.url = url
        self.engine = make_engine(url, busy_timeout_ms=busy_timeout_ms)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        writer_bind = self.engine.execution_options(sqlite_immediate=True) if self.is_sqlite else self.engine
        self._reader = sessionmaker(self.engine, expire_on_commit=False)
        self._writer = sessionmaker(writer_bind, expire_on_commit=False)
        self._writer_bind = writer_bind
        self._write_lock = threading.RLock() if self.is_sqlite else None
        self._busy_timeout_s = busy_timeout_ms / 1000
        #: called after a commit that changed cached subjects: ``(subjects, generation)``
        self.on_changes: list[Callable[[set[str], int], None]] = []
        #: called after a commit that wrote events, with the last event id (:mod:`app.core.outbox`)
        self.on_events: list[Callable[[int], None]] = []
        event.listen(self._writer, "before_commit", self._bump)
        event.listen(self._writer, "after_commit", self._announce)
        event.listen(self._writer, "after_rollback", self._forget)

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only unit of work. Closing it releases (rolls back) the connection;
        loaded objects stay readable, detached."""
        with self._reader() as s:
            yield s

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write unit of work: commit on success, roll back on error."""
        with self.writing(), self._writer() as s, s.begin():
            yield s

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Around every write transaction of this process (:meth:`write`, the sample log's
        committer): on SQLite, one at a time, queued on a lock that hands over the moment
        the previous one ends. SQLite itself lets a waiting writer sleep in its busy
        handler (1, 2, 5, 10 … ms, never woken early): measured with one-sample ``/update``
        beside 100 alias moves a second, those sleeps cost ingestion more than the moves'
        own work. Writers of other processes still meet SQLite's busy handler. A writer
        that waits longer than the busy timeout goes on to SQLite's own wait (what it did
        without this lock), so a wait here can never deadlock. PostgreSQL: nothing."""
        lock = self._write_lock
        if lock is None:
            yield
            return
        got = lock.acquire(timeout=self._busy_timeout_s)
        try:
            yield
        finally:
            if got:
                lock.release()

    def _bump(self, s: Session) -> None:
        """Before a commit: the cache generation, then the events (their counter last of all)."""
        self._bump_generation(s)
        outbox.write_events(s)

    def _bump_generation(self, s: Session) -> None:
        """The cache generation and its marks, on the driver's cursor (two statements, no
        SQLAlchemy compilation: every change transaction runs them)."""
        subjects = s.info.get(CHANGES)
        if not subjects:
            return
        conn = s.connection()
        q = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cur.execute("UPDATE cache_generation SET value = value + 1 WHERE id = 1 RETURNING value")
            g = int(cur.fetchone()[0])
            cur.executemany(
                f"INSERT INTO cache_marks (subject, generation) VALUES ({q}, {q}) "
                "ON CONFLICT (subject) DO UPDATE SET generation = excluded.generation",
                [(subject, g) for subject in sorted(subjects)],
            )
        finally:
            cur.close()
        s.info[GENERATION] = g

    def _announce(self, s: Session) -> None:
        last_event = s.info.pop(outbox.LAST_ID, None)
        if last_event is not None:
            for cb in self.on_events:
                try:
                    cb(last_event)
                except Exception:  # the commit stands; readers poll as well
                    logging.getLogger("steward.db").exception("an on_events callback failed")
        subjects = s.info.pop(CHANGES, None)
        g = s.info.pop(GENERATION, None)
        if subjects and g is not None:
            for fn in self.on_changes:
                try:
                    fn(set(subjects), g)
                except Exception:  # the commit stands; a cache that missed it is refreshed by its poller
                    logging.getLogger("steward.db").exception("an on_changes callback failed")

    @staticmethod
    def _forget(s: Session) -> None:
        s.info.pop(CHANGES, None)
        s.info.pop(GENERATION, None)
        s.info.pop(outbox.PENDING, None)
        s.info.pop(outbox.LAST_ID, None)

    def writer_connection(self) -> sa.Connection:
        """A Core connection for a writer that keeps it (the sample-log committer): its
        transactions begin as :meth:`write`'s do (``BEGIN IMMEDIATE`` on SQLite), inside
        :meth:`writing`. Cache
        marks (:func:`mark_changed`) are for sessions; what this connection writes needs none."""
        return self._writer_bind.connect()

    def ping(self) -> None:
        with self.engine.connect() as c:
            c.exec_driver_sql("SELECT 1")

    def dispose(self) -> None:
        self.engine.dispose()
