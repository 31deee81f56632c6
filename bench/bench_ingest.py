"""HTTP ingestion (``POST /v1/models/{name}/update``), acknowledged durably, beside a
bare FastAPI endpoint that only parses the same body; learner throughput beside it.

One command, from the repository root::

    python bench/bench_ingest.py            # ~2 minutes
    python bench/bench_ingest.py --quick    # ~40 s, fewer and shorter rounds

What it does, in one process tree:

1. starts ``uvicorn app.main:app`` (Steward: SQLite default configuration —
   WAL, ``synchronous=FULL``, every 202 is committed and fsynced — in a temporary
   data directory; learner and job worker off for the ingestion figures) and
   ``uvicorn bench.bare_ingest_app:app`` (orjson + numpy parse only: the
   ceiling), both 1 process, access log off, pinned to CPU 0 with ``taskset``;
   the load generator runs on CPU 1;
2. for three bodies — one 32-float binary sample per request, 1,000 samples per
   JSON request, one 100,000-line NDJSON stream — times Steward and the bare
   endpoint in interleaved rounds (A B, B A, …): ``wrk`` (if installed; else a
   Python ``http.client`` loop, said in the output) for the JSON bodies, and a
   Python client streaming the NDJSON body chunked (64 KiB chunks) for the stream;
(The learner runtime beside the engine alone is in ``bench/bench_learner.py``;
ingestion and learning together in ``bench/bench_ingest_learn.py``.)

Figures are samples/s (acknowledged durably for Steward); "ratio" is Steward ÷
bare in the same round (median and min–max over rounds). ``OPENBLAS_CORETYPE`` /
``OPENBLAS_L2_SIZE`` are removed from this command's environment (see BENCH.md).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):  # before numpy is imported
    os.environ.pop(_var, None)

import argparse  # noqa: E402
import http.client  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import orjson  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _http import free_port, start_uvicorn, stop, wrk_rate  # noqa: E402

KEY = "bench-admin-key-0123456789abcdef"
#: The load's key: an ordinary one made through POST /v1/keys (set in main()), as a
#: production client has — its check is a real lookup, not the bootstrap admin's shortcut.
CLIENT_KEY = KEY
DIM = 32


# --------------------------------------------------------------------------- servers
def start_server(app: str, port: int, env: dict[str, str], pin: bool, log: Path) -> subprocess.Popen:
    return start_uvicorn(app, port, env, cpus="0" if pin else None, log=log)


stop_server = stop


def call(port: int, method: str, path: str, body: object | None = None) -> tuple[int, dict]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    data = orjson.dumps(body) if body is not None else None
    c.request(method, path, body=data, headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    r = c.getresponse()
    return r.status, orjson.loads(r.read() or b"{}")


# --------------------------------------------------------------------------- bodies
def make_samples(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, DIM)).astype(np.float32)
    w = rng.standard_normal(DIM)
    Y = (X @ w + 0.5 * rng.standard_normal(n) > 0).astype(np.int64)
    return X, Y


NUMPY = orjson.OPT_SERIALIZE_NUMPY  # float32 rows print as their shortest float32 repr


def json_body(X: np.ndarray, Y: np.ndarray) -> bytes:
    return orjson.dumps({"samples": [{"x": x, "y": int(y)} for x, y in zip(X, Y, strict=True)]}, option=NUMPY)


def ndjson_body(X: np.ndarray, Y: np.ndarray) -> bytes:
    return b"".join(orjson.dumps({"x": x, "y": int(y)}, option=NUMPY) + b"\n" for x, y in zip(X, Y, strict=True))


# --------------------------------------------------------------------------- load
def fsync_seconds(where: Path, n: int = 200) -> float:
    """Median time of a 4 KiB write + fsync in ``where`` (the data directory's disk)."""
    where.mkdir(parents=True, exist_ok=True)
    times = []
    with open(where / "fsync-probe", "wb") as f:
        for _ in range(n):
            t0 = time.perf_counter()
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())
            times.append(time.perf_counter() - t0)
    (where / "fsync-probe").unlink()
    return statistics.median(times)


