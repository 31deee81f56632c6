"""The job contract: what a capability implements to run as a job, and what the
worker hands it. The jobs package owns these types; capabilities register their
handlers at start-up (:class:`Handlers`), and the worker imports no capability.

A handler is ``handler(job, progress)``: it does the work, calls
``progress(fraction)`` as it goes (a heartbeat, and the point where cancel and
shutdown are noticed), and stores its outcome with
:meth:`app.jobs.queue.Queue.finish_in` in the same transaction as the version it
made. Raising :class:`JobError` fails the job without retry (bad input discovered
late); any other exception is retried with backoff until attempts run out.

Exceptions a handler may see (raised by ``progress``) and must let through::

    Canceled    cancellation was requested: the job ends ``canceled``
    Released    the worker is shutting down: the job goes back to the queue
    LeaseLost   the job is no longer this worker's (lease expired and taken)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol


class JobError(Exception):
    """A failure that retrying cannot fix; ``details`` go into the job's ``error``."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


class LeaseLost(Exception):
    """The job is no longer ours (lease expired and taken, or the job was deleted)."""


class Canceled(Exception):
    """Cancellation was requested; raised at the next progress point."""


class Released(Exception):
    """The worker is shutting down; the job goes back to the queue untouched."""


@dataclass(frozen=True)
class Job:
    """A claimed job, as its handler sees it."""

    id: str
    kind: str
    model_id: int
    model_name: str
    params: dict[str, Any]
    attempts: int
    owner: str


class Heartbeat(Protocol):
    def __call__(self, job_id: str, owner: str, progress: float | None = None) -> bool:
        """Extend the job's lease (recording ``progress``); True when cancel was requested."""
        ...


class Progress:
    """The progress reporter handed to a handler; throttles database writes.

    ``progress(fraction)`` records the fraction done (0..1) at most every
    ``min_interval`` seconds (``force=True``: now), and raises :class:`Released` when
    the worker stops or :class:`Canceled` when cancel was requested."""

    def __init__(
        self,
        heartbeat: Heartbeat,
        job: Job,
        stopping: threading.Event,
        min_interval: float = 0.25,
        run_child: Callable[[str], str] | None = None,
    ) -> None:
        self._run_child = run_child
        self.heartbeat = heartbeat
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
        if self.heartbeat(self.job.id, self.job.owner, fraction):
            raise Canceled(self.job.id)

    def check(self) -> None:
        """A progress point without a new fraction."""
        self(self.value)

    def run_child(self, job_id: str) -> str:
        """Claim and run another job now, in this worker (a pipeline's step); returns how it
        ended (``succeeded``, ``failed``, ``canceled``; ``queued`` when put back for a retry,
        ``released``, ``lost``), or why it did not run (``busy``: another worker holds it;
        ``waiting``: a retry's backoff runs)."""
        if self._run_child is None:
            raise RuntimeError("this worker runs no child jobs")
        return self._run_child(job_id)

    def part(self, lo: float, hi: float) -> Callable[..., None]:
        """A progress callable mapping [0, 1] onto [lo, hi] of this job."""

        def report(fraction: float, **kw: Any) -> None:
            self(lo + (hi - lo) * min(max(float(fraction), 0.0), 1.0), **kw)

        return report


Handler = Callable[[Job, Progress], None]


class Handlers(Mapping[str, Handler]):
    """Job kind → handler, filled by the capabilities at start-up."""

    def __init__(self) -> None:
        self._d: dict[str, Handler] = {}

    def register(self, kind: str, handler: Handler) -> None:
        if kind in self._d:
            raise ValueError(f"a handler for job kind {kind!r} is registered already")
        self._d[kind] = handler

    def __getitem__(self, kind: str) -> Handler:
        return self._d[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)
