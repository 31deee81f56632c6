"""The feed as the routes see it: a page from the database, a long poll through the hub."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from starlette.concurrency import run_in_threadpool

from app.core.db import Database
from app.core.settings import Settings
from app.events.feed import EventHub, event_out
from app.events.filters import EventFilter
from app.events.repository import EventRepository
from app.events.schemas import EventOut, EventPage


class EventService:
    def __init__(self, db: Database, settings: Settings, hub: EventHub) -> None:
        self.db = db
        self.settings = settings
        self.hub = hub

    def page(self, after: int, filt: EventFilter, limit: int) -> EventPage:
        """Events after ``after`` that ``filt`` admits, oldest first (blocking)."""
        if filt.models is not None and not filt.models:
            return EventPage(items=[], next_after=after)
        with self.db.read() as s:
            rows = EventRepository(s).after(
                after,
                limit,
                models=sorted(filt.models) if filt.models is not None else None,
                types=filt.exact,
                prefixes=filt.prefixes,
            )
        items = [event_out(e) for e in rows]
        return EventPage(items=items, next_after=items[-1].id if items else after)

    def head(self) -> int:
        with self.db.read() as s:
            return EventRepository(s).head()

    async def poll(self, after: int, filt: EventFilter, limit: int, wait: float) -> EventPage:
        """:meth:`page`, and when it is empty, wait up to ``wait`` seconds (at most
        ``events_wait_max_seconds``) for an event that ``filt`` admits."""
        page = await run_in_threadpool(self.page, after, filt, limit)
        if page.items or wait <= 0 or (filt.models is not None and not filt.models):
            return page
        end = time.monotonic() + min(wait, self.settings.events_wait_max_seconds)
        pos = after
        while (left := end - time.monotonic()) > 0:
            if not await self.hub.wait_beyond(pos, left):
                break
            batch, pos = await self.hub.read(pos, filt, limit)
            if batch:
                return EventPage(items=[EventOut.model_validate_json(k.json) for k in batch], next_after=batch[-1].id)
        return EventPage(items=[], next_after=after)

    async def stream(self, after: int | None, filt: EventFilter) -> AsyncIterator[bytes]:
        """The SSE stream after ``after`` (None: from the newest event on)."""
        start = after if after is not None else await run_in_threadpool(self.head)
        async for chunk in self.hub.stream(
            start, filt, self.settings.events_heartbeat_seconds, self.settings.events_stream_max_seconds
        ):
            yield chunk
