"""migrate: verified exports of a version, transfer learning to a new model, ONNX import.

Request time (:meth:`MigrationService.submit`): resolve ``from``, validate every field
of the chosen mode (a 422 names the field; transfer's ``new_model`` that exists is
409), and enqueue a ``migrate`` job — one transaction, nothing queued on any 4xx.

Export job (:func:`run_export`)
    1. If the version already has an export for the target (and, for ``onnx``, the
       same opset) whose blob is present, the job succeeds at once with
       ``"reused": true`` and the stored verification: nothing is recomputed.
    2. Otherwise it builds the artifact (:mod:`app.interop.export`), **verifies** it
       against Steward's own ``Network.forward`` on probe inputs — 64 seeded random
       rows plus up to 64 of the newest samples of the model's log — (ONNX:
       ``onnx.checker`` full check + ONNX Runtime; torch: safetensors reload + numpy
       ``nn.Sequential`` forward; npz: ``numpy.load(allow_pickle=False)`` + forward),
       stores it content-addressed in the blob store, and in ONE transaction
       upserts the ``exports`` row (version, target) and finishes the job. Maximum
       error and tolerance are in the job result and the export's ``meta``.
    3. A failed verification fails the job without retry (``JobError`` carrying
       ``stage`` and ``evidence``); nothing is stored.

    An ``onnx`` export with another opset than the stored one **replaces** it (an
    export is a derived, re-creatable artifact of an immutable version; only one
    file per (version, target) is offered); the result names the replaced opset and
    sha256. Old blobs stay in the store, so a download already streaming is intact.

Transfer job (:func:`run_transfer`)
    Builds the new network: the first ``copy_layers`` layers of the source version
    (dequantized, copied bit for bit), then ``hidden_head`` new hidden layers and a
    new output layer for the new task, initialized like ``POST /models`` with
    ``seed``. Trains it with :func:`app.training.service.fit` with layers
    ``0 .. freeze-1`` frozen, checks the frozen ones are still bit-identical to the
    source's, then in ONE transaction creates the model (through
    :meth:`ModelService.create`, so it gets its learner row), its version 1
    (operation ``transfer``, ``job_id`` unique) and ``models.lineage``, and finishes
    the job. The job's ``model`` is the SOURCE model. A retried attempt whose first
    attempt committed finds its version by ``job_id`` and reports it.

Import (:meth:`MigrationService.import_version`, ``POST /models/{name}/versions``):
a safetensors file, or with ``Content-Type: application/onnx`` an ONNX file: parse
(:func:`app.interop.onnx_import.from_onnx`),
map onto the model's spec, check Steward's forward against ONNX Runtime on probe
inputs, and create an ``import`` version. Unreadable bytes → 400, too large → 413,
anything that does not map (operator, shapes, activation, output link) or does not
verify → 422 naming the operator / place.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.core.blobs import BlobStore
from app.core.db import Database
from app.core.errors import BadRequest, Conflict, Invalid, NotFound, PayloadTooLarge, decoding
from app.core.metrics import Metrics
from app.core.settings import Settings
from app.core.tables import Export, Model, Version, utcnow
from app.engine import codec
from app.engine.nn.network import Network, init_network
from app.interop.export import (
    DEFAULT_OPSET,
    FILE_EXTENSIONS,
    MEDIA_TYPES,
    ExportError,
    ExportVerificationError,
    probe_inputs,
    to_npz,
    to_onnx,
    to_torch_state,
    verify_onnx,
)
from app.interop.export_verify import verify_npz, verify_torch_state
from app.interop.onnx_import import (
    OnnxImportError,
    OnnxTooLargeError,
    OnnxUnreadableError,
    OnnxVerificationError,
    from_onnx,
    verify_import,
)
from app.jobs.contract import Handlers, Job, JobError, Progress
from app.jobs.service import JobService, public_params
from app.migration.repository import ExportRepository
from app.migration.schemas import TRANSFER_FIELDS, ExportOut, MigrateIn
from app.registry.models import ModelService, get_model, read_model
from app.registry.repository import ModelRepository, VersionRepository
from app.registry.schemas import ModelCreate, VersionOut
from app.registry.versions import VersionService, version_out
from app.training import data
from app.training.service import fit, train_options

N_RANDOM_PROBES = 64
N_REAL_PROBES = 64


# --------------------------------------------------------------------------- helpers
def export_filename(model: str, version: int, target: str) -> str:
    return f"{model}-v{version}{FILE_EXTENSIONS[target]}"


def export_url(model: str, version: int, target: str) -> str:
    return f"/v1/models/{model}/versions/{version}/exports/{target}"


def export_out(m: Model, v: Version, e: Export) -> ExportOut:
    return ExportOut(
        model=m.name,
        version=v.version,
        target=e.target,  # type: ignore[arg-type]
        sha256=e.blob_sha256,
        size_bytes=e.size_bytes,
        media_type=e.media_type,
        filename=e.filename,
        url=export_url(m.name, v.version, e.target),
        meta=dict(e.meta),
        created_at=e.created_at,
    )


def recent_inputs(s: Session, m: Model, n: int = N_REAL_PROBES) -> np.ndarray | None:
    """Inputs of the newest ``n`` samples of ``m``'s log (None when it is empty)."""
    last = m.next_offset - 1
    if last < 0 or n <= 0:
        return None
    X, _ = data.read_log(s, m, max(0, last - n + 1), last)
    return X if len(X) else None


