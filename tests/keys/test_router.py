"""API keys: scopes enforced on every route (table-driven), model restrictions, revocation
at once, secrets never listed and stored only as hashes, bootstrap admin key."""

from __future__ import annotations

import hashlib

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.main import create_app
from tests.api_helpers import assert_problem, create_model, model_spec
from tests.conftest import auth

SCOPES = ["read", "ingest", "maintain", "admin"]


def new_key(client: TestClient, scope: str, models: list[str] | None = None, name: str = "k") -> dict:
    body: dict = {"name": name, "scope": scope}
    if models is not None:
        body["models"] = models
    r = client.post("/v1/keys", json=body)
    assert r.status_code == 201, r.text
    return r.json()


# (method, path, json body, content (bytes) or None, least scope that may call it)
ROUTES = [
    ("GET", "/v1/models", None, "read"),
    ("GET", "/v1/models/m", None, "read"),
    ("GET", "/v1/models/m/versions", None, "read"),
    ("GET", "/v1/models/m/versions/1", None, "read"),
    ("GET", "/v1/models/m/versions/1/weights", None, "read"),
    ("GET", "/v1/models/m/aliases", None, "read"),
    ("GET", "/v1/models/m/aliases/latest", None, "read"),
    ("POST", "/v1/models/m/predict", {"inputs": [[1, 2, 3]]}, "read"),
    ("POST", "/v1/models/m/evaluate", {"samples": [{"x": [1, 2, 3], "y": 1}]}, "read"),
    ("POST", "/v1/models", model_spec("new"), "maintain"),
    ("PUT", "/v1/models/m/aliases/production", {"version": 1}, "maintain"),
    ("DELETE", "/v1/models/m/aliases/production", None, "maintain"),
    ("POST", "/v1/models/m/versions", "weights", "maintain"),
    ("DELETE", "/v1/models/m", None, "admin"),
    ("POST", "/v1/keys", {"name": "x", "scope": "read"}, "admin"),
    ("GET", "/v1/keys", None, "admin"),
    ("DELETE", "/v1/keys/0123456789abcdef", None, "admin"),
]


def call(client: TestClient, method: str, path: str, body, key: str, weights: bytes):
    kw: dict = {"headers": auth(key)}
    if body == "weights":
        kw["content"] = weights
        kw["headers"] |= {"Content-Type": "application/octet-stream"}
    elif body is not None:
        kw["json"] = body
    return client.request(method, path, **kw)


