"""Reading request bodies within the configured limit."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Request
from starlette.requests import ClientDisconnect

from app.core.errors import BadRequest, PayloadTooLarge

#: The Content-Types read as one JSON document (none given counts as JSON) …
JSON_TYPES = frozenset({"", "application/json"})
#: … and as newline-delimited JSON, one object per line.
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"})
#: JSON bodies larger than this are parsed in the thread pool instead of on the event loop.
INLINE_PARSE_BYTES = 1 << 20


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) once it passes ``limit`` bytes, before reading it all."""
    cl = request.headers.get("content-length")
    if cl is not None:
        if not cl.isdigit():
            raise BadRequest("invalid Content-Length")
        if int(cl) > limit:
            raise PayloadTooLarge(f"body of {int(cl)} bytes exceeds the limit of {limit} bytes")
    if not hasattr(request, "_body") and not request._stream_consumed:
        # the common case, a body that came in one message, without Starlette's stream
        # machinery; kept as Starlette keeps a read body, so request.body() still answers
        message = await request.receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            body: bytes = message.get("body", b"")
            if len(body) > limit:
                raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
            request._body = body
            return body
        first = message
    else:
        first = None
    buf = bytearray()
    if first is not None:
        if first["type"] == "http.disconnect":
            raise ClientDisconnect()
        buf += first.get("body", b"")
        request._stream_consumed = True
        while True:
            if len(buf) > limit:
                raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
            message = await request.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            buf += message.get("body", b"")
            if not message.get("more_body", False):
                break
    else:
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > limit:
                raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
    if len(buf) > limit:
        raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
    request._body = bytes(buf)
    return request._body


async def body_chunks(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body's non-empty chunks as they arrive (a streamed body: NDJSON), refusing (413)
    a declared length past ``limit`` before reading and a body that grows past it."""
    cl = request.headers.get("content-length")
    if cl is not None and cl.isdigit() and int(cl) > limit:
        raise PayloadTooLarge(f"body of {int(cl)} bytes exceeds the limit of {limit} bytes")
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
        if chunk:
            yield chunk
