"""Background components started by the lifespan (and by ``steward worker``): the
online learner and the job workers. Each is a thread with a ``stop()`` — or, with
``STEWARD_LEARNER_PROCESS``, the learner runtime runs in a child process of its own
(:class:`LearnerProcess`): the learner talks to the API only through the database
(leases, the log, the mailbox), so it can run anywhere, and in a process of its own it
does not share the API's interpreter lock."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from app.context import AppContext
from app.core.migrations import upgrade
from app.core.settings import Settings
from app.jobs.runner import Worker
from app.pipelines.policies import PolicyScheduler
from app.webhooks.delivery import Deliverer

log = logging.getLogger("steward.worker")


def make_worker(ctx: AppContext) -> Worker:
    """A job worker of this app: its queue, every capability's handler, the job metrics."""
    return Worker(
        ctx.jobs.queue,
        ctx.job_handlers(),
        poll_seconds=ctx.settings.worker_poll_seconds,
        on_finished=lambda kind, status: ctx.metrics.jobs.labels(kind, status).inc(),
    )


def make_deliverer(ctx: AppContext) -> Deliverer:
    """The webhook delivery loop of a worker (:mod:`app.webhooks.delivery`)."""
    return Deliverer(ctx.db, ctx.webhooks, ctx.settings, metrics=ctx.metrics)


def make_scheduler(ctx: AppContext) -> PolicyScheduler:
    """The maintenance policies' scheduler of a worker (:mod:`app.pipelines.policies`)."""
    return PolicyScheduler(ctx.policies, ctx.settings.policy_poll_seconds)


def remove_leftovers(ctx: AppContext) -> int:
    """Start-up housekeeping: remove the blob store's temporary files that writes killed
    mid-way left behind (older than ``STEWARD_BLOB_TMP_GRACE_SECONDS``). Returns how many."""
    n = ctx.blobs.remove_stale_temporaries(ctx.settings.blob_tmp_grace_seconds)
    if n:
        log.info("removed %d stale temporary file(s) from the blob store %s", n, ctx.blobs.root)
    return n


#: Seconds between two rounds of :class:`Housekeeping`.
HOUSEKEEPING_SECONDS = 60.0


class Housekeeping:
    """A daemon thread that runs periodic upkeep (expired recorded predictions) every
    :data:`HOUSEKEEPING_SECONDS`; a task that fails is logged and tried again next round."""

    def __init__(self, tasks: list[Callable[[], object]], interval: float = HOUSEKEEPING_SECONDS) -> None:
        self.tasks = tasks
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="steward-housekeeping", daemon=True)

    def start(self) -> Housekeeping:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for task in self.tasks:
                try:
                    task()
                except Exception:
                    log.warning("housekeeping task %r failed", task, exc_info=True)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def start_background(ctx: AppContext) -> Callable[[], None]:
    """Start what the settings ask for; return a function that stops it all gracefully."""
    stops: list[Callable[[], None]] = [ctx.caches.start(), Housekeeping([ctx.feedback.purge]).start().stop]
    if ctx.settings.run_learner and ctx.settings.learner_process:
        stops.append(LearnerProcess(ctx.settings).start().stop)
    elif ctx.settings.run_learner:
        stops.append(ctx.start_learner().stop)
    if ctx.settings.run_worker:
        stops.append(make_worker(ctx).start().stop)
        stops.append(make_deliverer(ctx).start().stop)
        stops.append(make_scheduler(ctx).start().stop)

    def stop() -> None:
        for fn in reversed(stops):
            fn()

    return stop


def run_worker_process(settings: Settings, concurrency: int = 1) -> None:
    """``steward worker``: run workers against the shared database and blob store
    until SIGINT / SIGTERM, then stop gracefully."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    upgrade(settings.url)
    ctx = AppContext.build(settings)
    remove_leftovers(ctx)
    workers = [make_worker(ctx).start() for _ in range(max(concurrency, 1))]
    deliverer = make_deliverer(ctx).start()
    scheduler = make_scheduler(ctx).start()
    done = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %s: stopping workers", signum)
        done.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    log.info("steward worker: %d worker(s) on %s", len(workers), settings.url.split("@")[-1])
    while not done.wait(0.5):
        pass
    for w in workers:
        w.stop()
    deliverer.stop()
    scheduler.stop()
    ctx.close()


def run_learner_process(settings: Settings, parent_pid: int) -> None:
    """The child of :class:`LearnerProcess`: the learner runtime alone, until SIGTERM or
    until its parent is gone; then it stops gracefully (publishes, releases its leases)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    ctx = AppContext.build(settings)
    learner = ctx.start_learner()
    log.info("learner process %d started (parent %d)", os.getpid(), parent_pid)
    while not done.wait(0.5):
        if os.getppid() != parent_pid:  # the parent died: we were handed to another
            log.warning("learner process: the API process %d is gone; stopping", parent_pid)
            break
    learner.stop()
    ctx.close()


class LearnerProcess:
    """The learner runtime in a spawned child process, restarted if it dies."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.proc: multiprocessing.process.BaseProcess | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._watch: threading.Thread | None = None

    def start(self) -> LearnerProcess:
        self._spawn()
        self._watch = threading.Thread(target=self._watching, name="steward-learner-watch", daemon=True)
        self._watch.start()
        return self

    def _spawn(self) -> None:
        mp = multiprocessing.get_context("spawn")
        proc = mp.Process(
            target=run_learner_process, args=(self.settings, os.getpid()), name="steward-learner", daemon=True
        )
        proc.start()
        self.proc = proc

    def _watching(self) -> None:
        while not self._stop.wait(1.0):
            proc = self.proc
            if proc is not None and not proc.is_alive() and not self._stop.is_set():
                log.warning("learner process %s exited (%s); starting another", proc.pid, proc.exitcode)
                self.restarts += 1
                self._spawn()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.join(5)
        proc = self.proc
        if proc is not None and proc.is_alive():
            proc.terminate()  # SIGTERM: a graceful stop
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