def loop_rate(port: int, path: str, body: bytes, conns: int, seconds: float) -> tuple[float, int]:
    """Fallback without wrk: ``conns`` threads posting over keep-alive connections."""
    stop = time.monotonic() + seconds
    counts = [0] * conns
    bad = [0] * conns

    def run(k: int) -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        h = {"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"}
        while time.monotonic() < stop:
            c.request("POST", path, body=body, headers=h)
            r = c.getresponse()
            r.read()
            counts[k] += 1
            bad[k] += r.status != 202

    t0 = time.monotonic()
    threads = [threading.Thread(target=run, args=(k,)) for k in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - t0), sum(bad)


def stream_seconds(port: int, path: str, body: bytes, chunk: int = 64 * 1024) -> float:
    """Wall time of one chunked NDJSON upload until its (202) answer."""

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), chunk):
            yield body[i : i + chunk]

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    h = {
        "Authorization": f"Bearer {CLIENT_KEY}",
        "Content-Type": "application/x-ndjson",
        "Transfer-Encoding": "chunked",
    }
    t0 = time.perf_counter()
    c.request("POST", path, body=chunks(), headers=h, encode_chunked=True)
    r = c.getresponse()
    data = r.read()
    dt = time.perf_counter() - t0
    if r.status != 202:
        raise SystemExit(f"NDJSON stream to {path} → {r.status}: {data[:300]!r}")
    return dt


