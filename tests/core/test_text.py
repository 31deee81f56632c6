"""Free text a client sends to be stored — a key's name, a model's description and tags, a
transfer's description — and paging cursors refuse the NUL character at the edge with a 422
naming the field: PostgreSQL cannot store it in a text column (it answered 500), and a
refused request stores nothing. On SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from tests.api_helpers import assert_problem

NUL = "a\x00b"
MODEL = {"name": "m", "task": "binary", "input_dim": 2}


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        ("/v1/keys", {"name": NUL, "scope": "read"}, ["body", "name"]),
        ("/v1/models", {**MODEL, "description": NUL}, ["body", "description"]),
        ("/v1/models", {**MODEL, "tags": {"team": NUL}}, ["body", "tags", "team"]),
        ("/v1/models", {**MODEL, "tags": {NUL: "x"}}, ["body", "tags", NUL, "[key]"]),
    ],
)
def test_nul_in_stored_text_is_a_422_and_stores_nothing(client, path, body, loc):
    before = client.get(path).json()["items"]
    problem = assert_problem(client.post(path, json=body), 422)
    assert problem["errors"][0]["loc"] == loc and "NUL" in problem["errors"][0]["msg"]
    assert client.get(path).json()["items"] == before
    ok = {k: (v.replace("\x00", "") if isinstance(v, str) else v) for k, v in body.items()}
    ok = {k: ({kk.replace("\x00", ""): vv.replace("\x00", "") for kk, vv in v.items()} if k == "tags" else v)
          for k, v in ok.items()}  # fmt: skip
    assert client.post(path, json=ok).status_code == 201  # the same request without the NUL is stored


def test_transfer_description_with_nul_is_a_422_and_queues_nothing(client):
    assert client.post("/v1/models", json={**MODEL, "hidden": [3]}).status_code == 201
    body = {
        "mode": "transfer",
        "new_model": "child",
        "task": "binary",
        "description": NUL,
        "samples": [{"x": [0.0, 1.0], "y": k % 2} for k in range(4)],
    }
    problem = assert_problem(client.post("/v1/models/m/migrate", json=body), 422)
    assert problem["errors"][0]["loc"] == ["body", "description"]
    assert client.get("/v1/jobs").json()["items"] == []


@pytest.mark.parametrize("path", ["/v1/models", "/v1/keys", "/v1/jobs", "/v1/models/m/versions"])
def test_a_cursor_with_nul_or_spaces_is_a_422(client, path):
    assert client.post("/v1/models", json=MODEL).status_code == 201
    for bad in (NUL, "a b"):
        problem = assert_problem(client.get(path, params={"cursor": bad}), 422)
        assert problem["errors"][0]["loc"] == ["query", "cursor"]


def test_nul_in_an_alias_reason_is_a_422_and_moves_nothing(client):
    """Every way a reason reaches the alias history (PUT, DELETE ?reason=, rollback)."""
    assert client.post("/v1/models", json=MODEL).status_code == 201
    assert client.put("/v1/models/m/aliases/prod", json={"version": 1}).status_code == 201
    history = client.get("/v1/models/m/aliases/prod/history").json()["items"]
    put = client.put("/v1/models/m/aliases/prod", json={"version": 1, "reason": NUL})
    assert assert_problem(put, 422)["errors"][0]["loc"] == ["body", "reason"]
    back = client.post("/v1/models/m/aliases/prod/rollback", json={"reason": NUL})
    assert assert_problem(back, 422)["errors"][0]["loc"] == ["body", "reason"]
    gone = client.delete("/v1/models/m/aliases/prod", params={"reason": NUL})
    assert assert_problem(gone, 422)["errors"][0]["loc"] == ["query", "reason"]
    assert client.get("/v1/models/m/aliases/prod/history").json()["items"] == history


@pytest.mark.parametrize("field", ["url", "description"])
def test_nul_in_a_webhook_is_a_422(client, field):
    body = {"url": "https://example.com/hook", "events": ["*"], "description": "d", field: f"https://example.com/{NUL}"}
    problem = assert_problem(client.post("/v1/webhooks", json=body), 422)
    assert problem["errors"][0]["loc"] == ["body", field]
    assert client.get("/v1/webhooks").json()["items"] == []
