"""The ``steward`` command: db, keys (on both databases, in process) and serve / worker
(real processes: uvicorn on a free port; ``uvicorn app.main:app`` as well)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import httpx
import numpy as np
import pytest
import safetensors.numpy as stnp
from alembic.script import ScriptDirectory

from app.cli import build_parser, main
from app.core.db import Database
from app.core.migrations import alembic_config
from app.keys.service import KeyService
from tests.conftest import ADMIN, auth


@pytest.fixture
def run(db_url, tmp_path, capsys):
    """``run(*args)`` → (exit status, stdout, stderr) of ``steward --database-url … ARGS``."""

    def go(*args: str) -> tuple[int, str, str]:
        code = main(["--database-url", db_url, "--data-dir", str(tmp_path / "data"), *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return go


def test_entry_point_is_declared():
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    if "steward" not in scripts:
        pytest.skip("the project is not installed (pip install -e .)")
    assert scripts["steward"] == "app.cli:main"


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for cmd in ("serve", "worker", "db", "keys"):
        assert cmd in text


def test_db_upgrade_current_check_downgrade(run, db_url):
    head = ScriptDirectory.from_config(alembic_config(db_url)).get_current_head()
    code, out, _ = run("db", "current")
    assert code == 3 and out.startswith("base")
    code, out, _ = run("db", "upgrade")
    assert code == 0 and f"is at {head}" in out
    code, out, _ = run("db", "current")
    assert code == 0 and "up to date" in out
    code, out, _ = run("db", "check")
    assert code == 0 and "agree" in out
    code, out, _ = run("db", "downgrade", "base")
    assert code == 0 and "is at base" in out
    assert run("db", "current")[0] == 3
    assert run("db", "upgrade", "0001")[0] == 0
    code, out, _ = run("db", "current")
    assert code == 3 and out.startswith("0001")  # behind the head


def test_keys_create_list_revoke(run, db_url):
    code, out, _ = run("keys", "create", "--name", "checkout", "--scope", "ingest", "--model", "churn", "--json")
    assert code == 0
    made = json.loads(out)
    assert made["scope"] == "ingest" and made["models"] == ["churn"] and made["key"].startswith("stw_")
    code, out, _ = run("keys", "create", "--name", "ops", "--scope", "admin")
    assert code == 0 and "shown once" in out
    admin_secret = out.strip().splitlines()[-1]

    db = Database(db_url)
    try:
        p = KeyService(db, None).authenticate(made["key"])
        assert (p.scope, p.models) == ("ingest", ("churn",))
        assert KeyService(db, None).authenticate(admin_secret).scope == "admin"
    finally:
        db.dispose()

    code, out, _ = run("keys", "list", "--json")
    listed = json.loads(out)
    assert {k["name"] for k in listed} == {"checkout", "ops"}
    assert made["key"] not in out and admin_secret not in out
    code, out, _ = run("keys", "list")
    assert code == 0 and "checkout (churn)" in out and made["key"] not in out

    code, out, _ = run("keys", "revoke", made["id"])
    assert code == 0 and made["id"] in out
    assert [k["name"] for k in json.loads(run("keys", "list", "--json")[1])] == ["ops"]
    code, _, err = run("keys", "revoke", made["id"])
    assert code == 1 and "no API key" in err


def test_read_commands_never_create_a_database(tmp_path, monkeypatch, capsys):
    """`steward keys list` (or revoke, db current, db check) where no database exists says
    which one it looked for and creates nothing."""
    monkeypatch.chdir(tmp_path)
    for var in ("STEWARD_DATA_DIR", "STEWARD_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    expected = tmp_path / "data" / "steward.db"
    for argv, code in ((["keys", "list"], 1), (["keys", "revoke", "abc"], 1), (["db", "check"], 1)):
        assert main(argv) == code, argv
        err = capsys.readouterr().err
        assert f"no database at {expected}" in err and "STEWARD_DATA_DIR" in err, err
    assert main(["db", "current"]) == 3
    assert f"no database yet at {expected}" in capsys.readouterr().out
    assert not expected.exists() and not (tmp_path / "data").exists()
    # a database that exists but holds no schema (an empty file) is refused too
    (tmp_path / "data").mkdir()
    expected.touch()
    assert main(["keys", "list"]) == 1 and "holds no Steward schema" in capsys.readouterr().err


def test_keys_create_refuses_bad_input(run, capsys):
    code, _, err = run("keys", "create", "--name", "x", "--scope", "read", "--model", "Not A Name")
    assert code == 1 and "models.0" in err
    with pytest.raises(SystemExit) as e:
        main(["keys", "create", "--name", "x", "--scope", "root"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_invalid_configuration_is_reported(capsys, tmp_path):
    assert main(["--database-url", "mysql://x/y", "--data-dir", str(tmp_path), "keys", "list"]) == 2
    assert "invalid configuration" in capsys.readouterr().err


# --------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready after {timeout} s")


def stop(proc: subprocess.Popen) -> tuple[int, str]:
    """SIGTERM, then the exit status (uvicorn re-raises the signal after a graceful
    shutdown: -SIGTERM counts as a clean exit) and stderr."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    code = 0 if proc.returncode == -signal.SIGTERM else proc.returncode
    return code, proc.stderr.read().decode()


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEWARD_")}
    return env | {"STEWARD_DATA_DIR": str(tmp_path / "data")} | extra


