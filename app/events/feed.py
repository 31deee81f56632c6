"""The feed's readers: pages from the database, and a hub that lets any number of
long-polling and streaming clients wait for new events without a thread each.

**The hub** (one per process) knows the newest event id it has read (``head``) and keeps
the latest events in memory, already serialized, in id order with no gaps (ids are
given in commit order, :mod:`app.core.outbox`). While anyone waits, one task reads what
is new: at once when this process commits events (:attr:`Database.on_events`), and
every ``STEWARD_EVENTS_POLL_SECONDS`` for what other processes commit — one query per
process, whatever the number of clients. Waiters are asyncio futures on the event
loop; a reader within the kept window reads from memory, one further behind reads a
page from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
from starlette.concurrency import run_in_threadpool

from app.core.db import Database
from app.core.tables import Event
from app.events.filters import EventFilter
from app.events.repository import EventRepository
from app.events.schemas import EventOut

#: Events read from the database at a time.
READ_BATCH = 1000


def event_out(e: Event) -> EventOut:
    return EventOut(id=e.id, type=e.type, at=e.at, model=e.model, data=dict(e.data))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Kept:
    """An event as the hub keeps it: what filters look at, its JSON and its SSE frame
    (made once, sent to every client)."""

    id: int
    type: str
    model: str | None
    json: bytes
    frame: bytes


def kept(e: Event) -> Kept:
    data = orjson.dumps(event_out(e).model_dump(mode="json"))
    frame = b"id: %d\nevent: %s\ndata: %s\n\n" % (e.id, e.type.encode(), data)
    return Kept(e.id, e.type, e.model, data, frame)


class EventHub:
    """See the module doc. Thread-safe to notify (:meth:`committed`); the rest runs on
    the event loop it was first used on."""

    def __init__(self, db: Database, *, poll_seconds: float, keep: int) -> None:
        self.db = db
        self.poll_seconds = poll_seconds
        self.events: deque[Kept] = deque(maxlen=keep)
        self.head = -1  # the newest id read (−1: not started)
        self.waiting = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._kick: asyncio.Event | None = None
        self._advanced: asyncio.Future[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._stale = False  # this process committed events while no one waited
        db.on_events.append(self.committed)

    # ---- notifications
    def committed(self, last_id: int) -> None:
        """This process committed events up to ``last_id`` (called from any thread)."""
        loop, kick = self._loop, self._kick
        if loop is not None and kick is not None and last_id > self.head and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(kick.set)

    async def _start(self) -> None:
        """Read the head and start the reading task, once per event loop (concurrent first
        readers wait for the one that does it)."""
        loop = asyncio.get_running_loop()
        ready = self._ready
        if self._loop is loop and ready is not None and (self._task is None or not self._task.done()):
            await asyncio.shield(ready)
            return
        self._loop = loop
        self._ready = ready = loop.create_future()
        self._kick = asyncio.Event()
        self._advanced = loop.create_future()
        self.events.clear()
        self._task = None
        try:
            self.head = await run_in_threadpool(self._read_head)
        except BaseException as e:
            self._ready = None
            ready.set_exception(e)
            ready.exception()  # retrieved: the callers waiting on it raise it
            raise
        self._task = loop.create_task(self._run(), name="steward-event-hub")
        ready.set_result(None)

    def _read_head(self) -> int:
        with self.db.read() as s:
            return EventRepository(s).head()

    def _read(self, after: int, limit: int = READ_BATCH) -> list[Kept]:
        with self.db.read() as s:
            return [kept(e) for e in EventRepository(s).after(after, limit)]

    async def _run(self) -> None:
        assert self._kick is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.poll_seconds)
            kicked = self._kick.is_set()
            self._kick.clear()
            if not self.waiting:
                self._stale = self._stale or kicked  # the first waiter has it read
                continue
            try:
                new = await run_in_threadpool(self._read, self.head)
            except Exception:  # the database is away: try again at the next poll
                continue
            if not new:
                continue
            self.events.extend(new)
            self.head = new[-1].id
            if len(new) == READ_BATCH:
                self._kick.set()  # more to read
            done, self._advanced = self._advanced, asyncio.get_running_loop().create_future()
            if done is not None and not done.done():
                done.set_result(None)

    async def close(self) -> None:
        task, self._task, self._ready = self._task, None, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # ---- readers
    async def wait_beyond(self, after: int, seconds: float) -> bool:
        """Wait up to ``seconds`` until the hub has read an event past ``after``;
        True if it has."""
        await self._start()
        assert self._kick is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        self.waiting += 1
        try:
            # no read asked for here (one read per process, not per waiter): this process's
            # commits wake the hub at once, other processes' are read within a poll
            if self._stale:
                self._stale = False
                self._kick.set()
            while self.head <= after:
                left = deadline - loop.time()
                fut = self._advanced
                if left <= 0 or fut is None:
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(fut), left)
            return True
        finally:
            self.waiting -= 1

    async def read(self, after: int, filt: EventFilter, limit: int) -> tuple[list[Kept], int]:
        """Events past ``after`` that ``filt`` admits (at most ``limit``), and the id read
        up to (the ``after`` of the next read)."""
        await self._start()
        if after >= self.head:  # nothing read past it yet (a later event wakes the waiters)
            return [], after
        ev = self.events
        if ev and ev[0].id - 1 <= after:  # within the kept window
            start = after - ev[0].id + 1
            out: list[Kept] = []
            upto = after
            for i in range(start, len(ev)):
                k = ev[i]
                upto = k.id
                if filt.admits(k.type, k.model):
                    out.append(k)
                    if len(out) >= limit:
                        break
            return out, upto
        rows = await run_in_threadpool(self._read, after, limit)  # a page, not more
        if not rows:
            return [], after
        out = [k for k in rows if filt.admits(k.type, k.model)][:limit]
        return out, (out[-1].id if len(out) == limit else rows[-1].id)

    async def stream(
        self, after: int, filt: EventFilter, heartbeat: float, max_seconds: float | None = None
    ) -> AsyncIterator[bytes]:
        """Server-Sent Events after ``after``: ``id``, ``event`` (the type), ``data`` (the
        event's JSON); a comment every ``heartbeat`` seconds while nothing happens; the
        stream ends after ``max_seconds`` when given (the client reconnects and resumes)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + max_seconds if max_seconds is not None else None
        yield b"retry: 2000\n\n"
        pos = after
        while end is None or loop.time() < end:
            batch, pos = await self.read(pos, filt, 500)
            if batch:
                yield b"".join(k.frame for k in batch)
                continue
            wait = heartbeat if end is None else max(min(heartbeat, end - loop.time()), 0.0)
            if not await self.wait_beyond(pos, wait):
                yield b": keep-alive\n\n"
