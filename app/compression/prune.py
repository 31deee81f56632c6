"""prune: magnitude or neuron pruning of a version, optionally fine-tuned with the mask kept
fixed, optionally as a guarded search for the highest sparsity within a loss budget — a job.

Request time (:func:`submit`): resolve ``from``, refuse what cannot work (422 naming the
field; 409 when the version is already sparser / narrower than asked), check the
fine-tuning and evaluation data, enqueue — one transaction, nothing queued on any 4xx.

Run time (:func:`run_prune`): load the source once (not the shared cache), measure it on the
evaluation data, prune (in place for unstructured pruning), fine-tune with the mask fixed,
measure again, compare each layer with the source blob, store (sparse encoding at sparsity
≥ 0.5) and record the version with the job's result in one transaction.

``sparsity`` for ``neurons`` is the share of hidden units removed relative to the model's
spec (``hidden``): pruning a version at the sparsity it already has changes nothing, and a
lower one is a 409.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from app.compression import common as compress
from app.compression.common import CompressionDeps
from app.compression.schemas import PruneIn
from app.core.errors import Conflict, Invalid
from app.core.tables import Model, Version
from app.engine import codec
from app.engine.compress import prune as engine
from app.engine.nn.evaluation import evaluate
from app.jobs.contract import Job, JobError, Progress
from app.jobs.service import public_params
from app.registry.models import get_model, read_model
from app.training import data
from app.training.service import fit, train_options


# --------------------------------------------------------------------------- request time
def _weights(arch: list[int]) -> int:
    return sum(a * b for a, b in itertools.pairwise(arch))


def _check_reachable(m: Model, src: Version, sparsity: float, scope: str, structure: str) -> None:
    """409 when pruning ``src`` to ``sparsity`` would have to restore weights or units."""
    arch = list(src.architecture)
    if structure == "unstructured":
        n = _weights(arch)
        zeros = round(float(src.sparsity) * n)
        if engine.prune_count(sparsity, n) < zeros:
            raise Conflict(
                f"version {src.version} is already {src.sparsity:.4f} sparse ({zeros} of {n} weights are zero); "
                f"pruning cannot lower it to {sparsity:g}"
            )
        return
    widths, ref = arch[1:-1], [int(h) for h in m.hidden]
    if scope == "global":
        target = max(len(ref), sum(ref) - engine.prune_count(sparsity, sum(ref)))
        if sum(widths) < target:
            raise Conflict(
                f"version {src.version} has {sum(widths)} hidden units, fewer than the {target} of the spec's "
                f"{sum(ref)} that sparsity {sparsity:g} keeps"
            )
        return
    for i, (h, r) in enumerate(zip(widths, ref, strict=True)):
        target = max(1, r - engine.prune_count(sparsity, r))
        if h < target:
            raise Conflict(
                f"hidden layer {i} of version {src.version} has {h} units, fewer than the {target} of the spec's "
                f"{r} that sparsity {sparsity:g} keeps"
            )


def search_grid(cap: float | None) -> list[float]:
    """The sparsities the guarded search may try: the default grid up to ``cap``, plus ``cap``."""
    if cap is None:
        return list(engine.DEFAULT_GRID)
    return sorted({g for g in engine.DEFAULT_GRID if g <= cap} | {cap})


def submit(svc: CompressionDeps, name: str, body: PruneIn) -> str:
    """Validate a prune request and enqueue it (one transaction); returns the job id."""
    spec = read_model(svc.db, name)
    ft_blob = ev_blob = None
    if body.fine_tune is not None:
        ft_blob = data.pack_samples(svc.blobs, spec, body.fine_tune.samples, ["body", "fine_tune"], min_samples=2)
    ev_blob = data.pack_samples(svc.blobs, spec, body.eval_samples, ["body"], field="eval_samples")
    with svc.db.write() as s:
        m = get_model(s, name, for_update=True)
        src, frm = svc.versions.resolve_from(s, m, body.from_)
        search = body.max_loss_increase is not None
        if body.sparsity is None and not search:
            raise Invalid.at(["body", "sparsity"], "field required (unless max_loss_increase is given)")
        if body.structure == "neurons" and len(src.architecture) < 3:
            raise Invalid.at(["body", "structure"], "the model has no hidden layer: there are no neurons to prune")
        top = body.sparsity if body.sparsity is not None else max(engine.DEFAULT_GRID)
        _check_reachable(m, src, top, body.scope, body.structure)
        fine_tune = ft_data = None
        if body.fine_tune is not None:
            ft = body.fine_tune
            ft_data = ft_blob or data.log_range(m, ft.log, ["body", "fine_tune"], min_samples=2)
            fine_tune = train_options(ft)
        ev = compress.eval_source(m, body, ev_blob, required="max_loss_increase" if search else None)
        params = {
            **frm,
            "sparsity": body.sparsity,
            "scope": body.scope,
            "structure": body.structure,
            "fine_tune": fine_tune,
            "fine_tune_data": ft_data,
            "max_loss_increase": body.max_loss_increase,
            "eval": ev,
        }
        return svc.jobs.enqueue(s, "prune", m, params).id


# --------------------------------------------------------------------------- run time
def _fine_tune_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in ("train", "validation", "epochs_run", "best_epoch") if k in metrics}


def run(svc: CompressionDeps, job: Job, progress: Progress) -> None:
    p = job.params
    structure, scope = p["structure"], p["scope"]
    with svc.db.read() as s:
        m = get_model(s, job.model_name)
        src = svc.versions.get(s, m, int(p["from_version"]))
        ev = data.load(s, svc.blobs, m, p["eval"]) if p.get("eval") else None
        ft = data.load(s, svc.blobs, m, p["fine_tune_data"]) if p.get("fine_tune") else None
        reference = [int(h) for h in m.hidden] if structure == "neurons" else None
    progress(0.0, force=True)
    net = svc.versions.load_owned(m, src)
    progress(0.05)
    before = evaluate(net, *ev, keep_outputs=True) if ev is not None else None
    report: dict[str, Any] = {}
    if src.dtype in compress.QUANT_BITS:
        report["dequantized_from"] = {"version": src.version, "dtype": src.dtype}

    def tune(n: Any, masks: Any, lo: float, hi: float) -> tuple[Any, dict[str, Any]]:
        assert ft is not None
        tuned, metrics, _ = fit(m.optimizer, n, *ft, p["fine_tune"], progress.part(lo, hi), masks=masks)
        if masks is not None:
            engine.apply_masks(tuned, masks)  # the mask stays fixed whatever the optimizer did
        return tuned, metrics

    try:
        if p.get("max_loss_increase") is not None:
            assert ev is not None
            grid = search_grid(p.get("sparsity"))
            probes = max(1, math.ceil(math.log2(len(grid) + 1)))
            done = [0]
            tuned_metrics: dict[int, dict[str, Any]] = {}

            def at(k: int) -> float:
                return 0.1 + 0.75 * min(k, probes) / probes

            def fine_tune(n: Any, masks: Any) -> Any:
                tuned, metrics = tune(n, masks, at(done[0]), at(done[0] + 1))
                tuned_metrics[id(tuned)] = metrics
                return tuned

            def on_point(_s: float, _loss: float) -> None:
                done[0] += 1
                progress(at(done[0]))

            out = engine.search_sparsity(
                net,
                lambda n: evaluate(n, *ev).loss,
                max_loss_increase=float(p["max_loss_increase"]),
                scope=scope,
                structure=structure,
                fine_tune=fine_tune if ft is not None else None,
                grid=grid,
                reference_hidden=reference,
                on_point=on_point,
            )
            report["search"] = out.report()
            if out.result is None:
                raise JobError(
                    "no sparsity tried keeps the evaluation loss within max_loss_increase",
                    search=compress.json_safe(out.report()),
                )
            res = out.result
            new = res.network
            del net  # the source is no longer needed
            if ft is not None and id(new) in tuned_metrics:
                report["fine_tune"] = _fine_tune_summary(tuned_metrics[id(new)])
        else:
            sparsity = float(p["sparsity"])
            if structure == "unstructured":
                res = engine.prune_magnitude(net, sparsity, scope=scope, inplace=True, return_masks=ft is not None)
            else:
                res = engine.prune_neurons(net, sparsity, scope=scope, reference_hidden=reference)
            del net
            progress(0.3)
            new = res.network
            if ft is not None:
                new, metrics = tune(new, res.masks, 0.3, 0.85)
                report["fine_tune"] = _fine_tune_summary(metrics)
    except engine.PruneError as e:
        raise JobError(str(e)) from None
    progress(0.87)

    report["prune"] = {k: v for k, v in res.report().items() if k not in ("sparsity", "layer_sparsity")} | {
        "architecture": [new.input_dim, *new.hidden, new.output_dim]
    }
    report["weight_error"] = compress.weight_errors(compress.source_weights(svc.blobs, src), new, res.kept_units)
    progress(0.9)
    if ev is not None and before is not None:
        report["evaluation"] = compress.evaluation_report(p["eval"], before, evaluate(new, *ev, keep_outputs=True))
    if structure == "neurons" and ft is None:
        report["warnings"] = [
            "whole hidden units were removed without fine_tune, which usually costs accuracy "
            "(most on small networks); add fine_tune to retrain the smaller network"
        ]
    tensors = codec.to_tensors(new)
    overall, per_layer = compress.stored_sparsity(tensors)
    report["sparsity"] = overall
    report["layer_sparsity"] = per_layer
    tensors, encoding = compress.storage_form(tensors, overall, "dense")
    progress(0.95)
    svc.finish(
        job,
        operation="prune",
        src=src,
        tensors=tensors,
        encoding=encoding,
        net=new,
        params=public_params(p),
        report=report,
        dtype="float32",
        sparsity=overall,
    )
