"""The event feed (API.md "Events and webhooks"): an outbox written in the change's
transaction, read in commit order without gaps or repeats, long poll — on both databases."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event as sa_event

from app.core.outbox import EVENT_TYPES, emit
from app.core.tables import Event
from tests.api_helpers import assert_problem, create_model
from tests.conftest import auth


def feed(client: TestClient, after: int = 0, **params: Any) -> list[dict[str, Any]]:
    """Every event after ``after`` (paging to the end)."""
    out: list[dict[str, Any]] = []
    while True:
        r = client.get("/v1/events", params={"after": after, "limit": 50, **params})
        assert r.status_code == 200, r.text
        page = r.json()
        out += page["items"]
        if not page["items"]:
            return out
        after = page["next_after"]


def head(client: TestClient) -> int:
    events = feed(client)
    return events[-1]["id"] if events else 0


def test_each_change_is_an_event_and_a_refused_one_is_not(client):
    create_model(client, "m")
    w = client.get("/v1/models/m/versions/1/weights").content
    assert (
        client.post(
            "/v1/models/m/versions", content=w, headers={"Content-Type": "application/octet-stream"}
        ).status_code
        == 201
    )
    assert client.put("/v1/models/m/aliases/prod", json={"version": 2, "reason": "go"}).status_code == 201
    n = head(client)
    # refused changes: no event
    assert_problem(client.put("/v1/models/m/aliases/prod", json={"version": 9}), 404)
    assert_problem(client.put("/v1/models/m/aliases/prod", json={"version": 1}, headers={"If-Match": '"1"'}), 412)
    assert_problem(client.post("/v1/models", json={"name": "m", "task": "binary", "input_dim": 2}), 409)
    assert head(client) == n
    assert client.delete("/v1/models/m/aliases/prod").status_code == 204
    assert client.delete("/v1/models/m").status_code == 204
    events = feed(client)
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))  # dense, in order
    types = [e["type"] for e in events]
    assert types == [
        "model.created",
        "version.created",
        "version.created",
        "alias.moved",
        "alias.deleted",
        "model.deleted",
    ]
    assert all(e["model"] == "m" for e in events)
    assert events[1]["data"]["version"] == 1 and events[1]["data"]["operation"] == "init"
    assert events[2]["data"]["version"] == 2 and events[2]["data"]["operation"] == "import"
    moved = events[3]["data"]
    assert (moved["alias"], moved["version"], moved["previous"], moved["reason"]) == ("prod", 2, None, "go")
    assert moved["by"] == {"key_id": "bootstrap", "key_name": "STEWARD_ADMIN_KEY"}
    assert events[4]["data"]["previous"] == 2 and events[4]["data"]["version"] is None
    assert events[5]["data"]["latest_version"] == 2


def test_jobs_emit_their_end(client):
    create_model(client, "m", hidden=[8])
    r = client.post("/v1/models/m/quantize", json={"dtype": "int8"}, headers={"Prefer": "wait=60"})
    assert r.status_code == 201 and r.json()["status"] == "succeeded", r.text
    job = r.json()
    r = client.post("/v1/models/m/prune", json={"from": 99, "sparsity": 0.5})
    assert_problem(r, 422)
    events = feed(client, type="job.*")
    assert [e["type"] for e in events] == ["job.succeeded"]
    assert events[0]["data"]["id"] == job["id"] and events[0]["data"]["result"]["version"] == 2
    created = feed(client, type="version.created")
    assert created[-1]["data"]["job"] == job["id"] and created[-1]["data"]["operation"] == "quantize"


def test_a_canceled_job_and_a_failed_one_emit_their_end(make_settings):
    from app.main import create_app

    with TestClient(create_app(make_settings(run_worker=False, job_max_attempts=1)), headers=auth()) as c:
        create_model(c, "m", hidden=[8])
        job = c.post("/v1/models/m/prune", json={"sparsity": 0.5}).json()
        assert c.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
        (e,) = feed(c, type="job.*")
        assert (e["type"], e["data"]["id"], e["data"]["status"]) == ("job.canceled", job["id"], "canceled")
        # a job that fails (its source version's blob is gone): job.failed with the error
        ctx = c.app.state.ctx
        job = c.post("/v1/models/m/quantize", json={"dtype": "int8"}).json()
        with ctx.db.read() as s:
            from app.core.tables import Version

            sha = s.query(Version).one().blob_sha256
        ctx.blobs.path(sha).unlink()
        from app.background import make_worker

        w = make_worker(ctx)
        while w.run_once():
            pass
        ends = feed(c, type="job.failed")
        assert ends and ends[-1]["data"]["id"] == job["id"] and ends[-1]["data"]["error"]


def test_filters_and_restricted_keys(client):
    create_model(client, "a")
    create_model(client, "b")
    client.put("/v1/models/b/aliases/prod", json={"version": 1})
    assert {e["model"] for e in feed(client, model="a")} == {"a"}
    assert [e["type"] for e in feed(client, model="b", type="alias.moved")] == ["alias.moved"]
    assert {e["type"] for e in feed(client, type=["model.*", "alias.moved"])} == {"model.created", "alias.moved"}
    k = client.post("/v1/keys", json={"name": "only-a", "scope": "read", "models": ["a"]}).json()
    h = {"Authorization": f"Bearer {k['key']}"}
    r = client.get("/v1/events", headers=h)
    assert r.status_code == 200 and {e["model"] for e in r.json()["items"]} == {"a"}
    assert_problem(client.get("/v1/events", params={"model": "b"}, headers=h), 403)
    for bad in ({"type": "nope"}, {"type": "job.finished"}, {"type": "jobs.*"}):
        assert_problem(client.get("/v1/events", params=bad), 422, ["query", "type"])
    assert_problem(client.get("/v1/events", params={"after": -1}), 422, ["query", "after"])
    assert_problem(client.get("/v1/events", params={"wait": 61}), 422, ["query", "wait"])
    assert_problem(client.get("/v1/events", headers={"Authorization": "Bearer nope"}), 401)


def test_concurrent_writers_one_reader_no_gap_no_repeat(client):
    """8 writers commit events while one reader pages with ``after``. Writers hold their
    transaction open for random times, after their ids are taken too (a listener that
    sleeps just before the commit), and some roll back: the reader's ids equal the final
    set, in increasing order, each once; no rolled-back event is ever seen."""
    db = client.app.state.ctx.db
    start = head(client)

    def slow_commit(s: Any) -> None:
        if s.info.get("feed-test"):
            time.sleep(random.uniform(0, 0.01))

    sa_event.listen(db._writer, "before_commit", slow_commit)  # after the outbox's listener
    writers, per_writer = 8, 30
    rolled_back: set[str] = set()
    done = threading.Event()

    def write(w: int) -> None:
        rnd = random.Random(w)
        for i in range(per_writer):
            tag = f"{w}-{i}"
            try:
                with db.write() as s:
                    s.info["feed-test"] = True
                    time.sleep(rnd.uniform(0, 0.005))
                    for j in range(rnd.randint(1, 3)):
                        emit(s, "policy.triggered", None, {"tag": tag, "j": j})
                    time.sleep(rnd.uniform(0, 0.005))
                    if rnd.random() < 0.15:
                        raise RuntimeError("roll back")
            except RuntimeError:
                rolled_back.add(tag)

    seen: list[int] = []
    tags: list[str] = []

    def read() -> None:
        after = start
        while True:
            finished = done.is_set()
            r = client.get("/v1/events", params={"after": after, "limit": 7})
            assert r.status_code == 200, r.text
            page = r.json()
            for e in page["items"]:
                seen.append(e["id"])
                tags.append(e["data"]["tag"])
            after = page["next_after"]
            if finished and not page["items"]:
                return

    reader = threading.Thread(target=read)
    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    reader.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    reader.join(120)
    sa_event.remove(db._writer, "before_commit", slow_commit)
    with db.read() as s:
        final = [(e.id, e.data["tag"]) for e in s.query(Event).filter(Event.id > start).order_by(Event.id)]
    assert seen == [i for i, _ in final]  # the same events, in order, each once
    assert seen == list(range(start + 1, start + 1 + len(seen)))  # no gap
    assert not set(tags) & rolled_back
    assert len(set(tags)) == writers * per_writer - len(rolled_back)
    assert 0 < len(rolled_back) < writers * per_writer


def test_long_poll_answers_when_an_event_arrives(client):
    create_model(client, "m")
    n = head(client)
    got: dict[str, Any] = {}

    def poll() -> None:
        t0 = time.monotonic()
        r = client.get("/v1/events", params={"after": n, "wait": 20})
        got["took"] = time.monotonic() - t0
        got["body"] = r.json()

    t = threading.Thread(target=poll)
    t.start()
    time.sleep(0.5)
    assert t.is_alive()  # still waiting
    client.put("/v1/models/m/aliases/prod", json={"version": 1})
    t.join(20)
    assert [e["type"] for e in got["body"]["items"]] == ["alias.moved"]
    assert 0.4 < got["took"] < 10
    # nothing arrives: an empty page after the wait, the same after
    t0 = time.monotonic()
    r = client.get("/v1/events", params={"after": n + 1, "wait": 0.5})
    assert r.json() == {"items": [], "next_after": n + 1}
    assert time.monotonic() - t0 >= 0.45


def test_long_poll_sees_another_processes_commit(make_settings):
    """A commit this process did not make (another process: here a second app on the same
    database) reaches a waiting reader through the hub's poll."""
    from app.main import create_app

    s1 = make_settings(events_poll_seconds=0.05)
    with TestClient(create_app(s1), headers=auth()) as a, TestClient(create_app(s1), headers=auth()) as b:
        create_model(a, "m")
        n = head(a)
        got: dict[str, Any] = {}

        def poll() -> None:
            got["r"] = a.get("/v1/events", params={"after": n, "wait": 20}).json()

        t = threading.Thread(target=poll)
        t.start()
        time.sleep(0.3)
        b.put("/v1/models/m/aliases/prod", json={"version": 1})
        t.join(20)
        assert [e["type"] for e in got["r"]["items"]] == ["alias.moved"]


def test_the_openapi_document_lists_every_type_with_an_example(client):
    doc = client.get("/openapi.json").json()
    schema = doc["components"]["schemas"]["EventOut"]
    assert tuple(schema["properties"]["type"]["enum"]) == EVENT_TYPES
    assert {ex["type"] for ex in schema["examples"]} == set(EVENT_TYPES)
    examples = doc["paths"]["/v1/events"]["get"]["responses"]["200"]["content"]["application/json"]["examples"]
    assert set(examples) == set(EVENT_TYPES)


@pytest.mark.parametrize("bad", ["x", "-1", "1e3"])
def test_last_event_id_is_checked(client, bad):
    assert_problem(client.get("/v1/events/stream", headers={"Last-Event-ID": bad}), 422, ["header", "last-event-id"])