def probes_for(m: Model, seed_text: str, real: np.ndarray | None) -> np.ndarray:
    """Seeded random probes (the seed derives from ``seed_text``, so a rerun probes the
    same points) after the real samples."""
    seed = int.from_bytes(hashlib.sha256(seed_text.encode()).digest()[:8], "little")
    return probe_inputs(m.input_dim, np.random.default_rng(seed), N_RANDOM_PROBES, real)


def _only(body: MigrateIn, names: tuple[str, ...] | list[str], mode: str) -> None:
    for f in names:
        if f in body.model_fields_set:
            raise Invalid.at(["body", f], f"only applies with mode {mode!r}")


# --------------------------------------------------------------------------- service
class MigrationService:
    """Exports, transfer learning and imports: request time, and the ``migrate`` job handler."""

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        versions: VersionService,
        models: ModelService,
        jobs: JobService,
        metrics: Metrics,
        settings: Settings,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.versions = versions
        self.models = models
        self.jobs = jobs
        self.metrics = metrics
        self.settings = settings

    def register(self, handlers: Handlers) -> None:
        handlers.register("migrate", self.run)

    def run(self, job: Job, progress: Progress) -> None:
        """The ``migrate`` job handler: export or transfer, per ``params["mode"]``."""
        if job.params.get("mode") == "transfer":
            run_transfer(self, job, progress)
        else:
            run_export(self, job, progress)

    # ---- request time
    def submit(self, name: str, body: MigrateIn) -> str:
        packed = None
        if body.mode == "transfer" and body.task is not None and body.samples is not None and body.log is None:
            src_model = read_model(self.db, name)
            head = Model(task=body.task, input_dim=src_model.input_dim, output_dim=body.output_dim or 1)
            packed = data.pack_samples(self.blobs, head, body.samples, ["body"], min_samples=2)
        with self.db.write() as s:
            m = get_model(s, name, for_update=True)
            _src, frm = self.versions.resolve_from(s, m, body.from_)
            if body.mode == "transfer":
                params = self._transfer_params(s, m, body, frm, packed)
            else:
                params = self._export_params(body, frm)
            return self.jobs.enqueue(s, "migrate", m, params).id

    def _export_params(self, body: MigrateIn, frm: dict[str, Any]) -> dict[str, Any]:
        _only(body, TRANSFER_FIELDS, "transfer")
        if body.target is None:
            raise Invalid.at(["body", "target"], "field required: one of onnx, torch, npz")
        params: dict[str, Any] = {"mode": "export", **frm, "target": body.target}
        if body.target == "onnx":
            params["opset"] = body.opset if body.opset is not None else DEFAULT_OPSET
        return params

    def _transfer_params(
        self, s: Session, m: Model, body: MigrateIn, frm_params: dict[str, Any], packed: dict[str, Any] | None
    ) -> dict[str, Any]:
        ctx = self
        frm = int(frm_params["from_version"])
        _only(body, ("target", "opset"), "export")
        for f in ("new_model", "task"):
            if getattr(body, f) is None:
                raise Invalid.at(["body", f], "field required with mode 'transfer'")
        assert body.new_model is not None and body.task is not None
        src = ctx.versions.get(s, m, frm)
        widths = [int(w) for w in src.architecture]  # [input, *hidden, output] of the stored version
        n_layers = len(widths) - 1
        if n_layers < 2:
            raise Invalid.at(["body", "from"], f"version {frm} has no hidden layer to transfer")
        copy = body.copy_layers if body.copy_layers is not None else n_layers - 1
        if copy > n_layers - 1:
            raise Invalid.at(
                ["body", "copy_layers"],
                f"version {frm} has {n_layers - 1} hidden layers to copy (its output layer is replaced)",
            )
        freeze = body.freeze if body.freeze is not None else copy
        if freeze > copy:
            raise Invalid.at(["body", "freeze"], f"at most copy_layers = {copy} layers can be frozen")
        output_dim = body.output_dim if body.output_dim is not None else 1
        if body.task == "multiclass" and body.output_dim is None:
            raise Invalid.at(["body", "output_dim"], "field required for a multiclass head (the number of classes)")
        if ModelRepository(s).get_by_name(body.new_model) is not None:
            raise Conflict(f"a model named {body.new_model!r} already exists")
        try:
            spec = ModelCreate(
                name=body.new_model,
                task=body.task,
                input_dim=m.input_dim,
                output_dim=output_dim,
                hidden=[*widths[1 : copy + 1], *body.hidden_head],
                activation=m.activation,  # type: ignore[arg-type]
                optimizer=body.optimizer if body.optimizer is not None else dict(m.optimizer),  # type: ignore[arg-type]
                checkpoint_every=m.checkpoint_every,
                checkpoint_seconds=m.checkpoint_seconds,
                seed=body.seed,
                description=body.description
                if body.description is not None
                else f"transferred from {m.name} version {frm}",
                guard=dict(m.guard),  # type: ignore[arg-type]
            )
        except ValidationError as e:
            err = e.errors()[0]
            field = "output_dim" if err["type"] == "value_error" else (err["loc"][0] if err["loc"] else "body")
            raise Invalid.at(["body", field], str(err["msg"]).removeprefix("Value error, ")) from None
        if spec.n_params() > ctx.settings.max_params:
            raise Invalid.at(
                ["body", "hidden_head"],
                f"the network would have {spec.n_params():,} parameters; the limit is {ctx.settings.max_params:,}",
            )
        if body.samples is not None and body.log is not None:
            raise Invalid.at(["body"], "give exactly one of samples or log")
        if packed is not None:
            src_desc: dict[str, Any] = packed
        elif body.log is not None:
            if (spec.task, spec.output_dim) != (m.task, m.output_dim):
                raise Invalid.at(
                    ["body", "log"],
                    f"the source's log holds {m.task} labels of size {m.output_dim}; "
                    f"a {spec.task} head of size {spec.output_dim} needs samples",
                )
            src_desc = data.log_range(m, body.log, ["body"], min_samples=2)
        else:
            raise Invalid.at(["body", "samples"], "field required with mode 'transfer' (or log)")
        return {
            "mode": "transfer",
            **frm_params,
            "new_model": spec.name,
            "spec": spec.model_dump(mode="json"),
            "copy_layers": copy,
            "freeze": freeze,
            "hidden_head": list(body.hidden_head),
            "data": src_desc,
            **train_options(body),
        }

    # ---- exports (read side)
    def list_exports(self, name: str, version: int) -> list[ExportOut]:
        with self.db.read() as s:
            m = get_model(s, name)
            v = self.versions.get(s, m, version)
            rows = sorted(ExportRepository(s).for_version(v.id), key=lambda e: e.target)
            return [export_out(m, v, e) for e in rows]

    def get_export(self, name: str, version: int, target: str) -> Export:
        """A verified export whose file is present (404 naming how to make one otherwise)."""
        with self.db.read() as s:
            m = get_model(s, name)
            v = self.versions.get(s, m, version)
            e = ExportRepository(s).get(v.id, target)
        if e is None or not self.blobs.exists(e.blob_sha256):
            raise NotFound(
                f"version {version} of {name!r} has no {target} export yet; "
                f'ask for one with POST /v1/models/{name}/migrate {{"from": {version}, "target": "{target}"}}'
            )
        return e

    # ---- imports: parse and verify before the write transaction, which only adds the row
    def import_version(self, name: str, data: bytes, *, onnx_file: bool) -> VersionOut:
        """``POST /models/{name}/versions``: a safetensors file, or an ONNX file (parsed,
        mapped onto the model's spec and verified against ONNX Runtime) as an ``import``
        version. All the CPU work and the blob write happen before the write
        transaction, which holds the lock for milliseconds."""
        with self.db.read() as s:
            m = get_model(s, name)
            real = recent_inputs(s, m) if onnx_file else None
        if onnx_file:
            net, params = self._onnx_network(m, data, real)
            blob = self.versions.store(net=net)
        else:
            blob = self.versions.decode_safetensors(m, data)
            params = {"format": "safetensors", "bytes": len(data)}
        with self.db.write() as s:
            m = get_model(s, name, for_update=True)
            latest = VersionRepository(s).latest_number(m.id)
            v = self.versions.add(s, m, blob, operation="import", parent=latest or None, params=params)
            out = version_out(m, v)
        self.metrics.versions.labels("import").inc()
        return out

    def _onnx_network(self, m: Model, body: bytes, real: np.ndarray | None) -> tuple[Network, dict[str, Any]]:
        """Parse, map and verify an uploaded ONNX file: 400 unreadable, 413 too large, 422
        does not map or does not verify (naming the operator / node) — never anything
        else: :func:`from_onnx` and :func:`verify_import` are boundaries of their own, and
        this one covers the mapping between them."""
        digest = hashlib.sha256(body).hexdigest()
        try:
            with decoding("the ONNX file cannot be imported", Invalid):
                imported = from_onnx(body, max_bytes=self.settings.max_body_bytes)
                net = imported.check_against(
                    task=m.task,
                    activation=m.activation,
                    input_dim=m.input_dim,
                    output_dim=m.output_dim,
                    n_layers=len(m.hidden) + 1,
                )
                report = verify_import(body, imported, net, probes_for(m, digest, real))
        except OnnxTooLargeError as e:
            where: dict[str, Any] = {"operator": e.op_type, "node": e.node} if e.node else {}
            raise PayloadTooLarge(e.msg, **where) from None
        except OnnxUnreadableError as e:
            raise BadRequest(e.msg) from None
        except OnnxVerificationError as e:
            raise Invalid(
                f"ONNX Runtime and Steward disagree on this file: {e.msg}",
                errors=[{"loc": ["body"], "msg": e.msg}],
                evidence=e.evidence,
            ) from None
        except OnnxImportError as e:
            raise Invalid(
                e.msg,
                errors=[{"loc": ["body", e.loc], "msg": e.msg}],
                operator=e.op_type,
                node=e.node,
            ) from None
        params = {
            "format": "onnx",
            "bytes": len(body),
            "sha256": digest,
            "verification": report,
            "followed_output": imported.followed_output,
            "onnx": net.meta.get("onnx", imported.describe()),
        }
        return net, params


