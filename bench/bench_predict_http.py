"""Predict through the running service beside ONNX Runtime on the version's verified export.

One command, from the repository root::

    python bench/bench_predict_http.py                  # 64-128-64-10 relu multiclass MLP
    python bench/bench_predict_http.py --layers 30,64,32,1 --task binary --repeats 9

What it does, in one run:

1. starts ``uvicorn app.main:app`` (1 process, access log off, SQLite in a temporary
   data directory) pinned to CPU 0 with ``taskset`` when the machine has ≥ 2 CPUs;
   this client pins itself to CPU 1;
2. creates the model, asks the service for an ONNX export
   (``POST /v1/models/{name}/migrate`` with ``Prefer: wait``) and downloads the
   verified file, and downloads the version's weights (safetensors);
3. for batch 1 and 256, times in interleaved rounds (order rotating each round):
   ``POST /v1/models/{name}/predict`` over one keep-alive HTTP/1.1 connection
   (``http.client``, orjson-encoded body; the time includes JSON encoding and
   decoding on both sides), ONNX Runtime running the downloaded file in this
   process, and numpy ``Network.forward`` on the downloaded weights (what the
   service computes inside the request);
4. prints the median per-call latency, its spread (min–max of the round medians),
   throughput (samples/s = batch / latency) and the ratio to ONNX Runtime.

The in-process numpy vs ORT comparison (float and int8 QDQ) is ``bench/bench_predict.py``.
``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` are removed from this command's
environment (they slow numpy on some machines; see ``BENCH.md``).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):  # before numpy is imported
    os.environ.pop(_var, None)

import argparse  # noqa: E402
import http.client  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import orjson  # noqa: E402
import safetensors.numpy as stnp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.engine.codec import from_tensors  # noqa: E402

KEY = "bench-admin-key-0123456789abcdef"


class Client:
    """A keep-alive HTTP/1.1 connection with the admin key."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: object | None = None, **headers: str) -> tuple[int, bytes]:
        data = orjson.dumps(body) if body is not None else None
        self.conn.request(method, path, body=data, headers={**self.headers, **headers})
        r = self.conn.getresponse()
        return r.status, r.read()

    def json(self, method: str, path: str, body: object | None = None, ok: tuple[int, ...] = (200, 201), **h: str):
        status, data = self.call(method, path, body, **h)
        if status not in ok:
            raise SystemExit(f"{method} {path} → {status}: {data[:500]!r}")
        return orjson.loads(data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, data_dir: Path, pin: bool) -> subprocess.Popen:
    env = {**os.environ, "STEWARD_DATA_DIR": str(data_dir), "STEWARD_ADMIN_KEY": KEY}
    env.pop("STEWARD_DATABASE_URL", None)
    cmd = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--no-access-log", "--log-level", "warning"]
    if pin:
        cmd = ["taskset", "-c", "0", *cmd]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/readyz")
            if c.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    raise SystemExit("the server did not become ready within 60 s")


