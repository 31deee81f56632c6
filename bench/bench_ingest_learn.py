"""Ingestion and learning together, default settings, one Steward API process: the highest
sustained rate of 1,000-sample JSON ``/update`` requests at which the learner's lag stays
under 1 second.

One command, from the repository root::

    python bench/bench_ingest_learn.py            # 60 s per rate (~15 minutes)
    python bench/bench_ingest_learn.py --quick    # 15 s per rate (~5 minutes)

What it does:

1. starts ``uvicorn app.main:app`` (Steward's defaults: SQLite, WAL, ``synchronous=FULL``,
   the learner thread on; job worker off; access log off) in a temporary data directory,
   **not pinned**: the one server process may use both cores;
2. creates an ordinary API key (``POST /v1/keys``, scope ``ingest``) with the bootstrap
   admin key; the load uses only that key;
3. for each model (logistic 32 features, MLP 32-64-1 relu; binary; every other field of
   the spec at its default: ``checkpoint_every`` 1,000, ``checkpoint_seconds`` 1) and each
   rate of the search (25k, 50k, 75k … samples/s until the first failure, then the rate
   halfway back, 12.5k below it):
   a fresh model, then a load generator in a **separate process** (also unpinned; it only
   sends prebuilt bodies) paces 1,000-sample JSON requests open loop at the rate — request
   ``k`` is due at ``start + k / (rate / 1000)``, spread over 8 connections (threads with
   ``http.client``); a request that is due while all connections are busy goes late (its
   lateness is counted, and the achieved rate is reported) — and records when each 202
   arrived with its ``last_offset``. A sampler thread in the same process reads the
   learner's published ``online.applied_through`` (``GET /v1/models/{name}``) every
   100 ms;
4. lag at a sample taken at time t (when its answer arrived) with applied offset a: t
   minus the arrival time of the earliest 202 that had arrived by t and acknowledged an
   offset after a (0 when every acknowledged sample was applied) — how long ago the
   oldest not-yet-applied sample was acknowledged. A rate passes when p99 of the lag
   samples is under 1 s, and the accepted rate is within 5 % of the target. A sample's
   time is when its answer arrived (conservative: a saturated server answers the sampler
   late too, and that delay counts as lag).

Figures depend on what else runs on the machine (2 shared cores): the header prints the
load average; rerun on a quiet machine. ``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` are
removed from this command's environment (see BENCH.md).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):  # before numpy is imported
    os.environ.pop(_var, None)

import argparse  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import orjson  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _http import free_port, start_uvicorn, stop  # noqa: E402

ADMIN = "bench-admin-key-0123456789abcdef"
DIM = 32
PER_REQUEST = 1000
CONNECTIONS = 8
SAMPLE_EVERY = 0.1
GOAL = 100_000
STEP = 25_000  # the search's step (samples/s); after the first failure, one step of half that
LAG_LIMIT = 1.0
MODELS = [("logistic 32", []), ("MLP 32-64-1 relu", [64])]


# --------------------------------------------------------------------------- server
def start_server(port: int, data_dir: Path, log: Path) -> subprocess.Popen:
    """Steward at defaults, not pinned (both cores), job worker off."""
    env = {
        **os.environ,
        "STEWARD_DATA_DIR": str(data_dir),
        "STEWARD_ADMIN_KEY": ADMIN,
        "STEWARD_RUN_WORKER": "false",
    }
    return start_uvicorn("app.main:app", port, env, cpus=None, log=log)


stop_server = stop


def call(port: int, method: str, path: str, key: str, body: object | None = None) -> tuple[int, dict]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    data = orjson.dumps(body) if body is not None else None
    c.request(method, path, body=data, headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    r = c.getresponse()
    out = r.read()
    c.close()
    return r.status, orjson.loads(out or b"{}")


# --------------------------------------------------------------------------- load generator
def bodies(n: int, seed: int = 0) -> list[bytes]:
    """``n`` distinct 1,000-sample JSON bodies (a fixed logistic labelling with noise)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(DIM)
    out = []
    for _ in range(n):
        X = rng.standard_normal((PER_REQUEST, DIM)).astype(np.float32)
        y = (X @ w + 0.5 * rng.standard_normal(PER_REQUEST) > 0).astype(int)
        samples = [{"x": x, "y": int(t)} for x, t in zip(X, y, strict=True)]
        out.append(orjson.dumps({"samples": samples}, option=orjson.OPT_SERIALIZE_NUMPY))
    return out


