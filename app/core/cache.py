"""Process-local caches of what the request hot paths read from the database — API keys
by hash, a model's serving version per alias — and how they learn they are stale.

**Within a process** a cache never serves what this process changed: a commit that
changes a cached subject (:func:`app.core.db.mark_changed`: ``keys``, ``model:<id>``)
drops it from every cache before the writer's ``with db.write()`` block returns, so the
next request — the writer's own included — reads the database again.

**Across processes** (several API processes on one database) each process polls the
shared ``cache_generation`` counter every ``refresh_seconds`` (``STEWARD_CACHE_REFRESH_SECONDS``)
and, when it moved, drops the subjects marked above the generation it had seen. So a
change committed by another process stops being served within ``refresh_seconds`` plus
one poll query: that is the stated bound on staleness.

**No stale fill.** A miss reads the database and then fills the cache — unless an
invalidation happened in between (an *epoch* counter, taken before the read): a reader
that read the old state can never put it back after the change was dropped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from app.core.db import Database, read_generation, read_marks

log = logging.getLogger("steward.cache")

K = TypeVar("K")
V = TypeVar("V")


class ReadCache(Generic[K, V]):
    """A bounded map of database reads, each entry tagged with its subject. ``get`` takes
    no lock (a dict lookup is atomic); ``put`` and drops do."""

    def __init__(self, caches: Caches, max_entries: int) -> None:
        self._caches = caches
        self._max = max_entries
        self._d: dict[K, tuple[V, str]] = {}

    def get(self, key: K) -> V | None:
        hit = self._d.get(key)
        return None if hit is None else hit[0]

    def put(self, key: K, value: V, subject: str, epoch: int) -> None:
        """Store ``value`` unless something was invalidated since ``epoch`` (taken with
        :meth:`Caches.epoch` before the read that produced it)."""
        with self._caches.lock:
            if self._caches.epoch() != epoch:
                return
            if len(self._d) >= self._max and key not in self._d:
                self._d.pop(next(iter(self._d)))  # the oldest entry
            self._d[key] = (value, subject)

    def __len__(self) -> int:
        return len(self._d)

    def _drop(self, subjects: set[str] | None) -> None:  # holds Caches.lock
        if subjects is None:
            self._d.clear()
            return
        for key in [k for k, (_, subj) in self._d.items() if subj in subjects]:
            del self._d[key]


class Caches:
    """The process's read caches, dropped by local commits and by the generation poller."""

    def __init__(self, db: Database, refresh_seconds: float) -> None:
        self.db = db
        self.refresh_seconds = refresh_seconds
        self.lock = threading.Lock()
        self._epoch = 0
        self._stores: list[ReadCache[object, object]] = []
        self._seen = self._read_generation()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        db.on_changes.append(self._committed)

    def store(self, max_entries: int) -> ReadCache[K, V]:
        c: ReadCache[K, V] = ReadCache(self, max_entries)
        self._stores.append(c)  # type: ignore[arg-type]
        return c

    def epoch(self) -> int:
        """Taken before a read that may fill a cache (see :meth:`ReadCache.put`)."""
        return self._epoch

    def invalidate(self, subjects: Iterable[str] | None = None) -> None:
        """Drop the entries of ``subjects`` (None: everything) from every cache."""
        dropped = None if subjects is None else set(subjects)
        with self.lock:
            self._epoch += 1
            for c in self._stores:
                c._drop(dropped)

    # ---- this process's commits
    def _committed(self, subjects: set[str], generation: int) -> None:
        self.invalidate(subjects)
        with self.lock:
            if generation == self._seen + 1:  # nothing else happened in between: no need to poll it
                self._seen = generation

    # ---- other processes' commits
    def _read_generation(self) -> int:
        with self.db.read() as s:
            return read_generation(s)

    def poll(self) -> bool:
        """Drop what other processes changed since the last poll; True if anything was."""
        with self.db.read() as s:
            g = read_generation(s)
            if g == self._seen:
                return False
            marks = read_marks(s, self._seen)
        self.invalidate(subject for subject, _ in marks)
        with self.lock:
            self._seen = max(self._seen, g, *(gen for _, gen in marks))
        return True

    def start(self) -> Callable[[], None]:
        """Poll in a daemon thread; returns the function that stops it."""
        self._thread = threading.Thread(target=self._loop, name="steward-cache", daemon=True)
        self._thread.start()
        return self.stop

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_seconds):
            try:
                self.poll()
            except Exception:
                # the database is unreachable: what is cached may be stale, so serve nothing from it
                log.warning("cache poll failed; dropping every cached entry", exc_info=True)
                self.invalidate()
