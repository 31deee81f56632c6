"""Delivery files, checked against the code they drive, without a Docker engine.

The Dockerfile's CMD (and compose's command) is the ``steward`` console script and parses
with :func:`app.cli.build_parser`; run in process with the environment the image and the
compose file give (uvicorn stubbed), it listens on every interface at the port that is
exposed, published and probed, keeps its data on the declared volume, reaches the compose
PostgreSQL service with that service's credentials, and takes its admin key from the
environment only when one is set. Every ``STEWARD_*`` name in the README, the Dockerfile or
the compose file is a :class:`~app.core.settings.Settings` variable, the README's
configuration table gives the real defaults, and its command table is the parser's. Two
tests run the real thing: the image's command on PostgreSQL probed by the HEALTHCHECK, and
``scripts/run`` on SQLite."""

from __future__ import annotations

import argparse
import fnmatch
import functools
import importlib
import ipaddress
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
import yaml  # PyYAML: a dependency of schemathesis, which the test extra installs
from fastapi.testclient import TestClient
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from setuptools import find_namespace_packages
from sqlalchemy.engine import make_url

import app.cli
from app.core.settings import Settings
from app.keys.service import KeyService
from app.main import create_app
from tests.conftest import ADMIN, auth
from tests.test_cli import env_for, free_port, stop, wait_ready

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()
README = (ROOT / "README.md").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PREFIX = Settings.model_config["env_prefix"]
SETTING_VARS = {f"{PREFIX}{name.upper()}": name for name in Settings.model_fields}
# the only STEWARD_* variable that is no setting: the tests' PostgreSQL server (tests/conftest.py)
TEST_VARS = {"STEWARD_TEST_POSTGRES_URL"}
#: What the task commands (the Python client's CLI) read: where the service is, not settings of it.
CLIENT_VARS = {"STEWARD_URL", "STEWARD_KEY", "STEWARD_PROFILE", "STEWARD_CONFIG"}


# --------------------------------------------------------------------------- parsing helpers
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


def instruction_args(word: str) -> list[str]:
    return [a for w, a in dockerfile_instructions() if w == word]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in instruction_args("ENV"):
        for item in shlex.split(args):
            name, eq, value = item.partition("=")
            assert eq, f"ENV {args!r}: use the NAME=value form"
            env[name] = value
    return env


def image_command() -> list[str]:
    """The CMD in exec form (a JSON list): the server is PID 1 and gets docker stop's SIGTERM."""
    [cmd] = instruction_args("CMD")
    argv = json.loads(cmd)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), cmd
    return argv


def healthcheck_command() -> str:
    [args] = instruction_args("HEALTHCHECK")
    return args.split(" CMD ", 1)[1]


def interpolate(value: str, environ: dict[str, str]) -> tuple[str, set[str]]:
    """Compose's ``${VAR}``, ``${VAR-default}`` and ``${VAR:-default}``; the value and the
    variables it reads."""
    names: set[str] = set()

    def sub(m: re.Match[str]) -> str:
        name, op, default = m.group(1), m.group(2), m.group(3) or ""
        names.add(name)
        if op == ":-":
            return environ.get(name) or default
        if op == "-":
            return environ.get(name, default)
        return environ.get(name, "")

    out = re.sub(r"\$\{(\w+)(?:(:?-)([^}]*))?\}", sub, value)
    assert "$" not in out, f"compose syntax this test does not know: {value!r}"
    return out, names


def compose_env(service: str, environ: dict[str, str]) -> tuple[dict[str, str], set[str]]:
    env, names = {}, set()
    for key, raw in COMPOSE["services"][service].get("environment", {}).items():
        env[key], used = interpolate(str(raw), environ)
        names |= used
    return env, names


def container_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """What the steward container sees: the image's ENV, then compose's environment."""
    return dockerfile_env() | compose_env("steward", environ or {})[0]


def probe_url(command: str) -> str:
    [url] = re.findall(r"https?://[^'\"\s]+", command)
    return url


