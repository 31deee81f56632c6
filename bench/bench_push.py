"""The task CLI pushing a file: ``steward push MODEL FILE --label y`` on a 100,000-row CSV,
beside what a user would write instead, then ``steward batch-update --wait`` watched to the
end beside the same job waited for by the service (``Prefer: wait``).

One command, from the repository root::

    python bench/bench_push.py            # ~1 minute
    python bench/bench_push.py --quick    # one round

What it does: starts ``steward serve`` on a temporary SQLite data directory at its defaults
(learner and job worker on, as a user runs it), makes an ordinary ``maintain`` key
(``POST /v1/keys``), writes a CSV with a header (20 float features ``x0..x19`` and a 0/1
label ``y``, 100,000 rows from a fixed seed) and, in interleaved rounds, each on a fresh
model (binary, 20 → 32 → 1):

1. ``steward push MODEL FILE --label y`` as a subprocess (``STEWARD_URL`` / ``STEWARD_KEY``;
   wall time of the whole command: start-up, reading and parsing the CSV, the progress bar,
   5,000-sample NDJSON bodies);
2. the Python client's ``Client.update(name, X, y, chunk_size=5000)`` with the arrays
   (already in memory: no file to read);
3. a plain ``httpx`` loop posting ``{"samples": [{"x": [...], "y": ...}, ...]}`` JSON bodies
   of 5,000 samples (``json=``, the arrays already in memory);

rows/s of each (accepted durably: every 202 is committed) and the ratios CLI ÷ each. Then
``steward batch-update MODEL --wait`` (3 epochs on the 100,000 samples, rich progress bar
polled every 0.2 s) as a subprocess, beside the same job submitted with ``Prefer: wait``
(the service answers when it ends): seconds of each and the ratio.

``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` are removed from the environment (see BENCH.md).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):  # before numpy is imported
    os.environ.pop(_var, None)

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "clients" / "python"))

from _http import free_port, stop  # noqa: E402
from steward_client import Client  # noqa: E402

ADMIN = "bench-admin-key-0123456789abcdef"
DIM, ROWS, CHUNK = 20, 100_000, 5000


def start_steward(port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``steward serve`` (as ``scripts/run`` starts it), once ``/readyz`` answers."""
    cmd = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"steward serve exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop(proc)
    raise SystemExit("steward serve did not start within 60 s")


def write_csv(path: Path, X: np.ndarray, y: np.ndarray) -> None:
    header = ",".join([*(f"x{i}" for i in range(X.shape[1])), "y"])
    table = np.column_stack([X, y]).astype(np.float64)
    fmt = ["%.6g"] * X.shape[1] + ["%d"]
    np.savetxt(path, table, fmt=fmt, delimiter=",", header=header, comments="")


