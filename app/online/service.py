"""Online learning, request side: append samples to the log, wait for the learner,
ask it for a checkpoint, resume a paused model.

The learner itself (:mod:`app.online.learner`) runs in a background thread of
whichever process holds the model's lease; this module talks to it only
through the database, so it works the same whether the learner runs here, in
another API process or in a ``steward worker``.

**The sample log.** ``models.next_offset`` is the number of samples ever
accepted. An append locks the model row (``SELECT … FOR UPDATE``; on SQLite the
``BEGIN IMMEDIATE`` write lock), takes its offsets from ``next_offset`` (so
concurrent appends, from this or any other process, get contiguous, disjoint
ranges in commit order), inserts the packed arrays as ``sample_batches`` rows
(the requests a group commit carries for one model, whose offsets are contiguous, in
one row — one B-tree insert, not one per request; more than :data:`MAX_ROW_SAMPLES`
samples are split into several rows in the same transaction), records the
``Idempotency-Key``, advances ``next_offset`` and commits — all before the 202.

**Group commit.** One committer thread per process commits the queued appends:
those that arrive while it is committing wait and are then committed together, in
arrival order, in one transaction: one fsync for many requests, each with its own
answer or error. A request queues its append on the event loop and awaits a future
the committer resolves — no thread of its own, so a one-sample request costs no
thread hop. Before it commits, the committer waits (at most
``STEWARD_INGEST_GROUP_WAIT_MS`` in all) for the company it can expect:

* the appends *announced* before it started: a request announces its append once its
  body has arrived (:meth:`OnlineService.announce`), while it parses, so concurrent
  clients share fsyncs even though each body takes a while to parse;
* as many appends as its last commit carried: clients that got their answers together
  send their next requests together. Without this wait, 8 clients answered by one
  commit are carried by the next two in turns of 1 and 7 (the first to be parsed is
  committed alone while the rest are being parsed) — twice the commits, measured
  ~25 % fewer requests/s on one core (``bench/bench_ingest.py``). It is PostgreSQL's
  ``commit_delay``, asked only when the last commit showed that company comes.

With one client at a time nothing is announced meanwhile and each commit carries one
append: there is no wait, and each request is one transaction.

**Idempotency.** A key is remembered per model with the SHA-256 of the packed
samples (so a retry that re-serialises the same samples differently, or sends
them as NDJSON instead of JSON, is still the same request) and the first answer.
The key is checked after the model row is locked, so two concurrent requests
with one key cannot both append. Keys expire after
``STEWARD_IDEMPOTENCY_TTL_SECONDS``; expired keys count as unknown and are
purged at most once a minute.

**Messages to the learner** live in its ``learners.mailbox`` JSON, which both
sides change only under the row lock (read-modify-write in one transaction):

``checkpoint_requests``  ``{request id: offset}``: ``/checkpoint`` calls waiting
                         for a version that includes ``offset``
``checkpoint_replies``   ``{request id: {"version": n, "created": bool}}``: answers
``resume``               ``{"offset": p, "from_version": n | null}``: ``/resume`` of a
                         model paused at ``p``; the learner skips ``p`` and
                         commits a checkpoint, then clears it

The learner keeps its own keys there too (``prequential``, ``base``, …; see
:mod:`app.online.learner`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool

from app.core.cache import Caches
from app.core.db import Database, model_subject
from app.core.errors import Conflict, Invalid, NotFound, StewardError, Unavailable
from app.core.metrics import Metrics
from app.core.outbox import emit
from app.core.settings import Settings
from app.core.tables import Learner, Model, Version, utcnow
from app.online.log import pack_rows
from app.online.repository import (
    Bucket,
    IdempotencyRepository,
    LearnerRepository,
    MetricPointRepository,
    SampleRepository,
)
from app.online.samples import SampleSpec
from app.online.schemas import (
    HISTORY_POINTS_DEFAULT,
    HISTORY_POINTS_MAX,
    MetricsHistory,
    MetricsPoint,
    PointPrequential,
    PointServed,
)
from app.registry.models import ModelService, get_model
from app.registry.repository import ModelRepository, VersionRepository
from app.registry.schemas import ModelOut, VersionOut
from app.registry.versions import version_out

#: Reads and validates a request body for a model's sample shape: ``read(spec, body_read)``
#: calls ``body_read()`` once the whole body has arrived, and returns (X, Y).
SampleReader = Callable[["SampleSpec", Callable[[], None]], Awaitable[tuple[np.ndarray, np.ndarray]]]
#: labels' part of a group commit (see ``_Append.work``): (connection, first offset) →
#: (answer, X, Y)
LabelWork = Callable[[sa.Connection, int], tuple[dict[str, Any], np.ndarray, np.ndarray]]

#: Largest number of samples in one ``sample_batches`` row.
MAX_ROW_SAMPLES = 65_536
PURGE_EVERY_SECONDS = 60.0
#: Most appends / samples committed together in one transaction (group commit).
GROUP_MAX_APPENDS = 256
GROUP_MAX_SAMPLES = 1 << 20
#: How long a model's shape is cached by ingestion (a delete in this process forgets it at once).
TARGET_TTL_SECONDS = 2.0


@dataclass(frozen=True)
class Target:
    """A model as ingestion sees it: its id and sample shape."""

    model_id: int
    name: str
    spec: SampleSpec


@dataclass(frozen=True)
class LearnerProgress:
    """The learner's published progress for one model."""

    applied_through: int
    accepted: int
    status: str
    status_reason: str | None
    paused_offset: int | None
    prequential: dict[str, Any]
    owner: str | None
    lease_alive: bool


