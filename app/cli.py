"""The ``steward`` command.

::

    steward serve [--host H] [--port P] [--workers N] [--no-worker] [--no-learner]
    steward worker [--concurrency N]
    steward db upgrade [REV] | downgrade REV | current | check
    steward keys create --name N --scope S [--model M ...] [--json]
    steward keys list [--json]
    steward keys revoke ID

Configuration comes from ``STEWARD_*`` variables and ``.env`` (see ``app/core/settings.py``);
``--data-dir`` and ``--database-url`` override the two most common ones. The ``db``
and ``keys`` commands work on the database directly, through the same services the
API uses; ``keys`` brings the schema to the newest revision first, as start-up does.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.core.settings import Settings

SCOPES = ("read", "ingest", "maintain", "admin")


class CommandError(Exception):
    """A failure to report on stderr with exit status 1 (no traceback)."""


def load_settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    given = {k: v for k, v in {"data_dir": args.data_dir, "database_url": args.database_url}.items() if v is not None}
    return Settings(**given, **overrides)


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# --------------------------------------------------------------------------- serve / worker
BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def limit_blas_threads(n: int) -> None:
    """Give the BLAS library ``n`` threads (``STEWARD_BLAS_THREADS``) unless the
    environment already chose. Must run before numpy is imported: the thread pool is
    made then. A service process runs the event loop, the learner and a job at once,
    and small matrices gain nothing from BLAS threads that spin while they compete
    for the same cores."""
    for var in BLAS_THREAD_VARS:
        os.environ.setdefault(var, str(n))


#: What the processes of ``steward serve --workers N`` serve: uvicorn's supervisor needs
#: an import string; each process builds its app from the environment (``Settings()``).
APP_FACTORY = "app.main:create_app"
HEALTHCHECK_SECONDS = 30


def export_settings(settings: Settings, names: Sequence[str]) -> None:
    """Put the settings ``names`` (given on the command line) into this process's
    environment as ``STEWARD_*`` variables, where the API processes that the supervisor
    spawns read them (they build their own :class:`Settings`)."""
    prefix = Settings.model_config.get("env_prefix", "STEWARD_")
    for name in names:
        value = settings.url if name == "database_url" else getattr(settings, name)
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        os.environ[f"{prefix}{name.upper()}"] = text


def prepare(settings: Settings) -> None:
    """What the supervisor of several API processes does once, before it starts them:
    migrate the database and make (and show) the bootstrap admin key. The processes
    then find both done. (Each still does it under the start-up lock, so processes
    started by another supervisor are just as safe.)"""
    from app.core.db import Database
    from app.core.migrations import upgraded
    from app.keys.service import KeyService

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with upgraded(settings.url):
        db = Database(settings.url, busy_timeout_ms=settings.sqlite_busy_timeout_ms)
        try:
            secret = KeyService(db, settings.admin_key).ensure_admin()
        finally:
            db.dispose()
    if secret:
        from app.main import announce_admin_key  # only then: the supervisor stays small

        announce_admin_key(secret)


def cmd_serve(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.workers is not None:
        overrides["workers"] = args.workers
    if args.no_worker:
        overrides["run_worker"] = False
    if args.no_learner:
        overrides["run_learner"] = False
    settings = load_settings(args, **overrides)
    limit_blas_threads(settings.blas_threads)
    import uvicorn

    n = settings.workers
    print(
        f"steward: serving on http://{settings.host}:{settings.port} (docs at /docs)"
        + (f" with {n} processes" if n > 1 else "")
        + f"; database {_safe_url(settings.url)}; data in {settings.data_dir}",
        file=sys.stderr,
        flush=True,
    )
    common: dict[str, Any] = {
        "factory": True,
        "host": settings.host,
        "port": settings.port,
        "access_log": settings.access_log,
        "proxy_headers": True,
        "root_path": getattr(args, "root_path", "") or "",
        **({"forwarded_allow_ips": args.forwarded_allow_ips} if getattr(args, "forwarded_allow_ips", None) else {}),
        "log_level": "info",
        "workers": n,  # explicit: uvicorn would otherwise read WEB_CONCURRENCY
        # open event streams (SSE, long polls) never end on their own: past this, a stop closes them
        "timeout_graceful_shutdown": settings.shutdown_grace_seconds,
    }
    if n == 1:
        from app.main import create_app

        uvicorn.run(functools.partial(create_app, settings), **common)
        return 0
    prepare(settings)
    export_settings(settings, ["data_dir", "database_url", *overrides])
    # The supervisor replaces a process that does not answer its ping within this many
    # seconds; a long C call holding the GIL (an ONNX check or serialisation of a large
    # model in the in-process job worker) must not pass for a hung process.
    uvicorn.run(APP_FACTORY, timeout_worker_healthcheck=HEALTHCHECK_SECONDS, **common)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    limit_blas_threads(settings.blas_threads)
    from app.background import run_worker_process

    run_worker_process(settings, concurrency=args.concurrency)
    return 0


# --------------------------------------------------------------------------- db
def cmd_db(args: argparse.Namespace) -> int:
    from alembic import command
    from alembic.script import ScriptDirectory
    from alembic.util.exc import AutogenerateDiffsDetected

    from app.core.migrations import alembic_config, downgrade, upgrade

    settings = load_settings(args)
    url = settings.url
    if args.db_command == "upgrade":
        upgrade(url, args.revision)
        print(f"database {_safe_url(url)} is at {current_revision(url) or 'base'}")
    elif args.db_command == "downgrade":
        downgrade(url, args.revision)
        print(f"database {_safe_url(url)} is at {current_revision(url) or 'base'}")
    elif args.db_command == "current":
        path = sqlite_path(url)
        if path is not None and not path.exists():  # say so; do not create it by looking
            print(f"base (no database yet at {path})")
            return 3
        head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
        now = current_revision(url)
        state = "up to date" if now == head else f"behind (newest is {head})"
        print(f"{now or 'base'} ({state})")
        return 0 if now == head else 3
    elif args.db_command == "check":
        path = sqlite_path(url)
        if path is not None and not path.exists():
            raise CommandError(f"no database at {path}; set STEWARD_DATA_DIR or STEWARD_DATABASE_URL")
        try:
            command.check(alembic_config(url))
        except AutogenerateDiffsDetected as e:
            raise CommandError(f"the models and the migrations differ: {e}") from None
        print("the models and the migrations agree")
    return 0


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    from app.core.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as c:
            return MigrationContext.configure(c).get_current_revision()
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- keys
def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///…`` URL (None: not SQLite, or in memory)."""
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[1] if "///" in url else ""
    return Path(path) if path and path != ":memory:" else None