def cli_env(url: str, key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEWARD_")}
    return env | {"STEWARD_URL": url, "STEWARD_KEY": key, "COLUMNS": "100"}


def run_cli(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Seconds of a ``steward`` command (the venv's entry point) and its output."""
    steward = Path(sys.executable).with_name("steward")
    cmd = [str(steward)] if steward.exists() else [sys.executable, "-m", "app.cli"]
    t0 = time.perf_counter()
    r = subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=900)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"steward {' '.join(args)} → {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return dt, r.stdout


def httpx_loop(url: str, key: str, name: str, X: np.ndarray, y: np.ndarray) -> float:
    """A plain loop of JSON bodies of ``CHUNK`` samples: seconds until the last 202."""
    t0 = time.perf_counter()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as h:
        for a in range(0, len(X), CHUNK):
            rows = zip(X[a : a + CHUNK].tolist(), y[a : a + CHUNK].tolist(), strict=True)
            body = {"samples": [{"x": x, "y": t} for x, t in rows]}
            r = h.post(f"/v1/models/{name}/update", json=body)
            if r.status_code != 202:
                raise SystemExit(f"httpx loop: {r.status_code} {r.text[:300]}")
    return time.perf_counter() - t0


def client_update(url: str, key: str, name: str, X: np.ndarray, y: np.ndarray) -> float:
    t0 = time.perf_counter()
    with Client(url, key) as st:
        out = st.update(name, X, y, chunk_size=CHUNK)
    if out["accepted"] != len(X):
        raise SystemExit(f"client update accepted {out['accepted']} of {len(X)}")
    return time.perf_counter() - t0


def caught_up(admin: httpx.Client, name: str) -> None:
    """Wait until the model's learner has applied its whole log (so that a job is not
    timed beside the learner still at work on the samples just pushed)."""
    deadline = time.monotonic() + 300
    while admin.get(f"/v1/models/{name}").json()["online"]["lag"] > 0:
        if time.monotonic() > deadline:
            raise SystemExit(f"the learner of {name} did not catch up in 300 s")
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rows", type=int, default=ROWS)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds = 1
    rng = np.random.default_rng(0)
    X = rng.normal(size=(args.rows, DIM)).astype(np.float32)
    y = (X[:, 0] - X[:, 1] + 0.5 * X[:, 2] > 0).astype(np.int64)
    with tempfile.TemporaryDirectory(prefix="steward-bench-push-") as tmpd:
        tmp = Path(tmpd)
        csv_path = tmp / "samples.csv"
        write_csv(csv_path, X, y)
        X = np.loadtxt(csv_path, delimiter=",", skiprows=1, dtype=np.float64)[:, :DIM].astype(np.float32)
        env = {k: v for k, v in os.environ.items() if not k.startswith("STEWARD_")}
        env |= {"STEWARD_DATA_DIR": str(tmp / "data"), "STEWARD_ADMIN_KEY": ADMIN}
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_steward(port, env, tmp / "server.log")
        try:
            admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=600)
            r = admin.post("/v1/keys", json={"name": "bench", "scope": "maintain"})
            key = r.json()["key"]
            spec: dict[str, Any] = {"task": "binary", "input_dim": DIM, "hidden": [32], "seed": 0}
            print(
                f"Steward: pushing a {args.rows:,}-row CSV ({DIM} features + label, "
                f"{csv_path.stat().st_size / 1e6:.1f} MB) — python {platform.python_version()}, "
                f"{os.cpu_count()} CPUs, steward serve at its defaults (SQLite, learner and worker on), "
                f"an ordinary key, {CHUNK:,} samples per request, {args.rounds} round(s)\n"
            )
            rates: dict[str, list[float]] = {"cli": [], "client": [], "httpx": []}
            for rnd in range(args.rounds):
                order = ["cli", "client", "httpx"]
                order = order[rnd % 3 :] + order[: rnd % 3]
                for how in order:
                    name = f"{how}-{rnd}"
                    admin.post("/v1/models", json={"name": name, **spec}).raise_for_status()
                    if how == "cli":
                        dt, out = run_cli(["push", name, str(csv_path), "--label", "y"], cli_env(url, key))
                        if f"accepted {args.rows} samples" not in out:
                            raise SystemExit(f"steward push printed:\n{out}")
                    elif how == "client":
                        dt = client_update(url, key, name, X, y)
                    else:
                        dt = httpx_loop(url, key, name, X, y)
                    rates[how].append(args.rows / dt)
            label = {
                "cli": "steward push FILE --label y (CSV)",
                "client": "Client.update(X, y) (arrays)",
                "httpx": "httpx loop of JSON bodies (arrays)",
            }
            print(f"{'push ' + format(args.rows, ',') + ' rows':<40} {'rows/s (median)':>16} {'min–max':>19}")
            for how in ("cli", "client", "httpx"):
                rs = rates[how]
                print(f"  {label[how]:<38} {statistics.median(rs):>16,.0f} {min(rs):>9,.0f}–{max(rs):<9,.0f}")
            print(f"{'steward push ÷':<40} {'ratio (median)':>16}")
            for other in ("client", "httpx"):
                ratios = [a / b for a, b in zip(rates["cli"], rates[other], strict=True)]
                print(
                    f"  {label[other]:<38} {statistics.median(ratios):>16.2f} {min(ratios):>9.2f}–{max(ratios):<9.2f}"
                )
            # ---- batch-update watched to the end, beside the service's own wait
            # ---- batch-update watched to the end, beside the service's own wait (each round:
            # both on models holding the same 100,000 samples, once their learner caught up)
            print(f"\n{f'batch-update, {args.epochs} epochs on {args.rows:,} samples':<40} {'seconds (median)':>16}")
            took: dict[str, list[float]] = {"cli": [], "wait": []}
            for rnd in range(args.rounds):
                for how in ("cli", "wait") if rnd % 2 == 0 else ("wait", "cli"):
                    name = f"{'cli' if how == 'cli' else 'client'}-{rnd}"
                    caught_up(admin, name)
                    if how == "cli":
                        dt, out = run_cli(
                            ["batch-update", name, "--epochs", str(args.epochs), "--wait"], cli_env(url, key)
                        )
                        if '"status": "succeeded"' not in out:
                            raise SystemExit(f"steward batch-update printed:\n{out[-2000:]}")
                    else:
                        body = {"log": {"from_offset": 0}, "epochs": args.epochs}
                        t0 = time.perf_counter()
                        r = admin.post(f"/v1/models/{name}/batch-update", json=body, headers={"Prefer": "wait=600"})
                        dt = time.perf_counter() - t0
                        if r.status_code != 201 or r.json()["status"] != "succeeded":
                            raise SystemExit(f"batch-update with Prefer: wait → {r.status_code} {r.text[:500]}")
                    took[how].append(dt)
            cli, wait = statistics.median(took["cli"]), statistics.median(took["wait"])
            print(f"  {'steward batch-update --wait (bar)':<38} {cli:>16.2f}")
            print(f"  {'POST with Prefer: wait':<38} {wait:>16.2f}")
            print(f"  {'ratio':<38} {cli / wait:>16.2f}")
        finally:
            stop(server)


if __name__ == "__main__":
    main()
