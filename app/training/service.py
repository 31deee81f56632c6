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

from collections.abc import Callable
from typing import Any

import numpy as np

from app.core.blobs import BlobStore
from app.core.db import Database
from app.core.errors import Invalid
from app.core.metrics import Metrics
from app.engine.nn.evaluation import evaluate
from app.engine.nn.network import Network
from app.engine.nn.optim import MaskSpec, Optimizer, OptimizerConfig
from app.engine.nn.train import Diverged, train
from app.jobs.contract import Handlers, Job, JobError, Progress
from app.jobs.service import JobService, public_params
from app.registry.models import get_model, read_model
from app.registry.repository import AliasRepository
from app.registry.versions import VersionService
from app.training import data
from app.training.schemas import BatchUpdateIn, TrainOptions


def train_options(body: TrainOptions) -> dict[str, Any]:
    return {
        "epochs": body.epochs,
        "batch_size": body.batch_size,
        "learning_rate": body.learning_rate,
        "shuffle_seed": body.shuffle_seed,
        "validation_fraction": body.validation_fraction,
        "early_stopping_patience": body.early_stopping_patience,
    }


def fit(
    optimizer: dict[str, Any],
    net: Network,
    X: np.ndarray,
    Y: np.ndarray,
    opts: dict[str, Any],
    progress: Callable[..., None],
    *,
    masks: MaskSpec | None = None,
    frozen: set[int] | None = None,
) -> tuple[Network, dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    """Train a copy of ``net`` on (X, Y) with ``opts`` (the engine splits off the
    validation rows with the shuffle seed); returns (trained net, metrics, (X_val, Y_val))."""
    cfg = OptimizerConfig.from_spec(optimizer, learning_rate=opts.get("learning_rate"))
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
        "train": evaluate(net, X[tr], Y[tr]).to_dict(),
        "validation": evaluate(net, X[va], Y[va]).to_dict(),
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "steps": result.steps,
        "learning_rate": cfg.learning_rate,
        "history": [h.__dict__ for h in result.history],
    }
    return net, metrics, (X[va], Y[va])


class TrainingService:
    """``batch-update``: request time (:meth:`submit`) and run time (:meth:`run`, the
    ``batch_update`` job handler)."""

    def __init__(
        self, db: Database, blobs: BlobStore, versions: VersionService, jobs: JobService, metrics: Metrics
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.versions = versions
        self.jobs = jobs
        self.metrics = metrics

    def register(self, handlers: Handlers) -> None:
        handlers.register("batch_update", self.run)

    def submit(self, name: str, body: BatchUpdateIn) -> str:
        if body.promote == "latest":
            raise Invalid.at(["body", "promote"], "`latest` is implicit and cannot be moved")
        data_blob = data.pack_samples(self.blobs, read_model(self.db, name), body.samples, ["body"], min_samples=2)
        with self.db.write() as s:
            m = get_model(s, name, for_update=True)
            _src, frm = self.versions.resolve_from(s, m, body.from_)
            src = data_blob or data.log_range(m, body.log, ["body"], min_samples=2)
            params = {
                **frm,
                "data": src,
                **train_options(body),
                "promote": body.promote,
                "keep_sparsity": body.keep_sparsity,
            }
            return self.jobs.enqueue(s, "batch_update", m, params).id

    def run(self, job: Job, progress: Progress) -> None:
        p = job.params
        with self.db.read() as s:
            m = get_model(s, job.model_name)
            src = self.versions.get(s, m, int(p["from_version"]))
            X, Y = data.load(s, self.blobs, m, p["data"])
        base = self.versions.load(m, src)
        masks = None
        if p.get("keep_sparsity", True) and src.sparsity > 0:
            masks = [w != 0 for w in base.weights]
        progress(0.0, force=True)
        net, metrics, (Xv, Yv) = fit(m.optimizer, base, X, Y, p, progress, masks=masks)
        notes: dict[str, Any] = {}
        if src.encoding == "quantized":
            notes["dequantized_from"] = {"version": src.version, "dtype": src.dtype}
        promote = p.get("promote")
        blob = self.versions.store(net=net)
        params = public_params(p) | notes
        # The guard's evaluation runs before the write transaction; the transaction
        # re-checks that the alias still points where it did, and evaluates again if not.
        seen: dict[int | None, float] = {}
        while True:
            with self.db.read() as s:
                m = get_model(s, job.model_name)
                a = AliasRepository(s).get(m.id, promote) if promote else None
                current = a.version if a is not None else None
                cur_v = self.versions.get(s, m, current) if current is not None else None
            if cur_v is not None and current not in seen:
                seen[current] = evaluate(self.versions.load(m, cur_v), Xv, Yv).loss
            with self.db.write() as s:
                m = get_model(s, job.model_name, for_update=True)
                a = AliasRepository(s).get(m.id, promote) if promote else None
                if (a.version if a is not None else None) != current:
                    continue  # the alias moved meanwhile: evaluate its new version
                promoted, reason = False, None
                if promote and current is None:
                    promoted, reason = True, f"alias {promote!r} did not exist; created"
                elif promote:
                    cur_loss = seen[current]
                    new_loss = metrics["validation"]["loss"]
                    promoted = new_loss <= cur_loss
                    reason = (
                        f"validation loss {new_loss:.6g} {'≤' if promoted else '>'} {cur_loss:.6g} "
                        f"of version {current} on the same {len(Xv)} validation samples"
                    )
                    metrics["validation"]["alias_loss"] = cur_loss
                v = self.versions.add(
                    s, m, blob, operation="batch", parent=src.version, params=params, metrics=metrics, job_id=job.id
                )
                if promote and promoted:
                    AliasRepository(s).put(m, promote, v.version, by={"job": job.id}, reason=reason)
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
                        {
                            "promote": promote,
                            "promoted": promoted,
                            "promotion_reason": reason,
                            "previous_version": current,
                        }
                    )
                self.jobs.queue.finish_in(s, job.id, job.owner, result)
                break
        self.metrics.versions.labels("batch").inc()
