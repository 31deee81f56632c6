"""Predict latency / throughput: Steward's numpy forward beside ONNX Runtime on its export.

One command, from the repository root::

    python bench/bench_predict.py                 # 64-128-64-10 relu multiclass MLP
    python bench/bench_predict.py --layers 30,64,32,1 --task binary --repeats 31

For each batch size (1 and 256 by default) the contenders are timed in
interleaved rounds (numpy, ORT float, ORT int8 QDQ, numpy, …, the order rotating
every round) so drift hits all of them alike; each round times a loop of calls
lasting about ``--min-time`` seconds, and the table shows the median per-call
latency over rounds, the throughput (samples/s = batch / latency) and the ratio
to numpy's latency (``x faster`` > 1 means faster than numpy). Before timing,
every ONNX file is verified against ``Network.forward`` (the migrate job's check).

The ONNX Runtime session uses the CPU provider with default graph optimizations;
``--ort-threads`` sets ``intra_op_num_threads`` (0 = ORT's default). numpy uses
whatever BLAS threading it was built with. The service-level HTTP predict is
benchmarked separately (it adds request parsing and JSON encoding on top of
``Network.forward``).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnxruntime as ort

from app.engine.codec import dequantize
from app.engine.nn.network import Network, init_network
from app.interop.export import probe_inputs, to_onnx, verify_onnx


def quantize_int8(net: Network) -> tuple[Network, dict[str, np.ndarray]]:
    """Symmetric per-channel int8 (API.md): scale_c = max|W_c|/127, q = clip(round(W/scale_c), −127, 127)."""
    qnet = net.copy()
    tensors: dict[str, np.ndarray] = {}
    for i, W in enumerate(net.weights):
        scale = (np.abs(W).max(axis=1) / 127).astype(np.float32)
        q = np.clip(np.round(W / scale[:, None]), -127, 127).astype(np.int8)
        tensors[f"layers.{i}.weight"], tensors[f"layers.{i}.weight_scale"] = q, scale
        qnet.weights[i] = dequantize(q, scale, None)
    return qnet, tensors


def time_round(fn: Callable[[], object], min_time: float) -> float:
    """Seconds per call of ``fn``: calls in a loop until ``min_time`` has passed."""
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / n


def session(model_bytes: bytes, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", default="64,128,64,10", help="input,hidden…,output widths")
    p.add_argument("--task", default="multiclass", choices=["regression", "binary", "multiclass"])
    p.add_argument("--activation", default="relu", choices=["relu", "tanh", "sigmoid"])
    p.add_argument("--batches", default="1,256")
    p.add_argument("--repeats", type=int, default=21, help="interleaved rounds per contender")
    p.add_argument("--min-time", type=float, default=0.05, help="seconds per timed round")
    p.add_argument("--ort-threads", type=int, default=0)
    p.add_argument("--opset", type=int, default=17)
    args = p.parse_args(argv)

    sizes = [int(s) for s in args.layers.split(",")]
    net = init_network(args.task, args.activation, sizes[0], sizes[-1], sizes[1:-1], seed=0)
    qnet, qtensors = quantize_int8(net)
    float_bytes = to_onnx(net, name="bench", version=1, opset=args.opset)
    qdq_bytes = to_onnx(qnet, name="bench", version=2, opset=args.opset, quantized=qtensors)
    rng = np.random.default_rng(0)
    checks = {
        "float": verify_onnx(float_bytes, net, probe_inputs(net.input_dim, rng)),
        "int8 qdq": verify_onnx(qdq_bytes, qnet, probe_inputs(net.input_dim, rng)),
    }
    s_float, s_qdq = session(float_bytes, args.ort_threads), session(qdq_bytes, args.ort_threads)

    print(
        f"MLP {args.layers} ({args.task}, {args.activation}), {net.n_params} parameters; "
        f"python {platform.python_version()}, numpy {np.__version__}, onnxruntime {ort.__version__}, "
        f"opset {args.opset}, ORT threads {args.ort_threads or 'default'}"
    )
    print(
        f"ONNX files: float32 {len(float_bytes):,} B, int8 QDQ {len(qdq_bytes):,} B "
        f"({len(qdq_bytes) / len(float_bytes):.2f}x); verified max |error| "
        f"float {checks['float']['max_abs_error']:.2e}, int8 {checks['int8 qdq']['max_abs_error']:.2e}"
    )
    print(f"median of {args.repeats} interleaved rounds, ~{args.min_time * 1e3:.0f} ms each\n")
    header = f"{'batch':>5}  {'runtime':<28} {'latency µs':>11} {'samples/s':>12} {'x faster than numpy':>20}"
    print(header)
    print("-" * len(header))
    for batch in (int(b) for b in args.batches.split(",")):
        X = rng.standard_normal((batch, net.input_dim)).astype(np.float32)
        contenders: dict[str, Callable[[], object]] = {
            "numpy Network.forward": lambda X=X: net.forward(X),
            "onnxruntime float32": lambda X=X: s_float.run(["output"], {"input": X}),
            "onnxruntime int8 QDQ": lambda X=X: s_qdq.run(["output"], {"input": X}),
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
            print(f"{batch:>5}  {name:<28} {lat * 1e6:>11.1f} {batch / lat:>12,.0f} {base / lat:>19.2f}x")
    print()


if __name__ == "__main__":
    main()
