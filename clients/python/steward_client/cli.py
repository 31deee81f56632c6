"""The task commands of ``steward`` (models, push, predict, jobs, aliases, pull, events),
built on :class:`~steward_client.Client`. Progress bars (rich) on push, pull and every
waited job; tables for lists; ``--json`` for scripts.

Where the service is: ``--url`` / ``--key``, else ``STEWARD_URL`` / ``STEWARD_KEY``, else
the profile (``--profile`` or ``STEWARD_PROFILE``, default ``default``) of the file
``~/.config/steward/config.toml`` (``STEWARD_CONFIG``)::

    [default]
    url = "http://127.0.0.1:8000"
    key = "stw_…"
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from steward_client.client import Client, sample_line, sample_lines
from steward_client.errors import StewardError, TransportError
from steward_client.types import Job

COMMANDS = (
    "models",
    "push",
    "predict",
    "batch-update",
    "prune",
    "quantize",
    "migrate",
    "jobs",
    "aliases",
    "pull",
    "events",
)
FORMATS = ("safetensors", "onnx", "torch", "npz")


class Usage(Exception):
    """A command that cannot run as asked (the message says why)."""


# --------------------------------------------------------------------------- config
def config_path() -> Path:
    return Path(os.environ.get("STEWARD_CONFIG") or Path.home() / ".config" / "steward" / "config.toml")


def connection(args: argparse.Namespace) -> tuple[str, str | None]:
    """(url, key): options, then the environment, then the profile file."""
    profile: dict[str, Any] = {}
    path = config_path()
    name = args.profile or os.environ.get("STEWARD_PROFILE") or "default"
    if path.exists():
        profiles = tomllib.loads(path.read_text())
        if args.profile and name not in profiles:
            raise Usage(f"no profile {name!r} in {path}")
        profile = profiles.get(name, {})
    url = args.url or os.environ.get("STEWARD_URL") or profile.get("url")
    key = args.key or os.environ.get("STEWARD_KEY") or profile.get("key")
    if not url:
        raise Usage(f"where is the service? give --url, set STEWARD_URL, or write a [{name}] url in {path}")
    return str(url), (str(key) if key else None)


# --------------------------------------------------------------------------- output
def emit(args: argparse.Namespace, value: Any, table: Callable[[Any], None] | None = None) -> None:
    if args.json or table is None:
        print(json.dumps(value, default=str))
    else:
        table(value)


def rich_table(columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(*columns)
    for r in rows:
        t.add_row(*["" if v is None else str(v) for v in r])
    Console().print(t)


def job_progress(args: argparse.Namespace) -> tuple[Callable[[Job], None], Callable[[], None]]:
    """A progress callback for a waited job (a rich bar, none with --json) and its closer."""
    if args.json:
        return (lambda job: None), (lambda: None)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn()
    )
    bar.start()
    task = bar.add_task("job", total=1.0)

    def update(job: Job) -> None:
        bar.update(task, completed=float(job["progress"]), description=f"{job['kind']} {job['status']}")

    return update, bar.stop


# --------------------------------------------------------------------------- reading files
#: A JSON number (RFC 8259; possessive: a row is checked without backtracking), a row of
#: them separated by commas, and a JSON integer.
_NUM = r"-?(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?+(?:[eE][+-]?[0-9]++)?+"
_NUMBER = re.compile(_NUM)
_NUMBERS = re.compile(f"{_NUM}(?:,{_NUM})*+")
_INT = re.compile(r"-?(?:0|[1-9][0-9]*+)")


def read_samples(path: Path, label: str | None) -> tuple[Iterator[bytes], int | None]:
    """The samples of a file as NDJSON lines, and how many there are (None: unknown before
    reading): CSV with a header (``label`` names the label column, default the last),
    NDJSON (``{"x", "y"}`` per line), ``.npz`` (arrays ``x`` and ``y``) or ``.npy`` (a 2-D
    array whose last column, or column ``label``, is the label)."""
    suffix = path.suffix.lower()
    if suffix == ".npz":
        import numpy as np

        with np.load(path) as z:
            X, y = z["x"], z["y"]
        return sample_lines(X, y), len(X)
    if suffix == ".npy":
        import numpy as np

        a = np.load(path)
        if a.ndim != 2:
            raise Usage(f"{path}: a .npy file holds a 2-D array (samples × features, the label a column)")
        col = int(label) if label is not None else a.shape[1] - 1
        return sample_lines(np.delete(a, col, axis=1), a[:, col]), len(a)
    if suffix in (".ndjson", ".jsonl"):
        return ndjson_lines(path), None
    if suffix == ".csv":
        with path.open(newline="") as f:
            header = next(csv.reader(f), None)
        if not header:
            raise Usage(f"{path}: the CSV has no header")
        col = header.index(label) if label is not None and label in header else None
        if label is not None and col is None:
            raise Usage(f"{path}: no column {label!r} (the header has {', '.join(header)})")
        col = len(header) - 1 if col is None else col
        with path.open("rb") as f:
            total = max(sum(1 for line in f if line.strip()) - 1, 0)
        return csv_lines(path, col, len(header)), total
    raise Usage(f"{path}: push reads .csv (with a header), .ndjson, .npy or .npz")


def ndjson_lines(path: Path) -> Iterator[bytes]:
    """The ``{"x", "y"}`` lines of an NDJSON file, checked, sent as they are (other keys
    dropped)."""
    with path.open("rb") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                if d.keys() == {"x", "y"}:
                    yield line if line.endswith(b"\n") else line + b"\n"
                else:
                    yield sample_line(d["x"], d["y"])
            except (ValueError, KeyError, TypeError, AttributeError):
                raise Usage(f'{path}:{i}: not a {{"x", "y"}} object') from None


def float_label(text: str) -> str | None:
    """A label written as a JSON number, as the general path sends it (``1.0`` is the class
    1), or None."""
    if _NUMBER.fullmatch(text) is None:
        return None
    v = float(text)
    return str(int(v)) if v.is_integer() else text


def csv_lines(path: Path, col: int, width: int) -> Iterator[bytes]:
    """The rows of a CSV file (after its header) as NDJSON lines, the label from column
    ``col``. A row of plain numbers (JSON's syntax: what numeric CSV writers write) has its
    text sent as it is, no float parsed and printed again; any other row (quoted fields,
    spaces, ``1.``, ``+1``, ``nan``) goes through the csv module and ``float``, and a value
    that is not a number stops the push naming its line. Blank lines are skipped."""
    with path.open(newline="") as f:
        next(f)
        for i, line in enumerate(f, 2):
            text = line.rstrip("\r\n")
            if not text.strip():
                continue
            cells = text.split(",")
            if len(cells) == width and '"' not in text:
                cell = cells.pop(col)
                y = cell if _INT.fullmatch(cell) else float_label(cell)
                xs = ",".join(cells)
                if y is not None and _NUMBERS.fullmatch(xs):
                    yield ('{"x":[' + xs + '],"y":' + y + "}\n").encode()
                    continue
            row = next(csv.reader([text]))
            try:
                values = [float(v) for v in row]
            except ValueError:
                raise Usage(f"{path}:{i}: a value is not a number") from None
            t = values.pop(col)
            yield sample_line(values, int(t) if t.is_integer() else t)


# --------------------------------------------------------------------------- commands
def cmd_models(st: Client, args: argparse.Namespace) -> None:
    if args.models_command == "list":
        tags = {}
        for raw in args.tag or []:
            key, sep, value = raw.partition(":")
            if not sep or not key:
                raise Usage(f"--tag {raw!r}: expected KEY:VALUE")
            tags[key] = value
        items = st.models(tags=tags or None, q=args.search)
        emit(
            args,
            items,
            lambda v: rich_table(
                ["NAME", "TASK", "LATEST", "ALIASES", "STATUS", "LAG", "DRIFT"],
                [
                    [
                        m["name"],
                        m["task"],
                        m["latest_version"],
                        ", ".join(f"{a}={n}" for a, n in m["aliases"].items()),
                        m["status"],
                        m["online"]["lag"],
                        m["drift"]["status"],
                    ]
                    for m in v
                ],
            ),
        )
    elif args.models_command == "show":
        emit(args, st.model(args.name))
    else:
        hidden = [int(h) for h in args.hidden.split(",")] if args.hidden else []
        spec: dict[str, Any] = {"task": args.task, "input_dim": args.input_dim, "hidden": hidden}
        if args.output_dim is not None:
            spec["output_dim"] = args.output_dim
        emit(args, st.create_model(args.name, **spec))


def cmd_push(st: Client, args: argparse.Namespace) -> None:
    lines, total = read_samples(Path(args.file), args.label)
    if args.json:
        emit(args, st.update_lines(args.model, lines, chunk_size=args.chunk_size, prefetch=True))
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(f"push {args.model}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()) as bar:
        task = bar.add_task("push", total=total)
        out = st.update_lines(
            args.model, lines, chunk_size=args.chunk_size, on_chunk=lambda n: bar.advance(task, n), prefetch=True
        )
    span = f"{out['first_offset']}..{out['last_offset']}"
    print(f"accepted {out['accepted']} samples (offsets {span}) in {out['requests']} requests")


def cmd_predict(st: Client, args: argparse.Namespace) -> None:
    try:
        inputs = json.loads(args.inputs)
    except ValueError:
        raise Usage("--inputs is JSON: [[0.1, 2.0, ...], ...]") from None
    emit(args, st.predict(args.model, inputs, version=args.version, alias=args.alias, record=args.record))


def cmd_job(st: Client, args: argparse.Namespace) -> None:
    frm = args.from_
    body: dict[str, Any] = {"from_": int(frm) if frm is not None and frm.isdigit() else frm}
    kind = args.command
    if kind == "batch-update":
        body |= {"log": {"last": args.last} if args.last else {"from_offset": 0}, "epochs": args.epochs}
    elif kind == "prune":
        body |= {"sparsity": args.sparsity}
    elif kind == "quantize":
        body |= {"dtype": args.dtype}
    else:
        body |= {"target": args.target}
    submit = {"batch-update": st.batch_update, "prune": st.prune, "quantize": st.quantize, "migrate": st.migrate}[kind]
    job = submit(args.model, **body)
    if args.wait:
        update, done = job_progress(args)
        try:
            job = st.wait(job["id"], progress=update)
        finally:
            done()
    emit(args, job)
    if args.wait and job["status"] != "succeeded":
        raise Usage(f"job {job['id']} {job['status']}: {(job.get('error') or {}).get('message', '')}")


def cmd_jobs(st: Client, args: argparse.Namespace) -> None:
    if args.jobs_command == "list":
        items = st.jobs(model=args.model, status=args.status)
        emit(
            args,
            items,
            lambda v: rich_table(
                ["ID", "KIND", "MODEL", "STATUS", "PROGRESS", "CREATED"],
                [[j["id"], j["kind"], j["model"], j["status"], f"{j['progress']:.0%}", j["created_at"]] for j in v],
            ),
        )
    elif args.jobs_command == "watch":
        update, done = job_progress(args)
        try:
            job = st.wait(args.id, progress=update)
        finally:
            done()
        emit(args, job)
    else:
        emit(args, st.cancel(args.id))


def cmd_aliases(st: Client, args: argparse.Namespace) -> None:
    if args.aliases_command == "set":
        emit(args, st.set_alias(args.model, args.alias, args.version, reason=args.reason, if_match=args.if_match))
    elif args.aliases_command == "history":
        items = st.alias_history(args.model, args.alias)
        emit(
            args,
            items,
            lambda v: rich_table(
                ["AT", "VERSION", "PREVIOUS", "BY", "REASON"],
                [
                    [e["at"], e["version"], e["previous"], e["by"].get("key_name") or e["by"].get("job"), e["reason"]]
                    for e in v
                ],
            ),
        )
    else:
        emit(args, st.rollback(args.model, args.alias, reason=args.reason))


def cmd_pull(st: Client, args: argparse.Namespace) -> None:
    """A version as a file: its safetensors weights, or an export (made by a migrate job
    first, waited for, when it does not exist yet)."""
    fmt = args.format
    out = Path(args.output or f"{args.model}-v{args.version}.{ {'torch': 'pt'}.get(fmt, fmt) }")
    if fmt == "safetensors":
        path = f"/models/{args.model}/versions/{args.version}/weights"
    else:
        path = f"/models/{args.model}/versions/{args.version}/exports/{fmt}"
        try:
            st.request("GET", path)
        except StewardError as e:
            if e.status != 404:
                raise
            update, done = job_progress(args)
            try:
                job = st.migrate(args.model, from_=args.version, target=fmt, wait=True, progress=update)
            finally:
                done()
            if job["status"] != "succeeded":
                raise Usage(f"the {fmt} export failed: {(job.get('error') or {}).get('message', '')}") from None
    r = st.request("GET", path)
    out.write_bytes(r.content)
    emit(args, {"file": str(out), "bytes": len(r.content), "format": fmt})


def cmd_events(st: Client, args: argparse.Namespace) -> None:
    for event in st.events(after=args.after, types=args.type or None, model=args.model, follow=not args.no_follow):
        if args.json:
            print(json.dumps(event), flush=True)
        else:
            head = f"{event['id']:>8}  {event['at']}  {event['type']:<16}  {event['model'] or '-':<20}"
            print(f"{head}  {json.dumps(event['data'])}", flush=True)


HANDLERS: dict[str, Callable[[Client, argparse.Namespace], None]] = {
    "models": cmd_models,
    "push": cmd_push,
    "predict": cmd_predict,
    "batch-update": cmd_job,
    "prune": cmd_job,
    "quantize": cmd_job,
    "migrate": cmd_job,
    "jobs": cmd_jobs,
    "aliases": cmd_aliases,
    "pull": cmd_pull,
    "events": cmd_events,
}


def run(args: argparse.Namespace) -> int:
    """Run a task command; 1 with the service's problem (or the usage error) on stderr."""
    try:
        url, key = connection(args)
        with Client(url, key) as st:
            HANDLERS[args.command](st, args)
    except StewardError as e:
        where = "; ".join(f"{'.'.join(map(str, x.get('loc', [])))}: {x.get('msg')}" for x in e.errors)
        print(
            f"steward: {e.status} {e.title}: {e.detail}" + (f" ({where})" if where and where not in e.detail else ""),
            file=sys.stderr,
        )
        return 1
    except (Usage, TransportError) as e:
        print(f"steward: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


# --------------------------------------------------------------------------- parser
def add_commands(sub: Any) -> None:
    """Add the task commands to ``steward``'s subparsers."""

    def task(name: str, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help)
        p.add_argument("--url", help="the service (STEWARD_URL, or the profile's url)")
        p.add_argument("--key", help="an API key (STEWARD_KEY, or the profile's key)")
        p.add_argument("--profile", help="a profile of ~/.config/steward/config.toml (STEWARD_PROFILE)")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=run)
        return p

    def child(parent: Any, name: str, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help)
        p.add_argument("--url", help=argparse.SUPPRESS)
        p.add_argument("--key", help=argparse.SUPPRESS)
        p.add_argument("--profile", help=argparse.SUPPRESS)
        p.add_argument("--json", action="store_true", help="print JSON")
        return p

    models = task("models", "models: list, show, create").add_subparsers(
        dest="models_command", required=True, metavar="ACTION"
    )
    lst_models = child(models, "list", "list the models")
    lst_models.add_argument("--tag", action="append", metavar="KEY:VALUE", help="only with this tag (repeatable)")
    lst_models.add_argument("--search", metavar="TEXT", help="only with TEXT in the name or description")
    show = child(models, "show", "one model, whole")
    show.add_argument("name")
    create = child(models, "create", "create a model (its version 1)")
    create.add_argument("name")
    create.add_argument("--task", required=True, choices=("regression", "binary", "multiclass"))
    create.add_argument("--input-dim", type=int, required=True)
    create.add_argument("--output-dim", type=int)
    create.add_argument("--hidden", help="hidden layer sizes, e.g. 64,32")

    push = task("push", "append a file's samples to a model's log (CSV, NDJSON, .npy, .npz)")
    push.add_argument("model")
    push.add_argument("file")
    push.add_argument("--label", help="CSV: the label column's name; .npy: its index (default: the last)")
    push.add_argument("--chunk-size", type=int, default=5000, help="samples per request (default 5000)")

    predict = task("predict", "predict (optionally recorded)")
    predict.add_argument("model")
    predict.add_argument("--inputs", required=True, help="JSON: [[...], ...]")
    predict.add_argument("--version", type=int)
    predict.add_argument("--alias")
    predict.add_argument("--record", action="store_true", help="record the predictions (label them later)")

    for kind, help in (
        ("batch-update", "retrain on a range of the log"),
        ("prune", "prune a version"),
        ("quantize", "quantize a version"),
        ("migrate", "export a version (onnx, torch, npz)"),
    ):
        p = task(kind, help)
        p.add_argument("model")
        p.add_argument("--from", dest="from_", help="version number or alias (default: latest)")
        p.add_argument("--wait", action="store_true", help="wait for the job, with a progress bar")
        if kind == "batch-update":
            p.add_argument("--last", type=int, help="the newest N samples of the log (default: all)")
            p.add_argument("--epochs", type=int, default=5)
        elif kind == "prune":
            p.add_argument("--sparsity", type=float, required=True)
        elif kind == "quantize":
            p.add_argument("--dtype", default="int8", choices=("int8", "uint8", "float16"))
        else:
            p.add_argument("--target", required=True, choices=("onnx", "torch", "npz"))

    jobs = task("jobs", "jobs: list, watch, cancel").add_subparsers(
        dest="jobs_command", required=True, metavar="ACTION"
    )
    lst = child(jobs, "list", "list jobs, newest first")
    lst.add_argument("--model")
    lst.add_argument("--status", choices=("queued", "running", "succeeded", "failed", "canceled"))
    for name, help in (("watch", "follow a job to its end, with a progress bar"), ("cancel", "cancel a job")):
        child(jobs, name, help).add_argument("id")

    aliases = task("aliases", "aliases: set, history, rollback").add_subparsers(
        dest="aliases_command", required=True, metavar="ACTION"
    )
    st = child(aliases, "set", "point an alias at a version")
    st.add_argument("model")
    st.add_argument("alias")
    st.add_argument("version", type=int)
    st.add_argument("--reason")
    st.add_argument("--if-match", type=int, help="only if the alias points to this version now")
    hist = child(aliases, "history", "an alias's changes, newest first")
    hist.add_argument("model")
    hist.add_argument("alias")
    rb = child(aliases, "rollback", "move an alias back to its previous version")
    rb.add_argument("model")
    rb.add_argument("alias")
    rb.add_argument("--reason")

    pull = task("pull", "download a version as safetensors, onnx, torch or npz")
    pull.add_argument("model")
    pull.add_argument("version", type=int)
    pull.add_argument("--format", default="safetensors", choices=FORMATS)
    pull.add_argument("--output", help="the file (default MODEL-vVERSION.EXT)")

    events = task("events", "the event feed: tail")
    es = events.add_subparsers(dest="events_command", required=True, metavar="ACTION")
    tail = child(es, "tail", "print events as they happen (Ctrl-C stops)")
    tail.add_argument("--after", type=int, help="start after this event id (default: from now on)")
    tail.add_argument("--type", action="append", help="only these types, e.g. job.* (repeatable)")
    tail.add_argument("--model")
    tail.add_argument("--no-follow", action="store_true", help="print what is there and stop")
