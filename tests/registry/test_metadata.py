"""Model and version metadata (issue 17, item 1): PATCH changes only the description and
the tags (a JSON merge patch), anything else is a 422 naming the field and changes nothing;
lists filter by tags (all must match), by text in the name or description, and versions by
operation; the tag filter goes through the tag tables' index. On SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from tests.api_helpers import assert_problem
from tests.conftest import auth

MODEL = {"task": "binary", "input_dim": 2}


def make(c: Any, name: str, **kw: Any) -> dict[str, Any]:
    r = c.post("/v1/models", json={"name": name, **MODEL, **kw})
    assert r.status_code == 201, r.text
    return r.json()


def names(c: Any, **params: Any) -> list[str]:
    r = c.get("/v1/models", params=params)
    assert r.status_code == 200, r.text
    return [m["name"] for m in r.json()["items"]]


def test_patch_changes_description_and_merges_tags(client):
    before = make(client, "m", description="old", tags={"team": "growth", "stage": "dev"})
    r = client.patch("/v1/models/m", json={"description": "churn risk", "tags": {"stage": None, "owner": "ana"}})
    assert r.status_code == 200, r.text
    m = r.json()
    assert m["description"] == "churn risk" and m["tags"] == {"team": "growth", "owner": "ana"}
    assert m["updated_at"] > before["updated_at"]
    for k in ("task", "input_dim", "hidden", "optimizer", "latest_version", "created_at"):
        assert m[k] == before[k], k
    assert client.get("/v1/models/m").json()["tags"] == {"team": "growth", "owner": "ana"}
    # an empty patch changes nothing but the time; removing every tag leaves {}
    assert client.patch("/v1/models/m", json={}).json()["tags"] == {"team": "growth", "owner": "ana"}
    assert client.patch("/v1/models/m", json={"tags": {"team": None, "owner": None}}).json()["tags"] == {}
    assert names(client, tag="team:growth") == []


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"task": "regression"}, ["body", "task"]),
        ({"hidden": [4]}, ["body", "hidden"]),
        ({"name": "other"}, ["body", "name"]),
        ({"description": "a\x00b"}, ["body", "description"]),
        ({"description": "x" * 10_001}, ["body", "description"]),
        ({"tags": {"": "x"}}, ["body", "tags", "", "[key]"]),
        ({"tags": {"k": "x" * 1025}}, ["body", "tags", "k"]),
        ({"tags": {"k": 3}}, ["body", "tags", "k"]),
        ({"tags": ["k"]}, ["body", "tags"]),
    ],
)
def test_a_patch_naming_anything_else_is_a_422_that_changes_nothing(client, body, loc):
    make(client, "m", description="d", tags={"team": "a"})
    before = client.get("/v1/models/m").json()
    problem = assert_problem(client.patch("/v1/models/m", json=body), 422)
    assert problem["errors"][0]["loc"][: len(loc)] == loc, problem
    assert client.get("/v1/models/m").json() == before


def test_at_most_64_tags_after_the_merge(client):
    make(client, "m", tags={f"k{i}": "v" for i in range(60)})
    problem = assert_problem(client.patch("/v1/models/m", json={"tags": {f"n{i}": "v" for i in range(5)}}), 422)
    assert problem["errors"][0]["loc"] == ["body", "tags"]
    assert len(client.get("/v1/models/m").json()["tags"]) == 60
    ok = client.patch("/v1/models/m", json={"tags": {"k0": None, "n0": "v", "n1": "v", "n2": "v", "n3": "v"}})
    assert ok.status_code == 200 and len(ok.json()["tags"]) == 63


def test_list_filters_by_tags_and_text(client):
    make(client, "churn-a", description="Churn risk", tags={"team": "growth", "env": "prod"})
    make(client, "churn-b", description="shadow copy", tags={"team": "growth", "env": "dev"})
    make(client, "fraud", description="card fraud 100%_sure", tags={"team": "risk", "env": "prod"})
    make(client, "x", tags={"team": "growth:eu"})  # the value holds a colon
    assert names(client, tag="team:growth") == ["churn-a", "churn-b"]
    assert names(client, tag=["team:growth", "env:prod"]) == ["churn-a"]
    assert names(client, tag=["env:prod"]) == ["churn-a", "fraud"]
    assert names(client, tag="team:growth:eu") == ["x"]
    assert names(client, tag="team:") == [] and names(client, tag="nope:x") == []
    assert names(client, q="CHURN") == ["churn-a", "churn-b"]  # name or description, any case
    assert names(client, q="shadow") == ["churn-b"]
    assert names(client, q="100%_") == ["fraud"] and names(client, q="%") == ["fraud"]  # taken literally
    assert names(client, q="_") == ["fraud"]  # `_` is no wildcard either
    assert names(client, q="churn", tag="env:prod") == ["churn-a"]
    # paging keeps the filter
    r = client.get("/v1/models", params={"tag": "team:growth", "limit": 1})
    page = r.json()
    assert [m["name"] for m in page["items"]] == ["churn-a"] and page["next_cursor"]
    nxt = client.get("/v1/models", params={"tag": "team:growth", "limit": 1, "cursor": page["next_cursor"]}).json()
    assert [m["name"] for m in nxt["items"]] == ["churn-b"] and nxt["next_cursor"] is None
    # tags changed by PATCH are what the filter sees
    client.patch("/v1/models/fraud", json={"tags": {"team": "growth"}})
    assert names(client, tag="team:growth") == ["churn-a", "churn-b", "fraud"]


@pytest.mark.parametrize(
    ("params", "loc"),
    [({"tag": "novalue"}, ["query", "tag", 0]), ({"tag": ["a:b", ":x"]}, ["query", "tag", 1]),
     ({"q": ""}, ["query", "q"]), ({"q": "a\x00"}, ["query", "q"])],
)  # fmt: skip
def test_bad_filters_are_422(client, params, loc):
    problem = assert_problem(client.get("/v1/models", params=params), 422)
    assert problem["errors"][0]["loc"] == loc


def test_a_restricted_key_filters_within_its_models(client):
    make(client, "a", tags={"team": "t"})
    make(client, "b", tags={"team": "t"})
    key = client.post("/v1/keys", json={"name": "k", "scope": "read", "models": ["a"]}).json()["key"]
    r = client.get("/v1/models", params={"tag": "team:t"}, headers=auth(key))
    assert [m["name"] for m in r.json()["items"]] == ["a"]
    assert client.patch("/v1/models/a", json={"description": "x"}, headers=auth(key)).status_code == 403


def test_versions_patch_and_filters(client):
    make(client, "m", hidden=[4])
    samples = [{"x": [0.0, float(i % 2)], "y": i % 2} for i in range(40)]
    r = client.post("/v1/models/m/batch-update", json={"samples": samples, "epochs": 1}, headers={"Prefer": "wait=60"})
    assert r.status_code == 201, r.text
    r = client.post("/v1/models/m/prune", json={"sparsity": 0.5}, headers={"Prefer": "wait=60"})
    assert r.status_code == 201, r.text
    v2 = client.get("/v1/models/m/versions/2").json()
    r = client.patch("/v1/models/m/versions/2", json={"description": "weekly", "tags": {"reviewed": "yes"}})
    assert r.status_code == 200, r.text
    after = r.json()
    assert after["description"] == "weekly" and after["tags"] == {"reviewed": "yes"}
    for k in ("sha256", "size_bytes", "params", "metrics", "parent", "operation", "created_at"):
        assert after[k] == v2[k], k  # the parameters and their record never change
    problem = assert_problem(client.patch("/v1/models/m/versions/2", json={"params": {}}), 422)
    assert problem["errors"][0]["loc"] == ["body", "params"]
    assert client.patch("/v1/models/m/versions/9", json={"description": "x"}).status_code == 404

    def listed(**params: Any) -> list[int]:
        r = client.get("/v1/models/m/versions", params=params)
        assert r.status_code == 200, r.text
        return [v["version"] for v in r.json()["items"]]

    assert listed() == [3, 2, 1]
    assert listed(operation="prune") == [3] and listed(operation="batch") == [2]
    assert listed(tag="reviewed:yes") == [2] and listed(tag="reviewed:no") == []
    assert listed(operation="prune", tag="reviewed:yes") == []
    assert_problem(client.get("/v1/models/m/versions", params={"operation": "nope"}), 422)
    assert client.get("/v1/models/m/versions/2").json()["tags"] == {"reviewed": "yes"}


def test_the_tag_filter_uses_the_index(client):
    """The plan of the tag query reads ``ix_model_tags_key_digest`` (a list of 10,000
    models is found through the index, not a scan), on both databases."""
    from app.core.tables import ModelTag
    from app.registry.repository import tag_digest

    ctx = client.app.state.ctx
    q = sa.select(ModelTag.model_id).where(
        ModelTag.key == "team", ModelTag.digest == tag_digest("growth"), ModelTag.value == "growth"
    )
    with ctx.db.read() as s:
        compiled = str(q.compile(s.get_bind(), compile_kwargs={"literal_binds": True}))
        if ctx.db.is_sqlite:
            plan = " ".join(str(r[-1]) for r in s.execute(sa.text(f"EXPLAIN QUERY PLAN {compiled}")))
        else:
            s.execute(sa.text("SET LOCAL enable_seqscan = off"))  # a tiny table: as it would be planned when large
            plan = " ".join(str(r[0]) for r in s.execute(sa.text(f"EXPLAIN {compiled}")))
    assert "ix_model_tags_key_digest" in plan, plan
