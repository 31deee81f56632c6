"""Delivery files, checked without a Docker engine: the Dockerfile's and compose file's
settings, the exact commands they run (``steward serve --host 0.0.0.0`` on PostgreSQL,
the HEALTHCHECK command), and ``scripts/run`` as the README gives it."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN, auth
from tests.test_cli import env_for, free_port, stop, wait_ready

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def healthcheck_command() -> str:
    [(_, args)] = [i for i in dockerfile_instructions() if i[0] == "HEALTHCHECK"]
    return args.split(" CMD ", 1)[1]


def test_dockerfile_settings():
    ins = dockerfile_instructions()
    assert ins[0] == ("FROM", "python:3.11-slim")
    users = [a for w, a in ins if w == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(w == "HEALTHCHECK" and "/healthz" in a and "urllib" in a for w, a in ins)
    [cmd] = [a for w, a in ins if w == "CMD"]
    assert cmd == '["steward", "serve", "--host", "0.0.0.0"]'
    copied = " ".join(a for w, a in ins if w == "COPY")
    for needed in ("pyproject.toml", "README.md", "app", "migrations"):
        assert needed in copied
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored and "data" in ignored


def test_compose_file():
    yaml = pytest.importorskip("yaml")
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    pg, st = spec["services"]["postgres"], spec["services"]["steward"]
    assert pg["image"] == "postgres:16"
    assert any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"])
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert st["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    url = st["environment"]["STEWARD_DATABASE_URL"]
    assert url.startswith("postgresql+psycopg://") and "@postgres:5432/" in url
    assert "/healthz" in " ".join(st["healthcheck"]["test"])
    assert set(spec["volumes"]) >= {v.split(":")[0] for v in pg["volumes"] + st["volumes"]}


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_image_command_on_postgres_and_its_healthcheck(db_url, tmp_path):
    """What the compose file runs: ``steward serve --host 0.0.0.0`` with a PostgreSQL URL
    (the SQLite case is covered in test_cli), probed by the Dockerfile's HEALTHCHECK."""
    port = free_port()
    env = env_for(tmp_path, STEWARD_DATABASE_URL=db_url, STEWARD_PORT=str(port), STEWARD_ADMIN_KEY=ADMIN)
    probe = ["sh", "-c", healthcheck_command()]
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--host", "0.0.0.0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/readyz")
        assert subprocess.run(probe, env=env, capture_output=True, timeout=30).returncode == 0
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/models",
            json={"name": "m", "task": "regression", "input_dim": 2},
            headers=auth(),
        )
        assert r.status_code == 201, r.text
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert subprocess.run(probe, env=env, capture_output=True, timeout=30).returncode != 0


def test_scripts_are_wired():
    for name in ("scripts/run", "scripts/test", "scripts/bench", ".ci/run"):
        path = ROOT / name
        assert path.stat().st_mode & 0o111, f"{name} is not executable"
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    assert "scripts/test" in (ROOT / ".ci/run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/run" in readme and "bash scripts/test" in readme and "bash scripts/bench" in readme


def test_scripts_run_serves_on_sqlite(tmp_path):
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("no .venv in the repository (scripts/run would create one)")
    port = free_port()
    cmd = ["bash", str(ROOT / "scripts" / "run"), "--port", str(port), "--no-worker", "--no-learner"]
    proc = subprocess.Popen(cmd, env=env_for(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/readyz", timeout=180)
        assert httpx.get(f"http://127.0.0.1:{port}/openapi.json").status_code == 200
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert (tmp_path / "data" / "steward.db").exists(), shlex.join(cmd)


def test_readme_documents_every_setting():
    from app.core.settings import Settings

    readme = (ROOT / "README.md").read_text()
    missing = [f"STEWARD_{n.upper()}" for n in Settings.model_fields if f"`STEWARD_{n.upper()}`" not in readme]
    assert not missing, f"add these to README.md's configuration table: {missing}"
