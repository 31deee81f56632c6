"""Run Alembic programmatically (start-up, ``steward db upgrade``, tests).

**Start-up is serialised.** Several processes may start at once on one fresh database
(``steward serve --workers N``, a gunicorn / uvicorn supervisor, an API beside
``steward worker`` processes). Each brings the schema to the newest revision and makes
the bootstrap admin key under :func:`startup_lock`, so the migrations run once (the
others find the schema current) and one admin key is made, not N:

* PostgreSQL: a session advisory lock (``pg_advisory_lock``) keyed by the schema the
  connection works in, held on a connection of its own;
* SQLite: an exclusive ``flock`` on ``<database file>-startup.lock`` beside the database
  (processes sharing one SQLite file share one machine);
* an in-memory SQLite database belongs to one process: no lock.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

import migrations

SCRIPT_LOCATION = Path(migrations.__file__).resolve().parent
#: The PostgreSQL advisory lock of start-up: one per schema, so deployments (and test
#: runs) in other schemas of the same database never wait for each other.
LOCK_KEY = "SELECT hashtextextended('steward-startup:' || coalesce(current_schema(), ''), 0)"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@contextmanager
def startup_lock(url: str) -> Iterator[None]:
    """Hold the start-up lock of the database at ``url`` (see the module docstring).
    Not reentrant: a second acquisition in the same process waits for the first."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        path = u.database or ""
        if path in ("", ":memory:") or path.startswith("file:"):
            yield
            return
        lock = Path(f"{path}-startup.lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        with lock.open("a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # released when the file closes
            yield
        return
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            key = c.execute(sa.text(LOCK_KEY)).scalar()
            c.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                c.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (default: the newest), holding the
    start-up lock."""
    with startup_lock(url):
        command.upgrade(alembic_config(url), revision)


@contextmanager
def upgraded(url: str) -> Iterator[None]:
    """What a starting process does first: take the start-up lock, bring the schema to
    the newest revision, and keep the lock until the block ends (for the bootstrap
    admin key)."""
    with startup_lock(url):
        command.upgrade(alembic_config(url), "head")
        yield


def downgrade(url: str, revision: str) -> None:
    with startup_lock(url):
        command.downgrade(alembic_config(url), revision)