def loadgen(port: int, model: str, key: str, rate: float, seconds: float, out: Path) -> None:
    """The load generator process: paced requests and the lag sampler; writes ``out`` (npz)."""
    bs = bodies(16)
    per_s = rate / PER_REQUEST
    n_req = int(seconds * per_s)
    path = f"/v1/models/{model}/update"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    acks = np.full((n_req, 2), np.nan)  # (arrival time, last_offset) per request
    late = np.zeros(n_req)
    status = np.zeros(n_req, np.int32)
    nxt = [0]
    lock = threading.Lock()
    start = time.monotonic() + 0.5
    stop = threading.Event()

    def sender() -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                k = nxt[0]
                nxt[0] += 1
            if k >= n_req:
                break
            due = start + k / per_s
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            late[k] = max(-wait, 0.0)
            try:
                c.request("POST", path, body=bs[k % len(bs)], headers=headers)
                r = c.getresponse()
                body = r.read()
            except OSError:
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                status[k] = -1
                continue
            t = time.monotonic()
            status[k] = r.status
            if r.status == 202:
                acks[k] = (t, orjson.loads(body)["last_offset"])
        c.close()

    samples: list[tuple[float, int]] = []

    def sampler() -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        at = start
        while not stop.is_set():
            at += SAMPLE_EVERY
            wait = at - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            c.request("GET", f"/v1/models/{model}", headers=headers)
            r = c.getresponse()
            m = orjson.loads(r.read())
            t = time.monotonic()
            a = m["online"]["applied_through"]
            samples.append((t, -1 if a is None else int(a)))

    threads = [threading.Thread(target=sender) for _ in range(CONNECTIONS)]
    smp = threading.Thread(target=sampler)
    smp.start()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    end = time.monotonic()
    time.sleep(0.5)  # a few samples after the last answer
    stop.set()
    smp.join()
    np.savez(
        out,
        acks=acks,
        late=late,
        status=status,
        samples=np.array(samples, dtype=np.float64).reshape(-1, 2),
        window=np.array([start, end]),
    )


# --------------------------------------------------------------------------- analysis
def lags(acks: np.ndarray, samples: np.ndarray, until: float) -> np.ndarray:
    """Lag (s) at each sample taken by ``until``: its time minus the arrival of the earliest
    202 received by then that acknowledged an offset after the applied one (0 if none)."""
    ok = acks[~np.isnan(acks[:, 0])]
    ok = ok[np.argsort(ok[:, 0])]  # by arrival
    out = []
    for t, a in samples:
        if t > until:
            break
        arrived = ok[ok[:, 0] <= t]
        pending = arrived[arrived[:, 1] > a]
        out.append(t - pending[0, 0] if len(pending) else 0.0)
    return np.array(out)


