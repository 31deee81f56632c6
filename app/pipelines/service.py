"""Pipelines: a job of kind ``pipeline`` whose steps run as jobs of their own
(``parent_job`` = the pipeline), in order, each from the version the step before made,
ending in a guarded promotion.

**Submission** validates the whole body before anything is queued: each step goes
through its own endpoint's checks (the capability's ``submit``) in a dry run that
queues nothing (:meth:`app.jobs.service.JobService.dry_run`), with ``previous``
standing for the version the chain starts from (step 0's ``from``); an error names
``["body", "steps", i, …]``. What depends on the versions the steps make (quantizing
an already quantized one) is checked when the step's turn comes.

**Running** (the worker's handler): step ``i`` is submitted for real when its turn
comes (``from`` = the version step ``i − 1`` made), claimed and run at once by the
worker running the pipeline (:meth:`app.jobs.contract.Progress.run_child`: a pipeline
never waits for a free worker, so one worker suffices). A step that fails or is
refused fails the pipeline, and no later step runs (versions already made stay);
cancelling the pipeline cancels its running step (:meth:`JobService.cancel`). A
pipeline that is claimed again after its worker died finds the steps that ended and
goes on from there.

**Promotion**: the final version and the alias's current version are scored on the same
``eval`` rows (the newest ``log.last`` samples when the promotion runs, or the samples
given); the alias moves (history ``by: {"job": id}``) only if the final loss is at most
the current loss plus ``max_loss_increase``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from app.compression.schemas import PruneIn, QuantizeIn
from app.compression.service import CompressionService
from app.core.blobs import BlobStore
from app.core.db import Database
from app.core.errors import Conflict, Invalid, StewardError, validation_problem
from app.core.tables import Model
from app.engine.nn.evaluation import evaluate
from app.jobs.contract import Canceled, Handlers, Job, JobError, Progress
from app.jobs.service import JobService
from app.migration.schemas import MigrateIn
from app.migration.service import MigrationService
from app.pipelines.schemas import PREVIOUS, PipelineIn, PromoteSpec
from app.registry.models import get_model, read_model
from app.registry.repository import AliasRepository
from app.registry.versions import VersionService
from app.training import data
from app.training.schemas import BatchUpdateIn
from app.training.service import TrainingService

#: A step's submit: (model name, the step's body as its endpoint takes it) → job id.
Submit = Callable[[str, dict[str, Any]], str]


def _validated(cls: type[BaseModel], body: dict[str, Any]) -> Any:
    """``body`` as the endpoint's model; a 422 at ``["body", …]`` as the endpoint gives."""
    try:
        return cls.model_validate(body)
    except ValidationError as e:
        raise validation_problem([{**err, "loc": ["body", *err["loc"]]} for err in e.errors()]) from None


def step_submits(
    training: TrainingService, compression: CompressionService, migration: MigrationService
) -> dict[str, Submit]:
    """Each step kind's submission: the capability's own, as its endpoint calls it."""
    return {
        "batch_update": lambda name, body: training.submit(name, _validated(BatchUpdateIn, body)),
        "prune": lambda name, body: compression.submit_prune(name, _validated(PruneIn, body)),
        "quantize": lambda name, body: compression.submit_quantize(name, _validated(QuantizeIn, body)),
        "migrate": lambda name, body: migration.submit(name, _validated(MigrateIn, body)),
    }


def shift_loc(e: StewardError, prefix: list[str | int]) -> StewardError:
    """``e`` with its ``["body", …]`` locations moved under ``prefix``."""
    if e.errors:
        e.errors = [
            {**err, "loc": [*prefix, *err["loc"][1:]] if err["loc"][:1] == ["body"] else err["loc"]} for err in e.errors
        ]
        e.detail = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors)
    return e


