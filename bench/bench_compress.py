"""Compression benchmark: quantize and prune a ≥ 50M-parameter MLP beside the memory-copy
ceiling and ONNX Runtime's ``quantize_dynamic``.

    python bench/bench_compress.py                 # 3 × 4096×4096 float32 weights = 201 MB
    python bench/bench_compress.py --width 1024    # quick run on a small model

Throughput: every round runs, interleaved, ``np.copyto`` of the same bytes (the anchor),
Steward's int8 per-channel quantization (default: 1 thread with the error report; also
without the report and with 2 threads), global and per-layer 50 % magnitude pruning, an
end-to-end safetensors load → quantize → save, the sparse encoding of the pruned model,
and ONNX Runtime ``quantize_dynamic(per_channel=True, QInt8)`` on the same weights exported
as an ONNX MatMul graph (file to file, as ORT works). Ratios are per round against that
round's memcpy; the table shows the median and [min–max] over rounds.

Peak memory: each operation runs in a fresh subprocess; after the inputs are built (model in
memory, or on disk for the file-to-file rows) the peak-RSS counter is reset
(``/proc/self/clear_refs`` ← 5) and ``VmHWM − VmRSS(baseline)`` is reported, as a multiple of
the model's float32 weight bytes.

``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` are removed for this command (BENCH.md).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_var, None)

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.engine import codec  # noqa: E402
from app.engine.compress import sparse  # noqa: E402
from app.engine.compress.prune import prune_magnitude  # noqa: E402
from app.engine.compress.quantize import quantize_network  # noqa: E402
from app.engine.nn.network import F32, Network  # noqa: E402

TARGETS = {  # operation → (minimum ratio to memcpy, description)
    "quantize int8 per-channel": (0.3, "≥ 0.3 × memcpy"),
    "  same, no error report": (0.3, "≥ 0.3 × memcpy"),
    "  same, 2 threads": (0.3, "≥ 0.3 × memcpy"),
    "prune global 50%": (0.04, "≥ 0.04 × memcpy"),
}


# --------------------------------------------------------------------------- model
def build_network(width: int, layers: int, seed: int = 0) -> Network:
    """``layers`` square ``width × width`` float32 layers (He-normal), biases small."""
    rng = np.random.default_rng(seed)
    weights, biases = [], []
    for _ in range(layers):
        W = rng.standard_normal((width, width), dtype=np.float32)
        W *= F32(np.sqrt(2.0 / width))
        weights.append(W)
        biases.append((rng.standard_normal(width, dtype=np.float32) * F32(0.01)).astype(F32))
    return Network("regression", "relu", weights, biases)


def weight_bytes(net: Network) -> int:
    return sum(W.nbytes for W in net.weights)


def export_onnx(net: Network, path: Path) -> None:
    """MatMul (+ Add + Relu) graph with the weights as [in, out] initializers."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    x = "input"
    last = len(net.weights) - 1
    for i, (W, b) in enumerate(zip(net.weights, net.biases, strict=True)):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(W.T), f"W{i}"))
        inits.append(numpy_helper.from_array(b, f"b{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"W{i}"], [f"mm{i}"]))
        out = "output" if i == last else f"z{i}"
        nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [out if i == last else f"a{i}"]))
        if i != last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [out]))
        x = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", net.input_dim])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", net.output_dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def save_safetensors(net: Network, path: Path) -> None:
    from safetensors.numpy import save_file

    save_file(codec.to_tensors(net), str(path))


# --------------------------------------------------------------------------- operations
def op_memcpy(net: Network, dst: list[np.ndarray]) -> None:
    for d, W in zip(dst, net.weights, strict=True):
        np.copyto(d, W)


def op_quantize(net: Network, **kw) -> None:
    quantize_network(net, "int8", "symmetric", "per_channel", **kw)


def op_prune(net: Network, scope: str) -> None:
    prune_magnitude(net, 0.5, scope=scope)


