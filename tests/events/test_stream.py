"""``GET /events/stream``: Server-Sent Events from a real server (uvicorn), with
``Last-Event-ID`` resume — on both databases."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.online_helpers import Server


def sse(lines: Iterator[str], n: int) -> list[dict[str, Any]]:
    """The next ``n`` events of an SSE line stream (``id``, ``event``, ``data`` fields)."""
    out: list[dict[str, Any]] = []
    cur: dict[str, Any] = {}
    for line in lines:
        if not line:
            if "data" in cur:
                out.append(cur)
                if len(out) == n:
                    return out
            cur = {}
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        cur[field] = value[1:] if value.startswith(" ") else value
    raise AssertionError(f"the stream ended after {len(out)} events")


@pytest.fixture
def server(db_url, tmp_path) -> Iterator[Server]:
    with Server(db_url, tmp_path / "data", STEWARD_RUN_LEARNER="false", STEWARD_EVENTS_HEARTBEAT_SECONDS="0.5") as s:
        yield s


def test_stream_then_resume_with_last_event_id(server):
    with server.client() as c:
        assert c.post("/v1/models", json={"name": "m", "task": "binary", "input_dim": 2}).status_code == 201
        with c.stream("GET", "/v1/events/stream", params={"after": 0}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            first = sse(r.iter_lines(), 2)
        assert [e["event"] for e in first] == ["model.created", "version.created"]
        assert [int(e["id"]) for e in first] == [1, 2]
        body = orjson.loads(first[1]["data"])
        assert body["id"] == 2 and body["type"] == "version.created" and body["model"] == "m"
        # changes while no one listens
        for v in (1, 1):
            c.put("/v1/models/m/aliases/prod", json={"version": v})
        c.delete("/v1/models/m/aliases/prod")
        with c.stream("GET", "/v1/events/stream", headers={"Last-Event-ID": "2"}) as r:
            resumed = sse(r.iter_lines(), 3)
        assert [int(e["id"]) for e in resumed] == [3, 4, 5]
        assert [e["event"] for e in resumed] == ["alias.moved", "alias.moved", "alias.deleted"]


def test_stream_from_now_on_and_live(server):
    with server.client() as c:
        c.post("/v1/models", json={"name": "m", "task": "binary", "input_dim": 2})
        got: list[dict[str, Any]] = []
        connected = threading.Event()

        def listen() -> None:
            with (
                httpx.Client(base_url=server.url, headers=c.headers, timeout=30) as lc,
                lc.stream("GET", "/v1/events/stream", params={"type": "alias.*"}) as r,
            ):
                connected.set()
                got.extend(sse(r.iter_lines(), 2))

        t = threading.Thread(target=listen)
        t.start()
        assert connected.wait(10)
        for v in (1, 1):  # the first PUT may race the stream's start: a second one follows it
            c.put("/v1/models/m/aliases/prod", json={"version": v})
        c.put("/v1/models/m/aliases/other", json={"version": 1})
        t.join(30)
        assert not t.is_alive()
        assert all(e["event"] == "alias.moved" for e in got)
        ids = [int(e["id"]) for e in got]
        assert ids == sorted(ids) and ids[0] >= 3  # nothing from before the stream started


def test_fifty_streams_get_every_event(server):
    """Many streaming clients at once: each receives every event, in order, once."""
    with server.client() as c:
        c.post("/v1/models", json={"name": "m", "task": "binary", "input_dim": 2})
        n_clients, n_moves = 50, 20
        results: list[list[int]] = [[] for _ in range(n_clients)]
        ready = threading.Barrier(n_clients + 1)

        def listen(i: int) -> None:
            with (
                httpx.Client(base_url=server.url, headers=c.headers, timeout=60) as lc,
                lc.stream("GET", "/v1/events/stream", params={"after": 2}) as r,
            ):
                ready.wait()
                results[i] = [int(e["id"]) for e in sse(r.iter_lines(), n_moves)]

        threads = [threading.Thread(target=listen, args=(i,)) for i in range(n_clients)]
        for t in threads:
            t.start()
        ready.wait(30)
        for k in range(n_moves):
            c.put("/v1/models/m/aliases/prod", json={"version": 1, "reason": str(k)})
        for t in threads:
            t.join(60)
        assert all(r == list(range(3, 3 + n_moves)) for r in results), results
