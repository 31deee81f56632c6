"""Peak memory and time of the prune / quantize *service path* on a ≥ 200 MB model:
submit → worker claims → load the version from its blob → prune / quantize → encode →
write the blob → commit the version and the job's result. No HTTP, no JSON of weights.

    python bench/bench_compress_service.py               # 4096-4096-4096-4096-10 MLP: 50.4M weights, 201 MB
    python bench/bench_compress_service.py --width 1024  # quick run

The model is created once (version 1, dense float32, in a SQLite database and blob store
in a temporary directory). Each operation then runs in a fresh process: it builds the app
context, submits the job through the service function (the same one the route calls), and
after ``gc.collect()`` resets the peak-RSS counter (``/proc/self/clear_refs`` ← 5) before the
worker runs the job. Reported: ``VmHWM − VmRSS(before the job)`` as a multiple of the model's
float32 weight bytes (the source must be read once: 1 × is the floor for a job that loads
it), the job's wall time and the stored size ratio. ``load only`` is that floor measured.

``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` are removed for this command (BENCH.md).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_var, None)

import argparse  # noqa: E402
import gc  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

ADMIN = "bench-admin-key-0123456789"

OPS: dict[str, tuple[str, dict]] = {
    "load only (the floor)": ("load", {}),
    "quantize int8 per-channel": ("quantize", {"dtype": "int8", "scheme": "symmetric", "granularity": "per_channel"}),
    "quantize int8 + eval (256 samples)": ("quantize", {"dtype": "int8", "eval": 256}),
    "quantize uint8 asym per-tensor": (
        "quantize",
        {"dtype": "uint8", "scheme": "asymmetric", "granularity": "per_tensor"},
    ),
    "quantize float16": ("quantize", {"dtype": "float16"}),
    "prune global 50% (→ sparse)": ("prune", {"sparsity": 0.5, "scope": "global"}),
    "prune layer 80% (→ sparse)": ("prune", {"sparsity": 0.8, "scope": "layer"}),
    "prune global 30% (→ dense)": ("prune", {"sparsity": 0.3, "scope": "global"}),
    "prune neurons 50%": ("prune", {"sparsity": 0.5, "structure": "neurons"}),
    "prune global 50% + eval (256 samples)": ("prune", {"sparsity": 0.5, "scope": "global", "eval": 256}),
}


def settings(workdir: Path):
    from app.core.settings import Settings

    return Settings(
        data_dir=workdir / "data",
        database_url=f"sqlite:///{workdir / 'bench.db'}",
        admin_key=ADMIN,
        run_worker=False,
        run_learner=False,
    )


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def setup(workdir: Path, width: int, layers: int) -> dict:
    from app.context import AppContext
    from app.core.migrations import upgrade
    from app.registry.schemas import ModelCreate

    s = settings(workdir)
    s.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(s.url)
    ctx = AppContext.build(s)
    t0 = time.perf_counter()
    ctx.models.create(
        ModelCreate(name="big", task="multiclass", input_dim=width, output_dim=10, hidden=[width] * layers, seed=0)
    )
    with ctx.db.read() as sess:
        from app.registry.models import get_model

        m = get_model(sess, "big")
        v = ctx.versions.get(sess, m, 1)
        info = {"size_bytes": v.size_bytes, "architecture": list(v.architecture), "seconds": time.perf_counter() - t0}
    ctx.close()
    return info


def child(op: str, workdir: Path) -> dict:
    """Run one operation in this fresh process; return peak RSS above the pre-job baseline."""
    from app.background import make_worker
    from app.compression.schemas import PruneIn, QuantizeIn
    from app.context import AppContext
    from app.registry.models import get_model

    kind, opts = OPS[op]
    ctx = AppContext.build(settings(workdir))
    with ctx.db.read() as sess:
        m = get_model(sess, "big")
        src = ctx.versions.get(sess, m, 1)
        n_in, weight_bytes = m.input_dim, 4 * sum(a * b for a, b in itertools.pairwise(src.architecture))
    extra = {}
    if opts.get("eval"):
        rng = np.random.default_rng(0)
        X = rng.random((opts["eval"], n_in), dtype=np.float32)
        extra["eval_samples"] = [{"x": row.tolist(), "y": int(i % 10)} for i, row in enumerate(X)]
    body = {k: v for k, v in opts.items() if k != "eval"} | extra
    if kind == "quantize":
        job_id = ctx.compression.submit_quantize("big", QuantizeIn(**{"from": 1, **body}))
    elif kind == "prune":
        job_id = ctx.compression.submit_prune("big", PruneIn(**{"from": 1, **body}))
    extra.clear()
    body.clear()
    worker = make_worker(ctx)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    baseline = _status("VmRSS")
    t0 = time.perf_counter()
    if kind == "load":
        with ctx.db.read() as sess:
            m = get_model(sess, "big")
            net = ctx.versions.load_owned(m, ctx.versions.get(sess, m, 1))
        assert net.n_params > 0
        result = {"size": {"ratio": 1.0, "encoding": "dense"}}
    else:
        assert worker.run_once() == job_id
        j = ctx.jobs.get(job_id)
        assert j.status == "succeeded", (j.status, j.error)
        result = j.result
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM") - baseline
    del worker
    ev = result.get("evaluation") or {}
    return {
        "op": op,
        "peak": peak,
        "weight_bytes": weight_bytes,
        "seconds": seconds,
        "ratio": result["size"]["ratio"],
        "encoding": result["size"]["encoding"],
        "labels_changed": ev.get("labels_changed"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=3, help="hidden layers of the given width")
    ap.add_argument("--child")
    ap.add_argument("--workdir")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.workdir))))
        return
    with tempfile.TemporaryDirectory(prefix="steward-bench-svc-") as tmp:
        workdir = Path(tmp)
        info = setup(workdir, args.width, args.layers)
        arch = info["architecture"]
        n = sum(a * b for a, b in itertools.pairwise(arch))
        print(
            f"model: {arch} = {n / 1e6:.1f}M weights, {4 * n / 1e6:.0f} MB float32 (blob {info['size_bytes'] / 1e6:.0f} MB, "
            f"created in {info['seconds']:.1f} s); numpy {np.__version__}, {os.cpu_count()} CPUs"
        )
        print("peak RSS above the pre-job baseline, each operation in a fresh process (× = of the float32 weights)")
        hdr = f"{'operation':40} {'peak MB':>9} {'× model':>8} {'seconds':>8} {'stored/parent':>14}  encoding"
        print(hdr)
        print("-" * len(hdr))
        for op in OPS:
            cmd = [sys.executable, __file__, "--child", op, "--workdir", str(workdir)]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
            if out.returncode:
                print(f"{op:40} FAILED\n{out.stderr[-2000:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            note = f"  labels changed {r['labels_changed']:.3f}" if r["labels_changed"] is not None else ""
            print(
                f"{op:40} {r['peak'] / 1e6:9.1f} {r['peak'] / r['weight_bytes']:8.2f} {r['seconds']:8.2f} "
                f"{r['ratio']:14.3f}  {r['encoding']}{note}"
            )
        print("\n(measured with VmHWM after clear_refs; the page cache of the blob files is not counted)")


if __name__ == "__main__":
    main()
