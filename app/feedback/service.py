"""Recorded predictions and delayed labels (see the package doc).

**Recording.** A recorded ``/predict`` is stored in one transaction: one
``prediction_batches`` row (inputs and served outputs packed) and the served version's
``predictions`` count — before the answer, like every write. Without ids of its own it
rides the sample log's group commit and gets ids Steward makes, which name the row
(:mod:`app.online.records`: no row per id). With the client's ids
(:meth:`FeedbackService.record`), one ``predictions`` row per id: they are its
idempotency — the same ids with the same inputs answer the first answer again (same
version, same outputs, from the stored rows); an id already recorded with other inputs,
or in another request, is 409 at ``["body", "ids", i]``.

**Labelling.** :meth:`FeedbackService.label` checks every label first (the ids' form and
the ``y`` of the model's task, as ``/update`` checks a sample's) and queues them on the
sample log's group commit, whose transaction holds the model row's lock (the lock every
append takes) and runs :meth:`FeedbackService._work`: an unknown or expired id is 422 at
``["body", "labels", i, "id"]``; a label repeated with the same ``y`` (in the request or
since an earlier request) is a duplicate and adds nothing; another ``y`` for a labelled id
is 409 at ``["body", "labels", i, "y"]``. The new labels become samples at the log's next
offsets — the recorded input with its ``y`` — their predictions are marked labelled with
their offsets (``prediction_labels``), and each scores the output that was served: the
per-sample loss of :func:`app.engine.nn.network.per_sample_loss` and the label of
:func:`~app.engine.nn.network.labels`, summed per serving version into its ``served``
metrics. All or nothing, durable before the 202; an ``Idempotency-Key`` works as on
``/update``.

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

import asyncio
import functools
import hashlib
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import numpy as np
import orjson
import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool

from app.core.db import Database
from app.core.errors import BadRequest, Conflict, Invalid, NotFound
from app.core.jsonbody import loads
from app.core.settings import Settings
from app.core.tables import Model, Shadow, utcnow
from app.engine.nn.network import labels as class_labels
from app.engine.nn.network import per_sample_loss
from app.feedback.repository import Batch, PredictionRepository
from app.feedback.schemas import ShadowOut
from app.online.ingest import count_quotes
from app.online.repository import LearnerRepository, SampleRepository, ShadowRepository
from app.online.samples import SampleSpec, pack_labels
from app.online.service import OnlineService
from app.registry.models import get_model
from app.registry.repository import AliasRepository, VersionRepository

LABELS: list[str | int] = ["body", "labels"]
#: Labels up to this many are checked on the event loop; more in the thread pool.
INLINE_LABELS = 2048
#: Expired recorded requests removed per purge transaction.
PURGE_BATCH = 500


def check_id(v: Any, loc: list[str | int]) -> str:
    """A prediction id: a string of 1–128 printable ASCII characters."""
    if not isinstance(v, str):
        raise Invalid.at(loc, "expected a string id")
    if not 1 <= len(v) <= 128 or not (v.isascii() and v.isprintable()):
        raise Invalid.at(loc, "expected 1–128 printable ASCII characters")
    return v


def parse_labels(spec: SampleSpec, items: list[Any]) -> tuple[list[str], np.ndarray]:
    """Check a labels body's items ``{"id", "y"}`` (errors at ``["body", "labels", i, …]``):
    ``(ids, packed Y)``."""
    ids: list[str] = []
    ys: list[Any] = []
    for i, item in enumerate(items):
        if type(item) is dict and len(item) == 2 and type(pid := item.get("id")) is str and "y" in item:
            # the common form, checked in line (the loop below says what is wrong otherwise)
            if not (0 < len(pid) <= 128 and pid.isascii() and pid.isprintable()):
                check_id(pid, [*LABELS, i, "id"])
            ids.append(pid)
            ys.append(item["y"])
            continue
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
    return ids, pack_labels(spec, ys, LABELS)


def _read(text: bytes, what: str) -> Any:
    try:
        return loads(text)
    except (ValueError, RecursionError) as e:
        raise BadRequest(f"{what}: {e}") from None


def _fast_items(body: bytes) -> list[Any] | None:
    """The labels of a JSON body read by orjson, when that reading is the strict one's:
    the body is ``{"labels": [...]}`` of objects with the two keys ``id`` and ``y``, and it
    holds exactly the double quotes of those keys, the ids and ``"labels"`` (6 per label,
    plus 2) — so no key is repeated (orjson would keep the last silently), no string hides
    an escaped quote and ``y`` is no string. Otherwise None: the strict reading decides.
    (orjson refuses what the strict reading reads differently: NaN, integers beyond 64
    bits, deep nesting.)"""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    items = doc.get("labels") if type(doc) is dict and len(doc) == 1 else None
    if type(items) is not list or not items:
        return None
    for item in items:
        if type(item) is not dict or len(item) != 2 or type(item.get("id")) is not str or "y" not in item:
            return None  # (each label then holds at least its 6 quotes: the count is exact)
    if count_quotes(body) != 2 + 6 * len(items):
        return None
    return items


def json_items(body: bytes) -> list[Any]:
    """The label objects of a JSON body ``{"labels": [...]}``: :func:`_fast_items` when it
    may, else the strict reading (malformed JSON or a repeated key is 400)."""
    fast = _fast_items(body)
    if fast is not None:
        return fast
    return strict_items(body)


def strict_items(body: bytes) -> list[Any]:
    """:func:`json_items` by the strict reading alone."""
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


class LabelLines:
    """The label objects of an NDJSON body, read line by line as its chunks arrive (the
    body is never held whole). A line is read by orjson when it is a plain label object
    whose only double quotes are those of ``"id"``, ``"y"`` and the id (so no key repeats),
    else strictly (:func:`app.core.jsonbody.loads`); blank lines are skipped."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._rest = b""
        self._line = 0

    def feed(self, chunk: bytes) -> None:
        data = self._rest + chunk if self._rest else chunk
        lines = data.split(b"\n")
        self._rest = lines.pop()
        for line in lines:
            self._one(line)

    def _one(self, line: bytes) -> None:
        self._line += 1
        if not line.strip():
            return
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError:
            item = None
        if not (
            type(item) is dict
            and len(item) == 2
            and type(item.get("id")) is str
            and "y" in item
            and count_quotes(line) == 6
        ):
            item = _read(line, f"malformed NDJSON line {self._line}")
        self.items.append(item)

    def finish(self) -> list[Any]:
        if self._rest:
            self._one(self._rest)
            self._rest = b""
        if not self.items:
            raise BadRequest("empty body: send one label object per line")
        return self.items


