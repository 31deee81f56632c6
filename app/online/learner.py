"""The online learner runtime: a thread that applies each model's sample log, in
offset order, one optimizer step per sample (test-then-train), and commits
``online`` versions.

**Who learns a model.** Each model has one ``learners`` row. A process holds a
model's learner by a lease on that row (``owner`` + ``lease_expires_at``), taken
and renewed by conditional UPDATEs (``… WHERE owner IS NULL OR owner = me OR
lease_expires_at < now``; candidates are picked with ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL), so exactly one process learns a model at a time whether there is
one API process on SQLite or several API / ``steward worker`` processes on one
PostgreSQL. Every write of the learner (progress, version, pause) re-checks the
lease under the row lock in its own transaction, so a process that lost its
lease (stalled past expiry) can never commit behind the new owner's back.

**Where learning starts** (on claiming a model, and whenever a newer version
appears): from the model's newest version, whatever made it.

* An ``online`` version carries its parameters, the optimizer and prequential
  metrics state (blob ``state_sha256``) and ``applied_through``: learning resumes
  exactly there and replays the log after it.
* A version made by another operation (``init``, ``import``, ``batch``, ``prune``,
  ``quantize``, ``transfer``) *includes*, by definition, every sample the learner
  had applied when it adopted that version (at most one poll interval after the
  version was committed; on a fresh claim, the ``applied_through`` last
  published in ``learners``). The learner records that cut —
  ``learners.base = {"version", "applied_through", "state_sha256"}``
  with a fresh optimizer state and the running metrics — before it applies
  anything on top, so a replay after a crash starts from the same point. The
  next ``online`` version names that version as its ``parent``. (Quantized
  versions are dequantized; pruned versions keep learning densely.)

**Checkpoints.** A version (operation ``online``, ``parent`` = the version the
parameters continue from, ``applied_through`` = inclusive last offset,
``metrics.prequential``, state blob) is committed when a ``/checkpoint`` request is
due (see :mod:`app.online.service`), when a resumed model skips its refused sample,
and by the model's cadence: once ``checkpoint_every`` samples were applied since the
newest version (*due by count*) **and** at least ``checkpoint_seconds`` passed since
the learner's last version of the model (:attr:`Held.version_at`, monotonic: the last
version it committed or adopted, or when it loaded the model). A checkpoint costs a
snapshot, two fsynced blobs and a write transaction (milliseconds); the time floor
(default 1 s) keeps that from stopping learning every 1,000 samples under sustained
ingestion. Reads are sliced at the count, so ``checkpoint_seconds = 0`` gives versions
exactly at every ``checkpoint_every``-th sample; while a checkpoint due by count waits
for its time the learner applies whole slices and commits it at the first slice end
(or turn, if no sample arrives) after the time has come. A checkpoint waiting so is
work: the model is not idle (:meth:`LearnerRuntime._idle`: not evicted, and
:meth:`LearnerRuntime.drain` waits for it), and an eviction for memory commits it.
Where a checkpoint lands never changes the parameters: the state blob makes the replay
after it exact. Before committing, the learner checks under the model row lock that no
newer version appeared; if one did, it drops its own progress and adopts it.

**Guard.** A step the engine refuses (non-finite parameters, loss blow-up past
the model's guard) is not applied: in one transaction the model becomes
``paused`` (reason, ``paused_offset`` = the refused offset) and the progress
through the offset before it is published. The learner then waits. ``/resume``
leaves ``{"offset", "from_version"}`` in ``learners.mailbox["resume"]``; the
learner skips that offset (counted as applied: it is consumed), restarts from
``from_version``'s parameters with a fresh optimizer state when given, and
commits a checkpoint at once, which makes the skip durable.

**Memory: idle learners are evicted, the total is bounded.** A held model's learner
(network, gradient, optimizer state) is dropped from memory — *evicted* — when it has
had nothing to do (no samples to apply, no checkpoint or resume request) for
``STEWARD_LEARNER_IDLE_SECONDS``, and whenever the held learners' arrays
(:meth:`OnlineLearner.nbytes`) pass ``STEWARD_LEARNER_MEMORY_BYTES``, least recently
active first (a model larger than the bound is still loaded, alone). The process
**keeps the lease** of an evicted model (:attr:`LearnerRuntime.parked`: renewed, released
on stop), so no other process takes it over and nothing changes hands; eviction only
publishes the progress (``learners.applied_through`` and metrics). When the model has
work again it is reloaded exactly as after a restart: from the newest version (plus the
``base`` cut) and the log, never publishing below what was published — the replay
reaches bit-identical parameters. An evicted model that still has samples to apply
(evicted for room) first commits a checkpoint (``"checkpoint": "evicted"``), so models
taking turns in a bound too small for both always make progress. Networks the learner
loads do not fill the predict cache (:class:`~app.registry.versions.NetworkCache`).

**Metrics history.** The engine keeps the running prequential sums at every offset ``o``
with ``(o + 1) % STEWARD_METRICS_POINT_SAMPLES == 0`` as it learns (its marks, without
cutting a block; :meth:`_learn`); each write of the progress (publish, checkpoint, pause, a
new base) appends those points to ``metric_points`` with the model's served totals at the
write, in its transaction, and forgets them only once it committed. So the points lie at the same offsets whoever
learns the model, never below what was published before a restart, and the insert does
nothing where a point exists: a replay never fails or records a point twice.

**Crash and restart.** Nothing in memory is needed to continue: the newest
version (plus the ``base`` cut for a non-online one), the log and the model's
status determine the parameters. Replay is deterministic, so after SIGKILL the
learner reaches the same parameters as an uninterrupted run. While it replays
it does not publish progress below what was published before the crash.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import safetensors.numpy as stnp

from app.core.blobs import BlobStore
from app.core.db import Database
from app.core.metrics import Metrics
from app.core.outbox import emit
from app.core.settings import Settings
from app.core.tables import Learner, Model, Version, utcnow
from app.engine.drift import DriftMonitor
from app.engine.nn.network import Network, labels, per_sample_loss
from app.engine.nn.online import LearnerConfig, LearnResult, Mark, OnlineLearner
from app.engine.nn.optim import OptimizerConfig
from app.online.log import LogRows, read_rows, take
from app.online.repository import LearnerRepository, MetricPointRepository, ShadowRepository
from app.online.samples import SampleSpec
from app.registry.repository import ModelRepository, VersionRepository
from app.registry.versions import VersionService

log = logging.getLogger("steward.learner")

#: Most samples applied to one model per loop turn (then the next model gets a turn).
TURN_SAMPLES = 65_536
#: Most samples read from the log at once.
READ_SAMPLES = 16_384
PUBLISH_SECONDS = 0.25
CLAIM_SECONDS = 1.0


@dataclass
class Held:
    """A model whose learner this process holds, with its in-memory learning state."""

    model_id: int
    name: str
    model: Model  # detached snapshot of the spec
    learner: OnlineLearner
    masked: bool  # pruned zeros pinned (the model continues from a pruned version)
    version: int  # newest version accounted for
    parent: int  # parent of the next online version
    applied_through: int
    since_version: int = 0
    published: int = -1
    publish_floor: int = -1  # do not publish below what was published before a restart
    last_publish: float = 0.0
    dirty: bool = False
    lag: int = 0
    cache: LogRows | None = field(default=None, repr=False)  # the last log row read
    active: float = field(default_factory=time.monotonic)  # last sample applied or request answered
    nbytes: int = 0  # the learner's arrays (OnlineLearner.nbytes)
    #: monotonic time of the learner's last version of this model (committed or adopted)
    version_at: float = field(default_factory=time.monotonic)
    #: the last ``drift_reset`` request of the mailbox this learner carried out
    drift_reset: str | None = None
    #: the shadows scored beside learning (by candidate version), as of ``shadows_rev``
    shadows: dict[int, ShadowRun] = field(default_factory=dict)
    shadows_rev: str | None = None
    #: the drift monitor whose transitions were announced (``model.drift``), and how many
    drift_monitor: DriftMonitor | None = field(default=None, repr=False)
    drift_announced: int = 0
    #: transitions to ``drift`` at or before this offset were announced before this learner
    #: took the model (a replay after a restart meets them again: no second event)
    drift_floor: int = -1
    #: offset of the model's newest metrics history point (``metric_points``; -1: none)
    last_point: int = -1
    #: points reached since the last write of the progress: ``(offset, running metrics)``
    points: list[Mark] = field(default_factory=list)

    @property
    def every(self) -> int:
        return max(int(self.model.checkpoint_every), 1)

    def count_due(self) -> bool:
        """``checkpoint_every`` samples applied since the newest version: a checkpoint is
        due, now or (``checkpoint_seconds``) once enough time has passed."""
        return self.since_version >= self.every

    def wait_left(self, now: float) -> float:
        """Seconds until the time cadence allows the next checkpoint (0: it does)."""
        return max(float(self.model.checkpoint_seconds) - (now - self.version_at), 0.0)

    def checkpoint_due(self, now: float) -> bool:
        return self.count_due() and self.wait_left(now) <= 0


@dataclass
class Parked:
    """A model whose lease this process holds while its learner is evicted from memory."""

    model_id: int
    name: str


@dataclass
class ShadowRun:
    """A shadow as the learner scores it: the candidate's and the compared version's
    networks, and the sums over the offsets ``since .. through`` scored so far."""

    version: int
    against: int
    since: int
    through: int
    net: Network
    against_net: Network
    sums: dict[str, Any]
    dirty: bool = False


@dataclass
class Control:
    """What the database says about a held model, read once per loop turn."""

    status: str
    paused_offset: int | None
    accepted: int
    latest: int
    owner: str | None
    requests: dict[str, int]
    resume: dict[str, Any] | None
    published: int = -1  # learners.applied_through
    drift_reset: str | None = None  # the mailbox's last drift reset request
    shadows_rev: str | None = None  # changes whenever a shadow is put or deleted

    def has_work(self, applied_through: int) -> bool:
        """Samples to apply after ``applied_through``, or a request to answer."""
        if self.requests or (self.resume is not None and self.status == "active"):
            return True
        limit = self.accepted - 1
        if self.status == "paused" and self.paused_offset is not None:
            limit = min(limit, self.paused_offset - 1)
        return limit > applied_through


class LearnerLeaseLost(Exception):
    """This process no longer holds the model's learner lease (it expired and was taken, or
    the model is gone): the model is dropped from :attr:`LearnerRuntime.held`."""


# --------------------------------------------------------------------------- engine glue
def learner_config(m: Model, window: int) -> LearnerConfig:
    """The model's guard: ``loss_ratio`` × the recent-window baseline taken after
    ``warmup`` samples (``guard.enabled`` false keeps only the non-finite checks)."""
    g = dict(m.guard or {})
    factor = float(g.get("loss_ratio", 10.0)) if g.get("enabled", True) else None
    warmup = g.get("warmup")
    return LearnerConfig(window=window, guard_factor=factor, guard_warmup=int(warmup) if warmup is not None else None)


def new_learner(m: Model, net: Network, window: int, *, masked: bool) -> OnlineLearner:
    """A learner for ``net``, watched by a new drift monitor (detection starts afresh with
    every new learner: a new version to continue from, a restart)."""
    masks = [W != 0 for W in net.weights] if masked else None
    learner = OnlineLearner(net, OptimizerConfig.from_spec(m.optimizer), config=learner_config(m, window), masks=masks)
    learner.drift = DriftMonitor(m.input_dim)
    return learner


#: The sums a shadow row keeps (``shadows`` columns).
SHADOW_SUMS = ("n", "loss_sum", "correct", "against_loss_sum", "against_correct")

#: Transitions of the drift status kept in the published drift block (the newest).
DRIFT_TRANSITIONS = 50


def drift_block(learner: OnlineLearner) -> dict[str, Any] | None:
    """What the learner publishes of its drift monitor (the model answer's ``drift``)."""
    d = learner.drift
    if d is None:
        return None
    recent = d.transitions[-DRIFT_TRANSITIONS:]
    return {**d.state(), "transitions": [{"status": st, "offset": off} for st, off in recent]}


def state_bytes(learner: OnlineLearner) -> bytes:
    """The learner's optimizer + prequential state as a safetensors file (never pickle)."""
    return stnp.save(learner.state_dict(), metadata={"format": "steward-online-state/1"})


def load_state(learner: OnlineLearner, data: bytes, *, metrics_only: bool = False) -> None:
    d = stnp.load(data)
    if metrics_only:
        d = {k: v for k, v in d.items() if k.startswith("metrics.")}
    learner.load_state_dict(d)


def is_masked(v: Version) -> bool:
    """A version whose zeros online learning keeps pinned: made by ``prune``, or an
    ``online`` version that continued from one."""
    return v.operation == "prune" or bool(v.operation == "online" and (v.params or {}).get("masked"))


class _Newer(Exception):
    """A newer version appeared while committing; adopt it instead."""


class LearnerRuntime:
    """Holds models' learners and applies their logs. ``run_once()`` for tests,
    :meth:`start` / :meth:`stop` for the background thread."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        blobs: BlobStore,
        versions: VersionService,
        metrics: Metrics,
        *,
        owner: str | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.blobs = blobs
        self.versions = versions
        self.metrics = metrics
        self.owner = owner or f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.held: dict[int, Held] = {}
        #: leases held for models whose learner is evicted from memory (see the module doc)
        self.parked: dict[int, Parked] = {}
        self.evictions = 0
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_claim = 0.0
        self._last_renew = 0.0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ thread
    def start(self) -> LearnerRuntime:
        self._thread = threading.Thread(target=self._loop, name="steward-learner", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current turn, publish progress and release the leases."""
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            for h in list(self.held.values()):
                try:
                    self._publish(h, force=True)
                except Exception:
                    log.warning("learner: final publish of %s failed", h.name, exc_info=True)
            self.release_all()

    def _loop(self) -> None:
        poll = self.settings.learner_poll_seconds
        while not self.stopping.is_set():
            try:
                with self._lock:
                    busy = self.run_once()
            except Exception:
                log.exception("learner loop turn failed; retrying")
                busy = 0
                self.stopping.wait(min(1.0, poll * 10))
            if not busy:
                self.stopping.wait(poll)

    # ------------------------------------------------------------------ one turn
    def run_once(self) -> int:
        """Claim / renew leases, then give every held model one turn. Returns the
        number of samples applied (0: nothing to do)."""
        now = time.monotonic()
        if now - self._last_renew >= self.settings.learner_lease_seconds / 3:
            self._renew()
            self._last_renew = now
        if now - self._last_claim >= CLAIM_SECONDS or not (self.held or self.parked):
            self._claim()
            self._last_claim = now
        total = 0
        controls = self._controls()
        turned: set[int] = set()
        for mid, p in list(self.parked.items()):
            ctl = controls.get(mid)
            if ctl is None or ctl.owner != self.owner:
                log.info("learner: model %s is gone or no longer ours", p.name)
                self.parked.pop(mid, None)
            elif ctl.has_work(ctl.published):
                self._load(mid)  # and its turn at once, before another load may evict it
                h = self.held.get(mid)
                if h is not None:
                    turned.add(mid)
                    try:
                        total += self._turn(h, ctl)
                    except LearnerLeaseLost:
                        log.warning("learner: lease on model %s lost", h.name)
                        self.held.pop(mid, None)
        for mid in list(self.held):
            h = self.held.get(mid)
            if h is None or mid in turned:
                continue
            ctl = controls.get(mid)
            if ctl is None or ctl.owner != self.owner:
                log.info("learner: model %s is gone or no longer ours", h.name)
                self.held.pop(mid, None)
                continue
            try:
                total += self._turn(h, ctl)
            except LearnerLeaseLost:
                log.warning("learner: lease on model %s lost", h.name)
                self.held.pop(mid, None)
        self._evict_idle(controls)
        return total

    def drain(self, timeout: float = 30.0) -> None:
        """Run turns until nothing is left to do (tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.run_once():
                idle = all(self._idle(h) for h in self.held.values())
                ctls = self._controls()
                if idle and not any(mid in ctls and ctls[mid].has_work(ctls[mid].published) for mid in self.parked):
                    return
                # a checkpoint due by count waits for its time: sleep until then, not spin
                now = time.monotonic()
                waits = [h.wait_left(now) for h in self.held.values() if h.count_due()]
                if waits:
                    time.sleep(min(min(waits), self.settings.learner_poll_seconds, max(deadline - now, 0)))
        raise TimeoutError("the learner did not catch up in time")

    def _idle(self, h: Held, ctl: Control | None = None) -> bool:
        """Nothing to do for ``h``: no samples to apply, no request to answer, and no
        checkpoint due by count that waits for its time (``checkpoint_seconds``)."""
        if h.count_due():
            return False
        ctl = ctl or self._controls().get(h.model_id)
        return ctl is None or (not ctl.requests and ctl.resume is None and (h.lag == 0 or ctl.status == "paused"))

    # ------------------------------------------------------------------ memory
    def _load(self, model_id: int) -> None:
        """Bring an evicted (or just claimed) model's learner into memory, as a restart
        would, after evicting the least recently active others past the memory bound."""
        p = self.parked.pop(model_id)
        try:
            self._adopt_fresh(model_id)
        except Exception:
            log.exception("learner: could not load model %s; releasing it", p.name)
            with self.db.write() as s:
                LearnerRepository(s).release(model_id, self.owner)
            return
        h = self.held.get(model_id)
        if h is None:
            return
        bound = self.settings.learner_memory_bytes
        total = sum(x.nbytes for x in self.held.values())
        for other in sorted((x for x in self.held.values() if x is not h), key=lambda x: x.active):
            if total <= bound:
                break
            total -= other.nbytes
            self._evict(other, reason="memory")

    def _evict_idle(self, controls: dict[int, Control]) -> None:
        now = time.monotonic()
        idle_for = self.settings.learner_idle_seconds
        for h in list(self.held.values()):
            if now - h.active >= idle_for and self._idle(h, controls.get(h.model_id)):
                self._evict(h, reason="idle")

    def _evict(self, h: Held, *, reason: str) -> None:
        """Drop ``h``'s learner from memory and keep its lease (see the module doc)."""
        try:
            if (h.lag > 0 or h.count_due()) and h.since_version > 0 and h.learner.paused is None:
                self._checkpoint(h, cause="evicted")
                h = self.held.get(h.model_id, h)
            self._publish(h, force=True)
        except LearnerLeaseLost:
            log.warning("learner: lease on model %s lost", h.name)
            self.held.pop(h.model_id, None)
            return
        self.held.pop(h.model_id, None)
        self.parked[h.model_id] = Parked(h.model_id, h.name)
        self.evictions += 1
        log.info("learner: model %s evicted (%s) at offset %d", h.name, reason, h.applied_through)

    # ------------------------------------------------------------------ leases
    def _claim(self) -> None:
        now = utcnow()
        until = now + timedelta(seconds=self.settings.learner_lease_seconds)
        with self.db.write() as s:
            repo = LearnerRepository(s)
            repo.ensure_rows()
            ids = repo.claimable(self.owner, now, 1000, skip_locked=not self.db.is_sqlite)
            ids = [mid for mid in ids if mid not in self.held and mid not in self.parked]
            won = [mid for mid in ids if repo.claim(mid, self.owner, now, until)]
        # loaded when they have work (run_once), within the memory bound
        for mid in won:
            self.parked[mid] = Parked(mid, f"#{mid}")

    def _renew(self) -> None:
        if not self.held and not self.parked:
            return
        until = utcnow() + timedelta(seconds=self.settings.learner_lease_seconds)
        with self.db.write() as s:
            repo = LearnerRepository(s)
            lost = [mid for mid in [*self.held, *self.parked] if not repo.renew(mid, self.owner, until)]
        for mid in lost:
            h = self.held.pop(mid, None) or self.parked.pop(mid, None)
            if h is not None:
                log.warning("learner: lease on model %s lost", h.name)

    def release_all(self) -> None:
        with self.db.write() as s:
            for mid in [*self.held, *self.parked]:
                LearnerRepository(s).release(mid, self.owner)
        self.held.clear()
        self.parked.clear()

    def forget(self, name: str) -> None:
        """Drop a deleted model (its rows are gone with it)."""
        for mid, h in list(self.held.items()):
            if h.name == name:
                self.held.pop(mid, None)
        for mid, p in list(self.parked.items()):
            if p.name == name:
                self.parked.pop(mid, None)

    # ------------------------------------------------------------------ control
    def _controls(self) -> dict[int, Control]:
        if not self.held and not self.parked:
            return {}
        with self.db.read() as s:
            rows = LearnerRepository(s).controls([*self.held, *self.parked])
        out = {}
        for mid, status, paused, nxt, lat, owner, mailbox, published in rows:
            md = mailbox or {}
            out[mid] = Control(
                status=status,
                paused_offset=paused,
                accepted=int(nxt),
                latest=int(lat or 0),
                owner=owner,
                requests={k: int(v) for k, v in (md.get("checkpoint_requests") or {}).items()},
                resume=md.get("resume"),
                published=int(published),
                drift_reset=md.get("drift_reset"),
                shadows_rev=md.get("shadows"),
            )
        return out

    # ------------------------------------------------------------------ start points
    def _adopt_fresh(self, model_id: int) -> None:
        """Start learning a just-claimed model from its newest version (see module doc)."""
        with self.db.read() as s:
            m = ModelRepository(s).get(model_id)
            row = LearnerRepository(s).get(model_id)
            v = VersionRepository(s).latest(model_id)
            if m is None or row is None or v is None:
                return
            published = int(row.applied_through)
            base = row.base
            drift = row.drift
            last_point = MetricPointRepository(s).last_offset(model_id)
        h = self._start_from(m, v, base, published)
        h.publish_floor = published
        h.published = published
        h.last_point = -1 if last_point is None else last_point
        h.drift_floor = max(
            (int(x["offset"]) for x in (drift or {}).get("transitions", []) if x.get("status") == "drift"), default=-1
        )
        self.held[model_id] = h
        if v.operation != "online" and not (base and base.get("version") == v.version):
            self._record_base(h)
        log.info("learner: holding model %s from version %d at offset %d", m.name, v.version, h.applied_through)

    def _start_from(self, m: Model, v: Version, base: dict[str, Any] | None, published: int) -> Held:
        masked = is_masked(v)
        learner = new_learner(m, self._network(m, v), self.settings.learner_window, masked=masked)
        if v.operation == "online" and v.state_sha256:
            load_state(learner, self.blobs.get(v.state_sha256))
            at = int(v.applied_through if v.applied_through is not None else published)
        elif base and base.get("version") == v.version:
            if base.get("state_sha256"):
                load_state(learner, self.blobs.get(base["state_sha256"]))
            at = int(base["applied_through"])
        else:
            at = published
        return Held(
            model_id=m.id,
            name=m.name,
            model=m,
            learner=learner,
            masked=masked,
            version=v.version,
            parent=v.version,
            applied_through=at,
            nbytes=learner.nbytes(),
        )

    def _network(self, m: Model, v: Version) -> Network:
        """Version ``v``'s network: from the predict cache if there, else read for the
        learner alone (it copies the parameters; the cache is not filled)."""
        net = self.versions.cache.get(v.blob_sha256)
        return net if net is not None else self.versions.load_owned(m, v)

    def _restart(self, h: Held, m: Model, v: Version) -> None:
        """New parameters (version ``v``) with a fresh optimizer state; the running
        prequential metrics carry on and the guard warms up again."""
        masked = is_masked(v)
        learner = new_learner(m, self._network(m, v), self.settings.learner_window, masked=masked)
        load_state(learner, state_bytes(h.learner), metrics_only=True)
        learner.resume()
        h.learner, h.masked, h.model, h.nbytes = learner, masked, m, learner.nbytes()

    def _adopt_newer(self, h: Held) -> None:
        """A newer version exists: continue from it (see module doc)."""
        with self.db.read() as s:
            m = ModelRepository(s).get(h.model_id)
            v = VersionRepository(s).latest(h.model_id)
        if m is None or v is None or v.version <= h.version:
            return
        if v.operation == "online" and v.state_sha256:
            new = self._start_from(m, v, None, h.applied_through)
            new.published, new.publish_floor, new.last_publish = h.published, h.publish_floor, h.last_publish
            new.drift_floor = h.drift_floor
            new.last_point, new.points = h.last_point, h.points
            new.active = h.active
            self.held[h.model_id] = new
            log.info("learner: model %s continues from online version %d", h.name, v.version)
            return
        self._restart(h, m, v)
        h.version = h.parent = v.version
        h.since_version = 0
        h.version_at = time.monotonic()
        h.cache = None
        self._record_base(h)
        log.info(
            "learner: model %s continues from %s version %d after offset %d",
            h.name,
            v.operation,
            v.version,
            h.applied_through,
        )

    def _record_base(self, h: Held) -> None:
        sha, _ = self.blobs.put(state_bytes(h.learner))
        with self.db.write() as s:
            row = self._own_row(s, h)
            row.base = {"version": h.version, "applied_through": h.applied_through, "state_sha256": sha}
            row.prequential = h.learner.metrics()
            row.applied_through = max(h.applied_through, h.publish_floor)
            row.updated_at = utcnow()
            _save_shadows(s, h)
            written = self._record_points(s, h)  # the published offset moves past them
        self._points_written(h, written)

    # ------------------------------------------------------------------ a turn
    def _turn(self, h: Held, ctl: Control) -> int:
        mid = h.model_id
        if ctl.latest > h.version:
            self._adopt_newer(h)
            h = self.held[mid]
        if ctl.drift_reset is not None and ctl.drift_reset != h.drift_reset:
            h.learner.drift = DriftMonitor(h.model.input_dim)  # POST /drift/reset
            h.drift_reset = ctl.drift_reset
            h.dirty = True
        if ctl.shadows_rev != h.shadows_rev:  # a shadow was put or deleted
            self._load_shadows(h)
            h.shadows_rev = ctl.shadows_rev
        resume = ctl.resume if ctl.status == "active" else None
        if resume is not None:
            p = resume.get("offset")
            if p is None or h.applied_through >= int(p):
                self._clear_resume(h)
                resume = None
            elif h.applied_through == int(p) - 1:
                h.active = time.monotonic()
                self._resume(h, resume)
                return 1
        # how far the log may be applied now: not past a refused sample, nor a pending skip
        limit = ctl.accepted - 1
        if ctl.status == "paused" and ctl.paused_offset is not None:
            limit = min(limit, ctl.paused_offset - 1)
        if resume is not None:
            limit = min(limit, int(resume["offset"]) - 1)
        every = h.every
        applied = 0
        while h.applied_through < limit and applied < TURN_SAMPLES and not self.stopping.is_set():
            # a slice ends where the count makes a checkpoint due (checkpoint_seconds 0: the
            # exact count cadence); while a due checkpoint waits for its time, whole slices
            step = READ_SAMPLES if h.count_due() else min(READ_SAMPLES, every - h.since_version)
            hi = min(limit, h.applied_through + step)
            X, Y = self._read(h, h.applied_through + 1, hi)
            t0 = time.perf_counter()
            res = self._learn(h, X, Y, h.applied_through + 1)
            dt = time.perf_counter() - t0
            n = res.applied
            if n and h.shadows:
                self._score_shadows(h, X[:n], Y[:n], h.applied_through + 1)
            if n:
                h.applied_through += n
                h.since_version += n
                applied += n
                h.dirty = True
                self.metrics.samples_applied.labels(h.name).inc(n)
                self.metrics.learner_step_seconds.labels(h.name).observe(dt / n)
            if n:
                h.active = time.monotonic()
            if res.pause is not None:
                self._pause(h, res.pause.offset, f"{res.pause.reason}: {res.pause.detail}")
                limit = h.applied_through
                break
            if h.checkpoint_due(time.monotonic()):
                self._checkpoint(h, cause=self._cadence(h))
                if self.held.get(mid) is not h:  # a newer version was adopted instead
                    return applied
        if h.checkpoint_due(time.monotonic()):  # due by count earlier, its time came now
            self._checkpoint(h, cause=self._cadence(h))
            if self.held.get(mid) is not h:
                return applied
        h.lag = max(ctl.accepted - 1 - h.applied_through, 0)
        self.metrics.learner_lag.labels(h.name).set(h.lag)
        if ctl.requests and resume is None:
            h.active = time.monotonic()
            self._answer_requests(h, ctl.requests, reach=limit)
        if self.held.get(mid) is h:
            self._publish(h, force=h.lag == 0)
        return applied

    # ------------------------------------------------------------------ shadows
    def _load_shadows(self, h: Held) -> None:
        """The model's shadows from the database (their networks from the version cache or
        their blobs: a quantized or pruned candidate scores with its own stored parameters)."""
        with self.db.read() as s:
            rows = ShadowRepository(s).of(h.model_id)
            m = ModelRepository(s).get(h.model_id)
            nums = {n for r in rows for n in (r.version, r.against_version)}
            versions = {n: VersionRepository(s).get(h.model_id, n) for n in nums}
        runs: dict[int, ShadowRun] = {}
        for r in rows:
            v, a = versions.get(r.version), versions.get(r.against_version)
            if m is None or v is None or a is None:
                continue  # a version deleted with its model: nothing to score
            old = h.shadows.get(r.version)
            if old is not None and old.since == r.since_offset and old.against == r.against_version:
                runs[r.version] = old  # unchanged: keep what is scored since the last publish
                continue
            sums = {k: getattr(r, k) for k in SHADOW_SUMS}
            runs[r.version] = ShadowRun(
                r.version, r.against_version, r.since_offset, r.through,
                self.versions.load(m, v), self.versions.load(m, a), sums,
            )  # fmt: skip
        h.shadows = runs

    def _score_shadows(self, h: Held, X: np.ndarray, Y: np.ndarray, first: int) -> None:
        """Score the applied samples ``first …`` that each shadow has not scored yet, with the
        candidate and the compared version alike (inference only, one batch each)."""
        task = h.model.task
        for sh in h.shadows.values():
            lo = max(sh.since, sh.through + 1) - first
            if lo >= len(X):
                continue
            lo = max(lo, 0)
            Xs, Ys = X[lo:], Y[lo:]
            for side, net in (("", sh.net), ("against_", sh.against_net)):
                out = net.forward(Xs)
                sh.sums[f"{side}loss_sum"] += float(per_sample_loss(task, out, Ys).sum())
                lab = labels(task, out)
                if lab is not None:
                    sh.sums[f"{side}correct"] += int((lab == np.asarray(Ys).reshape(-1)).sum())
            sh.sums["n"] += len(Xs)
            sh.through = first + len(X) - 1
            sh.dirty = True
        h.dirty = True

    @staticmethod
    def _cadence(h: Held) -> str:
        wait = float(h.model.checkpoint_seconds)
        return f"every {h.every} samples" + (f" and {wait:g} s" if wait > 0 else "")

    def _read(self, h: Held, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Samples ``lo..hi`` from the log (the last row read is kept for the next call)."""
        c = h.cache
        if c is not None and c.first <= lo and hi < c.end:
            return take([c], lo, hi)
        with self.db.read() as s:
            rows = read_rows(s, SampleSpec.of(h.model), h.model_id, lo, hi)
        h.cache = rows[-1]
        return take(rows, lo, hi)

    # ------------------------------------------------------------------ writes
    def _own_row(self, s: Any, h: Held) -> Learner:
        row = LearnerRepository(s).get(h.model_id, for_update=True)
        if row is None or row.owner != self.owner:
            raise LearnerLeaseLost(h.name)
        return row

    def _publish(self, h: Held, *, force: bool = False) -> None:
        if not h.dirty or h.applied_through < h.publish_floor:
            return
        now = time.monotonic()
        if not force and now - h.last_publish < PUBLISH_SECONDS:
            return
        pre = h.learner.metrics()
        with self.db.write() as s:
            if not LearnerRepository(s).publish(h.model_id, self.owner, h.applied_through, pre, drift_block(h.learner)):
                raise LearnerLeaseLost(h.name)
            _save_shadows(s, h)
            announced = _drift_events(s, h)
            written = self._record_points(s, h)
        self._points_written(h, written)
        h.drift_announced = announced
        h.published = h.applied_through
        h.last_publish = now
        h.dirty = False

    def _learn(self, h: Held, X: np.ndarray, Y: np.ndarray, first: int) -> LearnResult:
        """``learn_many`` over a slice, keeping the engine's marks — the running sums at
        every offset ``o`` with ``(o + 1) % metrics_point_samples == 0`` — in
        :attr:`Held.points` for the next write of the progress. So points lie every
        ``metrics_point_samples`` samples, at the same offsets whoever learns the model and
        however the log was sliced, and learning is not cut for them."""
        h.learner.mark_every = self.settings.metrics_point_samples
        res = h.learner.learn_many(X, Y, first_offset=first)
        for mark in h.learner.take_marks():
            if mark.offset >= h.publish_floor and mark.offset > h.last_point:
                h.points.append(mark)
        return res

    def _record_points(self, s: Any, h: Held) -> int:
        """Append the points reached since the last write of the progress (in the
        transaction that writes it); returns how many. The caller drops them from
        :attr:`Held.points` once that transaction has committed (a failed commit keeps them
        for the next write). A replay that meets a recorded point again keeps the first one
        (the insert does nothing)."""
        marks = h.points
        if marks:
            MetricPointRepository(s).add_many(h.model_id, [(p.offset, p.count, p.loss_sum, p.correct) for p in marks])
        return len(marks)

    def _points_written(self, h: Held, n: int) -> None:
        if n:
            h.last_point = max(h.last_point, h.points[n - 1].offset)
            del h.points[:n]

    def _commit_version(
        self,
        h: Held,
        *,
        cause: str,
        extra: dict[str, Any] | None = None,
        answer: list[str] | None = None,
        clear_resume: bool = False,
    ) -> int:
        """Commit an online version of the current parameters (answering the checkpoint
        requests ``answer`` with it); returns its number, or -1 when a newer version
        appeared first (then that one is adopted)."""
        net = h.learner.snapshot()  # a detached copy: the version cache must not see later steps
        pre = h.learner.metrics()
        # the blob and state are written (fsynced) before the write transaction opens
        blob = self.versions.store(net=net, state=state_bytes(h.learner))
        params = {
            "checkpoint": cause,
            "from_version": h.parent,
            "samples": h.since_version,
            "optimizer": dict(h.model.optimizer),
            **({"masked": True} if h.masked else {}),
            **(extra or {}),
        }
        try:
            with self.db.write() as s:
                m = ModelRepository(s).get(h.model_id, for_update=True)
                if m is None:
                    raise LearnerLeaseLost(h.name)
                row = self._own_row(s, h)
                if VersionRepository(s).latest_number(h.model_id) != h.version:
                    raise _Newer
                v = self.versions.add(
                    s,
                    m,
                    blob,
                    operation="online",
                    parent=h.parent,
                    params=params,
                    metrics={"prequential": pre, "samples_since_parent": h.since_version},
                    applied_through=h.applied_through,
                )
                box = _answered(row.mailbox, answer or [], v.version, created=True)
                if clear_resume:
                    box.pop("resume", None)
                row.mailbox = box
                row.prequential = pre
                row.base = None
                if h.applied_through >= h.publish_floor:
                    row.applied_through = h.applied_through
                row.updated_at = utcnow()
                _save_shadows(s, h)  # a replay starts at this version: what it scored stays
                written = self._record_points(s, h)
                number = v.version
        except _Newer:
            log.info("learner: model %s got a newer version while checkpointing; adopting it", h.name)
            self._adopt_newer(h)
            return -1
        self.metrics.versions.labels("online").inc()
        self._points_written(h, written)
        h.version = h.parent = number
        h.since_version = 0
        h.version_at = time.monotonic()
        if h.applied_through >= h.publish_floor:
            h.published = h.applied_through
            h.dirty = False
            h.last_publish = time.monotonic()
        return number

    def _checkpoint(self, h: Held, *, cause: str) -> int:
        return self._commit_version(h, cause=cause)

    def _answer_requests(self, h: Held, requests: dict[str, int], *, reach: int) -> None:
        """Answer the ``/checkpoint`` requests whose offset is applied (or as applied as it
        can be now: a paused model checkpoints through the sample before the refused one)."""
        due = [rid for rid, target in requests.items() if h.applied_through >= min(target, reach)]
        if not due:
            return
        if h.since_version > 0:
            if self._commit_version(h, cause="requested", answer=due) > 0:
                return
            if self.held.get(h.model_id) is not h:
                return  # a newer version came first; the requests wait for the new start point
        with self.db.write() as s:
            row = self._own_row(s, h)
            row.mailbox = _answered(row.mailbox, due, h.version, created=False)

    def _pause(self, h: Held, offset: int, reason: str) -> None:
        with self.db.write() as s:
            m = ModelRepository(s).get(h.model_id, for_update=True)
            if m is None:
                raise LearnerLeaseLost(h.name)
            row = self._own_row(s, h)
            if m.status != "paused" or m.paused_offset != offset:
                m.status = "paused"
                m.status_reason = f"offset {offset}: {reason}"
                m.paused_offset = offset
                m.updated_at = utcnow()
                emit(s, "model.paused", h.name, {"offset": offset, "reason": reason, "version": h.version})
            row.prequential = h.learner.metrics()
            row.drift = drift_block(h.learner)
            announced = _drift_events(s, h)
            if h.applied_through >= h.publish_floor:
                row.applied_through = h.applied_through
            row.updated_at = utcnow()
            _save_shadows(s, h)
            written = self._record_points(s, h)
        self._points_written(h, written)
        h.drift_announced = announced
        h.dirty = False
        log.warning("learner: model %s paused at offset %d: %s", h.name, offset, reason)

    def _resume(self, h: Held, resume: dict[str, Any]) -> None:
        """Skip the refused offset ``p`` (optionally restarting from a chosen version) and
        commit a checkpoint at ``p`` at once, which makes the skip durable."""
        p = int(resume["offset"])
        frm = resume.get("from_version")
        note: dict[str, Any] = {"skipped_offset": p, "from_version": frm, "reason": resume.get("reason")}
        h.learner.resume()
        h.learner.drift = DriftMonitor(h.model.input_dim)  # detection restarts on /resume
        if frm is not None:
            with self.db.read() as s:
                m = ModelRepository(s).get(h.model_id)
                v = VersionRepository(s).get(h.model_id, int(frm)) if m is not None else None
            if m is None or v is None:
                log.warning("learner: model %s: version %s to resume from is gone; using the last good", h.name, frm)
                note["from_version"] = None
            else:
                self._restart(h, m, v)
                h.parent = v.version
        h.applied_through = p
        h.cache = None
        log.info("learner: model %s resumed: offset %d skipped, from version %s", h.name, p, note["from_version"])
        self._commit_version(h, cause="resume", extra={"resumed": note}, clear_resume=True)

    def _clear_resume(self, h: Held) -> None:
        with self.db.write() as s:
            row = self._own_row(s, h)
            box = dict(row.mailbox or {})
            box.pop("resume", None)
            row.mailbox = box


def _save_shadows(s: Any, h: Held) -> None:
    """Write the shadows' sums and ``through`` in the transaction that records the learner's
    progress or a version it will replay from: the learner replays the log after its newest
    version, and must find every offset up to there already scored (or score it again)."""
    shadows = ShadowRepository(s)
    for sh in h.shadows.values():
        if sh.dirty:
            shadows.save(h.model_id, sh.version, sh.since, {**sh.sums, "through": sh.through})
            sh.dirty = False


def _drift_events(s: Any, h: Held) -> int:
    """One ``model.drift`` event per transition of the drift monitor to ``drift`` not yet
    announced, written with the drift block that shows it (a rolled-back publish announces
    nothing, and the next one tries again)."""
    d = h.learner.drift
    if d is None:
        return 0
    if d is not h.drift_monitor:  # a new monitor (restart, reset): its transitions are new
        h.drift_monitor, h.drift_announced = d, 0
    new = d.transitions[h.drift_announced :]
    if not new:
        return h.drift_announced
    state = d.state()
    for status, offset in new:
        if status == "drift" and offset > h.drift_floor:
            emit(
                s,
                "model.drift",
                h.name,
                {
                    "offset": offset,
                    "version": h.version,
                    "detector": (state.get("loss") or {}).get("detector"),
                    "inputs": state.get("inputs", []),
                },
            )
    return len(d.transitions)


def _answered(mailbox: dict[str, Any] | None, rids: list[str], version: int, *, created: bool) -> dict[str, Any]:
    """``learners.mailbox`` with the checkpoint requests ``rids`` moved to the replies."""
    md = dict(mailbox or {})
    if not rids:
        return md
    reqs = dict(md.get("checkpoint_requests") or {})
    replies = dict(md.get("checkpoint_replies") or {})
    for rid in rids:
        if reqs.pop(rid, None) is not None:
            replies[rid] = {"version": version, "created": created}
    md["checkpoint_requests"] = reqs
    md["checkpoint_replies"] = replies
    return md
