"""Start-up of several processes at once on one fresh database (SQLite and PostgreSQL),
with no supervisor preparing it (``uvicorn --workers``, gunicorn, an API beside
``steward worker``s): the start-up lock makes them migrate it once and make one
bootstrap admin key, shown once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from tests.online_helpers import ROOT


def environment(db_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEWARD_") or k == "STEWARD_TEST_POSTGRES_URL"}
    return env | {
        "STEWARD_DATABASE_URL": db_url,
        "STEWARD_DATA_DIR": str(data_dir),
        "STEWARD_LEARNER_POLL_SECONDS": "0.01",
        "STEWARD_WORKER_POLL_SECONDS": "0.05",
        **extra,
    }


def query(db_url: str, sql: str, **params: object) -> list[tuple]:
    eng = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    try:
        with eng.connect() as c:
            return [tuple(r) for r in c.execute(sa.text(sql), params)]
    finally:
        eng.dispose()


STARTUP = """
import sys
from fastapi.testclient import TestClient
from app.core.settings import Settings
from app.main import create_app
with TestClient(create_app(Settings())) as c:
    assert c.get("/readyz").status_code == 200
"""


def test_processes_starting_at_once_on_a_fresh_database_migrate_once_and_make_one_admin_key(db_url, tmp_path):
    env = environment(db_url, tmp_path / "data", STEWARD_RUN_WORKER="false", STEWARD_RUN_LEARNER="false")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", STARTUP], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(3)
    ]
    errs = []
    for p in procs:
        _, err = p.communicate(timeout=120)
        errs.append(err.decode())
        assert p.returncode == 0, err.decode()[-3000:]
    assert sum(e.count("shown ONCE") for e in errs) == 1, errs
    assert query(db_url, "SELECT count(*) FROM api_keys WHERE scope = 'admin'") == [(1,)]
