"""Shared fixtures. Storage tests run on SQLite and on PostgreSQL: each
PostgreSQL test gets a schema of its own (``search_path``), so runs never collide.

``STEWARD_TEST_POSTGRES_URL`` names the server (default: the local one at
127.0.0.1:5432, database ``test``); set it to an empty string to skip PostgreSQL.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.core.settings import Settings
from app.main import create_app

ADMIN = "test-admin-key-0123456789"
PG_URL = os.environ.get("STEWARD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def auth(key: str = ADMIN) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="session")
def pg_server() -> str:
    if not PG_URL:
        pytest.skip("STEWARD_TEST_POSTGRES_URL is empty: PostgreSQL tests skipped")
    eng = sa.create_engine(PG_URL)
    try:
        with eng.connect() as c:
            c.exec_driver_sql("SELECT 1")
    except Exception as e:  # pragma: no cover - depends on the machine
        pytest.fail(f"PostgreSQL at {PG_URL} is not reachable: {e}")
    finally:
        eng.dispose()
    return PG_URL


def _pg_schema_url(base: str) -> Iterator[str]:
    schema = "t_" + uuid.uuid4().hex[:12]
    eng = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with eng.connect() as c:
            c.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        eng.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'steward.db'}"
    else:
        base = request.getfixturevalue("pg_server")
        yield from _pg_schema_url(base)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'steward.db'}"


@pytest.fixture
def make_settings(tmp_path: Path, db_url: str):  # type: ignore[no-untyped-def]
    def make(**kw: object) -> Settings:
        base: dict[str, object] = {
            "data_dir": tmp_path / "data",
            "database_url": db_url,
            "admin_key": ADMIN,
            "worker_poll_seconds": 0.02,
            "learner_poll_seconds": 0.01,
            # the learner thread in the test process (tests drive it); its own process is
            # tested in tests/test_learner_process.py
            "learner_process": False,
            # process-wide; tested on its own in tests/test_main.py
            "gc_tuning": False,
        }
        base.update(kw)
        return Settings(**base)  # type: ignore[arg-type]

    return make


@pytest.fixture
def settings(make_settings) -> Settings:  # type: ignore[no-untyped-def]
    return make_settings()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A client of a fully started app (lifespan run) with the admin key set."""
    with TestClient(create_app(settings), headers=auth()) as c:
        yield c


@pytest.fixture
def anon(settings: Settings) -> Iterator[TestClient]:
    """A client without credentials."""
    with TestClient(create_app(settings)) as c:
        yield c