def require_database(url: str) -> None:
    """Refuse to go on when ``url`` names no Steward database: a command that reads (or
    changes what exists) must not create an empty one and answer from it. Says which
    database it uses (on stderr)."""
    print(f"steward: database {_safe_url(url)}", file=sys.stderr)
    path = sqlite_path(url)
    where = (
        "set STEWARD_DATA_DIR (or --data-dir) to the service's data directory, or STEWARD_DATABASE_URL "
        "(--database-url) to its database"
    )
    if path is not None and not path.exists():
        raise CommandError(f"no database at {path} (nothing has run with this data directory); {where}")
    if current_revision(url) is None:
        raise CommandError(
            f"{_safe_url(url)} holds no Steward schema (run `steward db upgrade` or the service); {where}"
        )


def _key_services(args: argparse.Namespace) -> tuple[Any, Any]:
    from app.core.db import Database
    from app.core.migrations import upgrade
    from app.keys.service import KeyService

    settings = load_settings(args)
    if args.keys_command == "create":  # a key for a service about to start: make the database
        print(f"steward: database {_safe_url(settings.url)}", file=sys.stderr)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade(settings.url)
    else:
        require_database(settings.url)
    db = Database(settings.url, busy_timeout_ms=settings.sqlite_busy_timeout_ms)
    return db, KeyService(db, None)


