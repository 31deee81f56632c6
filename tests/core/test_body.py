"""read_body: the whole body in one message or many, the limit enforced before the rest
is read, a disconnect reported, and Starlette's own body() agreeing afterwards."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import ClientDisconnect, Request

from app.core.body import read_body
from app.core.errors import BadRequest, PayloadTooLarge


def request(messages: list[dict[str, Any]], headers: list[tuple[bytes, bytes]] | None = None) -> tuple[Request, list]:
    taken: list[dict[str, Any]] = []
    pending = list(messages)

    async def receive() -> dict[str, Any]:
        if not pending:
            raise AssertionError("read past the last message")
        taken.append(pending.pop(0))
        return taken[-1]

    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers or [], "query_string": b""}
    return Request(scope, receive), taken


def chunks(*parts: bytes) -> list[dict[str, Any]]:
    return [{"type": "http.request", "body": p, "more_body": k < len(parts) - 1} for k, p in enumerate(parts)]


@pytest.mark.parametrize(
    "parts", [(b"",), (b'{"a": 1}',), (b'{"a"', b": 1", b"}"), (b"", b"abc"), (b"abc", b"")], ids=repr
)
def test_the_body_is_every_message_joined_and_body_agrees(parts):
    async def go() -> None:
        req, _ = request(chunks(*parts))
        body = await read_body(req, 1024)
        assert body == b"".join(parts)
        assert await req.body() == body

    asyncio.run(go())


@pytest.mark.parametrize("parts", [(b"x" * 11,), (b"x" * 6, b"x" * 5, b"never read"), (b"x" * 10, b"x")])
def test_a_body_past_the_limit_is_413_before_the_rest_is_read(parts):
    async def go() -> None:
        req, taken = request(chunks(*parts))
        with pytest.raises(PayloadTooLarge):
            await read_body(req, 10)
        assert len(taken) <= 2 or sum(len(m["body"]) for m in taken[:-1]) <= 10

    asyncio.run(go())


def test_a_declared_length_is_checked_first():
    async def go() -> None:
        req, taken = request(chunks(b"x"), [(b"content-length", b"11")])
        with pytest.raises(PayloadTooLarge):
            await read_body(req, 10)
        assert taken == []
        req, _ = request(chunks(b"x"), [(b"content-length", b"1x")])
        with pytest.raises(BadRequest):
            await read_body(req, 10)

    asyncio.run(go())


@pytest.mark.parametrize("before", [0, 1])
def test_a_disconnect_is_reported(before):
    async def go() -> None:
        messages = [*chunks(b"a", b"b")[:before], {"type": "http.disconnect"}]
        if before:
            messages[0]["more_body"] = True
        req, _ = request(messages)
        with pytest.raises(ClientDisconnect):
            await read_body(req, 10)

    asyncio.run(go())