def parser_commands(parser: argparse.ArgumentParser) -> dict[tuple[str, ...], set[str]]:
    """{command path: its --options} for every leaf command of ``parser``."""
    out: dict[tuple[str, ...], set[str]] = {}

    def walk(p: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            out[path] = {o for a in p._actions for o in a.option_strings if o.startswith("--") and o != "--help"}
        for sub in subs:
            for name, child in sub.choices.items():
                walk(child, (*path, name))

    walk(parser, ())
    return out


def readme_table(heading: str) -> list[list[str]]:
    """The cells of the rows of the first table after ``## heading``."""
    section = README.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[c.strip() for c in row.strip("|").split(" | ")] for row in rows[2:]]  # past header and rule


# --------------------------------------------------------------------------- the image's command
def test_image_and_compose_run_steward_serve():
    argv = image_command()
    scripts = PYPROJECT["project"]["scripts"]
    assert argv[0] in scripts, f"{argv[0]!r} is no console script of pyproject.toml: {scripts}"
    module, _, attr = scripts[argv[0]].partition(":")
    assert getattr(importlib.import_module(module), attr) is app.cli.main
    args = app.cli.build_parser().parse_args(argv[1:])  # SystemExit on an unknown command or option
    assert args.func is app.cli.cmd_serve
    assert ipaddress.ip_address(args.host).is_unspecified  # reachable through the published port
    st = COMPOSE["services"]["steward"]
    assert st["build"] == "."  # this Dockerfile
    command = st.get("command", argv)  # compose keeps the image's CMD unless it names one
    command = shlex.split(command) if isinstance(command, str) else command
    assert app.cli.build_parser().parse_args(command[1:]).func is app.cli.cmd_serve


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No STEWARD_* variable and no .env: only what a test sets reaches Settings."""
    for name in [n for n in os.environ if n.startswith(PREFIX)]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    for var in app.cli.BLAS_THREAD_VARS:  # cmd_serve sets them when unset; undone after the test
        monkeypatch.setenv(var, os.environ.get(var, "1"))
    return monkeypatch


def serve_in_container(monkeypatch) -> tuple[Settings, dict]:
    """Run the image's command in process with the container's environment and uvicorn
    stubbed; the settings it serves with and uvicorn's keyword arguments."""
    for name, value in container_env().items():
        monkeypatch.setenv(name, value)
    seen: dict = {}

    def run(target, **kw):  # type: ignore[no-untyped-def]
        seen.update(target=target, **kw)

    monkeypatch.setattr(uvicorn, "run", run)
    assert app.cli.main(image_command()[1:]) == 0
    factory = seen.pop("target")
    assert isinstance(factory, functools.partial) and factory.func is create_app and seen.pop("factory") is True
    [settings] = factory.args
    return settings, seen


def test_container_listens_on_the_exposed_published_and_probed_port(clean_env, sqlite_url):
    settings, kw = serve_in_container(clean_env)
    assert ipaddress.ip_address(kw["host"]).is_unspecified
    port = kw["port"]
    assert port == settings.port
    assert [int(p.split("/")[0]) for a in instruction_args("EXPOSE") for p in a.split()] == [port]
    published = [str(p).rsplit(":", 1)[-1] for p in COMPOSE["services"]["steward"]["ports"]]
    assert published and all(int(p) == port for p in published)
    # the image's probe reads the port from the setting's variable, with the setting's default
    [(var, default)] = re.findall(r"os\.environ\.get\('(\w+)', '(\d+)'\)", healthcheck_command())
    assert SETTING_VARS[var] == "port" and int(default) == Settings.model_fields["port"].default
    compose_probe = probe_url(" ".join(COMPOSE["services"]["steward"]["healthcheck"]["test"]))
    assert urlsplit(compose_probe).port == port
    # both probe a path that answers 200 without credentials on a started app
    paths = {urlsplit(compose_probe).path, urlsplit(probe_url(healthcheck_command()) % port).path}
    local = settings.model_copy(update={"database_url": sqlite_url, "data_dir": Path.cwd() / "data"})
    with TestClient(create_app(local)) as c:
        for path in paths:
            assert c.get(path).status_code == 200, path


def test_container_keeps_its_data_on_the_volume(clean_env):
    settings, _ = serve_in_container(clean_env)
    [volume] = [json.loads(a) for a in instruction_args("VOLUME")]
    assert [Path(v) for v in volume] == [settings.data_dir]
    mounts = dict(v.split(":", 1) for v in COMPOSE["services"]["steward"]["volumes"])
    assert Path(mounts["blobs"]) == settings.data_dir and "blobs" in COMPOSE["volumes"]
    # the image's non-root user owns it
    user = instruction_args("USER")[-1]
    assert user not in ("root", "0")
    owned = re.findall(r"chown\s+(\w+):\w+\s+(\S+)", " ".join(instruction_args("RUN")))
    assert (user, str(settings.data_dir)) in owned


