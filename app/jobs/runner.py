"""Job workers: ``run_once()`` for tests, a thread loop for the API process and
``steward worker`` for separate processes.

A handler is ``handler(ctx, job, progress)``: it does the work, calls
``progress(fraction)`` as it goes (a heartbeat, and the point where cancel and
shutdown are noticed), and stores its outcome with ``ctx.jobs.queue.finish_in``
in the same transaction as the version it made. Raising
:class:`JobError` fails the job without retry (bad input discovered late);
any other exception is retried with backoff until attempts run out.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from typing import Any

from app.jobs.queue import Canceled, Claimed, LeaseLost, Queue, Released

log = logging.getLogger("steward.worker")

Handler = Callable[[Any, Claimed, "Progress"], None]


class JobError(Exception):
    """A failure that retrying cannot fix; ``details`` go into the job's ``error``."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


class Progress:
    """Callable progress reporter handed to handlers; throttles database writes."""

    def __init__(self, queue: Queue, job: Claimed, stopping: threading.Event, min_interval: float = 0.25) -> None:
        self.queue = queue
        self.job = job
        self.stopping = stopping
        self.min_interval = min_interval
        self._last = 0.0
        self.value = 0.0

    def __call__(self, fraction: float, *, force: bool = False) -> None:
        self.value = fraction
        now = time.monotonic()
        if self.stopping.is_set():
            raise Released(self.job.id)
        if not force and now - self._last < self.min_interval:
            return
        self._last = now
        if self.queue.heartbeat(self.job.id, self.job.owner, fraction):
            raise Canceled(self.job.id)

    def check(self) -> None:
        """A progress point without a new fraction."""
        self(self.value)


class Worker:
    """Claims and runs jobs one at a time."""

    def __init__(self, ctx: Any, handlers: dict[str, Handler], *, name: str | None = None) -> None:
        self.ctx = ctx
        self.handlers = handlers
        self.queue: Queue = ctx.jobs.queue
        self.owner = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.poll = ctx.settings.worker_poll_seconds
        self.lease_seconds = ctx.settings.job_lease_seconds

    # ---- one job
    def run_once(self) -> str | None:
        """Claim and run one job; returns its id, or None when nothing was runnable."""
        job = self.queue.claim(self.owner, tuple(self.handlers))
        if job is None:
            return None
        self._run(job)
        return job.id

    def _run(self, job: Claimed) -> None:
        progress = Progress(self.queue, job, self.stopping)
        beat_stop = threading.Event()

        def beat() -> None:  # keeps the lease while long numpy steps run between progress points
            while not beat_stop.wait(self.lease_seconds / 3):
                try:
                    self.queue.heartbeat(job.id, job.owner)
                except LeaseLost:
                    return
                except Exception:  # a transient database error: try again next beat
                    log.warning("heartbeat for job %s failed", job.id, exc_info=True)

        hb = threading.Thread(target=beat, name=f"heartbeat-{job.id[:8]}", daemon=True)
        hb.start()
        t0 = time.perf_counter()
        status = "succeeded"
        try:
            self.handlers[job.kind](self.ctx, job, progress)
        except Canceled:
            self.queue.mark_canceled(job.id, job.owner)
            status = "canceled"
        except Released:
            self.queue.release(job.id, job.owner)
            status = "released"
        except LeaseLost:
            log.warning("job %s: lease lost; another worker owns it now", job.id)
            status = "lost"
        except JobError as e:
            status = self.queue.fail(
                job.id, job.owner, {"type": "job_error", "message": str(e), **e.details}, retry=False
            )
        except Exception as e:
            log.exception("job %s (%s) failed", job.id, job.kind)
            status = self.queue.fail(
                job.id,
                job.owner,
                {
                    "type": type(e).__name__,
                    "message": str(e),
                    "traceback": traceback.format_exc(limit=5)[-2000:],
                },
                retry=True,
            )
        finally:
            beat_stop.set()
            hb.join(timeout=5)
        metrics = getattr(self.ctx, "metrics", None)
        if metrics is not None:
            metrics.jobs.labels(job.kind, status).inc()
        log.info("job %s (%s) %s in %.2fs", job.id, job.kind, status, time.perf_counter() - t0)

    # ---- loop
    def loop(self) -> None:
        while not self.stopping.is_set():
            try:
                ran = self.run_once()
            except Exception:
                log.exception("worker loop error")
                ran = None
            if ran is None:
                self.stopping.wait(self.poll)

    def start(self) -> Worker:
        self._thread = threading.Thread(target=self.loop, name=f"worker-{self.owner}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful: the running job is released at its next progress point."""
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)


def run_worker_process(settings: Any, concurrency: int = 1) -> None:
    """``steward worker``: run workers against the shared database and blob store
    until SIGINT / SIGTERM, then stop gracefully."""
    from app.context import AppContext
    from app.core.migrations import upgrade
    from app.worker.handlers import HANDLERS

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    upgrade(settings.url)
    ctx = AppContext.build(settings)
    workers = [Worker(ctx, HANDLERS).start() for _ in range(max(concurrency, 1))]
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