def op_end_to_end(src: Path, dst: Path) -> None:
    from safetensors.numpy import load_file, save_file

    t = load_file(str(src))
    n = len(t) // 2
    net = codec.from_tensors(
        t,
        task="regression",
        activation="relu",
        input_dim=t["layers.0.weight"].shape[1],
        output_dim=t[f"layers.{n - 1}.weight"].shape[0],
        n_layers=n,
    )
    del t
    save_file(quantize_network(net, "int8", "symmetric", "per_channel").tensors, str(dst))


def op_ort(src: Path, dst: Path) -> None:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)
    quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8)


# --------------------------------------------------------------------------- memory (child)
def _status(key: str) -> int:
    """A ``/proc/self/status`` field in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def child(op: str, width: int, layers: int, workdir: Path) -> dict:
    """Run one operation in this (fresh) process and return its peak RSS above baseline."""
    import gc
    import resource

    net = (
        build_network(width, layers)
        if op
        in {
            "memcpy",
            "quantize",
            "quantize-2threads",
            "prune-global",
            "prune-global-inplace",
            "prune-layer",
            "sparse-encode",
        }
        else None
    )
    extra = None
    if op == "memcpy":
        extra = [np.empty_like(W) for W in net.weights]
        for d in extra:
            d.fill(0)  # pre-fault the destination: only the copy is measured
    if op == "sparse-encode":
        net = prune_magnitude(net, 0.5, scope="global", inplace=True, return_masks=False).network
    if op == "ort":  # import before the baseline: the library is not the operation
        import onnxruntime.quantization  # noqa: F401
    if op == "end-to-end":
        import safetensors.numpy  # noqa: F401
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        baseline = _status("VmRSS")
        method = "VmHWM after clear_refs"
    except OSError:
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        method = "ru_maxrss"
    t0 = time.perf_counter()
    if op == "memcpy":
        op_memcpy(net, extra)
    elif op == "quantize":
        op_quantize(net)
    elif op == "quantize-2threads":
        op_quantize(net, threads=2)
    elif op == "prune-global":
        op_prune(net, "global")
    elif op == "prune-global-inplace":
        prune_magnitude(net, 0.5, scope="global", inplace=True)
    elif op == "prune-layer":
        op_prune(net, "layer")
    elif op == "sparse-encode":
        sparse.encode(codec.to_tensors(net))
    elif op == "end-to-end":
        op_end_to_end(workdir / "model.safetensors", workdir / f"q-{os.getpid()}.safetensors")
    elif op == "ort":
        op_ort(workdir / "model.onnx", workdir / f"q-{os.getpid()}.onnx")
    else:
        raise SystemExit(f"unknown op {op}")
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM") if method.startswith("VmHWM") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"op": op, "peak_above_baseline": peak - baseline, "seconds": seconds, "method": method}


def run_child(op: str, args, workdir: Path) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        op,
        "--width",
        str(args.width),
        "--layers",
        str(args.layers),
        "--workdir",
        str(workdir),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- report
def spread(xs: list[float], fmt: str = "{:.3f}") -> str:
    return f"{fmt.format(statistics.median(xs))} [{fmt.format(min(xs))}–{fmt.format(max(xs))}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ort-repeats", type=int, default=3)
    ap.add_argument("--child")
    ap.add_argument("--workdir")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.width, args.layers, Path(args.workdir))))
        return

    import onnxruntime

    net = build_network(args.width, args.layers)
    nbytes = weight_bytes(net)
    n_params = sum(W.size for W in net.weights)
    print(
        f"model: {args.layers} × [{args.width}, {args.width}] float32 = {n_params / 1e6:.1f}M weights, "
        f"{nbytes / 1e6:.0f} MB; numpy {np.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"{os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory(prefix="steward-bench-") as tmp:
        workdir = Path(tmp)
        export_onnx(net, workdir / "model.onnx")
        save_safetensors(net, workdir / "model.safetensors")
        pruned = prune_magnitude(net, 0.5, scope="global", return_masks=False).network
        pruned_tensors = codec.to_tensors(pruned)
        dst = [np.empty_like(W) for W in net.weights]
        op_memcpy(net, dst)  # warm

        ops = {
            "quantize int8 per-channel": lambda: op_quantize(net),
            "  same, no error report": lambda: op_quantize(net, report_error=False),
            "  same, 2 threads": lambda: op_quantize(net, threads=2),
            "prune global 50%": lambda: op_prune(net, "global"),
            "prune layer 50%": lambda: op_prune(net, "layer"),
            "sparse encode (50% pruned)": lambda: sparse.encode(pruned_tensors),
            "end-to-end load→quantize→save": lambda: op_end_to_end(
                workdir / "model.safetensors", workdir / "q.safetensors"
            ),
            "ORT quantize_dynamic": lambda: op_ort(workdir / "model.onnx", workdir / "q.onnx"),
        }
        times: dict[str, list[float]] = {"memcpy": [], **{k: [] for k in ops}}
        ratios: dict[str, list[float]] = {k: [] for k in ops}
        speedup: list[float] = []
        for r in range(args.repeats):
            for name, fn in ops.items():
                if name.startswith("ORT") and r >= args.ort_repeats:
                    continue
                t0 = time.perf_counter()
                op_memcpy(net, dst)
                t_copy = time.perf_counter() - t0
                times["memcpy"].append(t_copy)
                t0 = time.perf_counter()
                fn()
                t = time.perf_counter() - t0
                times[name].append(t)
                ratios[name].append(t_copy / t)
            if r < args.ort_repeats:
                speedup.append(times["ORT quantize_dynamic"][-1] / times["quantize int8 per-channel"][-1])

        print()
        print(
            f"throughput over {args.repeats} interleaved rounds (ORT: {args.ort_repeats}); "
            "median [min–max]; ratio = memcpy time / operation time, per round"
        )
        hdr = f"{'operation':34} {'seconds':>26} {'GB/s':>8} {'× memcpy':>26}  target"
        print(hdr)
        print("-" * len(hdr))
        t_c = times["memcpy"]
        print(
            f"{'np.copyto (ceiling)':34} {spread(t_c, '{:.4f}'):>26} {nbytes / statistics.median(t_c) / 1e9:8.2f} "
            f"{'1':>26}"
        )
        for name in ops:
            ts = times[name]
            target = TARGETS.get(name)
            verdict = ""
            if target:
                ok = statistics.median(ratios[name]) >= target[0]
                verdict = f"{target[1]}: {'met' if ok else 'MISSED'}"
            print(
                f"{name:34} {spread(ts, '{:.4f}'):>26} {nbytes / statistics.median(ts) / 1e9:8.2f} "
                f"{spread(ratios[name]):>26}  {verdict}"
            )
        ok = statistics.median(speedup) >= 20
        print(
            f"\nquantize vs ORT quantize_dynamic(per_channel=True): {spread(speedup, '{:.1f}')} × faster "
            f"(target ≥ 20 ×: {'met' if ok else 'MISSED'}); ORT works file to file, Steward's row on the "
            "in-memory model (the end-to-end row includes safetensors load and save)"
        )

        print("\npeak RSS above baseline, each in a fresh process (× = of the model's float32 weight bytes)")
        hdr = f"{'operation':34} {'MB':>9} {'× model':>8}  note"
        print(hdr)
        print("-" * len(hdr))
        notes = {
            "memcpy": "copy into pre-faulted buffers: 0 expected",
            "quantize": "int8 output (0.25 ×) + block buffers; target ≤ 1.5 ×",
            "quantize-2threads": "",
            "prune-global": "new weights (1 ×) + masks (0.25 ×) + candidates; target ≤ 1.5 ×",
            "prune-global-inplace": "masks + candidates only",
            "prune-layer": "",
            "sparse-encode": "values + masks of the pruned model",
            "end-to-end": "model on disk: load (1 ×) + int8 (0.25 ×) + save",
            "ort": "model on disk, file to file",
        }
        for op in notes:
            res = run_child(op, args, workdir)
            x = res["peak_above_baseline"] / nbytes
            flag = ""
            if op in {"quantize", "prune-global"}:
                flag = " (met)" if x <= 1.5 else " (MISSED)"
            print(f"{op:34} {res['peak_above_baseline'] / 1e6:9.1f} {x:8.2f}  {notes[op]}{flag}")
        print(f"\n(measured with {res['method']})")


if __name__ == "__main__":
    main()
