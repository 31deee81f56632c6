"""Operations: /healthz, /readyz (really checking the database and the blob store),
/metrics in Prometheus text format, /docs and /openapi.json."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.core.blobs import BlobStore
from app.core.db import Database
from app.main import create_app
from tests.api_helpers import assert_problem, create_model
from tests.conftest import auth


def test_healthz_is_open(anon):
    r = anon.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_readyz_checks_database_and_blob_store(anon):
    r = anon.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "checks": {"database": "ok", "blob_store": "ok"}, "pid": os.getpid()}


def test_readyz_fails_when_the_database_is_unreachable(anon):
    ctx = anon.app.state.ctx
    ops = ctx.operations
    good = ops.db
    ops.db = Database("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    try:
        body = assert_problem(anon.get("/readyz"), 503)
        assert body["checks"]["database"].startswith("error") and body["checks"]["blob_store"] == "ok"
        assert anon.get("/healthz").status_code == 200  # alive, just not ready
    finally:
        ops.db.dispose()
        ops.db = good
    assert anon.get("/readyz").status_code == 200


def test_readyz_fails_when_the_blob_store_is_unusable(anon, tmp_path: Path):
    ctx = anon.app.state.ctx
    ops = ctx.operations
    good = ops.blobs
    blocker = tmp_path / "not-a-dir"
    blocker.write_bytes(b"")
    bad = BlobStore.__new__(BlobStore)
    bad.root = blocker / "blobs"
    ops.blobs = bad
    try:
        body = assert_problem(anon.get("/readyz"), 503)
        assert body["checks"] == {"database": "ok", "blob_store": body["checks"]["blob_store"]}
        assert body["checks"]["blob_store"].startswith("error")
    finally:
        ops.blobs = good


def test_metrics_are_prometheus_text_and_count_requests(client):
    create_model(client)
    client.post("/v1/models/m/predict", json={"inputs": [[1, 2, 3]]})
    client.get("/v1/models/nope")
    r = TestClient(client.app).get("/metrics")  # open: no key
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    reqs = families["steward_http_requests"]
    counted = {(s.labels["method"], s.labels["route"], s.labels["status"]): s.value for s in reqs.samples}
    assert counted[("POST", "/v1/models", "201")] == 1
    assert counted[("POST", "/v1/models/{name}/predict", "200")] == 1
    assert counted[("GET", "/v1/models/{name}", "404")] == 1
    assert "steward_http_request_seconds" in families
    assert "steward_versions_created" in families


def test_metrics_can_be_closed(make_settings):
    with TestClient(create_app(make_settings(metrics_enabled=False))) as c:
        assert_problem(c.get("/metrics"), 404)


def test_docs_page(anon):
    r = anon.get("/docs")
    assert r.status_code == 200 and "swagger-ui" in r.text.lower()
    assert "/openapi.json" in r.text


@pytest.fixture
def spec(anon) -> dict:
    r = anon.get("/openapi.json")
    assert r.status_code == 200
    return r.json()


def _resolve(spec: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_openapi_has_the_bearer_scheme_on_every_v1_operation(spec):
    schemes = spec["components"]["securitySchemes"]
    bearer = [n for n, s in schemes.items() if s["type"] == "http" and s["scheme"].lower() == "bearer"]
    assert bearer
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if path.startswith("/v1/"):
                assert any(set(req) & set(bearer) for req in op.get("security", [])), (method, path)
                assert "401" in op["responses"] and "403" in op["responses"], (method, path)
            else:
                assert not op.get("security"), (method, path)


def test_openapi_operations_are_documented(spec):
    ids = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert op.get("summary"), (method, path)
            assert op.get("operationId"), (method, path)
            ids.append(op["operationId"])
            for code, resp in op["responses"].items():
                if code.startswith(("4", "5")) and code != "503":
                    assert "application/problem+json" in resp.get("content", {}), (method, path, code)
    assert len(ids) == len(set(ids))
    assert "Steward" in spec["info"]["title"] and len(spec["info"]["description"]) > 200


def test_openapi_every_json_request_schema_has_examples(spec):
    checked = 0
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            content = op.get("requestBody", {}).get("content", {})
            if "application/json" not in content:
                continue
            media = content["application/json"]
            schema = media["schema"]
            branches = [_resolve(spec, b) for b in schema.get("anyOf", schema.get("oneOf", [schema]))]
            has = bool(media.get("example") or media.get("examples")) or any(
                b.get("examples") or b.get("example") for b in branches
            )
            assert has, f"{method.upper()} {path}: request schema without examples"
            checked += 1
    assert checked >= 5


def test_openapi_names_the_issue_2_operations(spec):
    ops = {op["operationId"] for ops in spec["paths"].values() for op in ops.values()}
    assert ops >= {
        "create_model",
        "list_models",
        "get_model",
        "delete_model",
        "list_versions",
        "get_version",
        "download_weights",
        "import_version",
        "put_alias",
        "get_alias",
        "list_aliases",
        "delete_alias",
        "predict",
        "evaluate",
        "create_key",
        "list_keys",
        "revoke_key",
        "healthz",
        "readyz",
        "metrics",
    }


def test_authorize_in_swagger_works_with_the_bootstrap_key(anon):
    assert anon.get("/v1/keys", headers=auth()).status_code == 200
