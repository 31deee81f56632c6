"""Alias history (API.md "Alias history"): every change recorded with who and why,
If-Match compare-and-set, ETag, ?at= time travel, rollback — on both databases."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.api_helpers import assert_problem, create_model
from tests.conftest import ADMIN


def versions(client: TestClient, name: str, n: int) -> None:
    """Give ``name`` versions 2..n (imports of version 1's weights)."""
    w = client.get(f"/v1/models/{name}/versions/1/weights").content
    for _ in range(n - 1):
        r = client.post(f"/v1/models/{name}/versions", content=w, headers={"Content-Type": "application/octet-stream"})
        assert r.status_code in (201, 202), r.text


def history(client: TestClient, name: str, alias: str, **params: Any) -> list[dict[str, Any]]:
    r = client.get(f"/v1/models/{name}/aliases/{alias}/history", params=params)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def make_key(client: TestClient, name: str, scope: str = "maintain") -> dict[str, Any]:
    r = client.post("/v1/keys", json={"name": name, "scope": scope})
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


def test_every_kind_of_move_is_recorded_with_by_and_reason(client):
    create_model(client, "m")
    versions(client, "m", 3)
    bot = make_key(client, "release-bot")
    as_bot = {"Authorization": f"Bearer {bot['key']}"}
    r = client.put("/v1/models/m/aliases/production", json={"version": 2, "reason": "first"}, headers=as_bot)
    assert r.status_code == 201 and r.headers["etag"] == '"2"'
    r = client.put("/v1/models/m/aliases/production", json={"version": 3}, headers=as_bot)
    assert r.status_code == 200 and r.json()["version"] == 3
    r = client.post("/v1/models/m/aliases/production/rollback", json={"reason": "v3 is bad"})
    assert r.status_code == 200, r.text
    rb = r.json()
    assert (rb["version"], rb["previous"], rb["reason"]) == (2, 3, "v3 is bad")
    r = client.delete("/v1/models/m/aliases/production", params={"reason": "retired"})
    assert r.status_code == 204
    h = history(client, "m", "production")
    assert [(e["version"], e["previous"]) for e in h] == [(None, 2), (2, 3), (3, 2), (2, None)]
    assert [e["reason"] for e in h] == ["retired", "v3 is bad", None, "first"]
    by_bot = {"key_id": bot["id"], "key_name": "release-bot"}
    admin = {"key_id": "bootstrap", "key_name": "STEWARD_ADMIN_KEY"}
    assert [e["by"] for e in h] == [admin, admin, by_bot, by_bot]
    ids = [e["id"] for e in h]
    assert ids == sorted(ids, reverse=True)
    assert all(e["model"] == "m" and e["alias"] == "production" for e in h)
    # the model answer's aliases are as before
    assert client.get("/v1/models/m").json()["aliases"] == {}
    # a rollback of a deletion restores the alias
    r = client.post("/v1/models/m/aliases/production/rollback")
    assert r.status_code == 200 and r.json()["version"] == 2
    assert client.get("/v1/models/m").json()["aliases"] == {"production": 2}


def test_a_jobs_promotion_names_the_job(client):
    create_model(client, "m", task="regression", input_dim=3, hidden=[4])
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 3))
    samples = [{"x": x.tolist(), "y": [float(x.sum())]} for x in X]
    r = client.post(
        "/v1/models/m/batch-update",
        json={"samples": samples, "epochs": 2, "promote": "production"},
        headers={"Prefer": "wait=60"},
    )
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "succeeded" and job["result"]["promoted"], job
    (e,) = history(client, "m", "production")
    assert e["by"] == {"job": job["id"]}
    assert e["version"] == job["result"]["version"] and e["previous"] is None
    assert e["reason"] == job["result"]["promotion_reason"]