# --------------------------------------------------------------------------- report
def fmt_rate(xs: list[float]) -> str:
    return f"{statistics.median(xs):>11,.0f}  ({min(xs):,.0f}–{max(xs):,.0f})"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per scenario")
    p.add_argument("--seconds", type=float, default=3.0, help="duration of each wrk run")
    p.add_argument("--conns", type=int, default=8, help="concurrent connections for the JSON bodies")
    p.add_argument("--quick", action="store_true", help="2 rounds of 2 s")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 2, 2.0
    pin = bool(shutil.which("taskset")) and (os.cpu_count() or 1) >= 2
    if pin:
        os.sched_setaffinity(0, {1})
    have_wrk = bool(shutil.which("wrk"))
    load_cpus = "1" if pin else None

    with tempfile.TemporaryDirectory(prefix="steward-bench-ingest-") as tmpd:
        tmp = Path(tmpd)
        data_dir = tmp / "data"
        env = {**os.environ, "STEWARD_DATA_DIR": str(data_dir), "STEWARD_ADMIN_KEY": KEY}
        for k in ("STEWARD_DATABASE_URL", "STEWARD_MAX_BODY_BYTES"):
            env.pop(k, None)
        ingest_env = {**env, "STEWARD_RUN_LEARNER": "false", "STEWARD_RUN_WORKER": "false"}
        sp, bp = free_port(), free_port()
        global CLIENT_KEY
        steward = start_server("app.main:app", sp, ingest_env, pin, tmp / "steward.log")
        status, _ = call(sp, "POST", "/v1/models", {"name": "bench", "task": "binary", "input_dim": DIM})
        assert status == 201, status
        status, made = call(sp, "POST", "/v1/keys", {"name": "bench-app", "scope": "ingest", "models": ["bench"]})
        assert status == 201, status
        CLIENT_KEY = made["key"]
        bare = start_server("bench.bare_ingest_app:app", bp, {**env, "BARE_TOKEN": CLIENT_KEY}, pin, tmp / "bare.log")
        results: dict[str, dict[str, list[float]]] = {}
        try:
            X1, Y1 = make_samples(1, 1)
            X1k, Y1k = make_samples(1000, 2)
            Xnd, Ynd = make_samples(100_000, 3)
            bodies = {
                "1-sample JSON": (json_body(X1, Y1), 1),
                "1,000-sample JSON": (json_body(X1k, Y1k), 1000),
            }
            nd = ndjson_body(Xnd, Ynd)
            print(
                f"Steward ingestion vs bare orjson+numpy endpoint — python {platform.python_version()}, "
                f"numpy {np.__version__}, {os.cpu_count()} CPUs"
            )
            where = "servers on CPU 0, load on CPU 1 (taskset)" if pin else "no CPU pinning"
            gen = f"wrk -t1 -c{args.conns} {args.seconds:g} s" if have_wrk else f"Python http.client x{args.conns}"
            print(f"uvicorn 1 process each, access log off; {where}; JSON load: {gen}; NDJSON: Python chunked upload")
            print("both check the bearer token: Steward an ordinary ingest key (POST /v1/keys), bare an in-memory set")
            print("Steward: SQLite default config (WAL, synchronous=FULL): every 202 is committed and fsynced")
            print(
                f"bodies: {DIM} float32 values per sample as orjson prints them (shortest float32 repr); "
                f"1,000-sample JSON {len(bodies['1,000-sample JSON'][0]):,} B, NDJSON {len(nd):,} B\n"
            )
            for name, (body, n) in bodies.items():
                f = tmp / f"body-{n}.json"
                f.write_bytes(body)
                rs: dict[str, list[float]] = {"steward": [], "bare": []}
                for r in range(args.rounds):
                    order = [("steward", sp, "/v1/models/bench/update"), ("bare", bp, "/json")]
                    for who, port, path in order if r % 2 == 0 else order[::-1]:
                        if have_wrk:
                            url = f"http://127.0.0.1:{port}{path}"
                            rate, bad, _ = wrk_rate(url, f, CLIENT_KEY, conns=args.conns, seconds=args.seconds,
                                                    cpus=load_cpus, tmp=tmp)  # fmt: skip
                        else:
                            rate, bad = loop_rate(port, path, body, args.conns, args.seconds)
                        if bad:
                            raise SystemExit(f"{who}: {bad} non-2xx answers for {name}")
                        rs[who].append(rate * n)
                results[name] = rs
            rs = {"steward": [], "bare": []}
            for r in range(args.rounds):
                order = [("steward", sp, "/v1/models/bench/update"), ("bare", bp, "/ndjson")]
                for who, port, path in order if r % 2 == 0 else order[::-1]:
                    rs[who].append(len(Xnd) / stream_seconds(port, path, nd))
            results["100,000-line NDJSON stream"] = rs
            if have_wrk:  # one client: each request waits for its own commit and fsync
                f1 = tmp / "body-1.json"
                one = {}  # (requests/s, p50 µs)
                for who, port, path in (("steward", sp, "/v1/models/bench/update"), ("bare", bp, "/json")):
                    url = f"http://127.0.0.1:{port}{path}"
                    rate, _, p50 = wrk_rate(url, f1, CLIENT_KEY, conns=1, seconds=args.seconds, cpus=load_cpus, tmp=tmp)
                    one[who] = (rate, p50)
            _, m = call(sp, "GET", "/v1/models/bench")
            accepted = m["online"]["accepted"]
        finally:
            stop_server(steward)
            stop_server(bare)

        header = (
            f"{'body':<28} {'Steward samples/s (spread)':>34} {'bare samples/s (spread)':>34} {'ratio (spread)':>20}"
        )
        print(header)
        print("-" * len(header))
        targets = {"1-sample JSON": 0, "1,000-sample JSON": 150_000, "100,000-line NDJSON stream": 150_000}
        verdicts = []
        for name, rs in results.items():
            ratios = [a / b for a, b in zip(rs["steward"], rs["bare"], strict=True)]
            ratio = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})"
            print(f"{name:<28} {fmt_rate(rs['steward']):>34} {fmt_rate(rs['bare']):>34} {ratio:>20}")
            if name in targets:
                floor = targets[name]
                ok = statistics.median(rs["steward"]) >= floor and statistics.median(ratios) >= 0.7
                need = f"≥ {floor:,}/s and ≥ 0.7 × bare" if floor else f"≥ 0.7 × bare ({args.conns} clients)"
                verdicts.append(f"{name}: {'meets' if ok else 'MISSES'} {need}")
        if have_wrk:
            fs = fsync_seconds(data_dir)
            (sr, sl), (br, bl) = one["steward"], one["bare"]
            print(
                f"\n1 client, 1-sample JSON: Steward {sr:,.0f} req/s, p50 {sl:,.0f} µs per request "
                f"(bare {br:,.0f} req/s, {bl:,.0f} µs); this disk's fsync of a small write takes "
                f"{fs * 1e6:,.0f} µs (median), so a request that waits for its own durable commit "
                f"(SQLite WAL: one fsync per commit) cannot beat ≈ {1 / fs:,.0f} req/s from one client"
            )
        print(f"\n{accepted:,} samples were acknowledged into the log during the run.")
        for v in verdicts:
            print("target:", v)


if __name__ == "__main__":
    main()
