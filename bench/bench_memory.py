"""Peak memory (RSS) of a real `steward serve` process: a 64 MiB JSON /update body (and the
same samples as NDJSON, for comparison), and 20 idle 25M-parameter models.

Each scenario starts a fresh server (`python -m app.cli serve`, SQLite in a temporary
directory) from this checkout and reads the server's /proc status: ``VmRSS`` before, the
peak ``VmHWM`` (reset through ``/proc/PID/clear_refs`` just before the request), and
``VmRSS`` after. Memory, not time, is measured, so shared machines do not skew it.

1. JSON body: ``{"samples": [...]}`` of 2-float binary samples up to 64 MiB (about 2.5M),
   learner off (parsing alone); the bound is the body itself plus a small multiple of it
   (see README, "Memory").
2. The same samples as an NDJSON stream.
3. 20 models of 25M parameters (1000 → 5000 → 4000 → 1): each gets 4 samples
   (``?wait=true``); RSS right after, and after waiting ``--idle`` + a margin (the server
   runs with ``STEWARD_LEARNER_IDLE_SECONDS=--idle``; a checkout without eviction
   ignores the setting).

    python bench/bench_memory.py [--quick] [--models 20] [--idle 5]

``--quick`` runs 5 models. Run it in another checkout (e.g. the base commit) for a
"before" figure: copy the file there; it starts that checkout's server.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-admin-key-0123456789abcdef"
MiB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of ``pid`` in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0]) * 1024
    return out


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS


class Server:
    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        e = {k: v for k, v in os.environ.items() if not k.startswith("STEWARD_")}
        e |= {
            "STEWARD_DATA_DIR": str(tmp / "data"),
            "STEWARD_ADMIN_KEY": KEY,
            "STEWARD_RUN_WORKER": "false",
            "STEWARD_MAX_BODY_BYTES": str(64 * MiB),
            **env,
        }
        self.log = tmp / "server.log"
        cmd = [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=e, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                if self.call("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("server did not start")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def call(self, method: str, path: str, body: object = None, ctype: str = "application/json") -> tuple[int, bytes]:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        data = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
        c.request(method, path, body=data, headers={"Authorization": f"Bearer {KEY}", "Content-Type": ctype})
        r = c.getresponse()
        return r.status, r.read()

    def stream(self, path: str, body: bytes, chunk: int = 256 * 1024) -> tuple[int, bytes]:
        def chunks() -> Iterator[bytes]:
            for i in range(0, len(body), chunk):
                yield body[i : i + chunk]

        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/x-ndjson", "Transfer-Encoding": "chunked"}
        c.request("POST", path, body=chunks(), headers=h, encode_chunked=True)
        r = c.getresponse()
        return r.status, r.read()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def bodies(limit: int) -> tuple[bytes, bytes, int]:
    """A JSON body just under ``limit`` bytes and the same samples as NDJSON."""
    rng = np.random.default_rng(0)
    per = len(orjson.dumps({"x": [-0.123, 0.456], "y": 1})) + 1
    n = int(limit * 0.98) // per
    X = np.round(rng.normal(size=(n, 2)), 3).tolist()
    Y = rng.integers(0, 2, n).tolist()
    rows = [{"x": x, "y": y} for x, y in zip(X, Y, strict=True)]
    body = orjson.dumps({"samples": rows})
    while len(body) > limit:
        rows = rows[: int(len(rows) * 0.99)]
        body = orjson.dumps({"samples": rows})
    nd = b"\n".join(orjson.dumps(r) for r in rows) + b"\n"
    return body, nd, len(rows)


def body_scenario(tmp: Path, name: str, send: str, body: bytes) -> dict[str, int]:
    srv = Server(tmp, {"STEWARD_RUN_LEARNER": "false"})
    try:
        st, _ = srv.call("POST", "/v1/models", {"name": "m", "task": "binary", "input_dim": 2, "hidden": [], "seed": 0})
        assert st == 201, st
        time.sleep(1)
        before = status(srv.pid)["VmRSS"]
        reset_peak(srv.pid)
        st, out = (
            srv.call("POST", "/v1/models/m/update", body) if send == "json" else srv.stream("/v1/models/m/update", body)
        )
        if st != 202:
            raise SystemExit(f"{name}: {st} {out[:300]!r}")
        peak = status(srv.pid)["VmHWM"]
        time.sleep(2)
        after = status(srv.pid)["VmRSS"]
        return {"before": before, "peak": peak, "after": after}
    finally:
        srv.stop()


def models_scenario(tmp: Path, n_models: int, idle: float) -> dict[str, int]:
    srv = Server(tmp, {"STEWARD_LEARNER_IDLE_SECONDS": str(idle)})
    try:
        time.sleep(1)
        base = status(srv.pid)["VmRSS"]
        spec = {"task": "binary", "input_dim": 1000, "hidden": [5000, 4000], "seed": 0, "checkpoint_every": 1_000_000}
        rng = np.random.default_rng(1)
        for k in range(n_models):
            st, out = srv.call("POST", "/v1/models", {"name": f"big{k}", **spec})
            assert st == 201, (st, out[:300])
        created = status(srv.pid)["VmRSS"]
        reset_peak(srv.pid)
        for k in range(n_models):
            X = np.round(rng.normal(size=(4, 1000)), 3).tolist()
            body = {"samples": [{"x": x, "y": j % 2} for j, x in enumerate(X)]}
            st, out = srv.call("POST", f"/v1/models/big{k}/update?wait=true&timeout=600", body)
            assert st == 202 and orjson.loads(out)["applied"], (st, out[:300])
        learned = status(srv.pid)
        time.sleep(idle + 3)
        after = status(srv.pid)["VmRSS"]
        return {"base": base, "created": created, "learned": learned["VmRSS"], "peak": learned["VmHWM"], "idle": after}
    finally:
        srv.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=int, default=20)
    p.add_argument("--idle", type=float, default=5.0, help="STEWARD_LEARNER_IDLE_SECONDS of the server")
    p.add_argument("--quick", action="store_true", help="5 models")
    a = p.parse_args(argv)
    n_models = 5 if a.quick else a.models
    tmp_root = Path(tempfile.mkdtemp(prefix="steward-bench-mem-"))
    try:
        body, nd, n = bodies(64 * MiB)
        print(f"checkout: {ROOT}")
        print(f"bodies: {n:,} samples; JSON {len(body):,} B, NDJSON {len(nd):,} B\n")
        print(f"{'body':<14} {'RSS before':>12} {'peak RSS':>12} {'peak - before':>14} {'÷ body':>8} {'RSS after':>12}")
        for name, kind, data in (("JSON", "json", body), ("NDJSON", "ndjson", nd)):
            d = tmp_root / name
            d.mkdir()
            r = body_scenario(d, name, kind, data)
            grow = r["peak"] - r["before"]
            print(
                f"{name:<14} {mb(r['before']):>12} {mb(r['peak']):>12} {mb(grow):>14} "
                f"{grow / len(data):>7.2f}× {mb(r['after']):>12}"
            )
            shutil.rmtree(d, ignore_errors=True)
        print(
            "bound (README, Memory): a JSON body above 1 MiB costs the body (read, plus a copy) and the packed "
            "arrays plus one ~256 KiB slice's objects; parsed whole it cost ≈ 20× the body\n"
        )
        d = tmp_root / "models"
        d.mkdir()
        r = models_scenario(d, n_models, a.idle)
        print(f"{n_models} models of 25M parameters (1000-5000-4000-1), 4 samples each, idle setting {a.idle:g} s:")
        print(f"  RSS at start {mb(r['base'])}, after creating them {mb(r['created'])}")
        print(f"  after the samples: RSS {mb(r['learned'])}, peak {mb(r['peak'])}")
        print(f"  after {a.idle + 3:g} s idle: RSS {mb(r['idle'])}")
        print(
            "bound (README, Memory): held learners ≤ STEWARD_LEARNER_MEMORY_BYTES (default 2 GiB), idle ones "
            "evicted; the predict cache ≤ 512 MiB"
        )
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


if __name__ == "__main__":
    main()
