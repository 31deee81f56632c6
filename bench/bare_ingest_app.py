"""The ceiling for ``bench/bench_ingest.py``: a bare FastAPI app whose endpoints only
check a bearer token against an in-memory set (``BARE_TOKEN``, when set) and parse the
same bodies as ``/v1/models/{name}/update`` with orjson + numpy — no validation, no
database, nothing stored.

Served by ``uvicorn bench.bare_ingest_app:app`` with the same flags as Steward.
"""

from __future__ import annotations

import os

import numpy as np
import orjson
from fastapi import FastAPI, Request, Response

app = FastAPI()
TOKENS = {b"Bearer " + os.environ["BARE_TOKEN"].encode()} if os.environ.get("BARE_TOKEN") else None
UNAUTHORIZED = Response(b'{"detail":"unauthorized"}', status_code=401, media_type="application/json")


def _authorized(request: Request) -> bool:
    return TOKENS is None or request.headers.get("authorization", "").encode() in TOKENS


def _answer(n: int) -> Response:
    return Response(orjson.dumps({"accepted": n}), status_code=202, media_type="application/json")


@app.post("/json")
async def parse_json(request: Request) -> Response:
    if not _authorized(request):
        return UNAUTHORIZED
    samples = orjson.loads(await request.body())["samples"]
    X = np.asarray([s["x"] for s in samples], dtype=np.float32)
    Y = np.asarray([s["y"] for s in samples], dtype=np.float32)
    return _answer(len(X) + 0 * len(Y))


@app.post("/ndjson")
async def parse_ndjson(request: Request) -> Response:
    """Streamed: whole lines are parsed as they arrive, in slices, into float32 arrays."""
    if not _authorized(request):
        return UNAUTHORIZED
    pending = b""
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    loads = orjson.loads

    def flush(part: bytes) -> None:
        docs = [loads(ln) for ln in part.split(b"\n") if ln]
        if docs:
            xs.append(np.asarray([d["x"] for d in docs], dtype=np.float32))
            ys.append(np.asarray([d["y"] for d in docs], dtype=np.float32))

    async for chunk in request.stream():
        pending += chunk
        if len(pending) >= 256 * 1024:
            cut = pending.rfind(b"\n") + 1
            flush(pending[:cut])
            pending = pending[cut:]
    flush(pending)
    X = np.concatenate(xs)
    np.concatenate(ys)
    return _answer(len(X))