def test_serve_runs_the_api_on_sqlite_and_generates_an_admin_key(tmp_path):
    port = free_port()
    cmd = [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--no-worker", "--no-learner"]
    proc = subprocess.Popen(cmd, env=env_for(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, f"{base}/readyz")
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
        assert httpx.get(f"{base}/v1/models").status_code == 401
    finally:
        code, err = stop(proc)
    assert code == 0 and "Application shutdown complete" in err, err
    secret = next(w for w in err.split() if w.startswith("stw_"))
    assert "shown ONCE" in err and "serving on" in err
    assert (tmp_path / "data" / "steward.db").exists()
    proc = subprocess.Popen(cmd, env=env_for(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_ready(proc, f"{base}/readyz")
        spec = {"name": "m", "task": "binary", "input_dim": 2}
        r = httpx.post(f"{base}/v1/models", json=spec, headers=auth(secret))
        assert r.status_code == 201, r.text
        r = httpx.post(f"{base}/v1/models/m/predict", json={"inputs": [[1, 2]]}, headers=auth(secret))
        assert r.status_code == 200, r.text
        t = stnp.load(httpx.get(f"{base}/v1/models/m/versions/1/weights", headers=auth(secret)).content)
        z = t["layers.0.weight"].astype(np.float64) @ [1.0, 2.0] + t["layers.0.bias"]  # a logistic unit
        assert r.json()["labels"] == [int(z[0] > 0)]
    finally:
        code, err = stop(proc)
    assert code == 0 and "shown ONCE" not in err


def test_a_lost_admin_key_is_replaced_on_the_server_machine(tmp_path, capsys):
    """The README's recovery (Operations): with the generated admin key lost, `steward keys
    create --scope admin` on the service's database makes another, which the running service
    accepts at once, and `keys revoke` of the lost one makes the service refuse it."""
    port = free_port()
    cmd = [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--no-worker", "--no-learner"]
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, env=env_for(tmp_path), stdout=subprocess.DEVNULL, stderr=err)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, f"{base}/readyz")
        lost = next(w for w in log.read_text().split() if w.startswith("stw_"))
        data = ["--data-dir", str(tmp_path / "data"), "--database-url", f"sqlite:///{tmp_path / 'data' / 'steward.db'}"]
        assert main([*data, "keys", "create", "--name", "admin-2", "--scope", "admin", "--json"]) == 0
        new = json.loads(capsys.readouterr().out)["key"]
        assert httpx.get(f"{base}/v1/keys", headers={"Authorization": f"Bearer {new}"}).status_code == 200
        assert main([*data, "keys", "list", "--json"]) == 0
        keys = {k["name"]: k["id"] for k in json.loads(capsys.readouterr().out)}
        assert set(keys) == {"bootstrap-admin", "admin-2"}
        assert main([*data, "keys", "revoke", keys["bootstrap-admin"]]) == 0
        assert httpx.get(f"{base}/v1/keys", headers={"Authorization": f"Bearer {lost}"}).status_code == 401
        assert httpx.get(f"{base}/v1/keys", headers={"Authorization": f"Bearer {new}"}).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_uvicorn_serves_app_main_app(tmp_path):
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port)]
    env = env_for(tmp_path, STEWARD_ADMIN_KEY=ADMIN, STEWARD_RUN_WORKER="false", STEWARD_RUN_LEARNER="false")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/readyz")
        assert httpx.get(f"http://127.0.0.1:{port}/v1/keys", headers=auth()).status_code == 200
    finally:
        code, err = stop(proc)
    assert code == 0, err


def test_worker_command_starts_and_stops_gracefully(tmp_path):
    cmd = [sys.executable, "-m", "app.cli", "worker"]
    proc = subprocess.Popen(cmd, env=env_for(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not (tmp_path / "data" / "steward.db").exists() and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.1)
    time.sleep(0.5)
    code, err = stop(proc)
    assert code == 0, err


BLAS_PROBE = """
import sys
import uvicorn
def report(*a, **k):
    import threadpoolctl
    print(max(i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"))
uvicorn.run = report
from app.cli import main
main(["serve", "--no-worker", "--no-learner"])
"""


@pytest.mark.parametrize(
    ("extra", "want"),
    [({}, 1), ({"STEWARD_BLAS_THREADS": "2"}, 2), ({"OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}, 2)],
)
def test_serve_sets_the_blas_threads_before_numpy_loads(tmp_path, extra, want):
    pytest.importorskip("threadpoolctl")
    if want > (os.cpu_count() or 1):
        pytest.skip("OpenBLAS caps its threads at the number of CPUs")
    env = {
        k: v
        for k, v in env_for(tmp_path, **extra).items()
        if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS") or k in extra
    }
    out = subprocess.run([sys.executable, "-c", BLAS_PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) == want, out.stdout


def test_serve_workers_runs_the_app_factory_with_the_options_in_the_environment(monkeypatch, tmp_path, db_url):
    """``--workers N``: the supervisor migrates, makes the admin key, and hands uvicorn the
    factory's import string; the processes it spawns read the options from the environment."""
    import uvicorn

    from app.core.settings import Settings

    env = {k: v for k, v in os.environ.items() if not k.startswith("STEWARD_")}
    monkeypatch.setattr(os, "environ", env)  # what the command exports stays in this dict
    monkeypatch.chdir(tmp_path)  # no .env
    seen: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda target, **kw: seen.update(target=target, **kw))
    data = tmp_path / "d"
    argv = ["--data-dir", str(data), "--database-url", db_url, "serve", "--workers", "3", "--no-learner"]
    argv += ["--port", "9123"]
    assert main(argv) == 0
    assert seen["target"] == "app.main:create_app" and seen["factory"] is True
    assert seen["workers"] == 3 and seen["port"] == 9123
    child = Settings()  # what each spawned process builds
    assert (child.data_dir, child.url, child.run_learner, child.run_worker) == (data, db_url, False, True)
    db = Database(db_url)
    try:
        assert KeyService(db, None).page(cursor=None, limit=10)[0][0].scope == "admin"  # made before forking
    finally:
        db.dispose()