def test_if_match_moves_only_from_the_named_version(client):
    create_model(client, "m")
    versions(client, "m", 3)
    # no alias yet: any If-Match fails, even *
    for tag in ('"1"', "*"):
        r = client.put("/v1/models/m/aliases/prod", json={"version": 1}, headers={"If-Match": tag})
        assert_problem(r, 412)
    assert client.get("/v1/models/m/aliases/prod").status_code == 404
    assert client.put("/v1/models/m/aliases/prod", json={"version": 1}).status_code == 201
    r = client.get("/v1/models/m/aliases/prod")
    assert r.headers["etag"] == '"1"'
    etag = r.headers["etag"]
    assert client.put("/v1/models/m/aliases/prod", json={"version": 2}, headers={"If-Match": etag}).status_code == 200
    body = assert_problem(client.put("/v1/models/m/aliases/prod", json={"version": 3}, headers={"If-Match": etag}), 412)
    assert body["current_version"] == 2
    assert client.get("/v1/models/m/aliases/prod").json()["version"] == 2
    # a list, a bare number, * and a weak tag
    assert (
        client.put("/v1/models/m/aliases/prod", json={"version": 3}, headers={"If-Match": '"7", "2"'}).status_code
        == 200
    )
    assert client.put("/v1/models/m/aliases/prod", json={"version": 1}, headers={"If-Match": "3"}).status_code == 200
    assert client.put("/v1/models/m/aliases/prod", json={"version": 2}, headers={"If-Match": "*"}).status_code == 200
    assert_problem(client.put("/v1/models/m/aliases/prod", json={"version": 3}, headers={"If-Match": 'W/"2"'}), 412)
    for bad in ('"x"', '"-1"', "1.5", '"99999999999"'):
        r = client.put("/v1/models/m/aliases/prod", json={"version": 3}, headers={"If-Match": bad})
        assert_problem(r, 422, ["header", "if-match"])
    # delete honours it too
    assert_problem(client.delete("/v1/models/m/aliases/prod", headers={"If-Match": '"1"'}), 412)
    assert client.delete("/v1/models/m/aliases/prod", headers={"If-Match": '"2"'}).status_code == 204
    # nothing refused left a history entry
    assert [e["version"] for e in history(client, "m", "prod")] == [None, 2, 1, 3, 2, 1]


def test_if_match_race_between_two_clients_one_wins(client):
    """Two clients read the same ETag and move the alias to different versions at once:
    exactly one succeeds, the other gets 412, and the history has the winner's move only."""
    create_model(client, "m")
    versions(client, "m", 4)
    assert client.put("/v1/models/m/aliases/prod", json={"version": 1}).status_code == 201

    def move(target: int, etag: str, barrier: threading.Barrier, results: dict[int, int]) -> None:
        barrier.wait()
        r = client.put("/v1/models/m/aliases/prod", json={"version": target}, headers={"If-Match": etag})
        results[target] = r.status_code

    for _ in range(5):
        before = len(history(client, "m", "prod"))
        current = client.get("/v1/models/m/aliases/prod").headers["etag"]
        results: dict[int, int] = {}
        barrier = threading.Barrier(2)
        targets = [v for v in (1, 2, 3, 4) if f'"{v}"' != current][:2]
        threads = [threading.Thread(target=move, args=(v, current, barrier, results)) for v in targets]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results.values()) == [200, 412], results
        winner = next(v for v, code in results.items() if code == 200)
        assert client.get("/v1/models/m/aliases/prod").json()["version"] == winner
        h = history(client, "m", "prod")
        assert len(h) == before + 1 and h[0]["version"] == winner