def run_rate(port: int, key: str, model: str, hidden: list[int], rate: int, seconds: float, tmp: Path) -> dict:
    st, body = call(
        port, "POST", "/v1/models", ADMIN, {"name": model, "task": "binary", "input_dim": DIM, "hidden": hidden}
    )
    assert st == 201, body
    # the learner holds the model before the clock starts (a learner process may still be
    # starting, and a new model is claimed within a second): one sample, applied
    warm = {"samples": [{"x": [0.0] * DIM, "y": 0}]}
    st, body = call(port, "POST", f"/v1/models/{model}/update?wait=true&timeout=120", key, warm)
    assert st == 202 and body.get("applied"), body
    out = tmp / f"{model}.npz"
    cmd = [sys.executable, __file__, "--loadgen", json.dumps([port, model, key, rate, seconds, str(out)])]
    subprocess.run(cmd, check=True, cwd=ROOT)
    d = np.load(out)
    start, end = d["window"]
    acks, samples = d["acks"], d["samples"]
    n_ok = int((d["status"] == 202).sum())
    accepted = n_ok * PER_REQUEST / (end - start)
    inside = samples[(samples[:, 0] >= start) & (samples[:, 0] <= end)]
    lag = lags(acks, inside, end)
    applied = (inside[-1, 1] - inside[0, 1]) / (inside[-1, 0] - inside[0, 0]) if len(inside) > 1 else 0.0
    # after the run: how long until the learner caught up (bounded)
    total = int(np.nanmax(acks[:, 1])) if n_ok else -1
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120:
        _, m = call(port, "GET", f"/v1/models/{model}", key)
        if (m["online"]["applied_through"] or -1) >= total:
            break
        time.sleep(0.2)
    drained = time.monotonic() - t0
    p50, p99 = (float(np.percentile(lag, q)) for q in (50, 99)) if len(lag) else (float("nan"),) * 2
    errors = int(((d["status"] != 202) & (d["status"] != 0)).sum())
    ok = p99 < LAG_LIMIT and accepted >= 0.95 * rate and errors == 0
    return {
        "rate": rate,
        "accepted": accepted,
        "applied": applied,
        "p50": p50,
        "p99": p99,
        "late_p99": float(np.percentile(d["late"], 99)),
        "errors": errors,
        "drained": drained,
        "pass": ok,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="15 s per rate instead of 60 s")
    ap.add_argument("--seconds", type=float, help="seconds per rate (overrides --quick)")
    ap.add_argument(
        "--rates", help="comma-separated samples/s to try (default: 25k steps until a failure past the goal)"
    )
    ap.add_argument("--models", default="logistic,mlp", help="logistic, mlp or both")
    ap.add_argument("--loadgen", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.loadgen:
        port, model, key, rate, seconds, out = json.loads(args.loadgen)
        loadgen(port, model, key, rate, seconds, Path(out))
        return
    seconds = args.seconds or (15.0 if args.quick else 60.0)
    fixed = [int(float(r)) for r in args.rates.split(",")] if args.rates else None
    wanted = args.models.split(",")
    models = [(label, hidden) for label, hidden in MODELS if ("mlp" if hidden else "logistic") in wanted]

    print("Ingestion and learning together: one Steward API process (uvicorn, 1 worker, NOT pinned: both cores),")
    print("defaults (SQLite synchronous=FULL, learner on, checkpoint_every 1,000, checkpoint_seconds 1);")
    print(f"the load generator is a separate unpinned process: {CONNECTIONS} connections (http.client threads),")
    print(f"open-loop paced {PER_REQUEST:,}-sample JSON /update requests with an ordinary ingest-scope API key;")
    print(f"lag sampled every {SAMPLE_EVERY * 1000:.0f} ms from GET /v1/models/{{name}} (online.applied_through).")
    print(f"{seconds:.0f} s per rate. {platform.platform()}; numpy {np.__version__}; load average {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="steward-bench-ingest-learn-") as td:
        tmp = Path(td)
        port = free_port()
        srv = start_server(port, tmp / "data", tmp / "server.log")
        try:
            st, k = call(port, "POST", "/v1/keys", ADMIN, {"name": "bench-load", "scope": "ingest"})
            assert st == 201, k
            key = k["key"]
            for label, hidden in models:
                print(f"\n{label} (binary, {DIM} features), {seconds:.0f} s per rate")
                hdr = (
                    f"{'rate/s':>8s} {'accepted/s':>11s} {'applied/s':>10s} {'lag p50 s':>10s} {'lag p99 s':>10s} "
                    f"{'late p99 s':>11s} {'errors':>7s} {'drained s':>10s}  result"
                )
                print(hdr)
                print("-" * len(hdr))
                best = 0
                rates = list(fixed or [STEP * i for i in range(1, 41)])
                i = 0
                while i < len(rates):
                    rate = rates[i]
                    name = f"{'mlp' if hidden else 'logistic'}-{i}"
                    r = run_rate(port, key, name, hidden, rate, seconds, tmp)
                    print(
                        f"{rate:>8,} {r['accepted']:>11,.0f} {r['applied']:>10,.0f} {r['p50']:>10.2f} {r['p99']:>10.2f} "
                        f"{r['late_p99']:>11.3f} {r['errors']:>7d} {r['drained']:>10.1f}  {'pass' if r['pass'] else 'FAIL'}",
                        flush=True,
                    )
                    i += 1
                    if r["pass"]:
                        best = max(best, rate)
                    elif fixed is None:
                        # one refinement: halfway between the last pass and this failure
                        if rate % STEP == 0 and rate - STEP // 2 > best:
                            rates[i:] = [rate - STEP // 2]
                        else:
                            break
                verdict = "PASS" if best >= GOAL else "FAIL"
                print(
                    f"highest passing rate: {best:,} samples/s; target {GOAL:,} samples/s with lag p99 < {LAG_LIMIT:g} s: {verdict}"
                )
        finally:
            stop_server(srv)
    print(
        f"\nload average at the end {os.getloadavg()} (2 shared cores: figures drop when others run; rerun when quiet)"
    )


if __name__ == "__main__":
    main()