def test_container_reaches_the_compose_postgres_service(clean_env):
    settings, _ = serve_in_container(clean_env)
    url = make_url(settings.url)
    assert url.drivername == "postgresql+psycopg"
    db = COMPOSE["services"][url.host]  # the host is the service's name
    pg_env, _ = compose_env(url.host, {})
    assert (url.username, url.password, url.database) == (
        pg_env["POSTGRES_USER"],
        pg_env["POSTGRES_PASSWORD"],
        pg_env["POSTGRES_DB"],
    )
    assert db["image"].startswith("postgres:") and "PGPORT" not in pg_env and url.port == 5432  # the server default
    assert COMPOSE["services"]["steward"]["depends_on"] == {url.host: {"condition": "service_healthy"}}
    probe = shlex.split(" ".join(db["healthcheck"]["test"][1:]))
    assert probe[0] == "pg_isready"
    assert probe[probe.index("-U") + 1] == url.username and probe[probe.index("-d") + 1] == url.database
    assert any(v.endswith(":/var/lib/postgresql/data") for v in db["volumes"])  # PGDATA of the image
    assert {v.split(":")[0] for v in db["volumes"]} <= set(COMPOSE["volumes"])
    # the image installs only the project's dependencies: the driver must be one
    assert url.get_dialect().driver in {Requirement(d).name for d in PYPROJECT["project"]["dependencies"]}


def test_compose_admin_key_comes_from_the_environment_only_when_set(clean_env):
    env, names = compose_env("steward", {})
    assert names <= set(SETTING_VARS), f"compose reads variables that are no setting: {names - set(SETTING_VARS)}"
    assert set(env) <= set(SETTING_VARS), f"compose sets variables that are no setting: {set(env) - set(SETTING_VARS)}"
    [var] = [n for n in names if SETTING_VARS[n] == "admin_key"]
    unset = KeyService(None, Settings(admin_key=env[var]).admin_key)  # type: ignore[arg-type]  # bootstrap() needs no database
    assert unset.bootstrap(env[var]) is None and unset.bootstrap(ADMIN) is None  # a key is generated instead
    env, _ = compose_env("steward", {var: ADMIN})
    given = KeyService(None, Settings(admin_key=env[var]).admin_key)  # type: ignore[arg-type]
    assert given.bootstrap(ADMIN).scope == "admin" and given.bootstrap("stw_other") is None


# --------------------------------------------------------------------------- the image's build
def test_dockerfile_builds_the_package_it_runs():
    [base] = instruction_args("FROM")
    image, _, tag = base.partition(":")
    assert image == "python"
    assert SpecifierSet(PYPROJECT["project"]["requires-python"]).contains(tag.split("-")[0])
    assert {n for n in dockerfile_env() if n.startswith(PREFIX)} <= set(SETTING_VARS)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", ".env", "data"} <= set(ignored)  # no environment, secrets or data in the image
    copied = set()
    for args in instruction_args("COPY"):
        *sources, _ = shlex.split(args)
        for src in sources:
            assert (ROOT / src).exists(), src
            hit = [p for p in ignored if fnmatch.fnmatch(src, p) or fnmatch.fnmatch(src, p.removeprefix("**/"))]
            assert not hit, f"COPY {src}: excluded by .dockerignore {hit}"
            copied.add(src)
    # `pip install .` needs pyproject, its readme and every package setuptools finds
    find = PYPROJECT["tool"]["setuptools"]["packages"]["find"]
    packages = {p.split(".")[0] for p in find_namespace_packages(str(ROOT), include=find["include"])}
    assert {"app", "migrations"} <= packages
    assert {"pyproject.toml", PYPROJECT["project"]["readme"], *packages} <= copied