class SpecChanged(Conflict):
    """The model was deleted and re-created with another shape while the request was parsed."""


@dataclass(eq=False)  # identity: appends hold arrays
class _Append:
    """One append waiting for a group commit."""

    t: Target
    X: np.ndarray
    Y: np.ndarray
    key: str | None
    digest: str
    done: bool = False
    answer: dict[str, Any] | None = None
    error: BaseException | None = None
    #: a recorded predict instead of samples: its serving version; X holds its inputs and
    #: Y its outputs, and the answer ``{"recorded": n, "ids": [...]}`` the ids Steward made
    record: int | None = None
    #: labels instead of samples (app.feedback): called in the commit's transaction with
    #: the model's next offset, it checks and stores what it must and returns its answer and
    #: the samples it became (X, Y); a StewardError it raises is this append's answer alone.
    #: X holds a placeholder of its length until then.
    work: LabelWork | None = None
    #: what the waiter waits on: a thread an event, a request on the event loop a future
    finished: threading.Event | None = None
    future: asyncio.Future[None] | None = None


def _finish(batch: list[_Append]) -> None:
    """Wake whoever waits for the appends of a commit: threads at once, requests with one
    call into each event loop for the whole batch (not one wake-up per append)."""
    futures: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for append in batch:
        if append.finished is not None:
            append.finished.set()
        fut = append.future
        if fut is not None:
            futures.setdefault(fut.get_loop(), []).append(fut)
    for loop, futs in futures.items():
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            loop.call_soon_threadsafe(_resolve, futs)


def _resolve(futs: list[asyncio.Future[None]]) -> None:
    for fut in futs:
        if not fut.done():  # a request that went away cancelled it
            fut.set_result(None)


#: One append's outcome in a commit: (append, its answer, its error).
_Outcome = tuple[_Append, dict[str, Any] | None, BaseException | None]


def _key_conflict(key: str) -> Conflict:
    return Conflict(
        f"Idempotency-Key {key!r} was already used with a different request body",
        errors=[{"loc": ["header", "Idempotency-Key"], "msg": "key reused with a different body"}],
    )


def request_hash(X: np.ndarray, Y: np.ndarray) -> str:
    """SHA-256 of the packed samples (shape, dtype and bytes)."""
    h = hashlib.sha256()
    h.update(f"{X.shape}{X.dtype}|{Y.shape}{Y.dtype}|".encode())
    h.update(np.ascontiguousarray(X).data)
    h.update(np.ascontiguousarray(Y).data)
    return h.hexdigest()