class PipelineService:
    def __init__(
        self, db: Database, blobs: BlobStore, versions: VersionService, jobs: JobService, submits: dict[str, Submit]
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.versions = versions
        self.jobs = jobs
        self.submits = submits

    def register(self, handlers: Handlers) -> None:
        handlers.register("pipeline", self.run)

    # ---- request time
    def params(self, name: str, body: PipelineIn, loc: list[str | int]) -> dict[str, Any]:
        """Check ``body`` as a whole (each step in a dry run of its endpoint) and return the
        pipeline job's params; nothing is queued. Errors name ``[*loc, "steps", i, …]``."""
        steps: list[dict[str, Any]] = []
        start: int | str | None = None  # step 0's ``from``
        for i, step in enumerate(body.steps):
            raw = step.model_dump(mode="json", by_alias=True, exclude_unset=True)
            kind = raw.pop("kind")
            here: list[str | int] = [*loc, "steps", i]
            frm = raw.get("from")
            if i == 0 and frm == PREVIOUS:
                raise Invalid.at([*here, "from"], "the first step has no previous step")
            if i > 0 and "from" not in raw:
                raw["from"] = frm = PREVIOUS
            if kind == "batch_update" and raw.get("promote") is not None:
                raise Invalid.at([*here, "promote"], "a pipeline promotes with its own `promote`, after its last step")
            if kind == "migrate" and raw.get("mode") == "transfer" and i != len(body.steps) - 1:
                raise Invalid.at([*here, "mode"], "a transfer makes another model: it can only be the last step")
            trial = dict(raw)
            if frm == PREVIOUS:  # in the dry run: the version the chain starts from
                trial.pop("from")
                if start is not None:
                    trial["from"] = start
            elif i == 0:
                start = frm
            try:
                with self.jobs.dry_run():
                    self.submits[kind](name, trial)
            except Conflict as e:
                # a prune or quantize 409 (already quantized, already sparser) is about the
                # version the chain starts from, not the one the steps before will make
                # (a batch_update of an int8 version makes a float32 one): its turn decides
                if frm != PREVIOUS or kind not in ("prune", "quantize"):
                    raise shift_loc(e, here) from None
            except StewardError as e:
                raise shift_loc(e, here) from None
            steps.append({"kind": kind, "body": raw})
        out: dict[str, Any] = {"steps": steps, "promote": None}
        if body.promote is not None:
            out["promote"] = self._promote_params(name, body.promote, [*loc, "promote"])
        return out

    def _promote_params(self, name: str, p: PromoteSpec, loc: list[str | int]) -> dict[str, Any]:
        if p.alias == "latest":
            raise Invalid.at([*loc, "alias"], "`latest` is implicit and cannot be moved")
        ev: dict[str, Any]
        if p.eval.samples is not None:
            packed = data.pack_samples(self.blobs, read_model(self.db, name), p.eval.samples, [*loc, "eval"])
            assert packed is not None
            ev = packed
        else:
            assert p.eval.log is not None
            ev = {"source": "log", **p.eval.log.model_dump(exclude_none=True)}
        return {"alias": p.alias, "max_loss_increase": p.max_loss_increase, "eval": ev}

    def submit(self, name: str, body: PipelineIn) -> str:
        params = self.params(name, body, ["body"])
        with self.db.write() as s:
            m = get_model(s, name, for_update=True)
            return self.jobs.enqueue(s, "pipeline", m, params).id

    # ---- run time
    def run(self, job: Job, progress: Progress) -> None:
        steps: list[dict[str, Any]] = job.params["steps"]
        done: list[dict[str, Any]] = []
        previous: int | None = None
        for i, step in enumerate(steps):
            progress.check()
            child = self.jobs.child(job.id, i)
            if child is None:
                body = dict(step["body"])
                if body.get("from") == PREVIOUS:
                    body["from"] = previous
                try:
                    with self.jobs.children_of(job.id, i):
                        child_id = self.submits[step["kind"]](job.model_name, body)
                except StewardError as e:
                    raise JobError(
                        f"step {i} ({step['kind']}) was refused: {e.detail}",
                        step=i,
                        status=e.status,
                        errors=e.errors,
                    ) from None
            else:
                child_id = child.id
            status = self._drive(child_id, progress)
            out = self.jobs.get(child_id)
            if status == "canceled" or out.status == "canceled":
                raise Canceled(job.id)
            if out.status != "succeeded":
                raise JobError(f"step {i} ({step['kind']}) {out.status}", step=i, job=child_id, error=out.error)
            version = (out.result or {}).get("version")
            done.append({"job": child_id, "kind": step["kind"], "version": version})
            if version is not None:
                previous = int(version)
        final = previous
        result: dict[str, Any] = {"steps": done, "version": final, "promoted": False, "promotion_reason": None}
        promote = job.params.get("promote")
        if promote is not None and final is not None:
            result.update(self._promote(job, promote, final))
        with self.db.write() as s:
            self.jobs.queue.finish_in(s, job.id, job.owner, result)

    def _drive(self, child_id: str, progress: Progress) -> str:
        """Run the step until it ends — ``succeeded``, ``failed`` or ``canceled``. It runs
        here when no other worker holds it; a step put back for a retry (a transient
        error: ``waiting`` until its backoff passes) or run elsewhere (``busy``, or a lease
        ``lost``) is waited for and claimed again. When this worker stops, the pipeline is
        released with its step (``progress.check`` raises), and goes on when claimed again."""
        while True:
            status = progress.run_child(child_id)
            if status in ("succeeded", "failed", "canceled"):
                return status
            progress.check()  # released (shutdown) or canceled: raised here
            out = self.jobs.get(child_id)
            if out.status in ("succeeded", "failed", "canceled"):
                return out.status
            time.sleep(0.2)

    def _promote(self, job: Job, p: dict[str, Any], final: int) -> dict[str, Any]:
        """The guard (see the module doc), then the alias move in one transaction that checks
        the alias still points where it was evaluated."""
        alias, slack = p["alias"], float(p["max_loss_increase"])
        while True:
            with self.db.read() as s:
                m = get_model(s, job.model_name)
                X, Y = self._eval_data(s, m, p["eval"])
                new_v = self.versions.get(s, m, final)
                a = AliasRepository(s).get(m.id, alias)
                current = a.version if a is not None else None
                cur_v = self.versions.get(s, m, current) if current is not None else None
            new_loss = evaluate(self.versions.load(m, new_v), X, Y).loss
            cur_loss = evaluate(self.versions.load(m, cur_v), X, Y).loss if cur_v is not None else None
            if cur_loss is None:
                promoted, reason = True, f"alias {alias!r} did not exist; created"
            elif current == final:
                promoted, reason = False, f"alias {alias!r} already points to version {final}"
            else:
                promoted = new_loss <= cur_loss + slack
                reason = (
                    f"eval loss {new_loss:.6g} {'≤' if promoted else '>'} {cur_loss:.6g}"
                    + (f" + {slack:g}" if slack else "")
                    + f" of version {current} on the same {len(X)} samples"
                )
            with self.db.write() as s:
                m = get_model(s, job.model_name, for_update=True)
                repo = AliasRepository(s)
                a = repo.get(m.id, alias)
                if (a.version if a is not None else None) != current:
                    continue  # the alias moved meanwhile: evaluate against its new version
                if promoted:
                    repo.put(m, alias, final, by={"job": job.id}, reason=reason)
            return {
                "promoted": promoted,
                "promotion_reason": reason,
                "promote": alias,
                "previous_version": current,
                "eval": {"n": len(X), "loss": new_loss, "alias_loss": cur_loss},
            }

    def _eval_data(self, s: Any, m: Model, ev: dict[str, Any]) -> Any:
        if ev["source"] == "samples":
            return data.load(s, self.blobs, m, ev)
        accepted = int(m.next_offset)
        if accepted == 0:
            raise JobError("the promotion's eval data is the sample log, and the log is empty")
        if ev.get("last") is not None or ev.get("from_offset") is None:
            last = int(ev.get("last") or 1000)
            first, end = max(0, accepted - last), accepted - 1
        else:
            first = int(ev["from_offset"])
            end = int(ev.get("to_offset", accepted - 1))
            if first >= accepted or end >= accepted:
                raise JobError(f"the promotion's eval range {first}..{end} is past the log (0..{accepted - 1})")
        return data.load(s, self.blobs, m, {"source": "log", "from_offset": first, "to_offset": end})