def labels_digest(ids: Sequence[str], Y: np.ndarray) -> str:
    """What an Idempotency-Key remembers of a labels request: its ids and packed labels."""
    h = hashlib.sha256(orjson.dumps(list(ids)))
    h.update(np.ascontiguousarray(Y).tobytes())
    return h.hexdigest()


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class FeedbackService:
    def __init__(self, db: Database, settings: Settings, online: OnlineService) -> None:
        self.db = db
        self.settings = settings
        #: the sample log's group commit, which carries labels
        self.online = online

    # ------------------------------------------------------------------ recording
    def record(
        self, m: Model, version: int, X: np.ndarray, outputs: np.ndarray, ids: list[str] | None
    ) -> tuple[int, np.ndarray, list[str]]:
        """Store a recorded predict; ``(version, outputs, ids)`` to answer — those of the
        first answer when this repeats a recorded request (see the module doc)."""
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
                    (made,) = SampleRepository(s).add_records([(m.id, version, X, outputs, ids)])
                    return version, outputs, made
            except duplicate:
                if attempt or ids is None:  # a concurrent request recorded one of the ids
                    raise
        raise AssertionError("unreachable")

    def _replay(
        self, repo: PredictionRepository, m: Model, X: np.ndarray, ids: list[str]
    ) -> tuple[int, np.ndarray, list[str]] | None:
        where, batches = repo.locate(m.id, ids)
        if not where:
            return None
        versions: set[int] = set()
        outs = []
        for i, pid in enumerate(ids):
            hit = where.get(pid)
            if hit is None:
                first = next(k for k, p in enumerate(ids) if p in where)
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
    async def label(self, name: str, items: list[Any], key: str | None) -> dict[str, Any]:
        """``POST /labels``: the 202 answer (see the module doc). The labels are checked
        here, then carried by the sample log's group commit (one fsync for concurrent
        requests, ``/update``'s among them), which runs :meth:`_work` in its transaction."""
        online = self.online
        t = online.cached_target(name)
        if t is None:
            t = await run_in_threadpool(online.target, name)
        if len(items) > INLINE_LABELS:
            ids, Y = await run_in_threadpool(parse_labels, t.spec, items)
        else:
            ids, Y = parse_labels(t.spec, items)
        del items
        digest = labels_digest(ids, Y) if key is not None else ""
        work = functools.partial(self._work, t.model_id, t.spec, ids, Y)
        append = online.submit_work(t, len(ids), work, key, digest, loop=asyncio.get_running_loop())
        try:
            return await online.wait_committed(append)
        finally:
            if not append.done:
                online.abandon(append)

    @staticmethod
    def _work(
        model_id: int, spec: SampleSpec, ids: list[str], Y: np.ndarray, conn: sa.Connection, first: int
    ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        """The labels' part of the group commit, under the model row's lock: check every id
        against what is recorded and labelled (unknown 422, another ``y`` 409, the same ``y``
        a duplicate), mark the new ones labelled as the samples ``first, first + 1, …``,
        score the outputs they were served; returns the answer and those samples (the
        committer appends them to the log)."""
        repo = PredictionRepository(conn)
        where, batches = repo.locate(model_id, ids)
        given = Y.tolist()  # each label as Python compares it
        so_far: dict[int, tuple[np.ndarray, list[Any]]] = {}  # a batch's offsets and labels

        def labelled(b: Batch) -> tuple[np.ndarray, list[Any]]:
            got = so_far.get(b.id)
            if got is None:
                if b.offsets is None or b.y is None:
                    got = (np.full(b.count, -1, np.int64), [])
                else:
                    y = np.frombuffer(b.y, spec.y_dtype).reshape(b.count, *spec.y_shape)
                    got = (np.frombuffer(b.offsets, np.int64), y.tolist())
                so_far[b.id] = got
            return got

        new: list[int] = []  # indexes of the labels that become samples
        seen: dict[tuple[int, int], Any] = {}  # (batch, position) → the label it got in this request
        duplicates = 0
        for i, pid in enumerate(ids):
            at = where.get(pid)
            if at is None:
                raise Invalid.at([*LABELS, i, "id"], f"no recorded prediction {pid!r} (unknown or expired)")
            before = seen.get(at)
            if before is None:
                offsets, ys = labelled(batches[at[0]])
                if offsets[at[1]] >= 0:
                    before = ys[at[1]]
            if before is None:
                seen[at] = given[i]
                new.append(i)
            elif before == given[i]:
                duplicates += 1
            else:
                raise Conflict(
                    f"prediction {pid!r} is already labelled with another y",
                    errors=[{"loc": [*LABELS, i, "y"], "msg": "already labelled with another value"}],
                )
        n = len(new)
        answer = {
            "accepted": n,
            "duplicates": duplicates,
            "first_offset": first if n else None,
            "last_offset": first + n - 1 if n else None,
            "duplicate": False,
        }
        if not n:
            return answer, np.empty((0, spec.input_dim), np.float32), Y[:0]
        # the recorded inputs and served outputs: the touched batches side by side, one gather
        start: dict[int, int] = {}
        total = 0
        for i in new:
            b_id = where[ids[i]][0]
            if b_id not in start:
                start[b_id] = total
                total += batches[b_id].count
        order = [batches[b] for b in start]
        rows = np.fromiter((start[where[ids[i]][0]] + where[ids[i]][1] for i in new), np.int64, n)
        X = _stack([np.frombuffer(b.x, np.float32) for b in order]).reshape(-1, spec.input_dim)[rows]
        out = _stack([np.frombuffer(b.outputs, np.float32) for b in order]).reshape(-1, spec.output_dim)[rows]
        served = np.repeat(np.array([b.version for b in order]), [b.count for b in order])[rows]
        Yn = Y[new] if n < len(Y) else Y
        # each touched batch's labels as they are now
        changed: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for k, i in enumerate(new):
            b_id, pos = where[ids[i]]
            state = changed.get(b_id)
            if state is None:
                b = batches[b_id]
                if b.y is None or b.offsets is None:
                    state = (np.zeros((b.count, *spec.y_shape), spec.y_dtype), np.full(b.count, -1, np.int64))
                else:
                    y = np.frombuffer(b.y, spec.y_dtype).reshape(b.count, *spec.y_shape)
                    state = (y.copy(), np.frombuffer(b.offsets, np.int64).copy())
                changed[b_id] = state
            state[0][pos] = Yn[k]
            state[1][pos] = first + k
        repo.put_labels([(b, y, o) for b, (y, o) in changed.items()])
        loss = per_sample_loss(spec.task, out, Yn)
        hits = class_labels(spec.task, out)
        right = (hits == Yn.reshape(-1)) if hits is not None else np.zeros(n, bool)
        versions = np.unique(served)
        sums = [(v, served == v) for v in versions.tolist()]
        repo.add_served(
            model_id, [(v, int(sel.sum()), float(loss[sel].sum()), int(right[sel].sum())) for v, sel in sums]
        )
        return answer, X, Yn

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