def cmd_keys(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from app.core.errors import NotFound
    from app.keys.schemas import KeyCreate

    db, keys = _key_services(args)
    try:
        if args.keys_command == "create":
            try:
                body = KeyCreate(name=args.name, scope=args.scope, models=args.model or None)
            except ValidationError as e:
                problems = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
                raise CommandError(f"invalid key: {problems}") from None
            made = keys.create(body)
            if args.json:
                print(made.model_dump_json())
            else:
                print(f"created key {made.id} ({made.name}, scope {made.scope}", end="")
                print(f", models {', '.join(made.models)})" if made.models else ")")
                print("The secret is shown once; store it now:")
                print(made.key)
        elif args.keys_command == "list":
            items = []
            cursor: str | None = None
            while True:
                page, cursor = keys.page(cursor=cursor, limit=500)
                items += page
                if cursor is None:
                    break
            if args.json:
                print(json.dumps([k.model_dump(mode="json") for k in items]))
            else:
                print(f"{'ID':<16}  {'SCOPE':<8}  {'PREFIX':<10}  {'CREATED':<25}  NAME (MODELS)")
                for k in items:
                    models = f" ({', '.join(k.models)})" if k.models else ""
                    print(f"{k.id:<16}  {k.scope:<8}  {k.prefix:<10}  {k.created_at.isoformat():<25}  {k.name}{models}")
        elif args.keys_command == "revoke":
            try:
                keys.revoke(args.id)
            except NotFound as e:
                raise CommandError(e.detail) from None
            print(f"revoked key {args.id}")
    finally:
        db.dispose()
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="steward",
        description="Steward keeps deployed models healthy: serve the API, run workers, migrate the database, "
        "manage API keys. Configuration: STEWARD_* environment variables or a .env file.",
    )
    p.add_argument("--data-dir", help="blob store and default SQLite location (STEWARD_DATA_DIR)")
    p.add_argument("--database-url", help="sqlite:///… or postgresql+psycopg://… (STEWARD_DATABASE_URL)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the HTTP API (with the in-process worker and learner)")
    serve.add_argument("--host", help="interface to bind (STEWARD_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (STEWARD_PORT, default 8000)")
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="API processes sharing the port, each with its own job worker and learner (STEWARD_WORKERS, default 1)",
    )
    serve.add_argument(
        "--root-path", default="", help="the path a proxy serves Steward under (e.g. /steward; links keep it)"
    )
    serve.add_argument(
        "--forwarded-allow-ips",
        help="proxies whose X-Forwarded-* headers are trusted (uvicorn's; default 127.0.0.1, or FORWARDED_ALLOW_IPS)",
    )
    serve.add_argument("--no-worker", action="store_true", help="do not run a job worker in the API process(es)")
    serve.add_argument("--no-learner", action="store_true", help="do not run the online learner in the API process(es)")
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="run job workers against the shared database and blob store")
    worker.add_argument("--concurrency", type=int, default=1, help="worker threads in this process (default 1)")
    worker.set_defaults(func=cmd_worker)

    db = sub.add_parser("db", help="database schema (Alembic migrations)")
    dbs = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    up = dbs.add_parser("upgrade", help="upgrade to a revision (default: the newest)")
    up.add_argument("revision", nargs="?", default="head")
    down = dbs.add_parser("downgrade", help="downgrade to a revision ('base' removes everything)")
    down.add_argument("revision")
    dbs.add_parser("current", help="show the current revision (exit status 3 when not the newest)")
    dbs.add_parser("check", help="fail if the models and the migrations differ")
    db.set_defaults(func=cmd_db)

    keys = sub.add_parser("keys", help="API keys")
    ks = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = ks.add_parser("create", help="create a key and print its secret (once)")
    create.add_argument("--name", required=True)
    create.add_argument("--scope", required=True, choices=SCOPES)
    create.add_argument("--model", action="append", help="restrict the key to this model (repeatable)")
    create.add_argument("--json", action="store_true", help="print the key as JSON")
    lst = ks.add_parser("list", help="list active keys (never their secrets)")
    lst.add_argument("--json", action="store_true", help="print JSON")
    revoke = ks.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("id")
    keys.set_defaults(func=cmd_keys)
    add_task_commands(sub)
    return p


def add_task_commands(sub: Any) -> None:
    """The task commands (models, push, predict, jobs, aliases, pull, events …) of the
    Python client (``pip install -e 'clients/python[cli]'``), when it is installed: they
    talk to a running service over HTTP, as any client does."""
    import importlib

    try:
        cli = importlib.import_module("steward_client.cli")
    except ImportError:
        return
    cli.add_commands(sub)


def main(argv: Sequence[str] | None = None) -> int:
    from pydantic import ValidationError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CommandError as e:
        print(f"steward: {e}", file=sys.stderr)
        return 1
    except ValidationError as e:  # the settings refused the configuration
        problems = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        print(f"steward: invalid configuration: {problems}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