class OnlineService:
    """Request-side online learning; one per app (``AppContext.online``)."""

    def __init__(
        self, db: Database, settings: Settings, metrics: Metrics, models: ModelService, caches: Caches | None = None
    ) -> None:
        self.db = db
        self._caches = caches
        self.settings = settings
        self.metrics = metrics
        self.models = models
        self._targets: dict[str, tuple[Target, float]] = {}
        self._lock = threading.Lock()
        self._queue: list[_Append] = []
        self._queue_lock = threading.Lock()
        self._joined = threading.Condition(self._queue_lock)  # an announced append joined or withdrew
        self._committer: threading.Thread | None = None
        self._conn: sa.Connection | None = None  # the committer's
        self._stopping = False
        self._announced: dict[int, None] = {}  # announcements still to join, oldest first
        self._seq = 0
        self._group_wait = settings.ingest_group_wait_ms / 1000.0
        self._last_purge = 0.0
        self._last_batch = 0  # appends the last commit carried
        self._wake_at = 1  # the queue length at which a submit wakes the committer

    # ------------------------------------------------------------------ append
    def target(self, name: str) -> Target:
        """The model's id and sample shape (cached; an append re-checks the shape)."""
        hit = self._targets.get(name)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        with self.db.read() as s:
            m = get_model(s, name)
            t = Target(m.id, m.name, SampleSpec.of(m))
        with self._lock:
            self._targets[name] = (t, now + TARGET_TTL_SECONDS)
        return t

    def cached_target(self, name: str) -> Target | None:
        """The cached target if fresh (lets async callers skip a thread hop)."""
        hit = self._targets.get(name)
        return hit[0] if hit is not None and hit[1] > time.monotonic() else None

    def forget(self, name: str) -> None:
        with self._lock:
            self._targets.pop(name, None)

    def announce(self) -> int:
        """Say an append is coming (the request has its body and is parsing it); returns a
        token for :meth:`submit`, or for :meth:`withdraw` if the request ends without appending."""
        with self._queue_lock:
            self._seq += 1
            self._announced[self._seq] = None
            return self._seq

    def withdraw(self, token: int | None) -> None:
        """The announced append will not come (idempotent; a no-op once it joined)."""
        if token is not None and token in self._announced:
            with self._joined:
                self._settle(token)

    def _settle(self, token: int) -> None:  # holds _queue_lock
        if self._announced.pop(token, 0) is None:  # it was still open
            self._joined.notify_all()

    def _wait_for_company(self) -> None:
        """Holding ``_joined``: wait (at most the group wait) until every append announced
        so far has joined the queue or withdrawn, and the queue holds as many appends as
        the last commit carried (see the module doc), so one transaction commits them all."""
        if not self._group_wait:
            return
        upto = self._seq
        want = min(self._last_batch, GROUP_MAX_APPENDS)
        deadline = time.monotonic() + self._group_wait
        while not self._stopping:
            pending = bool(self._announced) and next(iter(self._announced)) <= upto
            if not pending and len(self._queue) >= want:
                return
            if len(self._queue) >= GROUP_MAX_APPENDS or sum(len(a.X) for a in self._queue) >= GROUP_MAX_SAMPLES:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            # woken by each join while announced appends are pending, else by the wanted one
            self._wake_at = 1 if pending else want
            self._joined.wait(left)

    def append(
        self, t: Target, X: np.ndarray, Y: np.ndarray, key: str | None = None, announced: int | None = None
    ) -> dict[str, Any]:
        """Append validated samples durably; the 202 answer (or the first answer of ``key``).

        Raises :class:`NotFound` when the model is gone and :class:`Conflict` when
        ``key`` was used with other samples. Blocks until committed (from a thread; on the
        event loop use :meth:`submit` and :meth:`wait_committed`). Concurrent appends are
        committed together (see :meth:`_commit`).
        """
        return self.committed(self.submit(t, X, Y, key, announced))

    def submit(
        self,
        t: Target,
        X: np.ndarray,
        Y: np.ndarray,
        key: str | None = None,
        announced: int | None = None,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> _Append:
        """Queue an append for the committer without blocking (safe on the event loop; with
        ``loop``, :meth:`wait_committed` awaits it there). Then :meth:`committed` or
        :meth:`wait_committed`, or :meth:`abandon` if the request ends first."""
        append = _Append(t, X, Y, key, request_hash(X, Y) if key is not None else "")
        if loop is not None:
            append.future = loop.create_future()
        else:
            append.finished = threading.Event()
        return self._enqueue(append, announced)

    def submit_record(
        self,
        t: Target,
        version: int,
        X: np.ndarray,
        outputs: np.ndarray,
        *,
        loop: asyncio.AbstractEventLoop,
    ) -> _Append:
        """Queue a recorded predict for the group commit, as :meth:`submit` queues samples;
        await :meth:`wait_committed`: the answer's ``ids`` are the ones Steward made (which
        never collide, :mod:`app.online.records`)."""
        append = _Append(t, X, outputs, None, "", record=version)
        append.future = loop.create_future()
        return self._enqueue(append, None)

    def submit_work(
        self, t: Target, n: int, work: LabelWork, key: str | None, digest: str, *, loop: asyncio.AbstractEventLoop
    ) -> _Append:
        """Queue ``n`` labels for the group commit (``work`` turns them into samples inside
        it, see :class:`_Append`); ``key`` / ``digest``: an Idempotency-Key and what it
        remembers of the request. Await :meth:`wait_committed`."""
        append = _Append(t, np.empty((n, 0), np.float32), np.empty(0), key, digest, work=work)
        append.future = loop.create_future()
        return self._enqueue(append, None)

    def _enqueue(self, append: _Append, announced: int | None) -> _Append:
        """Put ``append`` in the committer's queue (settling its announcement), waking the
        committer when the queue reached what it waits for; the committer starts on first use."""
        with self._joined:
            if self._stopping:
                raise Unavailable("the service is shutting down")
            self._queue.append(append)
            if announced is not None:
                self._settle(announced)
            if len(self._queue) >= self._wake_at:
                self._joined.notify_all()
            if self._committer is None:
                self._committer = threading.Thread(target=self._commit_loop, name="steward-commit", daemon=True)
                self._committer.start()
        return append

    def abandon(self, append: _Append) -> None:
        """Drop a submitted append that the committer has not taken yet (its request is gone)."""
        with self._joined:
            if append in self._queue:
                self._queue.remove(append)
                append.error = RuntimeError("this append was abandoned before it was committed")
                _finish([append])

    def committed(self, append: _Append) -> dict[str, Any]:
        """Block until ``append`` (submitted without ``loop``) is committed; its answer, or
        its error raised."""
        assert append.finished is not None
        append.finished.wait()
        return self._outcome(append)

    async def wait_committed(self, append: _Append) -> dict[str, Any]:
        """:meth:`committed` on the event loop (``append`` submitted with ``loop``)."""
        assert append.future is not None
        await append.future
        return self._outcome(append)

    def _outcome(self, append: _Append) -> dict[str, Any]:
        t = append.t
        if append.error is not None:
            if isinstance(append.error, SpecChanged | NotFound):
                self.forget(t.name)
            raise append.error
        answer = append.answer
        assert answer is not None
        if append.record is None and not answer["duplicate"] and answer["accepted"]:
            self.metrics.accept_samples(t.name, answer["accepted"])
        return answer

    def _commit_loop(self) -> None:
        """The committer: commit what is queued (with the appends announced meanwhile),
        again and again; on :meth:`close`, drain the queue and stop."""
        while True:
            with self._joined:
                while not self._queue and not self._stopping:
                    self._joined.wait()
                if not self._queue:
                    return
                self._wait_for_company()
                self._wake_at = 1
                batch, self._queue = self._take(self._queue)
                self._last_batch = len(batch)
            try:
                self._commit(batch)
            except BaseException as e:  # never leave a request waiting
                for append in batch:
                    if not append.done:
                        append.error, append.done = e, True
            _finish(batch)
            self._maybe_purge()

    def close(self, timeout: float = 30.0) -> None:
        """Commit what is queued, then stop the committer."""
        with self._joined:
            self._stopping = True
            self._joined.notify_all()
        if self._committer is not None:
            self._committer.join(timeout)
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @staticmethod
    def _take(queue: list[_Append]) -> tuple[list[_Append], list[_Append]]:
        """The oldest appends up to :data:`GROUP_MAX_APPENDS` / :data:`GROUP_MAX_SAMPLES`."""
        n = total = 0
        for append in queue:
            if n and (n >= GROUP_MAX_APPENDS or total + len(append.X) > GROUP_MAX_SAMPLES):
                break
            n += 1
            total += len(append.X)
        return queue[:n], queue[n:]

    def _commit(self, batch: list[_Append]) -> None:
        """Group commit: every append waiting at this moment goes into ONE transaction (one
        fsync), each with its own outcome. A statement that fails is retried append by append,
        so one bad append cannot fail the others; a failing COMMIT is not (it may have
        committed: a retry could append twice), it fails every append of the batch."""
        wrote = False
        try:
            with self._unit() as conn:
                outcomes = self._write(conn, batch)
                wrote = True
        except Exception as e:
            if wrote or len(batch) == 1:
                for append in batch:
                    append.error, append.done = e, True
                return
            for append in batch:
                self._commit([append])
            return
        for append, answer, error in outcomes:
            append.answer, append.error, append.done = answer, error, True

    @contextlib.contextmanager
    def _unit(self) -> Iterator[sa.Connection]:
        """The committer's transaction, on its own long-lived Core connection (no session
        or pool checkout per commit); a connection that broke is replaced next time."""
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._conn = self.db.writer_connection()
        conn = self._conn
        try:
            with self.db.writing(), conn.begin():
                yield conn
        except BaseException:
            if conn.invalidated or conn.closed:
                self._conn = None
            raise

    def _write(
        self, s: sa.Connection, batch: list[_Append]
    ) -> list[tuple[_Append, dict[str, Any] | None, BaseException | None]]:
        samples, keys = SampleRepository(s), IdempotencyRepository(s)
        fresh_after = utcnow() - timedelta(seconds=self.settings.idempotency_ttl_seconds)
        models = samples.lock_models(sorted({j.t.model_id for j in batch}))
        nexts: dict[int, int] = {}
        records: list[tuple[int, int, np.ndarray, np.ndarray, None]] = []
        recorded: list[dict[str, Any]] = []  # their answers, given the ids once stored
        arrays: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {}  # what each model gets, in order
        seen: dict[tuple[int, str], tuple[str, dict[str, Any]]] = {}
        key_rows: list[dict[str, Any]] = []
        out: list[_Outcome] = []
        for append in sorted(batch, key=lambda a: a.t.model_id):  # stable: arrival order per model
            t, mid = append.t, append.t.model_id
            got = models.get(mid)
            if got is None:
                out.append((append, None, NotFound(f"no model named {t.name!r}")))
                continue
            if got[:3] != (t.spec.task, t.spec.input_dim, t.spec.output_dim):
                msg = f"model {t.name!r} was re-created with another shape during the request; retry it"
                out.append((append, None, SpecChanged(msg)))
                continue
            if append.record is not None:  # a recorded predict: no offsets, no key
                records.append((mid, append.record, append.X, append.Y, None))
                recorded.append({"recorded": len(append.X)})
                out.append((append, recorded[-1], None))
                continue
            if append.key is not None:
                prior = seen.get((mid, append.key))
                if prior is None:
                    row = keys.get(mid, append.key)
                    if row is not None and row[2] > fresh_after:
                        prior = (row[0], row[1])
                    elif row is not None:
                        keys.delete(mid, append.key)  # expired: the key is unknown again
                if prior is not None:
                    if prior[0] != append.digest:
                        out.append((append, None, _key_conflict(append.key)))
                    else:
                        out.append((append, {**prior[1], "duplicate": True}, None))
                    continue
            first = nexts.get(mid, got[3])
            if append.work is not None:
                try:
                    answer, X, Y = append.work(s, first)
                except StewardError as e:
                    out.append((append, None, e))
                    continue
            else:
                X, Y, n = append.X, append.Y, len(append.X)
                answer = {"accepted": n, "first_offset": first, "last_offset": first + n - 1, "duplicate": False}
            if len(X):
                nexts[mid] = first + len(X)
                xs, ys = arrays.setdefault(mid, ([], []))
                xs.append(X)
                ys.append(Y)
            if append.key is not None:
                seen[(mid, append.key)] = (append.digest, answer)
                key_rows.append({"model_id": mid, "key": append.key, "request_hash": append.digest, "response": answer})
            out.append((append, answer, None))
        sample_rows: list[dict[str, Any]] = []
        for mid, (xs, ys) in arrays.items():  # contiguous offsets from the model's next_offset
            X, Y = (xs[0], ys[0]) if len(xs) == 1 else (np.concatenate(xs), np.concatenate(ys))
            sample_rows += pack_rows(mid, models[mid][3], X, Y, max_rows=MAX_ROW_SAMPLES)
        for mid, nxt in nexts.items():
            samples.set_next_offset(mid, nxt)
        samples.add_rows(sample_rows)
        for said, ids in zip(recorded, samples.add_records(records), strict=True):
            said["ids"] = ids
        keys.add_many(key_rows)
        return out

    def _maybe_purge(self) -> None:
        now = time.monotonic()
        if now - self._last_purge < PURGE_EVERY_SECONDS:
            return
        self._last_purge = now
        try:
            self.purge_keys()
        except Exception:  # housekeeping (a full disk, a busy lock): the committed append stands
            logging.getLogger("steward").warning("purging expired Idempotency-Keys failed", exc_info=True)

    def purge_keys(self) -> int:
        """Forget Idempotency-Keys older than the configured time; returns how many."""
        before = utcnow() - timedelta(seconds=self.settings.idempotency_ttl_seconds)
        with self.db.write() as s:
            return IdempotencyRepository(s).purge(before)

    # ------------------------------------------------------------------ progress
    def progress(self, model_id: int) -> LearnerProgress | None:
        """The learner's published progress and the model's status (None: model gone)."""
        with self.db.read() as s:
            found = LearnerRepository(s).with_model(model_id)
            if found is None:
                return None
            m, row = found
            now = utcnow()
            return LearnerProgress(
                applied_through=row.applied_through if row is not None else -1,
                accepted=m.next_offset,
                status=m.status,
                status_reason=m.status_reason,
                paused_offset=m.paused_offset,
                prequential=dict(row.prequential or {}) if row is not None else {},
                owner=row.owner if row is not None else None,
                lease_alive=bool(
                    row is not None and row.owner and row.lease_expires_at is not None and row.lease_expires_at > now
                ),
            )

    # ------------------------------------------------------------------ checkpoint
    def request_checkpoint(self, name: str) -> tuple[int, str, int]:
        """Ask the learner for a version including every sample accepted so far.

        Returns ``(model_id, request id, target offset)``; poll :meth:`checkpoint_reply`.
        """
        rid = uuid.uuid4().hex
        with self.db.write() as s:
            m = get_model(s, name)
            target = m.next_offset - 1
            row = _learner_row(s, m.id)
            box = dict(row.mailbox or {})
            box["checkpoint_requests"] = {**box.get("checkpoint_requests", {}), rid: target}
            row.mailbox = box
            return m.id, rid, target

    def checkpoint_reply(self, model_id: int, rid: str) -> dict[str, Any] | None:
        """The learner's answer to request ``rid`` (taken out of the row), or None yet."""
        with self.db.read() as s:
            row = LearnerRepository(s).get(model_id)
            if row is None:
                raise NotFound("the model was deleted")
            if rid not in (row.mailbox or {}).get("checkpoint_replies", {}):
                return None
        with self.db.write() as s:
            row = LearnerRepository(s).get(model_id, for_update=True)
            if row is None:
                raise NotFound("the model was deleted")
            box = dict(row.mailbox or {})
            replies = dict(box.get("checkpoint_replies", {}))
            reply = replies.pop(rid, None)
            box["checkpoint_replies"] = replies
            row.mailbox = box
            return reply

    def cancel_checkpoint(self, model_id: int, rid: str) -> None:
        with self.db.write() as s:
            row = LearnerRepository(s).get(model_id, for_update=True)
            if row is None:
                return
            box = dict(row.mailbox or {})
            for k in ("checkpoint_requests", "checkpoint_replies"):
                d = dict(box.get(k, {}))
                d.pop(rid, None)
                box[k] = d
            row.mailbox = box

    def version(self, model_id: int, number: int) -> tuple[Model, Version]:
        with self.db.read() as s:
            m = ModelRepository(s).get(model_id)
            v = VersionRepository(s).get(model_id, number) if m is not None else None
            if m is None or v is None:
                raise NotFound("the model or its version was deleted")
            return m, v

    # ------------------------------------------------------------------ resume
    def resume(self, name: str, from_version: int | None) -> ModelOut:
        """Mark a paused model active and tell its learner to skip the refused sample
        (restarting from ``from_version``'s parameters when given)."""
        with self.db.write() as s:
            m = get_model(s, name, for_update=True)
            if m.status != "paused":
                raise Conflict(f"model {name!r} is not paused (status {m.status!r})")
            if from_version is not None and VersionRepository(s).get(m.id, from_version) is None:
                raise Invalid.at(["body", "from_version"], f"model {name!r} has no version {from_version}")
            row = _learner_row(s, m.id)
            box = dict(row.mailbox or {})
            box["resume"] = {
                "offset": m.paused_offset,
                "from_version": from_version,
                "reason": m.status_reason,
                "requested_at": utcnow().isoformat(),
            }
            row.mailbox = box
            emit(
                s,
                "model.resumed",
                m.name,
                {"skipped_offset": m.paused_offset, "from_version": from_version, "paused_reason": m.status_reason},
            )
            m.status = "active"
            m.status_reason = None
            m.paused_offset = None
            m.updated_at = utcnow()
            s.flush()
            return self.models.view_in(s, m)

    # ------------------------------------------------------------------ drift
    def reset_drift(self, name: str) -> ModelOut:
        """Ask the learner to start drift detection again (``drift_reset`` in its mailbox);
        the published drift block is cleared at once."""
        with self.db.write() as s:
            m = get_model(s, name)
            row = _learner_row(s, m.id)
            row.mailbox = {**(row.mailbox or {}), "drift_reset": uuid.uuid4().hex}
            row.drift = None
            s.flush()
            return self.models.view_in(s, m)

    # ------------------------------------------------------------------ metrics history
    def metrics_history(
        self, name: str, *, from_offset: int | None, to_offset: int | None, points: int = HISTORY_POINTS_DEFAULT
    ) -> MetricsHistory:
        """The model's learning curve over the offsets ``from_offset .. to_offset`` (defaults:
        0 .. the newest point) in at most ``points`` equal-width buckets: per bucket holding
        a recorded point, its last point with the exact means over the bucket (see
        :meth:`MetricPointRepository.buckets`)."""
        if from_offset is not None and to_offset is not None and from_offset > to_offset:
            raise Invalid.at(["query", "from_offset"], f"must be at most to_offset ({to_offset})")
        if not 1 <= points <= HISTORY_POINTS_MAX:
            raise Invalid.at(["query", "points"], f"must be 1–{HISTORY_POINTS_MAX}")
        lo = from_offset or 0
        with self.db.read() as s:
            m = get_model(s, name)
            repo = MetricPointRepository(s)
            hi = to_offset
            if hi is None:
                last = repo.last_offset(m.id)
                hi = lo if last is None else max(last, lo)
            recorded = repo.count(m.id, lo, hi)
            buckets = repo.buckets(m.id, lo, hi, points) if recorded else []
        classify = m.task != "regression"
        return MetricsHistory(
            model=m.name,
            from_offset=lo,
            to_offset=hi,
            recorded=recorded,
            points=[_history_point(b, classify) for b in buckets],
        )

    # ------------------------------------------------------------------ the request protocols
    async def update(
        self,
        name: str,
        read: SampleReader,
        *,
        key: str | None,
        wait: bool,
        wait_seconds: float,
    ) -> dict[str, Any]:
        """``/update``: read and validate the body (``read(spec, body_read)``, which calls
        ``body_read()`` once the whole body has arrived), append it durably in a group
        commit, and optionally wait until the learner applied it. Returns the 202 answer."""
        target = self.cached_target(name)
        if target is None:
            target = await run_in_threadpool(self.target, name)
        token: int | None = None

        def body_read() -> None:  # from now on a commit may wait for this request's samples
            nonlocal token
            token = self.announce()

        append = None
        try:
            X, Y = await read(target.spec, body_read)
            append = self.submit(target, X, Y, key, token, loop=asyncio.get_running_loop())
            answer = await self.wait_committed(append)
        finally:
            self.withdraw(token)
            if append is not None and not append.done:
                self.abandon(append)
        if wait:
            answer.update(await self.wait_applied(target.model_id, answer["last_offset"], wait_seconds))
        return answer

    async def wait_applied(self, model_id: int, last: int, wait_seconds: float) -> dict[str, Any]:
        """Wait until the learner applied offset ``last`` (or paused before it, or
        ``wait_seconds`` passed); the ``?wait=true`` part of the answer."""
        deadline = time.monotonic() + wait_seconds
        delay = 0.002
        while True:
            p = await run_in_threadpool(self.progress, model_id)
            if p is None:
                raise NotFound("the model was deleted while waiting")
            done = p.applied_through >= last
            blocked = p.status == "paused" and p.paused_offset is not None and p.paused_offset <= last
            if done or blocked or time.monotonic() >= deadline:
                out: dict[str, Any] = {
                    "applied": done,
                    "applied_through": p.applied_through if p.applied_through >= 0 else None,
                    "status": p.status,
                    "prequential": p.prequential,
                }
                if p.status == "paused":
                    out["status_reason"] = p.status_reason
                    out["paused_offset"] = p.paused_offset
                return out
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.05)

    async def checkpoint(self, name: str, wait_seconds: float) -> tuple[VersionOut, bool]:
        """``/checkpoint``: ask the learner for a version including every sample accepted
        so far and wait for its answer: (the version, whether it was created now). 503
        when no learner answers within ``wait_seconds`` (or none holds the model's lease)."""
        model_id, rid, _target = await run_in_threadpool(self.request_checkpoint, name)
        start = time.monotonic()
        deadline = start + wait_seconds
        delay = 0.002
        try:
            while True:
                reply = await run_in_threadpool(self.checkpoint_reply, model_id, rid)
                if reply is not None:
                    break
                now = time.monotonic()
                if now >= deadline:
                    raise Unavailable(f"the online learner of model {name!r} did not answer within {wait_seconds:g} s")
                if now - start > self.settings.learner_lease_seconds:
                    p = await run_in_threadpool(self.progress, model_id)
                    if p is not None and not p.lease_alive:
                        raise Unavailable(f"no online learner is running for model {name!r}")
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, 0.05)
        except BaseException:
            await run_in_threadpool(self.cancel_checkpoint, model_id, rid)
            raise
        if self._caches is not None and reply.get("created"):
            # made by a learner maybe in another process: serve it here at once, not at the next poll
            self._caches.invalidate({model_subject(model_id)})
        m, v = await run_in_threadpool(self.version, model_id, int(reply["version"]))
        return version_out(m, v), bool(reply.get("created"))


def _learner_row(s: Any, model_id: int) -> Learner:
    row = LearnerRepository(s).get(model_id, for_update=True)
    if row is None:
        row = Learner(model_id=model_id, applied_through=-1, updated_at=utcnow())
        s.add(row)
        s.flush()
    return row


def _mean(total: float | int | None, n: int) -> float | None:
    return None if total is None or n <= 0 else total / n


def _history_point(b: Bucket, classify: bool) -> MetricsPoint:
    """A bucket as the metrics history answers it: means over the bucket and at the point."""
    served = None
    if b.labelled > 0:
        served = PointServed(
            labelled=b.labelled,
            loss=b.served_loss_sum / b.labelled,
            accuracy=_mean(b.served_correct, b.labelled) if classify else None,
        )
    return MetricsPoint(
        offset=b.offset,
        at=b.at,
        samples=b.samples,
        prequential=PointPrequential(
            loss=_mean(b.bucket_loss_sum, b.samples),
            accuracy=_mean(b.bucket_correct, b.samples) if classify else None,
            running_loss=_mean(b.loss_sum, b.count),
            running_accuracy=_mean(b.correct, b.count) if classify else None,
        ),
        served=served,
    )
