"""batch-update: retrain a version by mini-batch gradient descent, as a job.

Request time (:meth:`BatchService.submit`): resolve ``from`` to a version number,
validate the data source and options, enqueue — one transaction, nothing queued
on any 4xx.

Run time (:func:`run_batch_update`): load the source version (quantized ones are
dequantized, and the result says so), split train / validation with the shuffle
seed, train with the model's optimizer (learning rate overridable), early stopping
on validation loss, progress per batch; then in ONE transaction: the new version
(operation ``batch``, ``job_id`` unique), the alias move when ``promote`` allows it,
and the job's result.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from app.core.errors import Invalid, NotFound
from app.core.tables import Model
from app.engine.nn import network
from app.engine.nn.network import Network
from app.jobs.queue import Claimed
from app.jobs.runner import JobError, Progress
from app.registry.models import get_model
from app.registry.repository import AliasRepository
from app.training import data
from app.training.schemas import BatchUpdateIn, TrainOptions


def resolve_from(ctx: Any, s: Any, m: Model, ref: int | str | None, loc: list[str | int]) -> int:
    """A ``from`` reference → a version number, or 422 naming ``loc``."""
    try:
        return ctx.versions.resolve_ref(s, m, ref).version
    except NotFound as e:
        raise Invalid.at(loc, e.detail) from None


def train_options(body: TrainOptions) -> dict[str, Any]:
    return {
        "epochs": body.epochs,
        "batch_size": body.batch_size,
        "learning_rate": body.learning_rate,
        "shuffle_seed": body.shuffle_seed,
        "validation_fraction": body.validation_fraction,
        "early_stopping_patience": body.early_stopping_patience,
    }


def evaluate(net: Network, X: np.ndarray, Y: np.ndarray) -> dict[str, Any]:
    out = net.forward(X)
    res: dict[str, Any] = {"loss": float(network.per_sample_loss(net.task, out, Y).mean()), "n": len(X)}
    acc = network.accuracy(net.task, out, Y)
    if acc is not None:
        res["accuracy"] = acc
    return res


def fit(
    ctx: Any,
    m: Model,
    net: Network,
    X: np.ndarray,
    Y: np.ndarray,
    opts: dict[str, Any],
    progress: Progress,
    *,
    masks: list[np.ndarray] | None = None,
    frozen: set[int] | None = None,
) -> tuple[Network, dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    """Train a copy of ``net`` on (X, Y) with ``opts`` (the engine splits off the
    validation rows with the shuffle seed); returns (trained net, metrics, (X_val, Y_val))."""
    from app.engine.nn.optim import Optimizer, OptimizerConfig
    from app.engine.nn.train import Diverged, train

    spec = dict(m.optimizer)
    if opts.get("learning_rate") is not None:
        spec["learning_rate"] = opts["learning_rate"]
    cfg = OptimizerConfig.from_dict({k: v for k, v in spec.items() if k in OptimizerConfig.__dataclass_fields__})
    net = net.copy()
    opt = Optimizer(cfg, net, frozen=frozen, masks=masks)
    try:
        result = train(
            net,
            opt,
            X,
            Y,
            epochs=opts["epochs"],
            batch_size=opts["batch_size"],
            shuffle_seed=opts["shuffle_seed"],
            validation_fraction=opts["validation_fraction"],
            early_stopping_patience=opts.get("early_stopping_patience"),
            progress_cb=progress,
        )
    except Diverged as e:
        raise JobError(str(e), learning_rate=cfg.learning_rate) from None
    va = result.val_indices
    tr = np.setdiff1d(np.arange(len(X)), va, assume_unique=True)
    metrics = {
        "train": evaluate(net, X[tr], Y[tr]),
        "validation": evaluate(net, X[va], Y[va]),
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "steps": result.steps,
        "learning_rate": cfg.learning_rate,
        "history": [h.__dict__ for h in result.history],
    }
    return net, metrics, (X[va], Y[va])


class BatchService:
    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def submit(self, name: str, body: BatchUpdateIn) -> str:
        ctx = self.ctx
        with ctx.db.write() as s:
            m = get_model(s, name, for_update=True)
            if body.promote == "latest":
                raise Invalid.at(["body", "promote"], "`latest` is implicit and cannot be moved")
            frm = resolve_from(ctx, s, m, body.from_, ["body", "from"])
            src = data.prepare(s, ctx.blobs, m, samples=body.samples, log=body.log, loc=["body"], min_samples=2)
            params = {
                "from": body.from_ if body.from_ is not None else "latest",
                "from_version": frm,
                "data": src,
                **train_options(body),
                "promote": body.promote,
                "keep_sparsity": body.keep_sparsity,
            }
            return ctx.jobs.enqueue(s, "batch_update", m, params).id


def run_batch_update(ctx: Any, job: Claimed, progress: Progress) -> None:
    p = job.params
    with ctx.db.read() as s:
        m = get_model(s, job.model_name)
        src = ctx.versions.get(s, m, int(p["from_version"]))
        X, Y = data.load(s, ctx.blobs, m, p["data"])
    base = ctx.versions.load(m, src)
    masks = None
    if p.get("keep_sparsity", True) and src.sparsity > 0:
        masks = [w != 0 for w in base.weights]
    progress(0.0, force=True)
    net, metrics, (Xv, Yv) = fit(ctx, m, base, X, Y, p, progress, masks=masks)
    notes: dict[str, Any] = {}
    if src.encoding == "quantized":
        notes["dequantized_from"] = {"version": src.version, "dtype": src.dtype}
    promote = p.get("promote")
    promoted, reason, current = False, None, None
    with ctx.db.write() as s:
        m = get_model(s, job.model_name, for_update=True)
        if promote:
            a = AliasRepository(s).get(m.id, promote)
            if a is None:
                promoted, reason = True, f"alias {promote!r} did not exist; created"
            else:
                current = a.version
                cur_net = ctx.versions.load(m, ctx.versions.get(s, m, a.version))
                cur_loss = evaluate(cur_net, Xv, Yv)["loss"]
                new_loss = metrics["validation"]["loss"]
                promoted = new_loss <= cur_loss
                reason = (
                    f"validation loss {new_loss:.6g} {'≤' if promoted else '>'} {cur_loss:.6g} "
                    f"of version {a.version} on the same {len(Xv)} validation samples"
                )
                metrics["validation"]["alias_loss"] = cur_loss
        v = ctx.versions.create(
            s,
            m,
            operation="batch",
            net=net,
            parent=src.version,
            params={k: val for k, val in p.items() if k not in ("data",)} | {"data": _public(p["data"])} | notes,
            metrics=metrics,
            job_id=job.id,
        )
        if promote and promoted:
            AliasRepository(s).put(m.id, promote, v.version)
        result: dict[str, Any] = {
            "version": v.version,
            "from_version": src.version,
            "train": metrics["train"],
            "validation": metrics["validation"],
            "epochs_run": metrics["epochs_run"],
            "best_epoch": metrics["best_epoch"],
            **notes,
        }
        if promote:
            result.update(
                {"promote": promote, "promoted": promoted, "promotion_reason": reason, "previous_version": current}
            )
        ctx.jobs.queue.finish_in(s, job.id, job.owner, result)
    ctx.metrics.versions.labels("batch").inc()


def _public(desc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in desc.items() if not k.startswith("_")}
