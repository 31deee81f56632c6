"""What the HTTP benchmarks share: free ports, servers started with uvicorn's flags of a
production run (1 process, access log off), ``wrk`` load with a POST body and a bearer key,
and keep-alive JSON calls. Imported by ``bench/bench_*.py`` (run from the repository root).
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]

WRK_LUA = """
wrk.method = "POST"
local f = io.open("{body}", "rb")
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""


#: Set on some machines, they slow numpy (BENCH.md): a benchmark drops them from its own
#: environment, and so from its servers', before numpy is imported.
BLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def drop_blas_overrides() -> None:
    """Remove :data:`BLAS_OVERRIDES` from this process's environment (this module imports no
    numpy: call it right after importing it, before numpy)."""
    for var in BLAS_OVERRIDES:
        os.environ.pop(var, None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def start_uvicorn(app: str, port: int, env: dict[str, str], *, cpus: str | None, log: Path) -> subprocess.Popen:
    """``uvicorn <app>`` on 127.0.0.1:``port`` (pinned to ``cpus`` with taskset when given),
    waiting until ``GET /readyz`` (Steward) or any answer (a bare app) comes back."""
    cmd = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--no-access-log", "--log-level", "warning"]
    if cpus is not None:
        cmd = ["taskset", "-c", cpus, *cmd]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{app} exited: {log.read_text()[-2000:]}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/readyz")
            c.getresponse().read()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    raise SystemExit(f"{app} did not start within 60 s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Client:
    """One keep-alive HTTP/1.1 connection with a bearer key."""

    def __init__(self, port: int, key: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: object | None = None, **headers: str) -> tuple[int, bytes]:
        data = body if isinstance(body, bytes) else orjson.dumps(body) if body is not None else None
        self.conn.request(method, path, body=data, headers={**self.headers, **headers})
        r = self.conn.getresponse()
        return r.status, r.read()

    def json(
        self, method: str, path: str, body: object | None = None, ok: tuple[int, ...] = (200, 201, 202), **h: str
    ) -> Any:
        status, data = self.call(method, path, body, **h)
        if status not in ok:
            raise SystemExit(f"{method} {path} → {status}: {data[:500]!r}")
        return orjson.loads(data)


def wrk_rate(
    url: str, body_file: Path, key: str, *, conns: int, seconds: float, cpus: str | None, tmp: Path
) -> tuple[float, int, float]:
    """(requests/s, non-2xx answers, median latency in µs) of a ``wrk`` run POSTing
    ``body_file`` with the bearer ``key`` over ``conns`` keep-alive connections."""
    lua = tmp / f"{body_file.stem}.lua"
    lua.write_text(WRK_LUA.format(body=body_file, key=key))
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds:g}s", "--timeout", "30s", "--latency", "-s", str(lua), url]
    if cpus is not None:
        cmd = ["taskset", "-c", cpus, *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise SystemExit(f"could not read wrk's output:\n{out}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)\b", out)
    lat = float("nan")
    if p50:
        lat = float(p50.group(1)) * {"us": 1.0, "ms": 1e3, "s": 1e6}[p50.group(2)]
    return float(m.group(1)), int(bad.group(1)) if bad else 0, lat
