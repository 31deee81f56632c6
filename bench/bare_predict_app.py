"""The anchor for ``bench/bench_predict_http.py``: a bare FastAPI endpoint that does what a
predict must do and nothing else — a bearer-token check against an in-memory set, orjson
parse, the same numpy ``Network.forward`` on weights loaded once, an orjson answer of the
same shape as Steward's (``model``, ``version``, ``outputs``, ``labels``). No validation
beyond what numpy does, no database, no aliases, no metrics.

Served by ``uvicorn bench.bare_predict_app:app`` with the same flags as Steward; the
network comes from the environment: ``BARE_WEIGHTS`` (a safetensors file of the version,
as ``GET …/versions/{v}/weights`` returns it), ``BARE_SPEC`` (JSON: task, activation,
input_dim, output_dim, n_layers) and ``BARE_TOKEN`` (the one accepted bearer token).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import orjson
import safetensors.numpy as stnp
from fastapi import FastAPI, Request, Response

from app.engine.codec import from_tensors
from app.engine.nn import network

_spec = orjson.loads(os.environ["BARE_SPEC"])
NET = from_tensors(stnp.load(Path(os.environ["BARE_WEIGHTS"]).read_bytes()), **_spec)
TASK = _spec["task"]
TOKENS = {b"Bearer " + os.environ["BARE_TOKEN"].encode()}

app = FastAPI()


@app.post("/predict")
async def predict(request: Request) -> Response:
    if request.headers.get("authorization", "").encode() not in TOKENS:
        return Response(b'{"detail":"unauthorized"}', status_code=401, media_type="application/json")
    X = np.asarray(orjson.loads(await request.body())["inputs"], dtype=np.float32)
    out = NET.forward(X)
    lab = network.labels(TASK, out)
    body = {"model": "bench", "version": 1, "outputs": out, "labels": None if lab is None else lab}
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")
