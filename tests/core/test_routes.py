"""Hot routes (app.core.routes): /predict and /update read their parameters themselves, so
check they refuse what FastAPI's declared parameters refused, in the same order — the key
(401), the path (422), the scope and model restriction (403), then query and headers —
and document the same parameters."""

from __future__ import annotations

import pytest

from tests.api_helpers import assert_problem, create_model

SAMPLE = {"samples": [{"x": [1.0, 2.0, 3.0], "y": 1.0}]}
X = {"inputs": [[1.0, 2.0, 3.0]]}


@pytest.mark.parametrize("path,body", [("predict", X), ("update", SAMPLE)])
def test_the_key_then_the_name_then_the_scope(client, anon, path, body):
    create_model(client)
    assert_problem(anon.post(f"/v1/models/m/{path}", json=body), 401)
    assert_problem(anon.post(f"/v1/models/BAD/{path}", json=body), 401)  # the key first
    assert_problem(client.post(f"/v1/models/BAD/{path}", json=body), 422, ["path", "name"])
    assert_problem(client.post(f"/v1/models/{'a' * 65}/{path}", json=body), 422, ["path", "name"])
    other = client.post("/v1/keys", json={"name": "o", "scope": "admin", "models": ["other"]}).json()["key"]
    h = {"Authorization": f"Bearer {other}"}
    assert_problem(client.post(f"/v1/models/m/{path}", json=body, headers=h), 403)
    assert_problem(client.post(f"/v1/models/BAD/{path}", json=body, headers=h), 422, ["path", "name"])
    reader = client.post("/v1/keys", json={"name": "r", "scope": "read"}).json()["key"]
    r = client.post(f"/v1/models/m/{path}", json=body, headers={"Authorization": f"Bearer {reader}"})
    assert r.status_code == (200 if path == "predict" else 403)
    assert client.post(f"/v1/models/m/{path}", json=body, headers={"Authorization": "Basic abc"}).status_code == 401


@pytest.mark.parametrize(
    "query,loc",
    [
        ("wait=maybe", ["query", "wait"]),
        ("timeout=0", ["query", "timeout"]),
        ("timeout=-1", ["query", "timeout"]),
        ("timeout=601", ["query", "timeout"]),
        ("timeout=nan", ["query", "timeout"]),
        ("timeout=abc", ["query", "timeout"]),
    ],
)
def test_update_query_parameters_are_checked(client, query, loc):
    create_model(client)
    assert_problem(client.post(f"/v1/models/m/update?{query}", json=SAMPLE), 422, loc)
    assert client.get("/v1/models/m").json()["online"]["accepted"] == 0


def test_update_reads_its_parameters(client):
    create_model(client)
    for q in ("wait=TRUE&timeout=30", "wait=1", "wait=off", "timeout=0.5", ""):
        assert client.post(f"/v1/models/m/update?{q}", json=SAMPLE).status_code == 202
    r = client.post("/v1/models/m/update", json=SAMPLE, headers={"Idempotency-Key": "k" * 256})
    assert_problem(r, 422, ["header", "Idempotency-Key"])
    r = client.post("/v1/models/m/update", json=SAMPLE, headers={"Idempotency-Key": "k" * 255})
    assert r.status_code == 202 and not r.json()["duplicate"]


def test_the_document_states_the_parameters_and_security(client):
    doc = client.get("/openapi.json").json()
    for path, names in (("predict", ["name"]), ("update", ["name", "wait", "timeout", "Idempotency-Key"])):
        op = doc["paths"][f"/v1/models/{{name}}/{path}"]["post"]
        assert [p["name"] for p in op["parameters"]] == names
        assert op["security"] == [{"HTTPBearer": []}]
        name = op["parameters"][0]
        assert name["in"] == "path" and name["required"] and name["schema"]["maxLength"] == 64