def time_round(fn: Callable[[], object], min_time: float) -> float:
    """Seconds per call of ``fn``: calls in a loop until ``min_time`` has passed."""
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / n


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", default="64,128,64,10", help="input,hidden…,output widths")
    p.add_argument("--task", default="multiclass", choices=["regression", "binary", "multiclass"])
    p.add_argument("--activation", default="relu", choices=["relu", "tanh", "sigmoid"])
    p.add_argument("--batches", default="1,256")
    p.add_argument("--repeats", type=int, default=7, help="interleaved rounds per contender")
    p.add_argument("--min-time", type=float, default=0.3, help="seconds per timed round")
    p.add_argument("--opset", type=int, default=17)
    args = p.parse_args(argv)

    sizes = [int(s) for s in args.layers.split(",")]
    pin = bool(shutil.which("taskset")) and (os.cpu_count() or 1) >= 2
    if pin:
        os.sched_setaffinity(0, {1})
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="steward-bench-") as tmp:
        server = start_server(port, Path(tmp), pin)
        try:
            c = Client(port)
            spec = {
                "name": "bench",
                "task": args.task,
                "input_dim": sizes[0],
                "output_dim": sizes[-1],
                "hidden": sizes[1:-1],
                "activation": args.activation,
            }
            c.json("POST", "/v1/models", spec)
            job = c.json("POST", "/v1/models/bench/migrate", {"from": 1, "target": "onnx", "opset": args.opset},
                         Prefer="wait=60")  # fmt: skip
            if job["status"] != "succeeded":
                raise SystemExit(f"export job did not succeed: {job}")
            res = job["result"]
            status, onnx_bytes = c.call("GET", res["url"])
            assert status == 200 and len(onnx_bytes) == res["size_bytes"]
            status, weights = c.call("GET", "/v1/models/bench/versions/1/weights")
            assert status == 200
            net = from_tensors(
                stnp.load(weights),
                task=args.task,
                activation=args.activation,
                input_dim=sizes[0],
                output_dim=sizes[-1],
                n_layers=len(sizes) - 1,
            )
            sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])

            print(
                f"MLP {args.layers} ({args.task}, {args.activation}), {net.n_params} parameters; "
                f"python {platform.python_version()}, numpy {np.__version__}, onnxruntime {ort.__version__}"
            )
            print(
                f"export: {res['filename']} {res['size_bytes']:,} B, opset {res['opset']}, verified by the service "
                f"with max |error| {res['max_abs_error']:.2e} (tolerance {res['tolerance']})"
            )
            where = "server on CPU 0, client on CPU 1 (taskset)" if pin else "no CPU pinning (< 2 CPUs or no taskset)"
            print(f"uvicorn 1 process, access log off; {where}")
            print(
                f"median of {args.repeats} interleaved rounds, ~{args.min_time * 1e3:.0f} ms each; spread = min–max\n"
            )
            header = (
                f"{'batch':>5}  {'runtime':<34} {'latency µs':>11} {'spread µs':>17} {'samples/s':>12} {'vs ORT':>9}"
            )
            print(header)
            print("-" * len(header))
            rng = np.random.default_rng(0)
            for batch in (int(b) for b in args.batches.split(",")):
                X = rng.standard_normal((batch, net.input_dim)).astype(np.float32)
                body = {"inputs": X.tolist(), "version": 1}

                def http_predict(body=body) -> None:
                    status, data = c.call("POST", "/v1/models/bench/predict", body)
                    if status != 200:
                        raise SystemExit(f"predict → {status}: {data[:300]!r}")

                # the three must agree before they are timed
                _, data = c.call("POST", "/v1/models/bench/predict", body)
                http_out = np.asarray(orjson.loads(data)["outputs"], dtype=np.float32)
                ort_out = sess.run(["output"], {"input": X})[0]
                np.testing.assert_allclose(ort_out, http_out, rtol=1e-4, atol=1e-5)
                np.testing.assert_array_equal(net.forward(X), http_out)
                contenders: dict[str, Callable[[], object]] = {
                    "onnxruntime (exported file)": lambda X=X: sess.run(["output"], {"input": X}),
                    "HTTP POST /predict (Steward)": http_predict,
                    "numpy Network.forward (in-process)": lambda X=X: net.forward(X),
                }
                names = list(contenders)
                for fn in contenders.values():  # warm-up
                    time_round(fn, args.min_time / 5)
                samples: dict[str, list[float]] = {n: [] for n in names}
                for r in range(args.repeats):
                    for k in range(len(names)):
                        name = names[(r + k) % len(names)]
                        samples[name].append(time_round(contenders[name], args.min_time))
                base = statistics.median(samples[names[0]])
                for name in names:
                    lat = statistics.median(samples[name])
                    lo, hi = min(samples[name]), max(samples[name])
                    spread = f"{lo * 1e6:.1f}–{hi * 1e6:.1f}"
                    ratio = lat / base
                    print(
                        f"{batch:>5}  {name:<34} {lat * 1e6:>11.1f} {spread:>17} {batch / lat:>12,.0f} {ratio:>8.2f}x"
                    )
            print("\n`vs ORT` = latency / ONNX Runtime's latency (> 1: slower than ONNX Runtime).")
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()


if __name__ == "__main__":
    main()
