"""quantize: int8 / uint8 (symmetric or asymmetric, per channel or per tensor) or float16
weights of a version, stored as integer tensors plus scales (and zero points) — a job.

Request time (:func:`submit`): resolve ``from``; a version already stored at the asked
width or narrower, or without any non-zero weight, is a 409; check the evaluation data;
enqueue — one transaction, nothing queued on any 4xx.

Run time (:func:`run_quantize`): load the source once (dequantized when it is float16),
measure it, quantize one tensor at a time (the engine reports ``|W − dequant(q)|`` per layer
in the same pass), free the float32 source, measure the dequantized result, store (the
sparse encoding over the integers when at least half the weights are zero) and record the
version with the job's result in one transaction.
"""

from __future__ import annotations

from typing import Any

from app.compression import common as compress
from app.compression.common import CompressionDeps
from app.compression.schemas import QuantizeIn
from app.core.errors import Conflict
from app.engine.compress import quantize as engine
from app.engine.nn.evaluation import evaluate
from app.jobs.contract import Job, JobError, Progress
from app.jobs.service import public_params
from app.registry.models import get_model, read_model
from app.training import data


def submit(svc: CompressionDeps, name: str, body: QuantizeIn) -> str:
    """Validate a quantize request and enqueue it (one transaction); returns the job id."""
    ev_blob = data.pack_samples(svc.blobs, read_model(svc.db, name), body.eval_samples, ["body"], field="eval_samples")
    with svc.db.write() as s:
        m = get_model(s, name, for_update=True)
        src, frm = svc.versions.resolve_from(s, m, body.from_)
        compress.check_quantizable(src, body.dtype)
        ev = compress.eval_source(m, body, ev_blob)
        params = {
            **frm,
            "dtype": body.dtype,
            "scheme": body.scheme,
            "granularity": body.granularity,
            "eval": ev,
        }
        return svc.jobs.enqueue(s, "quantize", m, params).id


def run(svc: CompressionDeps, job: Job, progress: Progress) -> None:
    p = job.params
    with svc.db.read() as s:
        m = get_model(s, job.model_name)
        src = svc.versions.get(s, m, int(p["from_version"]))
        ev = data.load(s, svc.blobs, m, p["eval"]) if p.get("eval") else None
    try:
        compress.check_quantizable(src, p["dtype"])
    except Conflict as e:
        raise JobError(e.detail) from None
    progress(0.0, force=True)
    net = svc.versions.load_owned(m, src)
    progress(0.1)
    before = evaluate(net, *ev, keep_outputs=True) if ev is not None else None
    try:
        q = engine.quantize_network(net, p["dtype"], p["scheme"], p["granularity"])
    except engine.QuantizeError as e:
        raise JobError(str(e)) from None
    del net  # only the integer tensors (and the float32 biases) stay
    progress(0.6)

    report: dict[str, Any] = {"quantize": {"dtype": q.dtype, "scheme": q.scheme, "granularity": q.granularity}}
    if src.dtype in compress.QUANT_BITS:
        report["dequantized_from"] = {"version": src.version, "dtype": src.dtype}
    report["weight_error"] = {
        "max_abs_error": q.max_abs_error,
        "mean_abs_error": q.mean_abs_error,
        "layers": [{k: d[k] for k in ("max_abs_error", "mean_abs_error")} for d in q.layers],
    }
    deq = None
    if ev is not None and before is not None:
        deq = svc.versions.decode(m, q.tensors)  # what predict will compute with; cached with the version
        report["evaluation"] = compress.evaluation_report(p["eval"], before, evaluate(deq, *ev, keep_outputs=True))
    progress(0.8)
    overall, per_layer = compress.stored_sparsity(q.tensors)
    report["sparsity"] = overall
    report["layer_sparsity"] = per_layer
    tensors, encoding = compress.storage_form(q.tensors, overall, "quantized")
    progress(0.9)
    svc.finish(
        job,
        operation="quantize",
        src=src,
        tensors=tensors,
        encoding=encoding,
        net=deq,
        params=public_params(p),
        report=report,
        dtype=q.dtype,
        sparsity=overall,
    )
