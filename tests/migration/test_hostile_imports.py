"""``POST /v1/models/{name}/versions`` with hostile files, on both databases.

Every file of :mod:`tests.interop.hostile_files` (safetensors as
``application/octet-stream``, ONNX as ``application/onnx``) is answered with the 4xx
problem naming what is wrong; nothing is stored (``latest_version``, the version list
and the blob store are unchanged); and the same client serves the next request. A real
``uvicorn`` server answers them all on ONE keep-alive connection (a 500 or a dropped
connection would show), and a smaller fuzz run of mutated files goes through HTTP too.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.main import create_app
from tests.conftest import auth
from tests.interop.hostile_files import (
    SPEC,
    Hostile,
    assert_names_the_problem,
    good_safetensors,
    onnx_bases,
    onnx_cases,
    safetensors_cases,
)
from tests.interop.test_decoder_fuzz import onnx_mutations, safetensors_files
from tests.online_helpers import Server

PROBLEM = "application/problem+json"
OCTET, ONNX = "application/octet-stream", "application/onnx"
HTTP_EXAMPLES = 25


@pytest.fixture
def quiet(make_settings) -> Iterator[tuple[TestClient, Any]]:
    """A client (server errors answered as 500s, not raised) of an app without learner and
    worker, with the model of :data:`SPEC`."""
    settings = make_settings(run_learner=False, run_worker=False)
    with TestClient(create_app(settings), headers=auth(), raise_server_exceptions=False) as c:
        assert c.post("/v1/models", json=SPEC).status_code == 201
        yield c, settings


def blob_files(settings: Any) -> set[str]:
    return {p.name for p in settings.blob_dir.rglob("*") if p.is_file()}


def upload(client: TestClient, data: bytes, ctype: str):
    return client.post("/v1/models/m/versions", content=data, headers={"Content-Type": ctype})


def assert_refused_and_nothing_stored(client: TestClient, settings: Any, case: Hostile, ctype: str) -> None:
    before = blob_files(settings)
    r = upload(client, case.data, ctype)
    assert r.status_code == case.status, r.text
    assert r.headers["content-type"].split(";")[0] == PROBLEM
    assert_names_the_problem(r.json(), case)
    # the same client answers the next request, and nothing was stored
    m = client.get("/v1/models/m")
    assert m.status_code == 200 and m.json()["latest_version"] == 1
    assert [v["version"] for v in client.get("/v1/models/m/versions").json()["items"]] == [1]
    assert blob_files(settings) == before


def test_hostile_safetensors_uploads(quiet, subtests) -> None:
    client, settings = quiet
    for case in safetensors_cases():
        with subtests.test(case.id):
            assert_refused_and_nothing_stored(client, settings, case, OCTET)
    r = upload(client, good_safetensors(), OCTET)  # and a good file still imports
    assert r.status_code == 201 and r.json()["version"] == 2, r.text


def test_hostile_onnx_uploads(quiet, subtests) -> None:
    client, settings = quiet
    for case in onnx_cases():
        with subtests.test(case.id):
            assert_refused_and_nothing_stored(client, settings, case, ONNX)
    r = upload(client, onnx_bases()[0], ONNX)
    assert r.status_code == 201 and r.json()["version"] == 2, r.text


def test_one_keep_alive_connection_survives_every_hostile_upload(db_url, tmp_path) -> None:
    """Through a real server: every hostile file on one HTTP/1.1 connection, each answered
    with its problem and the connection kept open; then a good import on it."""
    with Server(db_url, tmp_path / "data", STEWARD_RUN_LEARNER="false", STEWARD_RUN_WORKER="false") as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
        conn.connect()
        sock = conn.sock

        def call(method: str, path: str, body: bytes | None = None, ctype: str | None = None) -> tuple[int, Any]:
            headers = {**auth(), **({"Content-Type": ctype} if ctype else {})}
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
            assert conn.sock is sock, f"the server closed the connection after {method} {path} ({r.status})"
            assert r.status < 500, data[:500]
            return r.status, json.loads(data)

        assert call("POST", "/v1/models", json.dumps(SPEC).encode(), "application/json")[0] == 201
        cases = [(c, OCTET) for c in safetensors_cases()] + [(c, ONNX) for c in onnx_cases()]
        for case, ctype in cases:
            status, body = call("POST", "/v1/models/m/versions", case.data, ctype)
            assert status == case.status, (case.id, body)
            assert_names_the_problem(body, case)
        assert call("GET", "/v1/models/m")[1]["latest_version"] == 1
        status, body = call("POST", "/v1/models/m/versions", onnx_bases()[1], ONNX)
        assert status == 201 and body["version"] == 2, body
        conn.close()
        assert srv.proc is not None and srv.proc.poll() is None
    assert "unhandled error" not in srv.log.read_text()


HTTP_FUZZ = settings(
    max_examples=HTTP_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def test_fuzzed_uploads_over_http_are_4xx_problems_or_imports(quiet) -> None:
    client, _ = quiet

    @HTTP_FUZZ
    @given(upload_=st.one_of(safetensors_files().map(lambda d: (d, OCTET)), onnx_mutations().map(lambda d: (d, ONNX))))
    def check(upload_: tuple[bytes, str]) -> None:
        data, ctype = upload_
        r = upload(client, data, ctype)
        assert r.status_code == 201 or 400 <= r.status_code < 500, r.text[:500]
        if r.status_code != 201:
            assert r.headers["content-type"].split(";")[0] == PROBLEM and r.json()["detail"]
        assert client.get("/v1/models/m").status_code == 200  # the same client goes on

    check()
