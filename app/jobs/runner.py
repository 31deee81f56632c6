"""Job workers: ``run_once()`` for tests, a thread loop for the API process and
``steward worker`` for separate processes. A worker knows the queue and the
:class:`~app.jobs.contract.Handlers` it was given, nothing of the capabilities
(see :mod:`app.jobs.contract` for what a handler does)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping

from app.jobs.contract import Canceled, Handler, Job, JobError, LeaseLost, Progress, Released
from app.jobs.queue import Queue

log = logging.getLogger("steward.worker")

#: Called with (kind, final status) after every job: metrics.
OnFinished = Callable[[str, str], None]


class Worker:
    """Claims and runs jobs one at a time."""

    def __init__(
        self,
        queue: Queue,
        handlers: Mapping[str, Handler],
        *,
        poll_seconds: float,
        on_finished: OnFinished | None = None,
        name: str | None = None,
    ) -> None:
        self.handlers = handlers
        self.queue = queue
        self.owner = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.poll = poll_seconds
        self.lease_seconds = queue.lease.total_seconds()
        self.on_finished = on_finished

    # ---- one job
    def run_once(self) -> str | None:
        """Claim and run one job; returns its id, or None when nothing was runnable."""
        job = self.queue.claim(self.owner, tuple(self.handlers))
        if job is None:
            return None
        self._run(job)
        return job.id

    def run_child(self, job_id: str) -> str:
        """Claim ``job_id`` and run it in this thread (:meth:`Progress.run_child`)."""
        job = self.queue.claim_one(job_id, self.owner)
        if isinstance(job, str):
            return job
        return self._run(job)

    def _run(self, job: Job) -> str:
        progress = Progress(self.queue.heartbeat, job, self.stopping, run_child=self.run_child)
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
            self.handlers[job.kind](job, progress)
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
        if self.on_finished is not None:
            self.on_finished(job.kind, status)
        log.info("job %s (%s) %s in %.2fs", job.id, job.kind, status, time.perf_counter() - t0)
        return status

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