# --------------------------------------------------------------------------- the README
def test_readme_names_only_real_settings():
    named = set(re.findall(r"\bSTEWARD_\w+", README + DOCKERFILE + (ROOT / "docker-compose.yml").read_text()))
    named -= CLIENT_VARS
    assert named - TEST_VARS <= set(SETTING_VARS), f"not settings: {sorted(named - TEST_VARS - set(SETTING_VARS))}"
    cli = (ROOT / "clients" / "python" / "steward_client" / "cli.py").read_text()
    assert all(f'"{v}"' in cli for v in CLIENT_VARS)
    conftest = (ROOT / "tests" / "conftest.py").read_text()
    assert all(f'os.environ.get("{v}"' in conftest for v in TEST_VARS)


def test_readme_documents_every_setting():
    missing = [var for var in SETTING_VARS if f"`{var}`" not in README]
    assert not missing, f"add these to README.md's configuration table: {missing}"


def test_readme_configuration_table_gives_the_real_defaults(clean_env):
    documented: dict[str, str | None] = {}
    for name_cell, _, default_cell in readme_table("Configuration"):
        names = re.findall(r"`(STEWARD_\w+)`", name_cell)
        values = re.findall(r"`([^`]*)`", default_cell) if default_cell.startswith("`") else [None] * len(names)
        assert len(values) == len(names), (name_cell, default_cell)
        documented |= dict(zip(names, values, strict=True))
    assert set(documented) == set(SETTING_VARS)
    default = Settings()
    for var, value in documented.items():
        if value is not None:
            clean_env.setenv(var, value)
    from_readme = Settings()  # each variable set to the README's default
    for var, value in documented.items():
        field = SETTING_VARS[var]
        if value is None:  # described in words ("none: …"): no value set
            assert getattr(default, field) is None, var
        assert getattr(from_readme, field) == getattr(default, field), (var, value)


def test_readme_command_table_is_the_parser():
    documented: dict[tuple[str, ...], set[str]] = {}
    for command_cell, _ in readme_table("Command line"):
        path: tuple[str, ...] = ()
        for snippet in re.findall(r"`([^`]*)`", command_cell):
            words = snippet.split()
            if words[0] == "steward":
                words, path = words[1:], ()
            else:  # `steward db upgrade` / `downgrade REV`: another action of the same command
                path = path[:-1]
            taken = 0
            for word in words:
                if not re.fullmatch(r"[a-z][a-z-]*", word):
                    break
                taken += 1
            path = (*path, *words[:taken])
            documented[path] = set(re.findall(r"--[a-z][\w-]*", snippet))
    parser = app.cli.build_parser()
    # options every task command takes, documented once ("Every task command also takes …")
    common = set(re.findall(r"`(--[a-z][\w-]*)`", README.split("Every task command also takes", 1)[1].split(":", 1)[0]))
    assert common == {"--url", "--key", "--profile"}
    actual = {path: opts - common if common <= opts else opts for path, opts in parser_commands(parser).items()}
    assert documented == actual
    for option in (o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"):
        assert f"`{option}`" in README, option  # the global options


# --------------------------------------------------------------------------- scripts
def test_scripts_are_wired():
    named = set(re.findall(r"\bbash (scripts/\w+)", README))
    ci = (ROOT / ".ci" / "run").read_text()
    run_by_ci = set(re.findall(r"\bbash (scripts/\w+)", ci))
    assert run_by_ci == {"scripts/test"} and run_by_ci <= named  # CI runs the README's test command
    for name in sorted(named | {".ci/run"}):
        path = ROOT / name
        assert path.stat().st_mode & 0o111, f"{name} is not executable"
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0, name


# --------------------------------------------------------------------------- real processes
@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_image_command_on_postgres_and_its_healthcheck(db_url, tmp_path):
    """The image's command with the container's environment, the database, data directory
    and port swapped for the test's, probed by the Dockerfile's HEALTHCHECK (the SQLite
    case is covered in test_cli)."""
    port = free_port()
    env = env_for(tmp_path) | container_env({"STEWARD_ADMIN_KEY": ADMIN})
    env |= {"STEWARD_DATABASE_URL": db_url, "STEWARD_PORT": str(port), "STEWARD_DATA_DIR": str(tmp_path / "data")}
    probe = ["sh", "-c", healthcheck_command()]
    # the console script named by CMD is app.cli:main (test_image_and_compose_run_steward_serve)
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", *image_command()[1:]],
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
