"""POST /v1/models/{name}/update: ingestion, validation, idempotency, concurrency
(on SQLite and PostgreSQL). Learning through the API is in tests/online/test_learner.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import orjson
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.core.tables import IdempotencyKey, SampleBatch
from app.main import create_app
from app.online.log import read_log
from app.registry.models import get_model
from tests.conftest import auth
from tests.online_helpers import Server, chunks, ndjson, samples

NDJSON = {"Content-Type": "application/x-ndjson"}


@pytest.fixture
def ic(make_settings) -> Iterator[TestClient]:
    """An app without learner and worker: ingestion only."""
    app = create_app(make_settings(run_learner=False, run_worker=False, max_body_bytes=64 * 1024))
    with TestClient(app, headers=auth()) as c:
        r = c.post("/v1/models", json={"name": "m", "task": "binary", "input_dim": 4})
        assert r.status_code == 201, r.text
        yield c


def log_of(c: TestClient, name: str = "m") -> tuple[np.ndarray, np.ndarray, int]:
    ctx = c.app.state.ctx  # type: ignore[attr-defined]
    with ctx.db.read() as s:
        m = get_model(s, name)
        X, Y = read_log(s, m, 0, m.next_offset - 1)
        rows = s.scalar(sa.select(sa.func.count()).select_from(SampleBatch).where(SampleBatch.model_id == m.id))
        return X, Y, int(rows or 0)


def accepted(c: TestClient, name: str = "m") -> int:
    return c.get(f"/v1/models/{name}").json()["online"]["accepted"]


def test_json_and_ndjson_append_contiguous_offsets(ic):
    rng = np.random.default_rng(0)
    X1, Y1 = rng.normal(size=(3, 4)), np.array([1, 0, 1])
    r = ic.post("/v1/models/m/update", json={"samples": samples(X1, Y1)})
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": 3, "first_offset": 0, "last_offset": 2, "duplicate": False}
    X2, Y2 = rng.normal(size=(5, 4)) * 1e3, np.array([0, 0, 1, 1, 0])
    r = ic.post("/v1/models/m/update", content=ndjson(X2, Y2), headers=NDJSON)
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": 5, "first_offset": 3, "last_offset": 7, "duplicate": False}
    X, Y, rows = log_of(ic)
    assert rows == 2  # one row per request
    np.testing.assert_array_equal(X, np.concatenate([X1, X2]).astype(np.float32))
    np.testing.assert_array_equal(Y, np.concatenate([Y1, Y2]).astype(np.float32))
    online = ic.get("/v1/models/m").json()["online"]
    assert online["accepted"] == 8 and online["applied"] == 0 and online["lag"] == 8


def test_ndjson_streamed_in_chunks_with_blank_lines_and_crlf(ic):
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(300, 4)), rng.integers(0, 2, 300)
    body = ndjson(X, Y).replace(b"\n", b"\r\n", 7) + b"\n   \n"
    r = ic.post("/v1/models/m/update", content=chunks(body, 333), headers=NDJSON)
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == 300
    Xs, Ys, _ = log_of(ic)
    np.testing.assert_array_equal(Xs, X.astype(np.float32))
    np.testing.assert_array_equal(Ys, Y.astype(np.float32))


def test_labels_of_every_task(ic):
    ok = [
        ("mc", {"task": "multiclass", "output_dim": 3}, [0, 2, 1.0], np.int64),
        ("r1", {"task": "regression"}, [1.5, [-2.0], 3], np.float32),
        ("r2", {"task": "regression", "output_dim": 2}, [[1, 2], [3.5, -4], [0, 0]], np.float32),
        ("b1", {"task": "binary"}, [1, [0], 1.0], np.float32),
    ]
    for name, spec, ys, dtype in ok:
        assert ic.post("/v1/models", json={"name": name, "input_dim": 2, **spec}).status_code == 201
        body = {"samples": [{"x": [i, -i], "y": y} for i, y in enumerate(ys)]}
        r = ic.post(f"/v1/models/{name}/update", json=body)
        assert r.status_code == 202, (name, r.text)
        _, Y, _ = log_of(ic, name)
        assert Y.dtype == dtype
        want = np.array([y if not isinstance(y, list) or len(y) > 1 else y[0] for y in ys], dtype=dtype)
        if spec.get("output_dim", 1) > 1 and spec["task"] == "regression":
            want = want.reshape(3, -1)
        elif spec["task"] == "regression":
            want = want.reshape(3, 1)
        np.testing.assert_array_equal(Y, want)


X_OK = [0.5, 1.0, -2.0, 3.0]
BAD = [
    # (sample text, field, message fragment)
    ('{"x": [0.5, 1.0, -2.0, NaN], "y": 1}', "x", "NaN"),
    ('{"x": [0.5, 1.0, -2.0, Infinity], "y": 1}', "x", "Infinity"),
    ('{"x": [0.5, 1.0, -Infinity, 3], "y": 1}', "x", "-Infinity"),
    ('{"x": [0.5, 1.0, 1e39, 3], "y": 1}', "x", "overflows float32"),
    ('{"x": [0.5, 1.0, -1e39, 3], "y": 1}', "x", "overflows float32"),
    ('{"x": [0.5, 1.0, 1e400, 3], "y": 1}', "x", "not a finite"),
    ('{"x": [0.5, 1.0, 100000000000000000000000000000000000000000, 3], "y": 1}', "x", "overflows float32"),
    ('{"x": [0.5, 1.0, -2.0], "y": 1}', "x", "expected 4 values, got 3"),
    ('{"x": [0.5, 1.0, -2.0, 3, 4], "y": 1}', "x", "expected 4 values, got 5"),
    ('{"x": [0.5, 1.0, true, 3], "y": 1}', "x", "boolean"),
    ('{"x": [0.5, 1.0, "2", 3], "y": 1}', "x", "string"),
    ('{"x": [0.5, 1.0, null, 3], "y": 1}', "x", "null"),
    ('{"x": [0.5, 1.0, [2], 3], "y": 1}', "x", "list"),
    ('{"x": "0.5, 1.0, 2, 3", "y": 1}', "x", "string"),
    ('{"y": 1}', "x", "field required"),
    ('{"x": [0.5, 1.0, -2.0, 3]}', "y", "field required"),
    ('{"x": [0.5, 1.0, -2.0, 3], "y": 2}', "y", "expected 0 or 1"),
    ('{"x": [0.5, 1.0, -2.0, 3], "y": 0.5}', "y", "expected 0 or 1"),
    ('{"x": [0.5, 1.0, -2.0, 3], "y": -1}', "y", "expected 0 or 1"),
    ('{"x": [0.5, 1.0, -2.0, 3], "y": true}', "y", "boolean"),
    ('{"x": [0.5, 1.0, -2.0, 3], "y": "1"}', "y", "string"),
    ('{"x": [0.5, 1.0, -2.0, 3], "y": null}', "y", "null"),
    ('{"x": [0.5, 1.0, -2.0, 3], "y": [1, 0]}', "y", "list"),
    ('{"x": [0.5, 1.0, -2.0, 3], "y": NaN}', "y", "expected 0 or 1"),
    ('{"x": [0.5, 1.0, -2.0, 3], "y": 1, "w": 2}', "w", "unexpected field"),
]


@pytest.mark.parametrize(("text", "field", "fragment"), BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("fmt", ["json", "ndjson"])
def test_bad_sample_is_422_at_its_index_and_nothing_is_stored(ic, text, field, fragment, fmt):
    good = '{"x": [0.5, 1.0, -2.0, 3.0], "y": 0}'
    before = accepted(ic)
    lines = [good, good, good, text, good]
    if fmt == "json":
        r = ic.post(
            "/v1/models/m/update",
            content='{"samples": [' + ", ".join(lines) + "]}",
            headers={"Content-Type": "application/json"},
        )
    else:
        r = ic.post("/v1/models/m/update", content="\n".join(lines) + "\n", headers=NDJSON)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["errors"][0]["loc"] == ["body", "samples", 3, field], body
    assert fragment in body["errors"][0]["msg"], body
    assert accepted(ic) == before
    assert log_of(ic)[2] == 0


def test_first_bad_sample_is_the_one_reported(ic):
    body = {"samples": [{"x": X_OK, "y": 1}] * 5 + [{"x": X_OK, "y": 3}, {"x": [1.0], "y": 1}]}
    r = ic.post("/v1/models/m/update", json=body)
    assert r.status_code == 422
    assert r.json()["errors"][0]["loc"] == ["body", "samples", 5, "y"]


def test_bad_sample_deep_in_a_long_ndjson_stream(make_settings):
    app = create_app(make_settings(run_learner=False, run_worker=False))
    with TestClient(app, headers=auth()) as c:
        assert c.post("/v1/models", json={"name": "m", "task": "binary", "input_dim": 4}).status_code == 201
        line = orjson.dumps({"x": X_OK, "y": 1}) + b"\n"
        body = line * 20_000 + b'{"x": [1, 2, 3, 4], "y": 7}\n' + line * 10  # past the first parse slice
        r = c.post("/v1/models/m/update", content=chunks(body, 65536), headers=NDJSON)
        assert r.status_code == 422
        assert r.json()["errors"][0]["loc"] == ["body", "samples", 20_000, "y"]
        body = line * 20_000 + b'{"x": [1, 2, 3, 4], "y": 1\n' + line * 10
        r = c.post("/v1/models/m/update", content=chunks(body, 65536), headers=NDJSON)
        assert r.status_code == 400
        assert r.json()["errors"][0]["line"] == 20_001
        assert accepted(c) == 0
        r = c.post("/v1/models/m/update", content=chunks(line * 50_000, 65536), headers=NDJSON)
        assert r.json() == {"accepted": 50_000, "first_offset": 0, "last_offset": 49_999, "duplicate": False}


def test_sample_that_is_not_an_object(ic):
    r = ic.post("/v1/models/m/update", json={"samples": [{"x": X_OK, "y": 1}, [1, 2]]})
    assert r.status_code == 422
    assert r.json()["errors"][0]["loc"] == ["body", "samples", 1]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"samples": []}, ["body", "samples"]),
        ({"samples": {"x": X_OK, "y": 1}}, ["body", "samples"]),
        ({}, ["body", "samples"]),
        ([{"x": X_OK, "y": 1}], ["body"]),
        ({"samples": [{"x": X_OK, "y": 1}], "extra": 1}, ["body", "extra"]),
    ],
)
def test_bad_envelope_is_422(ic, body, loc):
    r = ic.post("/v1/models/m/update", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"] == loc
    assert accepted(ic) == 0


def test_malformed_json_is_400(ic):
    r = ic.post("/v1/models/m/update", content=b'{"samples": [{"x": [1, 2, 3, 4], "y": 1}', headers={})
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/problem+json"
    assert "malformed JSON" in r.json()["detail"]
    assert ic.post("/v1/models/m/update", content=b"").status_code == 400
    assert accepted(ic) == 0


def test_malformed_ndjson_line_is_400_naming_the_line(ic):
    good = b'{"x": [0.5, 1.0, -2.0, 3.0], "y": 0}\n'
    body = good + b"\n" + good + b'{"x": [1, 2, 3, 4], "y": 1\n' + good
    r = ic.post("/v1/models/m/update", content=body, headers=NDJSON)
    assert r.status_code == 400, r.text
    p = r.json()
    assert "line 4" in p["detail"]
    assert p["errors"][0]["loc"] == ["body", "samples", 2]
    assert p["errors"][0]["line"] == 4
    r = ic.post("/v1/models/m/update", content=b"\n\n", headers=NDJSON)
    assert r.status_code == 422
    assert accepted(ic) == 0


def test_oversized_bodies_are_413_and_store_nothing(ic):
    big = {"samples": [{"x": X_OK, "y": 1}] * 3000}  # ~100 KB > 64 KiB
    r = ic.post("/v1/models/m/update", json=big)
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/problem+json"
    line = orjson.dumps({"x": X_OK, "y": 1}) + b"\n"
    # streamed without Content-Length (chunked): refused as the limit is crossed
    r = ic.post("/v1/models/m/update", content=chunks(line * 3000, 1000), headers=NDJSON)
    assert r.status_code == 413
    assert accepted(ic) == 0 and log_of(ic)[2] == 0
    # just under the limit is fine
    r = ic.post("/v1/models/m/update", content=chunks(line * 1500, 1000), headers=NDJSON)
    assert r.status_code == 202
    assert accepted(ic) == 1500


def test_content_type_and_unknown_model_and_scopes(ic):
    r = ic.post("/v1/models/m/update", content=b"x", headers={"Content-Type": "text/csv"})
    assert r.status_code == 415
    r = ic.post("/v1/models/nope/update", json={"samples": [{"x": X_OK, "y": 1}]})
    assert r.status_code == 404
    read = ic.post("/v1/keys", json={"name": "r", "scope": "read"}).json()["key"]
    ingest = ic.post("/v1/keys", json={"name": "i", "scope": "ingest", "models": ["other"]}).json()["key"]
    ingest_m = ic.post("/v1/keys", json={"name": "i2", "scope": "ingest", "models": ["m"]}).json()["key"]
    body = {"samples": [{"x": X_OK, "y": 1}]}
    assert ic.post("/v1/models/m/update", json=body, headers=auth(read)).status_code == 403
    assert ic.post("/v1/models/m/update", json=body, headers=auth(ingest)).status_code == 403
    assert ic.post("/v1/models/m/update", json=body, headers=auth(ingest_m)).status_code == 202
    assert ic.post("/v1/models/m/checkpoint", headers=auth(ingest_m)).status_code == 403
    assert ic.post("/v1/models/m/resume", headers=auth(ingest_m)).status_code == 403
    assert ic.post("/v1/models/m/update", json=body, headers={"Authorization": ""}).status_code == 401


def test_idempotency_key_retry_conflict_and_expiry(ic):
    ctx = ic.app.state.ctx  # type: ignore[attr-defined]
    body = {"samples": [{"x": X_OK, "y": 1}, {"x": X_OK, "y": 0}]}
    assert ic.post("/v1/models/m/update", json={"samples": [{"x": X_OK, "y": 1}]}).status_code == 202
    k = {"Idempotency-Key": "order-17"}
    first = ic.post("/v1/models/m/update", json=body, headers=k)
    assert first.status_code == 202
    assert first.json() == {"accepted": 2, "first_offset": 1, "last_offset": 2, "duplicate": False}
    again = ic.post("/v1/models/m/update", json=body, headers=k)
    assert again.status_code == 202
    assert again.json() == {**first.json(), "duplicate": True}
    # the same samples as NDJSON (different bytes, same request) are a retry too
    nd = b'{"x":[0.5,1.0,-2.0,3.0],"y":1}\n{"y":0,"x":[0.5,1,-2,3]}\n'
    r = ic.post("/v1/models/m/update", content=nd, headers={**k, **NDJSON})
    assert r.json() == {**first.json(), "duplicate": True}
    # different samples with the same key
    r = ic.post("/v1/models/m/update", json={"samples": [{"x": X_OK, "y": 0}]}, headers=k)
    assert r.status_code == 409
    assert r.headers["content-type"] == "application/problem+json"
    assert accepted(ic) == 3
    # keys are per model
    assert ic.post("/v1/models", json={"name": "m2", "task": "binary", "input_dim": 4}).status_code == 201
    r = ic.post("/v1/models/m2/update", json=body, headers=k)
    assert r.json() == {"accepted": 2, "first_offset": 0, "last_offset": 1, "duplicate": False}
    # bad keys
    r = ic.post("/v1/models/m/update", json=body, headers={"Idempotency-Key": "a b"})
    assert r.status_code == 422
    r = ic.post("/v1/models/m/update", json=body, headers={"Idempotency-Key": "x" * 256})
    assert r.status_code == 422
    # expiry: an old key is unknown again, and the purge forgets it
    svc = ctx.online
    old = ctx.settings.idempotency_ttl_seconds
    ctx.settings.idempotency_ttl_seconds = 1
    try:
        time.sleep(1.2)
        r = ic.post("/v1/models/m/update", json=body, headers=k)
        assert r.json() == {"accepted": 2, "first_offset": 3, "last_offset": 4, "duplicate": False}
        time.sleep(1.2)
        assert svc.purge_keys() == 2  # order-17 on m (re-made above) and on m2
    finally:
        ctx.settings.idempotency_ttl_seconds = old
    with ctx.db.read() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(IdempotencyKey)) == 0


def test_concurrent_retries_of_one_key_append_once(ic):
    body = {"samples": [{"x": X_OK, "y": 1}] * 10}
    answers: list[dict] = []

    def send() -> None:
        r = ic.post("/v1/models/m/update", json=body, headers={"Idempotency-Key": "same"})
        assert r.status_code == 202
        answers.append(r.json())

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert accepted(ic) == 10
    assert sorted(a["duplicate"] for a in answers) == [False] + [True] * 5
    assert {(a["first_offset"], a["last_offset"]) for a in answers} == {(0, 9)}


def test_openapi_documents_both_body_types(ic):
    op = ic.get("/openapi.json").json()["paths"]["/v1/models/{name}/update"]["post"]
    content = op["requestBody"]["content"]
    assert set(content) == {"application/json", "application/x-ndjson"}
    assert content["application/json"]["examples"]
    assert {p["name"] for p in op["parameters"]} >= {"name", "wait", "timeout", "Idempotency-Key"}
    assert {"202", "400", "409", "413", "422"} <= set(op["responses"])


@pytest.mark.slow
def test_eight_concurrent_clients_get_contiguous_offsets(db_url, tmp_path):
    """8 threads × 25 requests of 1–40 samples against a real uvicorn server."""
    import httpx

    with Server(db_url, tmp_path / "data", STEWARD_RUN_LEARNER="false", STEWARD_RUN_WORKER="false") as srv:
        with srv.client() as c:
            assert c.post("/v1/models", json={"name": "m", "task": "regression", "input_dim": 3}).status_code == 201
        results: list[tuple[int, int, float]] = []
        errors: list[str] = []
        lock = threading.Lock()

        def client(k: int) -> None:
            rng = np.random.default_rng(k)
            with httpx.Client(base_url=srv.url, headers=auth(), timeout=60) as c:
                for j in range(25):
                    n = int(rng.integers(1, 41))
                    tag = k * 1000 + j  # every sample of a request carries its request's tag
                    X = np.full((n, 3), float(tag))
                    if j % 2:
                        r = c.post("/v1/models/m/update", content=ndjson(X, np.full(n, tag)), headers=NDJSON)
                    else:
                        r = c.post("/v1/models/m/update", json={"samples": samples(X, np.full(n, tag))})
                    if r.status_code != 202:
                        errors.append(r.text)
                        continue
                    a = r.json()
                    assert a["accepted"] == n and a["last_offset"] - a["first_offset"] == n - 1
                    with lock:
                        results.append((a["first_offset"], a["last_offset"], float(tag)))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert len(results) == 200
        results.sort()
        expect = 0
        for first, last, _ in results:
            assert first == expect  # no gap, no overlap
            expect = last + 1
        with srv.client() as c:
            assert c.get("/v1/models/m").json()["online"]["accepted"] == expect
    # the log holds each request's samples exactly at its offsets
    from app.context import AppContext
    from app.core.settings import Settings

    ctx = AppContext.build(Settings(database_url=db_url, data_dir=tmp_path / "data"))
    try:
        with ctx.db.read() as s:
            m = get_model(s, "m")
            X, Y = read_log(s, m, 0, expect - 1)
        for first, last, tag in results:
            assert (X[first : last + 1] == tag).all()
            assert (Y[first : last + 1] == tag).all()
    finally:
        ctx.close()


@pytest.mark.parametrize("ctype", ["application/x-ndjson", "application/json"])
def test_a_request_announces_its_append_only_once_its_body_has_arrived(ctype):
    """A slow upload must not make concurrent commits wait for it: the group-commit
    announcement comes after the last body chunk."""
    import asyncio

    from starlette.requests import Request

    from app.online.router import _read_samples
    from app.online.samples import SampleSpec

    rows = [orjson.dumps({"x": [1.0, 2.0], "y": k % 2}) for k in range(6)]
    body = b"\n".join(rows) + b"\n" if ctype != "application/json" else b'{"samples": [' + b",".join(rows) + b"]}"
    chunks = [body[i : i + 17] for i in range(0, len(body), 17)]
    events: list[str] = []

    async def receive():  # type: ignore[no-untyped-def]
        k = sum(e == "chunk" for e in events)
        events.append("chunk")
        return {"type": "http.request", "body": chunks[k], "more_body": k + 1 < len(chunks)}

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-type", ctype.encode())]}
    X, _ = asyncio.run(
        _read_samples(Request(scope, receive), 1 << 20, SampleSpec("binary", 2, 1), lambda: events.append("read"))
    )
    assert len(X) == 6
    assert events == ["chunk"] * len(chunks) + ["read"]