def test_at_answers_the_entry_in_force(client):
    create_model(client, "m")
    versions(client, "m", 3)
    t0 = datetime.now(UTC)
    time.sleep(0.02)
    client.put("/v1/models/m/aliases/prod", json={"version": 1})
    time.sleep(0.02)
    t1 = datetime.now(UTC)
    time.sleep(0.02)
    client.put("/v1/models/m/aliases/prod", json={"version": 3})
    time.sleep(0.02)
    t2 = datetime.now(UTC)
    time.sleep(0.02)
    client.delete("/v1/models/m/aliases/prod")
    time.sleep(0.02)
    t3 = datetime.now(UTC)

    def at(t: datetime) -> Any:
        return client.get("/v1/models/m/aliases/prod/history", params={"at": t.isoformat()})

    assert_problem(at(t0), 404)
    assert at(t1).json()["version"] == 1
    r = at(t2)
    assert (r.json()["version"], r.json()["previous"]) == (3, 1)
    assert_problem(at(t3), 404)  # deleted then
    # an offset other than Z, and Z itself
    local = t1.astimezone(UTC).astimezone(tz=__import__("datetime").timezone(timedelta(hours=5, minutes=30)))
    assert at(local).json()["version"] == 1
    r = client.get("/v1/models/m/aliases/prod/history", params={"at": t2.isoformat().replace("+00:00", "Z")})
    assert r.json()["version"] == 3
    for bad in (
        "yesterday",
        "2026-12-01T09:30:00",
        "1700000000",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
    ):
        r = client.get("/v1/models/m/aliases/prod/history", params={"at": bad})
        assert_problem(r, 422, ["query", "at"])
    assert_problem(client.get("/v1/models/m/aliases/never/history"), 404)


def test_rollback_twice_undoes_the_undo(client):
    create_model(client, "m")
    versions(client, "m", 3)
    assert_problem(client.post("/v1/models/m/aliases/prod/rollback"), 404)
    client.put("/v1/models/m/aliases/prod", json={"version": 1})
    assert_problem(client.post("/v1/models/m/aliases/prod/rollback"), 409)  # just created: no previous
    client.put("/v1/models/m/aliases/prod", json={"version": 3})
    first = client.post("/v1/models/m/aliases/prod/rollback").json()
    assert (first["version"], first["previous"]) == (1, 3)
    second = client.post("/v1/models/m/aliases/prod/rollback").json()
    assert (second["version"], second["previous"]) == (3, 1)
    assert client.get("/v1/models/m/aliases/prod").json()["version"] == 3
    assert first["reason"].startswith("rollback") and second["id"] > first["id"]
    assert_problem(client.post("/v1/models/m/aliases/latest/rollback"), 422, ["path", "alias"])
    assert_problem(client.post("/v1/models/m/aliases/prod/rollback", json={"reason": 5}), 422, ["body", "reason"])


def test_history_pages_newest_first(client):
    create_model(client, "m")
    versions(client, "m", 2)
    for i in range(7):
        client.put("/v1/models/m/aliases/prod", json={"version": 1 + i % 2})
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/models/m/aliases/prod/history", params=params).json()
        seen += [e["id"] for e in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == 7 and seen == sorted(seen, reverse=True)


def test_a_restricted_key_cannot_read_anothers_history(client):
    create_model(client, "a")
    create_model(client, "b")
    client.put("/v1/models/b/aliases/prod", json={"version": 1})
    k = client.post("/v1/keys", json={"name": "only-a", "scope": "maintain", "models": ["a"]}).json()
    h = {"Authorization": f"Bearer {k['key']}"}
    assert_problem(client.get("/v1/models/b/aliases/prod/history", headers=h), 403)
    assert_problem(client.post("/v1/models/b/aliases/prod/rollback", headers=h), 403)


@pytest.mark.parametrize("scope", ["read", "ingest"])
def test_moving_needs_maintain(client, scope):
    create_model(client, "m")
    k = make_key(client, f"k-{scope}", scope)
    h = {"Authorization": f"Bearer {k['key']}"}
    assert_problem(client.put("/v1/models/m/aliases/prod", json={"version": 1}, headers=h), 403)
    assert_problem(client.post("/v1/models/m/aliases/prod/rollback", headers=h), 403)
    assert ADMIN
