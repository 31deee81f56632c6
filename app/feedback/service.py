"""Recorded predictions and delayed labels (see the package doc).

**Recording.** :meth:`FeedbackService.record` stores a recorded ``/predict`` request in one
transaction: one ``prediction_batches`` row (inputs and served outputs packed), one
``predictions`` row per id, and the served version's ``predictions`` count — before the
answer, like every write. A client's ids are its idempotency: the same ids with the same
inputs answer the first answer again (same version, same outputs, from the stored rows);
an id already recorded with other inputs, or in another request, is 409 at
``["body", "ids", i]``.

**Labelling.** :meth:`FeedbackService.label` checks every label first (the ids' form and
the ``y`` of the model's task, as ``/update`` checks a sample's), then, in one
transaction under the model row's lock (the lock every append of the sample log takes):
an unknown or expired id is 422 at ``["body", "labels", i, "id"]``; a label repeated with
the same ``y`` (in the request or since an earlier request) is a duplicate and adds
nothing; another ``y`` for a labelled id is 409 at ``["body", "labels", i, "y"]``. The new
labels become samples at the log's next offsets — the recorded input with its ``y`` —
their ids are marked labelled with their offsets, and each scores the output that was
served: the per-sample loss of :func:`app.engine.nn.network.per_sample_loss` and the
label of :func:`~app.engine.nn.network.labels`, summed per serving version into its
``served`` metrics. All or nothing, durable before the 202; an ``Idempotency-Key`` works
as on ``/update``.

**Shadows.** ``PUT /models/{name}/shadows/{v}`` starts version ``v`` scoring every sample
appended to the log from then on (``since_offset``, the model's ``next_offset`` at the
time), beside the version it is compared with (resolved then); the learner scores both
on exactly the same samples as it reads the log (inference only, one batch per slice)
and publishes the sums with its progress, in the same transaction, so a replay after a
crash scores nothing twice (:mod:`app.online.learner`).

**Expiry.** Recorded predictions live ``STEWARD_PREDICTION_TTL_SECONDS``;
:meth:`FeedbackService.purge` removes expired ones a bounded number of requests per
transaction, so it never holds the write lock for long (the job worker calls it).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import numpy as np
import orjson
import sqlalchemy as sa

from app.core.db import Database
from app.core.errors import BadRequest, Conflict, Invalid, NotFound
from app.core.jsonbody import loads
from app.core.metrics import Metrics
from app.core.settings import Settings
from app.core.tables import Model, Shadow, utcnow
from app.engine.nn.network import labels as class_labels
from app.engine.nn.network import per_sample_loss
from app.feedback.repository import PredictionRepository
from app.feedback.schemas import ShadowOut
from app.online.log import pack_rows
from app.online.repository import IdempotencyRepository, LearnerRepository, SampleRepository, ShadowRepository
from app.online.samples import SampleSpec, pack_labels
from app.online.service import MAX_ROW_SAMPLES
from app.registry.models import get_model, read_model
from app.registry.repository import AliasRepository, ServedRepository, VersionRepository

LABELS: list[str | int] = ["body", "labels"]
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"})
#: Expired recorded requests removed per purge transaction.
PURGE_BATCH = 500


def prediction_ids(n: int) -> list[str]:
    """``n`` fresh ids for a recorded predict without ids of its own."""
    return [f"p-{uuid.uuid4().hex}" for _ in range(n)]


def check_id(v: Any, loc: list[str | int]) -> str:
    """A prediction id: a string of 1–128 printable ASCII characters."""
    if not isinstance(v, str):
        raise Invalid.at(loc, "expected a string id")
    if not 1 <= len(v) <= 128 or not (v.isascii() and v.isprintable()):
        raise Invalid.at(loc, "expected 1–128 printable ASCII characters")
    return v


def parse_labels(spec: SampleSpec, items: list[Any]) -> tuple[list[str], np.ndarray, list[Any]]:
    """Check a labels body's items ``{"id", "y"}`` (errors at ``["body", "labels", i, …]``):
    ``(ids, packed Y, each y as stored)``."""
    ids: list[str] = []
    ys: list[Any] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise Invalid.at([*LABELS, i], 'expected an object {"id": ..., "y": ...}')
        for k in item:
            if k not in ("id", "y"):
                raise Invalid.at([*LABELS, i, k], "unexpected field")
        if "id" not in item:
            raise Invalid.at([*LABELS, i, "id"], "field required")
        if "y" not in item:
            raise Invalid.at([*LABELS, i, "y"], "field required")
        ids.append(check_id(item["id"], [*LABELS, i, "id"]))
        ys.append(item["y"])
    Y = pack_labels(spec, ys, LABELS)
    return ids, Y, [Y[k].tolist() for k in range(len(ys))]


def _read(text: bytes, what: str) -> Any:
    try:
        return loads(text)
    except (ValueError, RecursionError) as e:
        raise BadRequest(f"{what}: {e}") from None


def label_items(ctype: str, body: bytes) -> list[Any]:
    """The label objects of a JSON body ``{"labels": [...]}`` or of NDJSON lines (read
    strictly: malformed JSON or a duplicate key is 400)."""
    if ctype in NDJSON_TYPES:
        items = [
            _read(line, f"malformed NDJSON line {n}") for n, line in enumerate(body.split(b"\n"), 1) if line.strip()
        ]
        if not items:
            raise BadRequest("empty body: send one label object per line")
        return items
    doc = _read(body, "malformed JSON body")
    if not isinstance(doc, dict):
        raise Invalid.at(["body"], 'expected an object {"labels": [...]}')
    for k in doc:
        if k != "labels":
            raise Invalid.at(["body", k], "unexpected field")
    given = doc.get("labels")
    if not isinstance(given, list) or not given:
        raise Invalid.at(["body", "labels"], "expected a non-empty list of labels")
    return given


def labels_digest(ids: Sequence[str], stored: Sequence[Any]) -> str:
    """What an Idempotency-Key remembers of a labels request: its ids and packed labels."""
    return hashlib.sha256(orjson.dumps([list(ids), list(stored)])).hexdigest()


class FeedbackService:
    def __init__(self, db: Database, settings: Settings, metrics: Metrics) -> None:
        self.db = db
        self.settings = settings
        self.metrics = metrics

    # ------------------------------------------------------------------ recording
    def record(
        self, m: Model, version: int, X: np.ndarray, outputs: np.ndarray, ids: list[str] | None
    ) -> tuple[int, np.ndarray, list[str]]:
        """Store a recorded predict; ``(version, outputs, ids)`` to answer — those of the
        first answer when this repeats a recorded request (see the module doc)."""
        pids = ids if ids is not None else prediction_ids(len(X))
        # the statements are the group commit's (SampleRepository.add_records), run on the
        # driver's cursor: a duplicate id is the driver's IntegrityError
        dbapi = self.db.engine.dialect.dbapi
        assert dbapi is not None
        duplicate = (sa.exc.IntegrityError, dbapi.IntegrityError)
        for attempt in range(2):
            try:
                with self.db.write() as s:
                    if ids is not None:
                        replay = self._replay(PredictionRepository(s), m, X, ids)
                        if replay is not None:
                            return replay
                    SampleRepository(s).add_records([(m.id, version, X, outputs, pids)])
                    return version, outputs, pids
            except duplicate:
                if attempt or ids is None:  # a concurrent request recorded one of the ids
                    raise
        raise AssertionError("unreachable")

    def _replay(
        self, repo: PredictionRepository, m: Model, X: np.ndarray, ids: list[str]
    ) -> tuple[int, np.ndarray, list[str]] | None:
        found = repo.find(m.id, ids)
        if not found:
            return None
        batches = repo.batches(b for b, _, _, _ in found.values())
        versions: set[int] = set()
        outs = []
        for i, pid in enumerate(ids):
            hit = found.get(pid)
            if hit is None:
                first = next(k for k, p in enumerate(ids) if p in found)
                raise Conflict(
                    f"id {ids[first]!r} was recorded by another predict request",
                    errors=[{"loc": ["body", "ids", first], "msg": "already recorded with other inputs"}],
                )
            b = batches[hit[0]]
            xs = np.frombuffer(b.x, np.float32).reshape(b.count, m.input_dim)
            if not np.array_equal(xs[hit[1]], X[i]):
                raise Conflict(
                    f"id {pid!r} was recorded with other inputs",
                    errors=[{"loc": ["body", "ids", i], "msg": "already recorded with other inputs"}],
                )
            versions.add(b.version)
            outs.append(np.frombuffer(b.outputs, np.float32).reshape(b.count, m.output_dim)[hit[1]])
        if len(versions) != 1:
            raise Conflict(
                "these ids were recorded by several predict requests",
                errors=[{"loc": ["body", "ids", 0], "msg": "already recorded"}],
            )
        return versions.pop(), np.stack(outs), ids

    # ------------------------------------------------------------------ labels
    def label_body(self, name: str, ctype: str, body: bytes, key: str | None) -> dict[str, Any]:
        """:meth:`label` of a request body (JSON or NDJSON, see :func:`label_items`)."""
        return self.label(name, label_items(ctype, body), key)

    def label(self, name: str, items: list[Any], key: str | None) -> dict[str, Any]:
        """``POST /labels``: the 202 answer (see the module doc)."""
        spec = SampleSpec.of(read_model(self.db, name))
        ids, Y, stored = parse_labels(spec, items)
        digest = labels_digest(ids, stored) if key is not None else ""
        with self.db.write() as s:
            m = get_model(s, name)
            samples, keys = SampleRepository(s), IdempotencyRepository(s)
            locked = samples.lock_models([m.id]).get(m.id)
            if locked is None or locked[:3] != (spec.task, spec.input_dim, spec.output_dim):
                raise Conflict(f"model {name!r} was re-created with another shape during the request; retry it")
            if key is not None:
                prior = keys.get(m.id, key)
                fresh_after = utcnow() - timedelta(seconds=self.settings.idempotency_ttl_seconds)
                if prior is not None and prior[2] > fresh_after:
                    if prior[0] != digest:
                        raise Conflict(
                            f"Idempotency-Key {key!r} was already used with a different request body",
                            errors=[{"loc": ["header", "Idempotency-Key"], "msg": "key reused with a different body"}],
                        )
                    return {**prior[1], "duplicate": True}
                if prior is not None:
                    keys.delete(m.id, key)
            answer = self._append(s, m, locked[3], ids, Y, stored)
            if key is not None:
                keys.add_many([{"model_id": m.id, "key": key, "request_hash": digest, "response": answer}])
        if answer["accepted"]:
            self.metrics.accept_samples(name, answer["accepted"])
        return {**answer, "duplicate": False}

    def _append(self, s: Any, m: Model, first: int, ids: list[str], Y: np.ndarray, stored: list[Any]) -> dict[str, Any]:
        repo = PredictionRepository(s)
        found = repo.find(m.id, ids)
        new: list[int] = []  # indexes of the labels that become samples
        seen: dict[str, Any] = {}
        duplicates = 0
        for i, pid in enumerate(ids):
            hit = found.get(pid)
            if hit is None:
                raise Invalid.at([*LABELS, i, "id"], f"no recorded prediction {pid!r} (unknown or expired)")
            before = seen.get(pid, hit[2])
            if before is None:
                seen[pid] = stored[i]
                new.append(i)
            elif before == stored[i]:
                duplicates += 1
            else:
                raise Conflict(
                    f"prediction {pid!r} is already labelled with another y",
                    errors=[{"loc": [*LABELS, i, "y"], "msg": "already labelled with another value"}],
                )
        if not new:
            return {"accepted": 0, "duplicates": duplicates, "first_offset": None, "last_offset": None}
        batches = repo.batches(found[ids[i]][0] for i in new)
        n = len(new)
        X = np.empty((n, m.input_dim), np.float32)
        out = np.empty((n, m.output_dim), np.float32)
        served = np.empty(n, np.int64)
        for k, i in enumerate(new):
            b_id, pos, _, _ = found[ids[i]]
            b = batches[b_id]
            X[k] = np.frombuffer(b.x, np.float32).reshape(b.count, m.input_dim)[pos]
            out[k] = np.frombuffer(b.outputs, np.float32).reshape(b.count, m.output_dim)[pos]
            served[k] = b.version
        Yn = Y[new]
        samples = SampleRepository(s)
        samples.add_rows(pack_rows(m.id, first, X, Yn, max_rows=MAX_ROW_SAMPLES))
        samples.set_next_offset(m.id, first + n)
        repo.set_labels(m.id, [(ids[i], stored[i], first + k) for k, i in enumerate(new)])
        loss = per_sample_loss(m.task, out, Yn)
        hits = class_labels(m.task, out)
        right = (hits == Yn.reshape(-1)) if hits is not None else np.zeros(n, bool)
        metrics = ServedRepository(s)
        for v in np.unique(served):
            sel = served == v
            metrics.add_labels(m.id, int(v), int(sel.sum()), float(loss[sel].sum()), int(right[sel].sum()))
        return {"accepted": n, "duplicates": duplicates, "first_offset": first, "last_offset": first + n - 1}

    # ------------------------------------------------------------------ expiry
    def purge(self) -> int:
        """Remove recorded predictions older than the TTL (a bounded batch per transaction);
        returns how many recorded requests went."""
        before = utcnow() - timedelta(seconds=self.settings.prediction_ttl_seconds)
        gone = 0
        while True:
            with self.db.write() as s:
                repo = PredictionRepository(s)
                ids = repo.expired(before, PURGE_BATCH)
                repo.delete(ids)
            gone += len(ids)
            if len(ids) < PURGE_BATCH:
                return gone

    # ------------------------------------------------------------------ shadows
    def put_shadow(self, name: str, version: int, against: str | None) -> tuple[ShadowOut, bool]:
        """Start (or restart) version ``version`` scoring every sample appended from now on,
        beside ``against`` (an alias or ``latest``; default ``production`` if set, else
        ``latest``) resolved now; the learner is told through its mailbox. (out, created)"""
        with self.db.write() as s:
            m = get_model(s, name, for_update=True)
            if VersionRepository(s).get(m.id, version) is None:
                raise NotFound(f"model {name!r} has no version {version}")
            against_v = self._resolve(s, m, against)
            row, created = ShadowRepository(s).put(m.id, version, against_v, m.next_offset)
            self._tell_learner(s, m.id)
            return shadow_out(m, row), created

    def shadows(self, name: str) -> list[ShadowOut]:
        with self.db.read() as s:
            m = get_model(s, name)
            return [shadow_out(m, r) for r in ShadowRepository(s).of(m.id)]

    def delete_shadow(self, name: str, version: int) -> None:
        with self.db.write() as s:
            m = get_model(s, name, for_update=True)
            repo = ShadowRepository(s)
            row = repo.get(m.id, version)
            if row is None:
                raise NotFound(f"model {name!r} has no shadow of version {version}")
            repo.delete(row)
            self._tell_learner(s, m.id)

    @staticmethod
    def _resolve(s: Any, m: Model, against: str | None) -> int:
        if against is None:
            a = AliasRepository(s).get(m.id, "production")
            return a.version if a is not None else VersionRepository(s).latest_number(m.id)
        if against == "latest":
            return VersionRepository(s).latest_number(m.id)
        a = AliasRepository(s).get(m.id, against)
        if a is None:
            raise Invalid.at(["body", "against"], f"model {m.name!r} has no alias {against!r}")
        return a.version

    @staticmethod
    def _tell_learner(s: Any, model_id: int) -> None:
        row = LearnerRepository(s).get(model_id, for_update=True)
        if row is not None:
            row.mailbox = {**(row.mailbox or {}), "shadows": uuid.uuid4().hex}


def shadow_out(m: Model, r: Shadow) -> ShadowOut:
    """A shadow's answer: the means of what the learner summed over the same samples."""
    n = r.n
    classify = m.task != "regression"
    return ShadowOut(
        model=m.name,
        version=r.version,
        against_version=r.against_version,
        since_offset=r.since_offset,
        through=r.through if r.through >= r.since_offset else None,
        n=n,
        loss=r.loss_sum / n if n else None,
        accuracy=r.correct / n if n and classify else None,
        against_loss=r.against_loss_sum / n if n else None,
        against_accuracy=r.against_correct / n if n and classify else None,
        created_at=r.created_at,
    )
