"""Background components started by the lifespan (and by ``steward worker``): the
online learner and the job workers. Each is a thread with a ``stop()``."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from app.context import AppContext
from app.core.migrations import upgrade
from app.core.settings import Settings
from app.jobs.runner import Worker

log = logging.getLogger("steward.worker")


def make_worker(ctx: AppContext) -> Worker:
    """A job worker of this app: its queue, every capability's handler, the job metrics."""
    return Worker(
        ctx.jobs.queue,
        ctx.job_handlers(),
        poll_seconds=ctx.settings.worker_poll_seconds,
        on_finished=lambda kind, status: ctx.metrics.jobs.labels(kind, status).inc(),
    )


def remove_leftovers(ctx: AppContext) -> int:
    """Start-up housekeeping: remove the blob store's temporary files that writes killed
    mid-way left behind (older than ``STEWARD_BLOB_TMP_GRACE_SECONDS``). Returns how many."""
    n = ctx.blobs.remove_stale_temporaries(ctx.settings.blob_tmp_grace_seconds)
    if n:
        log.info("removed %d stale temporary file(s) from the blob store %s", n, ctx.blobs.root)
    return n


def start_background(ctx: AppContext) -> Callable[[], None]:
    """Start what the settings ask for; return a function that stops it all gracefully."""
    stops: list[Callable[[], None]] = [ctx.caches.start()]
    if ctx.settings.run_learner:
        stops.append(ctx.start_learner().stop)
    if ctx.settings.run_worker:
        stops.append(make_worker(ctx).start().stop)

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
    ctx.close()
