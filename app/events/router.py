"""/v1/events: the event feed (pages, long poll, Server-Sent Events)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from app.core.errors import Invalid
from app.core.jsonbody import JSONRoute
from app.core.outbox import EVENT_TYPES
from app.core.schemas import ModelName, problem_responses
from app.deps import PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MARK, Ctx, ReadKey
from app.events.filters import reader_filter
from app.events.schemas import EXAMPLES, EventPage

router = APIRouter(route_class=JSONRoute, tags=["events"])

After = Annotated[int, Query(ge=0, le=2**63 - 1, description="Answer the events with a greater id")]
Models = Annotated[
    list[ModelName] | None,
    Query(alias="model", description="Only these models' events (repeatable)"),
]
Types = Annotated[
    list[str] | None,
    Query(
        alias="type",
        max_length=32,
        description="Only these types (repeatable): an exact type, a group such as `job.*`, or `*`",
    ),
]

PAGE_EXAMPLES = {
    t: {
        "summary": t,
        "value": {
            "items": [{"id": 1041, "type": t, "at": "2026-12-01T09:30:00Z", "model": "churn", "data": d}],
            "next_after": 1041,
        },
    }
    for t, d in EXAMPLES.items()
}


def _limit(ctx: Ctx, request: Request, limit: int) -> int:
    """``limit`` within ``page_limit_max`` (as every list's: 422 past it when given)."""
    most = ctx.settings.page_limit_max
    if "limit" not in request.query_params:
        return min(limit, most)
    if limit > most:
        raise Invalid.at(["query", "limit"], f"at most {most}")
    return limit


@router.get(
    "/events",
    response_model=EventPage,
    summary="Events after an id, oldest first (optionally waiting for one)",
    description="Every change is an event, written in the transaction of the change. Ids are given at "
    "commit, in commit order: a reader that pages with `after` never misses an event and never sees "
    "one twice. `wait=N` holds the request up to N seconds until an event arrives. A key restricted "
    "to models sees only their events.",
    responses={
        200: {"content": {"application/json": {"examples": PAGE_EXAMPLES}}},
        **problem_responses(401, 403, 422),
    },
    operation_id="list_events",
)
async def list_events(
    request: Request,
    ctx: Ctx,
    p: ReadKey,
    after: After = 0,
    model: Models = None,
    type: Types = None,
    limit: Annotated[
        int, Query(ge=1, description="Most events answered", json_schema_extra={PAGE_LIMIT_MARK: True})
    ] = PAGE_LIMIT_DEFAULT,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=60,
            allow_inf_nan=False,
            description="Seconds to wait for an event when none is there (at most `STEWARD_EVENTS_WAIT_MAX_SECONDS`)",
        ),
    ] = 0,
) -> EventPage:
    filt = reader_filter(p.models, model, type)
    return await ctx.feed.poll(after, filt, _limit(ctx, request, limit), wait)


@router.get(
    "/events/stream",
    summary="The event feed as Server-Sent Events",
    description="`text/event-stream`: each event as `id: <id>`, `event: <type>`, `data: <event JSON>`; a "
    "comment every few seconds keeps the connection open. A reconnect with `Last-Event-ID` resumes "
    "after that event; without it the stream starts at `after` (default: events from now on).",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Server-Sent Events",
            "content": {
                "text/event-stream": {
                    # Open API 3.1 without itemSchema: ``schema`` describes one event of the stream
                    "schema": {
                        "type": "object",
                        "properties": {
                            "id": {"type": "string", "pattern": "^[0-9]+$", "description": "The event's id"},
                            "event": {"type": "string", "enum": list(EVENT_TYPES), "description": "Its type"},
                            "data": {
                                "type": "string",
                                "contentMediaType": "application/json",
                                "description": "The event as JSON (`EventOut`)",
                            },
                        },
                    },
                    "example": 'id: 1041\nevent: alias.moved\ndata: {"id":1041,"type":"alias.moved",...}\n\n',
                }
            },
        },
        **problem_responses(401, 403, 422),
    },
    operation_id="stream_events",
)
async def stream_events(
    ctx: Ctx,
    p: ReadKey,
    after: Annotated[
        int | None, Query(ge=0, le=2**63 - 1, description="Start after this id (default: from now on)")
    ] = None,
    model: Models = None,
    type: Types = None,
    last_event_id: Annotated[
        str | None, Header(max_length=32, description="Resume after this event (sent by reconnecting clients)")
    ] = None,
) -> StreamingResponse:
    filt = reader_filter(p.models, model, type)
    start = after
    if last_event_id is not None and last_event_id.strip():
        v = last_event_id.strip()
        if not v.isascii() or not v.isdigit() or len(v) > 18:
            raise Invalid.at(["header", "last-event-id"], "expected an event id")
        start = int(v)
    return StreamingResponse(
        ctx.feed.stream(start, filt),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
