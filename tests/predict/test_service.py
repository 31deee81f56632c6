"""The predict fast path answers exactly what the strict path answers: for thousands of
bodies mutated from valid ones (strings, booleans, nulls, extra, repeated and escaped
keys, non-finite and huge numbers, ragged rows, aliases, versions), ``predict_body``
and ``predict_strict`` give the same bytes or the same problem."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from app.core.errors import StewardError
from app.core.settings import Settings
from app.main import create_app
from app.predict.service import PredictService, plain_request
from tests.api_helpers import create_model
from tests.conftest import ADMIN, auth


@pytest.fixture
def app_client(tmp_path) -> Iterator[TestClient]:
    s = Settings(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        admin_key=ADMIN,
        gc_tuning=False,
        run_learner=False,
        run_worker=False,
    )
    with TestClient(create_app(s), headers=auth()) as c:
        yield c


def outcome(fn) -> tuple[str, object]:  # type: ignore[no-untyped-def]
    try:
        return "ok", fn()
    except StewardError as e:
        return "error", (type(e).__name__, e.status, e.body())


MUTATIONS = [
    ("0.5", "true"),
    ("0.5", "false"),
    ("0.5", "null"),
    ("0.5", '"0.5"'),
    ("0.5", "NaN"),
    ("0.5", "Infinity"),
    ("0.5", "1e39"),
    ("0.5", "-1e400"),
    ("0.5", "123456789012345678901234567890"),
    ("0.5", "9" * 400),
    ("0.5", "[0.5]"),
    ("0.5", "{}"),
    ("0.5", '{"a": 1}'),
    ("0.5", "5e-50"),
    ("0.5", "-0"),
    ("0.5", "7"),
    ("[0.5, ", "["),
    ("]]", "], []]"),
    ("]]", "], [1, 2]]"),
    ("]]", "], [1, 2, 3, 4]]"),
    ("]]", ']], "inputs": [[1, 2, 3]]'),
    ("]]", ']], "extra": 1'),
    ("]]", ']], "version": 1'),
    ("]]", ']], "version": 2'),
    ("]]", ']], "version": 0'),
    ("]]", ']], "version": 1.0'),
    ("]]", ']], "version": true'),
    ("]]", ']], "version": "1"'),
    ("]]", ']], "version": 99999999999'),
    ("]]", ']], "version": null'),
    ("]]", ']], "alias": "production"'),
    ("]]", ']], "alias": "staff"'),
    ("]]", ']], "alias": "latest"'),
    ("]]", ']], "alias": "Prod"'),
    ("]]", ']], "alias": "\\u0070rod"'),
    ("]]", ']], "alias": null'),
    ("]]", ']], "alias": 3'),
    ("]]", ']], "alias": "production", "version": 1'),
    ('"inputs"', '"in\\u0070uts"'),
    ('"inputs"', '"inputz"'),
    ('"inputs"', '"INPUTS"'),
    ("{", "[{"),
    ("{", " \n\t{"),
    ("[[", "[[ "),
    ("[[", "[]"),
    ("[[", "[[["),
    ("[[", "7"),
    ("[[", '{"x": [['),
    ("[[", "null"),
]


def bodies(rng: random.Random, n: int) -> Iterator[bytes]:
    base = '{"inputs": [[0.5, -1.0, 2.0], [3.0, 0.25, -0.5]]}'
    yield base.encode()
    yield b'{"inputs": []}'
    yield b"{}"
    yield b""
    yield b"[]"
    yield b'{"inputs": [[1,2,3]]}\n'
    yield '{"inputs": [[1,2,3]], "alias": "pr\u00f6d"}'.encode()
    for _ in range(n):
        text = base
        for _ in range(rng.randint(1, 3)):
            old, new = rng.choice(MUTATIONS)
            at = [i for i in range(len(text)) if text.startswith(old, i)]
            if at:
                i = rng.choice(at)
                text = text[:i] + new + text[i + len(old) :]
        data = text.encode()
        if rng.random() < 0.05 and data:  # a cut body
            data = data[: rng.randrange(len(data))]
        yield data


def test_fast_path_answers_exactly_what_the_strict_path_does(app_client):
    create_model(app_client, "m")
    r = app_client.put("/v1/models/m/aliases/production", json={"version": 1})
    assert r.status_code in (200, 201)
    svc: PredictService = app_client.app.state.ctx.predict  # type: ignore[attr-defined]
    rng = random.Random(12345)
    fast = 0
    seen = set()
    for body in bodies(rng, 3000):
        if body in seen:
            continue
        seen.add(body)
        strict = outcome(lambda body=body: svc.predict_strict("m", body))
        got = outcome(lambda body=body: asyncio.run(svc.predict_body("m", body)))
        assert got == strict, body
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            doc = None
        fast += plain_request(body, doc) is not None and strict[0] == "ok"
    assert len(seen) > 500
    assert fast >= 20  # the fast path was taken, not only the strict one


def test_the_answer_is_the_forward_pass_as_doubles(app_client):
    create_model(app_client, "m", task="multiclass", output_dim=4, hidden=[5])
    svc: PredictService = app_client.app.state.ctx.predict  # type: ignore[attr-defined]
    X = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    got = orjson.loads(asyncio.run(svc.predict_body("m", orjson.dumps({"inputs": X.tolist()}))))
    served = svc.resolve("m", version=None, alias=None)
    out = svc.versions.load(served.model, served.version).forward(X)
    assert got["outputs"] == out.astype(np.float64).tolist()
    assert got["labels"] == out.argmax(axis=1).tolist()
    assert got["model"] == "m" and got["version"] == 1