# --------------------------------------------------------------------------- jobs
def _export_result(m: Model, v: Version, e: Export, *, reused: bool) -> dict[str, Any]:
    ver = e.meta.get("verification", {})
    out = {
        "mode": "export",
        "reused": reused,
        "version": v.version,
        "target": e.target,
        "url": export_url(m.name, v.version, e.target),
        "filename": e.filename,
        "media_type": e.media_type,
        "sha256": e.blob_sha256,
        "size_bytes": e.size_bytes,
        "max_abs_error": ver.get("max_abs_error"),
        "tolerance": ver.get("tolerance"),
        "verification": ver,
    }
    if "opset" in e.meta:
        out["opset"] = e.meta["opset"]
    return out


def run_export(ctx: MigrationService, job: Job, progress: Progress) -> None:
    p = job.params
    target: str = p["target"]
    opset = p.get("opset")
    progress(0.0, force=True)
    with ctx.db.read() as s:
        m = get_model(s, job.model_name)
        v = ctx.versions.get(s, m, int(p["from_version"]))
        existing = ExportRepository(s).get(v.id, target)
        reusable = (
            existing is not None
            and ctx.blobs.exists(existing.blob_sha256)
            and (target != "onnx" or existing.meta.get("opset") == opset)
        )
        real = None if reusable else recent_inputs(s, m)
    if reusable:
        with ctx.db.write() as s:
            m = get_model(s, job.model_name)
            v = ctx.versions.get(s, m, int(p["from_version"]))
            e = ExportRepository(s).get(v.id, target)
            if e is not None and (target != "onnx" or e.meta.get("opset") == opset):
                ctx.jobs.queue.finish_in(s, job.id, job.owner, _export_result(m, v, e, reused=True))
                return
        # replaced meanwhile by another opset: build it after all

    net = ctx.versions.load(m, v)
    probes = probes_for(m, f"{v.blob_sha256}:{target}", real)
    meta: dict[str, Any] = {
        "job_id": job.id,
        "source_sha256": v.blob_sha256,
        "probes": {"random": N_RANDOM_PROBES, "real": 0 if real is None else len(real)},
    }
    try:
        if target == "onnx":
            stored = None
            if v.encoding != "dense" or v.dtype != "float32":
                stored = codec.decode_stored(ctx.versions.stored_tensors(v))
            blob = to_onnx(
                net,
                name=m.name,
                version=v.version,
                opset=int(opset or DEFAULT_OPSET),
                quantized=stored,
                metadata={"steward.source_sha256": v.blob_sha256},
            )
            progress(0.4)
            report = verify_onnx(blob, net, probes)
            meta["opset"] = int(opset or DEFAULT_OPSET)
        elif target == "torch":
            blob, arch = to_torch_state(net, name=m.name, version=v.version)
            progress(0.4)
            report = verify_torch_state(blob, net, probes)
            meta["architecture"] = arch
        else:
            blob = to_npz(net)
            progress(0.4)
            report = verify_npz(blob, net, probes)
    except ExportVerificationError as e:
        raise JobError(
            f"the {target} export of version {v.version} failed verification ({e.stage}): {e.message}",
            stage=e.stage,
            evidence=e.evidence,
        ) from None
    except ExportError as e:  # stored tensors that do not describe the network
        raise JobError(f"the {target} export of version {v.version} cannot be built: {e}") from None
    meta["verification"] = report
    if v.encoding == "quantized":
        meta["weights"] = f"{v.dtype} (dequantized in torch / npz; QDQ in onnx)"
    progress(0.8)
    sha, size = ctx.blobs.put(blob)
    with ctx.db.write() as s:
        m = get_model(s, job.model_name)
        v = ctx.versions.get(s, m, int(p["from_version"]))
        repo = ExportRepository(s)
        row = repo.get(v.id, target)
        replaced = None
        if row is None:
            row = repo.add(
                Export(
                    version_id=v.id,
                    target=target,
                    blob_sha256=sha,
                    size_bytes=size,
                    media_type=MEDIA_TYPES[target],
                    filename=export_filename(m.name, v.version, target),
                    meta=meta,
                    created_at=utcnow(),
                )
            )
        else:  # another opset (or a lost blob): an export is derived, so it is replaced
            replaced = {
                "sha256": row.blob_sha256,
                "opset": row.meta.get("opset"),
                "created_at": row.created_at.isoformat(),
            }
            row.blob_sha256, row.size_bytes, row.meta, row.created_at = sha, size, meta, utcnow()
            s.flush()
        result = _export_result(m, v, row, reused=False)
        if replaced is not None:
            result["replaced"] = replaced
        ctx.jobs.queue.finish_in(s, job.id, job.owner, result)


