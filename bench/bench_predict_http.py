"""Predict through the running service: throughput beside a bare FastAPI endpoint, and
latency beside ONNX Runtime and numpy in process.

One command, from the repository root::

    python bench/bench_predict_http.py                  # 64-128-64-10 relu multiclass MLP
    python bench/bench_predict_http.py --quick          # fewer, shorter rounds
    python bench/bench_predict_http.py --layers 30,64,32,1 --task binary

What it does, in one run:

1. starts ``uvicorn app.main:app`` (Steward: 1 process, access log off, SQLite in a
   temporary data directory) and ``uvicorn bench.bare_predict_app:app`` (the anchor:
   bearer-token check against an in-memory set, orjson parse, the same numpy
   ``Network.forward`` on the same weights, orjson answer of the same shape), both pinned
   to CPU 0 with ``taskset`` when the machine has ≥ 2 CPUs; the load runs on CPU 1;
2. creates the model and an **ordinary API key** through ``POST /v1/keys`` (scope
   ``read``, restricted to the model, as a production client has: its check is a real
   lookup, not the bootstrap admin key's shortcut); every request below uses it;
3. **throughput** — ``wrk``, 8 keep-alive connections, one body (1 input, then 256
   inputs, no ``version``: Steward resolves the serving alias), interleaved rounds
   (Steward, bare, bare, Steward, …): requests/s, median latency, and the ratio
   Steward ÷ bare per pair of rounds, printed beside the target (≥ 0.7);
4. **latency** — one keep-alive connection (``http.client``, this process on CPU 1):
   Steward's ``POST /predict`` beside ONNX Runtime running the version's verified ONNX
   export (``POST /migrate`` target ``onnx``) and numpy ``Network.forward``, in process.

``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` are removed from this command's environment
(they slow numpy on some machines; see ``BENCH.md``).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):  # before numpy is imported
    os.environ.pop(_var, None)

import argparse  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import orjson  # noqa: E402
import safetensors.numpy as stnp  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _http import Client, free_port, have_wrk, start_uvicorn, stop, wrk_rate  # noqa: E402

from app.engine.codec import from_tensors  # noqa: E402

ADMIN = "bench-admin-key-0123456789abcdef"
TARGET = 0.7


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
    p.add_argument("--quick", action="store_true", help="3 rounds of 3 s (default 5 of 6 s)")
    p.add_argument("--rounds", type=int, default=None, help="wrk rounds per contender")
    p.add_argument("--seconds", type=float, default=None, help="seconds per wrk round")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5, help="latency: interleaved rounds per contender")
    p.add_argument("--min-time", type=float, default=0.3, help="latency: seconds per timed round")
    p.add_argument("--opset", type=int, default=17)
    args = p.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 5)
    seconds = args.seconds or (3.0 if args.quick else 6.0)

    sizes = [int(s) for s in args.layers.split(",")]
    pin = bool(shutil.which("taskset")) and (os.cpu_count() or 1) >= 2
    server_cpus, load_cpus = ("0", "1") if pin else (None, None)
    if pin:
        os.sched_setaffinity(0, {1})
    with tempfile.TemporaryDirectory(prefix="steward-bench-") as tmpdir:
        tmp = Path(tmpdir)
        port, bare_port = free_port(), free_port()
        env = {**os.environ, "STEWARD_DATA_DIR": str(tmp / "data"), "STEWARD_ADMIN_KEY": ADMIN}
        env.pop("STEWARD_DATABASE_URL", None)
        servers = [start_uvicorn("app.main:app", port, env, cpus=server_cpus, log=tmp / "steward.log")]
        try:
            admin = Client(port, ADMIN)
            spec = {
                "name": "bench",
                "task": args.task,
                "input_dim": sizes[0],
                "output_dim": sizes[-1],
                "hidden": sizes[1:-1],
                "activation": args.activation,
            }
            admin.json("POST", "/v1/models", spec)
            key = admin.json("POST", "/v1/keys", {"name": "bench-app", "scope": "read", "models": ["bench"]})["key"]
            c = Client(port, key)
            job = admin.json("POST", "/v1/models/bench/migrate", {"from": 1, "target": "onnx", "opset": args.opset},
                             Prefer="wait=60")  # fmt: skip
            if job["status"] != "succeeded":
                raise SystemExit(f"export job did not succeed: {job}")
            res = job["result"]
            status, onnx_bytes = admin.call("GET", res["url"])
            assert status == 200 and len(onnx_bytes) == res["size_bytes"]
            status, weights = admin.call("GET", "/v1/models/bench/versions/1/weights")
            assert status == 200
            shape = {
                "task": args.task,
                "activation": args.activation,
                "input_dim": sizes[0],
                "output_dim": sizes[-1],
                "n_layers": len(sizes) - 1,
            }
            net = from_tensors(stnp.load(weights), **shape)
            (tmp / "weights.safetensors").write_bytes(weights)
            bare_env = {
                **env,
                "BARE_WEIGHTS": str(tmp / "weights.safetensors"),
                "BARE_SPEC": orjson.dumps(shape).decode(),
                "BARE_TOKEN": key,
            }
            servers.append(
                start_uvicorn("bench.bare_predict_app:app", bare_port, bare_env, cpus=server_cpus, log=tmp / "bare.log")
            )
            bare = Client(bare_port, key)
            sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])

            print(
                f"MLP {args.layers} ({args.task}, {args.activation}), {net.n_params} parameters; "
                f"python {platform.python_version()}, numpy {np.__version__}, onnxruntime {ort.__version__}"
            )
            where = "servers on CPU 0, load on CPU 1 (taskset)" if pin else "no CPU pinning (< 2 CPUs or no taskset)"
            print(f"uvicorn 1 process each, access log off; {where}; an ordinary read key (POST /v1/keys)\n")

            rng = np.random.default_rng(0)
            batches = [int(b) for b in args.batches.split(",")]
            bodies: dict[int, bytes] = {}
            for batch in batches:
                X = rng.standard_normal((batch, net.input_dim)).astype(np.float32)
                bodies[batch] = orjson.dumps({"inputs": X}, option=orjson.OPT_SERIALIZE_NUMPY)
                # all of them must agree before they are timed
                st, data = c.call("POST", "/v1/models/bench/predict", bodies[batch])
                assert st == 200, data[:300]
                got = orjson.loads(data)
                out = np.asarray(got["outputs"], dtype=np.float32)
                np.testing.assert_allclose(net.forward(X), out, rtol=1e-5, atol=1e-7)
                st, bdata = bare.call("POST", "/predict", bodies[batch])
                assert st == 200, bdata[:300]
                np.testing.assert_allclose(
                    np.asarray(orjson.loads(bdata)["outputs"], dtype=np.float32), out, rtol=1e-5, atol=1e-7
                )
                np.testing.assert_allclose(sess.run(["output"], {"input": X})[0], out, rtol=1e-4, atol=1e-5)
                (tmp / f"predict{batch}.json").write_bytes(bodies[batch])

            throughput(args, tmp, port, bare_port, key, batches, rounds, seconds, load_cpus)
            latency(args, Client(port, key), sess, net, bodies, batches)
        finally:
            for s in servers:
                stop(s)


def throughput(args, tmp: Path, port: int, bare_port: int, key: str, batches: list[int], rounds: int,
               seconds: float, load_cpus: str | None) -> None:  # fmt: skip
    print(f"== throughput: wrk, {args.connections} connections, {rounds} interleaved rounds of {seconds:g} s")
    if not have_wrk():
        print("   wrk is not installed (Debian: apt-get install wrk): throughput section skipped\n")
        return
    header = f"{'batch':>5}  {'endpoint':<36} {'req/s':>9} {'spread':>17} {'p50 µs':>8} {'ratio':>6} {'target':>7}"
    print(header)
    print("-" * len(header))
    for batch in batches:
        body = tmp / f"predict{batch}.json"
        urls = {
            "Steward POST /v1/models/bench/predict": f"http://127.0.0.1:{port}/v1/models/bench/predict",
            "bare FastAPI + orjson + numpy": f"http://127.0.0.1:{bare_port}/predict",
        }
        names = list(urls)
        rates: dict[str, list[float]] = {n: [] for n in names}
        lats: dict[str, list[float]] = {n: [] for n in names}
        for name in names:  # warm-up
            wrk_rate(urls[name], body, key, conns=args.connections, seconds=1, cpus=load_cpus, tmp=tmp)
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                rate, bad, lat = wrk_rate(
                    urls[name], body, key, conns=args.connections, seconds=seconds, cpus=load_cpus, tmp=tmp
                )
                if bad:
                    raise SystemExit(f"{name}: {bad} answers were not 2xx")
                rates[name].append(rate)
                lats[name].append(lat)
        ratios = [s / b for s, b in zip(rates[names[0]], rates[names[1]], strict=True)]
        ratio = statistics.median(ratios)
        for name in names:
            xs = rates[name]
            spread = f"{min(xs):,.0f}–{max(xs):,.0f}"
            mark = (f"{ratio:>6.2f} {'≥ ' + str(TARGET):>7} {'PASS' if ratio >= TARGET else 'MISS'}"
                    if name == names[0] else "")  # fmt: skip
            print(
                f"{batch:>5}  {name:<36} {statistics.median(xs):>9,.0f} {spread:>17} "
                f"{statistics.median(lats[name]):>8,.0f} {mark}"
            )
    print("ratio = Steward req/s ÷ bare req/s, median over the pairs of rounds\n")


def latency(args, c: Client, sess, net, bodies: dict[int, bytes], batches: list[int]) -> None:  # type: ignore[no-untyped-def]
    print(f"== latency: one keep-alive connection, median of {args.repeats} interleaved rounds")
    header = f"{'batch':>5}  {'runtime':<34} {'latency µs':>11} {'spread µs':>17} {'samples/s':>12} {'vs ORT':>9}"
    print(header)
    print("-" * len(header))
    for batch in batches:
        X = np.asarray(orjson.loads(bodies[batch])["inputs"], dtype=np.float32)

        def http_predict(body=bodies[batch]) -> None:
            status, data = c.call("POST", "/v1/models/bench/predict", body)
            if status != 200:
                raise SystemExit(f"predict → {status}: {data[:300]!r}")

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
            print(f"{batch:>5}  {name:<34} {lat * 1e6:>11.1f} {spread:>17} {batch / lat:>12,.0f} {lat / base:>8.2f}x")
    print("`vs ORT` = latency / ONNX Runtime's latency (> 1: slower than ONNX Runtime).")


if __name__ == "__main__":
    main()
