"""What the compression jobs (prune, quantize) share: evaluation data, the source read one
tensor at a time, the report (sizes, sparsity, weight error, evaluation before / after), the
storage form, and the one transaction that stores the version with the job's result.

Memory: a job loads its source version once (:meth:`VersionService.load_owned`, not the
shared cache), works on it in place where the engine can, compares against the source blob
one tensor at a time, and writes the new blob straight from the arrays.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from safetensors import safe_open

from app.compression.schemas import DEFAULT_EVAL_LAST, EvalData
from app.core.blobs import BlobStore
from app.core.db import Database
from app.core.errors import Conflict, Invalid
from app.core.metrics import Metrics
from app.core.tables import Model, Version
from app.engine import codec
from app.engine.compress import sparse
from app.engine.nn.evaluation import Evaluation
from app.engine.nn.network import F32, Network
from app.jobs.contract import Job
from app.jobs.service import JobService, public_params
from app.registry.models import get_model
from app.registry.versions import VersionService

#: A version at least this sparse is stored in the sparse encoding (bitmask + kept values).
SPARSE_MIN = 0.5
#: Storage width of the quantized dtypes, in bits.
QUANT_BITS = {"float16": 16, "int8": 8, "uint8": 8}
_BLOCK_ELEMS = 1 << 18


# --------------------------------------------------------------------------- request time
def eval_source(
    m: Model, body: EvalData, packed: dict[str, Any] | None, *, required: str | None = None
) -> dict[str, Any] | None:
    """Describe the evaluation data (job params) at request time, in the submitting transaction.

    ``packed``: the ``eval_samples`` already checked and packed into a blob
    (:func:`app.training.data.pack_samples`, before the transaction); else ``eval_log`` is
    checked against the log; without either, the newest :data:`DEFAULT_EVAL_LAST` samples
    of the log when it holds any. ``required`` (the reason) makes missing data a 422.
    """
    if packed is not None:
        return packed
    accepted = int(m.next_offset)
    el = body.eval_log
    if el is None and accepted == 0:
        if required:
            raise Invalid.at(
                ["body", "eval_samples"],
                f"{required} needs evaluation data: give eval_samples or eval_log, or add samples to the log",
            )
        return None
    if accepted == 0:
        raise Invalid.at(["body", "eval_log"], "the model's sample log is empty")
    if el is None or (el.from_offset is None and el.to_offset is None):
        last = el.last if el is not None and el.last is not None else DEFAULT_EVAL_LAST
        first, end = max(0, accepted - last), accepted - 1
    else:
        first = el.from_offset or 0
        end = accepted - 1 if el.to_offset is None else el.to_offset
        if first >= accepted:
            raise Invalid.at(["body", "eval_log", "from_offset"], f"the log holds offsets 0..{accepted - 1}")
        if end >= accepted:
            raise Invalid.at(["body", "eval_log", "to_offset"], f"the log holds offsets 0..{accepted - 1}")
    return {"source": "log", "from_offset": first, "to_offset": end, "n": end - first + 1, "default": el is None}


def check_quantizable(src: Version, dtype: str) -> None:
    """409 when ``src`` is already stored at ``dtype``'s width or narrower, or has no non-zero
    weight. A float16 version may go to int8 / uint8 (from its dequantized weights)."""
    have = QUANT_BITS.get(src.dtype)
    if have is not None and QUANT_BITS[dtype] >= have:
        raise Conflict(
            f"version {src.version} is already quantized ({src.dtype}); {dtype} would not make it smaller. "
            "Quantize its float32 parent instead, or choose a narrower dtype"
        )
    if src.sparsity >= 1.0:
        raise Conflict(f"version {src.version} has no non-zero weights to quantize")


# --------------------------------------------------------------------------- run time
def source_weights(blobs: BlobStore, v: Version) -> Iterator[np.ndarray]:
    """The float32 weight matrices of ``v`` (dequantized, densified), read from its blob one
    layer at a time: at most about two matrices in memory, never the whole model."""
    path = str(blobs.path(v.blob_sha256))
    try:
        f = safe_open(path, framework="np", backend="pread")
    except TypeError:  # safetensors < 0.7
        f = safe_open(path, framework="np")
    with f:
        names = set(f.keys())
        i = 0
        while True:
            prefix = f"layers.{i}.weight"
            part = {k: f.get_tensor(k) for k in names if k == prefix or k.startswith(prefix + ".")}
            part |= {k: f.get_tensor(k) for k in names if k.startswith(prefix + "_")}
            if not part:
                return
            part = codec.decode_stored(part)
            W = part[prefix]
            if np.issubdtype(W.dtype, np.integer):
                W = codec.dequantize(W, part[prefix + "_scale"], part.get(prefix + "_zero_point"))
            yield W.astype(F32, copy=False)
            del part, W
            i += 1


def _diff_stats(A: np.ndarray, B: np.ndarray) -> tuple[float, float]:
    """(max, sum) of |A − B| over two equal-shaped matrices, in row blocks."""
    rows = max(1, _BLOCK_ELEMS // max(1, A.shape[1]))
    emax, esum = 0.0, 0.0
    for a in range(0, A.shape[0], rows):
        d = np.abs(A[a : a + rows] - B[a : a + rows])
        if d.size:
            emax = max(emax, float(d.max()))
            esum += float(d.sum(dtype=np.float64))
    return emax, esum


def weight_errors(
    source: Iterator[np.ndarray], new: Network, kept_units: list[np.ndarray] | None = None
) -> dict[str, Any]:
    """``|W_parent − W_new|`` per layer (max and mean over the parent's entries) and overall.

    ``kept_units[i]`` (neuron pruning): the parent's hidden units of layer ``i`` that were
    kept; a removed unit's weights count as changed to 0.
    """
    layers: list[dict[str, float]] = []
    L = len(new.weights)
    tot_max, tot_sum, tot_n = 0.0, 0.0, 0
    i = -1
    for W0 in source:  # not enumerate(): its reused result tuple would keep the previous matrix alive
        i += 1
        W1 = new.weights[i]
        if kept_units is not None and W1.shape != W0.shape:
            E = np.zeros_like(W0)
            rows = kept_units[i] if i < L - 1 else np.arange(W0.shape[0])
            cols = kept_units[i - 1] if i > 0 else np.arange(W0.shape[1])
            E[np.ix_(rows, cols)] = W1
            W1 = E
            del E
        emax, esum = _diff_stats(W0, W1)
        layers.append({"max_abs_error": emax, "mean_abs_error": esum / W0.size if W0.size else 0.0})
        tot_max, tot_sum, tot_n = max(tot_max, emax), tot_sum + esum, tot_n + W0.size
        del W0, W1  # before the source reads the next layer: one source matrix at a time
    return {"max_abs_error": tot_max, "mean_abs_error": tot_sum / tot_n if tot_n else 0.0, "layers": layers}


def stored_sparsity(tensors: dict[str, np.ndarray]) -> tuple[float, list[float]]:
    """(overall, per layer) share of zero weights of a tensor set, dense or encoded (an
    integer weight is zero where it equals its zero point)."""
    info = sparse.stored_weight_info(tensors)
    per = [(size - nz) / size if size else 0.0 for _, size, nz in (info[i] for i in sorted(info))]
    total = sum(size for _, size, _ in info.values())
    zeros = total - sum(nz for _, _, nz in info.values())
    return (zeros / total if total else 0.0), per


def storage_form(tensors: dict[str, np.ndarray], sparsity: float, dense_encoding: str) -> tuple[dict, str]:
    """``(tensors to store, encoding)``: the sparse encoding at sparsity ≥ :data:`SPARSE_MIN`."""
    if sparsity >= SPARSE_MIN:
        enc = sparse.encode(tensors)
        if sparse.is_sparse(enc):
            return enc, "sparse"
    return tensors, dense_encoding


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (JSON columns refuse NaN / ∞)."""
    if isinstance(obj, float):
        return _num(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def evaluation_report(desc: dict[str, Any], before: Evaluation, after: Evaluation) -> dict[str, Any]:
    """Loss / accuracy before and after, the share of labels that changed (classification)
    and the largest / mean change of the outputs (both evaluated with ``keep_outputs``)."""
    assert before.outputs is not None and after.outputs is not None, "evaluate(..., keep_outputs=True)"
    d = np.abs(after.outputs.astype(np.float64) - before.outputs)
    rep: dict[str, Any] = {
        "data": public_params(desc),
        "n": int(before.outputs.shape[0]),
        "before": {"loss": _num(before.loss), "accuracy": before.accuracy},
        "after": {"loss": _num(after.loss), "accuracy": after.accuracy},
        "loss_increase": _num(after.loss - before.loss),
        "output_change": {"max_abs": _num(float(d.max())), "mean_abs": _num(float(d.mean()))},
    }
    if before.labels is not None and after.labels is not None:
        rep["labels_changed"] = float(np.mean(before.labels != after.labels))
        rep["accuracy_change"] = after.accuracy - before.accuracy  # type: ignore[operator]
    return rep


class CompressionDeps:
    """What the compression jobs share: their resources, the source model read before a
    transaction opens, and the one transaction that stores a version with the job's result."""

    def __init__(
        self, db: Database, blobs: BlobStore, versions: VersionService, jobs: JobService, metrics: Metrics
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.versions = versions
        self.jobs = jobs
        self.metrics = metrics

    def finish(
        self,
        job: Job,
        *,
        operation: str,
        src: Version,
        tensors: dict[str, np.ndarray],
        encoding: str,
        net: Network | None,
        params: dict[str, Any],
        report: dict[str, Any],
        dtype: str | None = None,
        sparsity: float,
    ) -> int:
        """Store the blob, then in ONE transaction: the new version (``job_id`` unique,
        parent = ``src``), its metrics (the report with the sizes), and the job's result.
        Returns the version number."""
        blob = self.versions.store(net=net, tensors=tensors, encoding=encoding, dtype=dtype, sparsity=sparsity)
        size = {
            "before_bytes": int(src.size_bytes),
            "after_bytes": int(blob.size_bytes),
            "ratio": blob.size_bytes / src.size_bytes if src.size_bytes else None,
            "encoding": encoding,
            "parent_encoding": src.encoding,
        }
        metrics = json_safe({"size": size, **report})
        with self.db.write() as s:
            m = get_model(s, job.model_name, for_update=True)
            v = self.versions.add(
                s,
                m,
                blob,
                operation=operation,
                parent=src.version,
                params=json_safe(params),
                metrics=metrics,
                job_id=job.id,
            )
            result = {"version": v.version, "from_version": src.version, "operation": operation, **metrics}
            self.jobs.queue.finish_in(s, job.id, job.owner, result)
            number = v.version
        self.metrics.versions.labels(operation).inc()
        return number