# --------------------------------------------------------------------------- transfer
def transfer_network(base: Network, spec: ModelCreate, copy: int) -> Network:
    """The new model's starting network: layers ``0..copy-1`` copied from ``base``,
    the others initialized like ``POST /models`` (seeded by ``spec.seed``)."""
    net = init_network(spec.task, spec.activation, spec.input_dim, spec.output_dim, list(spec.hidden), spec.seed)
    for i in range(copy):
        if net.weights[i].shape != base.weights[i].shape:  # the spec was made from the same version
            raise JobError(f"layer {i}: source shape {list(base.weights[i].shape)} != {list(net.weights[i].shape)}")
        net.weights[i] = base.weights[i].copy()
        net.biases[i] = base.biases[i].copy()
    return net


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _transfer_result(job_params: dict[str, Any], v: Version) -> dict[str, Any]:
    m = v.metrics or {}
    return {
        "mode": "transfer",
        "model": job_params["new_model"],
        "version": v.version,
        "source": {"model": v.params.get("source", {}).get("model"), "version": job_params["from_version"]},
        "copied_layers": job_params["copy_layers"],
        "frozen": job_params["freeze"],
        "train": m.get("train"),
        "validation": m.get("validation"),
        "epochs_run": m.get("epochs_run"),
        "best_epoch": m.get("best_epoch"),
    }


