"""Reading request bodies within the configured limit."""

from __future__ import annotations

from fastapi import Request

from app.core.errors import BadRequest, PayloadTooLarge


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) once it passes ``limit`` bytes, before reading it all."""
    cl = request.headers.get("content-length")
    if cl is not None:
        if not cl.isdigit():
            raise BadRequest("invalid Content-Length")
        if int(cl) > limit:
            raise PayloadTooLarge(f"body of {int(cl)} bytes exceeds the limit of {limit} bytes")
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
    return bytes(buf)