@pytest.mark.parametrize(("method", "path", "body", "least"), ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
def test_each_route_refuses_keys_below_its_scope(client, method, path, body, least):
    create_model(client)
    data = client.get("/v1/models/m/versions/1/weights").content
    keys = {s: new_key(client, s)["key"] for s in SCOPES}
    allowed = SCOPES[SCOPES.index(least) :]
    for scope in SCOPES:  # refusals first: allowed calls may change state
        if scope not in allowed:
            body_ = assert_problem(call(client, method, path, body, keys[scope], data), 403)
            assert least in body_["detail"]
    for scope in allowed:
        r = call(client, method, path, body, keys[scope], data)
        assert r.status_code not in (401, 403), (scope, r.text)
        assert r.status_code < 500, r.text
    anon = client.request(method, path, headers={"Authorization": ""})
    assert_problem(anon, 401)
    assert anon.headers["www-authenticate"].startswith("Bearer")
    assert_problem(call(client, method, path, body, "stw_not-a-key", data), 401)


def test_missing_and_malformed_authorization(anon):
    assert_problem(anon.get("/v1/models"), 401)
    assert_problem(anon.get("/v1/models", headers={"Authorization": "Basic dXNlcjpwYXNz"}), 401)
    assert_problem(anon.get("/v1/models", headers={"Authorization": "Bearer"}), 401)
    assert anon.get("/healthz").status_code == 200
    assert anon.get("/readyz").status_code == 200
    assert anon.get("/openapi.json").status_code == 200


def test_model_restricted_keys(client):
    for n in ("a", "b"):
        create_model(client, n)
    k = new_key(client, "maintain", ["a"])["key"]
    c = {"headers": auth(k)}
    assert client.get("/v1/models/a", **c).status_code == 200
    assert_problem(client.get("/v1/models/b", **c), 403)
    assert_problem(client.get("/v1/models/zzz", **c), 403)
    assert [m["name"] for m in client.get("/v1/models", **c).json()["items"]] == ["a"]
    assert client.post("/v1/models/a/predict", json={"inputs": [[1, 2, 3]]}, **c).status_code == 200
    assert_problem(client.post("/v1/models/b/predict", json={"inputs": [[1, 2, 3]]}, **c), 403)
    assert_problem(client.put("/v1/models/b/aliases/p", json={"version": 1}, **c), 403)
    assert client.put("/v1/models/a/aliases/p", json={"version": 1}, **c).status_code == 201
    # a restricted key creates only the models it names
    assert_problem(client.post("/v1/models", json=model_spec("c"), **c), 403)
    assert_problem(client.get("/v1/models/c"), 404)


def test_model_restricted_admin_keys_cannot_manage_keys(client):
    create_model(client, "a")
    k = new_key(client, "admin", ["a"])
    c = {"headers": auth(k["key"])}
    assert client.get("/v1/models/a", **c).status_code == 200
    assert_problem(client.post("/v1/keys", json={"name": "escalate", "scope": "admin"}, **c), 403)
    assert_problem(client.get("/v1/keys", **c), 403)
    assert_problem(client.delete(f"/v1/keys/{k['id']}", **c), 403)
    assert client.delete("/v1/models/a", **c).status_code == 204


def test_revoke_takes_effect_at_once(client):
    k = new_key(client, "read")
    assert client.get("/v1/models", headers=auth(k["key"])).status_code == 200
    r = client.delete(f"/v1/keys/{k['id']}")
    assert r.status_code == 204
    assert_problem(client.get("/v1/models", headers=auth(k["key"])), 401)
    assert_problem(client.delete(f"/v1/keys/{k['id']}"), 404)
    assert k["id"] not in [x["id"] for x in client.get("/v1/keys").json()["items"]]
    assert_problem(client.delete("/v1/keys/nope"), 404)


def test_created_key_answer_and_listing_never_shows_secrets(client):
    r = client.post("/v1/keys", json={"name": "checkout-app", "scope": "ingest", "models": ["churn", "churn"]})
    assert r.status_code == 201, r.text
    k = r.json()
    assert set(k) >= {"id", "name", "scope", "models", "created_at", "key"}
    assert k["name"] == "checkout-app" and k["scope"] == "ingest" and k["models"] == ["churn"]
    assert k["key"].startswith(k["prefix"])
    plain = new_key(client, "read", name="plain")
    assert plain["models"] is None
    assert client.get("/v1/models", headers=auth(k["key"])).status_code == 200
    listing = client.get("/v1/keys")
    assert listing.status_code == 200
    assert k["key"] not in listing.text and plain["key"] not in listing.text
    items = {x["id"]: x for x in listing.json()["items"]}
    assert "key" not in items[k["id"]]
    assert items[k["id"]]["prefix"] == k["prefix"]


def test_keys_are_stored_only_as_hashes(client, settings):
    k = new_key(client, "admin")
    eng = sa.create_engine(settings.url)
    try:
        with eng.connect() as c:
            rows = [dict(r._mapping) for r in c.execute(sa.text("SELECT * FROM api_keys"))]
    finally:
        eng.dispose()
    assert rows
    assert all(k["key"] not in str(v) for row in rows for v in row.values())
    row = next(r for r in rows if r["id"] == k["id"])
    assert row["key_hash"] == hashlib.sha256(k["key"].encode()).hexdigest()


def test_keys_paginate(client):
    made = {new_key(client, "read", name=f"k{i}")["id"] for i in range(5)}
    seen, cursor = [], None
    while True:
        r = client.get("/v1/keys", params={"limit": 2} | ({"cursor": cursor} if cursor else {}))
        assert r.status_code == 200 and len(r.json()["items"]) <= 2
        seen += [x["id"] for x in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) and made <= set(seen) and seen == sorted(seen)


BAD_KEYS = [
    ({"name": "x", "scope": "root"}, ["body", "scope"]),
    ({"name": "x"}, ["body", "scope"]),
    ({"name": "", "scope": "read"}, ["body", "name"]),
    ({"scope": "read"}, ["body", "name"]),
    ({"name": "x", "scope": "read", "models": ["Bad Name"]}, ["body", "models", 0]),
    ({"name": "x", "scope": "read", "models": "churn"}, ["body", "models"]),
    ({"name": "x", "scope": "read", "expires": 1}, ["body", "expires"]),
]


def test_bad_key_requests(client, subtests):
    before = client.get("/v1/keys").json()["items"]
    for body, loc in BAD_KEYS:
        with subtests.test(body=body):
            assert_problem(client.post("/v1/keys", json=body), 422, loc)
            assert client.get("/v1/keys").json()["items"] == before


def test_an_admin_key_is_generated_once_without_the_bootstrap_key(make_settings, capfd):
    settings = make_settings(admin_key=None, run_learner=False, run_worker=False)
    with TestClient(create_app(settings)) as c:
        err = capfd.readouterr().err
        assert "shown ONCE" in err
        secret = next(w for w in err.split() if w.startswith("stw_"))
        assert c.get("/v1/keys", headers=auth(secret)).status_code == 200
        assert_problem(c.get("/v1/keys", headers=auth("test-admin-key-0123456789")), 401)
    with TestClient(create_app(settings)) as c:
        assert "shown ONCE" not in capfd.readouterr().err
        assert c.get("/v1/keys", headers=auth(secret)).status_code == 200