def run_transfer(ctx: MigrationService, job: Job, progress: Progress) -> None:
    p = job.params
    spec = ModelCreate.model_validate(p["spec"])
    copy, freeze = int(p["copy_layers"]), int(p["freeze"])
    with ctx.db.read() as s:
        done = VersionRepository(s).by_job(job.id)
        if done is None:
            m = get_model(s, job.model_name)
            src = ctx.versions.get(s, m, int(p["from_version"]))
            if ModelRepository(s).get_by_name(spec.name) is not None:
                raise JobError(f"a model named {spec.name!r} was created after this job was queued")
            X, Y = data.load(s, ctx.blobs, m, p["data"])
    if done is not None:  # an earlier attempt committed (e.g. its lease expired after the commit)
        with ctx.db.write() as s:
            made = VersionRepository(s).by_job(job.id)
            assert made is not None
            ctx.jobs.queue.finish_in(s, job.id, job.owner, _transfer_result(p, made))
        return
    base = ctx.versions.load(m, src)
    progress(0.0, force=True)
    start = transfer_network(base, spec, copy)
    masks: list[np.ndarray | None] | None = None
    if src.sparsity > 0:  # keep the copied layers' pruned weights at zero
        masks = [w != 0 if i < copy else None for i, w in enumerate(start.weights)]
    net, metrics, _ = fit(spec.optimizer.model_dump(), start, X, Y, p, progress, masks=masks, frozen=set(range(freeze)))
    for i in range(freeze):
        if not (_same_bits(net.weights[i], base.weights[i]) and _same_bits(net.biases[i], base.biases[i])):
            raise JobError(f"frozen layer {i} changed during training", layer=i)
    params: dict[str, Any] = {
        "source": {"model": m.name, "version": src.version, "sha256": src.blob_sha256},
        "copied_layers": copy,
        "frozen": freeze,
        "frozen_layers": list(range(freeze)),
        "hidden_head": p["hidden_head"],
        "seed": spec.seed,
        "data": public_params(p["data"]),
        **{k: p[k] for k in train_options_keys()},
    }
    if src.encoding == "quantized":
        params["dequantized_from"] = {"version": src.version, "dtype": src.dtype}
    lineage = {"model": m.name, "version": src.version, "frozen": freeze, "copied_layers": copy}
    blob = ctx.versions.store(net=net)
    with ctx.db.write() as s:
        try:
            new = ctx.models.add(
                s,
                spec,
                blob,
                operation="transfer",
                params=params,
                lineage=lineage,
                metrics=metrics,
                job_id=job.id,
            )
        except Conflict:
            raise JobError(f"a model named {spec.name!r} was created while this job ran") from None
        v = VersionRepository(s).latest(new.id)
        assert v is not None
        ctx.jobs.queue.finish_in(s, job.id, job.owner, _transfer_result(p, v))
    ctx.metrics.versions.labels("transfer").inc()


def train_options_keys() -> tuple[str, ...]:
    return ("epochs", "batch_size", "learning_rate", "shuffle_seed", "validation_fraction", "early_stopping_patience")
