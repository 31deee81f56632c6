"""Throughput of `steward serve` with 1 and with 2 API processes (`--workers`): one-sample
JSON `/update` and one-input `/predict`, driven by `wrk`.

Each round starts a fresh server from this checkout (`python -m app.cli serve --workers N`,
SQLite in a temporary directory, or with ``--postgres`` a fresh schema of the local
PostgreSQL), creates an ordinary API key through ``POST /v1/keys`` (scope ``ingest``,
restricted to the two models; the bootstrap admin key only sets up), a logistic model
(32 features) and an MLP 64 → 128 → 64 → 10, then runs `wrk` (8 connections, one thread,
a Lua script for the POST body and headers) for each workload: a short warm-up, then a
fixed duration. Rounds interleave 1 and 2 processes, so drift on a shared machine hits
both alike; the median over rounds is reported, with the ratio 2-proc / 1-proc.

    python bench/bench_processes.py [--quick] [--rounds 3] [--duration 10] [--postgres]

The anchor is the same service with one process. `wrk` runs on the same machine and takes
CPU from the service: on 2 cores, 2 processes compete with it (and with the learner and
job-worker threads) for the same two cores.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "bench-admin-key-0123456789abcdef"
PG_URL = os.environ.get("STEWARD_TEST_POSTGRES_URL") or "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CONNECTIONS = 8
LOGISTIC = {"name": "lr", "task": "binary", "input_dim": 32, "hidden": [], "seed": 0}
MLP = {"name": "mlp", "task": "multiclass", "input_dim": 64, "hidden": [128, 64], "output_dim": 10, "seed": 0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def database(tmp: Path, postgres: bool) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a PostgreSQL schema dropped afterwards."""
    if not postgres:
        yield f"sqlite:///{tmp / 'data' / 'steward.db'}"
        return
    import sqlalchemy as sa

    schema = "bench_" + uuid.uuid4().hex[:12]
    eng = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"
    finally:
        with eng.connect() as c:
            c.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        eng.dispose()


class Server:
    """``python -m app.cli serve --workers N`` in a subprocess."""

    def __init__(self, tmp: Path, url: str, workers: int) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("STEWARD_")}
        env |= {"STEWARD_DATA_DIR": str(tmp / "data"), "STEWARD_DATABASE_URL": url, "STEWARD_ADMIN_KEY": ADMIN}
        self.log = tmp / "server.log"
        cmd = [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port), "--workers", str(workers)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                if self.call("GET", "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            raise SystemExit("server did not start")
        # every process answers before measuring (each runs its own start-up)
        pids: set[int] = set()
        while len(pids) < workers and time.monotonic() < deadline:
            st, out = self.call("GET", "/readyz")
            if st == 200:
                pids.add(orjson.loads(out)["pid"])
        self.pids = pids

    def call(self, method: str, path: str, body: object = None, key: str = ADMIN) -> tuple[int, bytes]:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            data = None if body is None else orjson.dumps(body)
            c.request(
                method, path, body=data, headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
            )
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def lua(path: str, key: str, body: bytes) -> str:
    return (
        'wrk.method = "POST"\n'
        f"wrk.path = {path!r}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
        f"wrk.body = [=[{body.decode()}]=]\n"
    )


def wrk(port: int, script: Path, seconds: float) -> tuple[float, int, str]:
    """(requests/s, non-2xx answers, average latency) of one `wrk` run."""
    cmd = ["wrk", "-t", "1", "-c", str(CONNECTIONS), "-d", f"{max(round(seconds), 1)}s", "--latency"]
    cmd += ["-s", str(script), f"http://127.0.0.1:{port}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    lat = re.search(r"Latency\s+(\S+)", out)
    return rps, int(bad.group(1)) if bad else 0, lat.group(1) if lat else "?"


def bodies() -> dict[str, tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    x = [round(float(v), 4) for v in rng.normal(size=32)]
    inputs = [[round(float(v), 4) for v in rng.normal(size=64)]]
    return {
        "update": ("/v1/models/lr/update", orjson.dumps({"samples": [{"x": x, "y": 1}]})),
        "predict": ("/v1/models/mlp/predict", orjson.dumps({"inputs": inputs})),
    }


Result = dict[str, tuple[float, int, str]]


def one_round(tmp: Path, workers: int, postgres: bool, seconds: float, warmup: float) -> tuple[Result, int]:
    """{workload: wrk's figures} of one server, and the learner's lag after the runs."""
    with database(tmp, postgres) as url:
        srv = Server(tmp, url, workers)
        try:
            if len(srv.pids) < workers:
                raise SystemExit(f"only {len(srv.pids)} of {workers} processes answered")
            for spec in (LOGISTIC, MLP):
                st, out = srv.call("POST", "/v1/models", spec)
                assert st == 201, (st, out[:300])
            st, out = srv.call("POST", "/v1/keys", {"name": "bench", "scope": "ingest", "models": ["lr", "mlp"]})
            assert st == 201, (st, out[:300])
            key = orjson.loads(out)["key"]
            got = {}
            for name, (path, body) in bodies().items():
                script = tmp / f"{name}.lua"
                script.write_text(lua(path, key, body))
                wrk(srv.port, script, warmup)
                got[name] = wrk(srv.port, script, seconds)
            st, out = srv.call("GET", "/v1/models/lr")
            assert st == 200, (st, out[:300])
            return got, int(orjson.loads(out)["online"]["lag"])
        finally:
            srv.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 rounds of 4 s")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--postgres", action="store_true", help=f"a fresh schema of {PG_URL} instead of SQLite")
    a = p.parse_args(argv)
    rounds, seconds, warmup = (2, 4.0, 1.0) if a.quick else (a.rounds, a.duration, 2.0)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    print(f"checkout: {ROOT}")
    print(f"database: {'PostgreSQL ' + PG_URL.split('@')[-1] if a.postgres else 'SQLite (temporary directory)'}")
    print(
        f"cores: {os.cpu_count()}; wrk: 1 thread, {CONNECTIONS} connections, {seconds:g} s per run after a "
        f"{warmup:g} s warm-up; {rounds} round(s), 1 and 2 processes interleaved"
    )
    print("note: wrk runs on this machine and shares its cores with the service's processes\n")
    results: dict[int, list[Result]] = {1: [], 2: []}
    for r in range(rounds):
        for workers in (1, 2):
            tmp = Path(tempfile.mkdtemp(prefix="steward-bench-proc-"))
            try:
                got, lag = one_round(tmp, workers, a.postgres, seconds, warmup)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            results[workers].append(got)
            line = "  ".join(
                f"{k} {v[0]:8,.0f} req/s (avg {v[2]}{f', {v[1]} non-2xx' if v[1] else ''})" for k, v in got.items()
            )
            print(
                f"round {r + 1}, {workers} process{'es' if workers > 1 else ''}:  {line};  learner lag after: {lag:,}"
            )
    print()
    print(f"{'median requests/s':<38} {'1 process':>10} {'2 processes':>12} {'2 / 1':>7}")
    labels = {"update": "one-sample JSON /update (logistic)", "predict": "one-input /predict (MLP 64-128-64-10)"}
    for name, label in labels.items():
        one = statistics.median(g[name][0] for g in results[1])
        two = statistics.median(g[name][0] for g in results[2])
        print(f"{label:<38} {one:>10,.0f} {two:>12,.0f} {two / one:>7.2f}")
    bad = sum(g[n][1] for w in results for g in results[w] for n in labels)
    if bad:
        print(f"\nWARNING: {bad} non-2xx answers")


if __name__ == "__main__":
    main()
