"""Webhooks end to end on both databases: subscriptions, signed deliveries verified with
the ``standardwebhooks`` library, retries with backoff, the delivery log, filters, ping,
attempts used up, and each delivery claimed once by concurrent loops."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from standardwebhooks.webhooks import Webhook as Verifier

from app.core.tables import Webhook
from app.main import create_app
from app.webhooks.delivery import Deliverer
from tests.api_helpers import assert_problem, create_model
from tests.conftest import auth
from tests.webhooks.receiver import Receiver

FAST = {
    "webhook_allow_private": True,
    "webhook_backoff_seconds": 0.05,
    "webhook_backoff_max_seconds": 0.2,
    "webhook_poll_seconds": 0.05,
}


@pytest.fixture
def wclient(make_settings) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(**FAST)), headers=auth()) as c:
        yield c


def deliveries(client: TestClient, wid: str, **params: Any) -> list[dict[str, Any]]:
    r = client.get(f"/v1/webhooks/{wid}/deliveries", params=params)
    assert r.status_code == 200, r.text
    out: list[dict[str, Any]] = r.json()["items"]
    return out


def wait_until(pred: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_create_shows_the_secret_once_and_seals_it(wclient):
    r = wclient.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/h", "events": ["*"]})
    assert r.status_code == 201, r.text
    w = r.json()
    assert w["secret"].startswith("whsec_") and w["id"].startswith("wh_")
    assert r.headers["location"] == f"/v1/webhooks/{w['id']}"
    got = wclient.get(f"/v1/webhooks/{w['id']}").json()
    assert "secret" not in got and got["url"] == "http://127.0.0.1:9/h"
    assert all("secret" not in x for x in wclient.get("/v1/webhooks").json()["items"])
    db = wclient.app.state.ctx.db
    with db.read() as s:
        stored = s.scalar(sa.select(Webhook.secret).where(Webhook.id == w["id"]))
    assert w["secret"].encode() not in stored and w["secret"][6:].encode() not in stored
    mine = "whsec_" + "QUJD" * 8
    r = wclient.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/h", "events": ["job.*"], "secret": mine})
    assert r.status_code == 201 and r.json()["secret"] == mine
    assert wclient.delete(f"/v1/webhooks/{w['id']}").status_code == 204
    assert_problem(wclient.get(f"/v1/webhooks/{w['id']}"), 404)


@pytest.mark.parametrize(
    "body, loc",
    [
        ({"url": "ftp://8.8.8.8/", "events": ["*"]}, ["body", "url"]),
        ({"url": "http://127.0.0.1:9/", "events": ["nope"]}, ["body", "events", 0]),
        ({"url": "http://127.0.0.1:9/", "events": []}, ["body", "events"]),
        ({"url": "http://127.0.0.1:9/", "events": ["*"], "secret": "abc"}, ["body", "secret"]),
        ({"url": "http://127.0.0.1:9/", "events": ["*"], "models": ["Bad Name"]}, ["body", "models", 0]),
        ({"url": "http://127.0.0.1:9/", "events": ["*"], "extra": 1}, ["body", "extra"]),
    ],
)
def test_bad_subscriptions_are_422(wclient, body, loc):
    assert_problem(wclient.post("/v1/webhooks", json=body), 422, loc)
    assert wclient.get("/v1/webhooks").json()["items"] == []


def test_private_addresses_need_the_setting(client):
    for url in ("http://127.0.0.1:9/h", "http://localhost/h", "http://169.254.169.254/", "http://[::1]/"):
        assert_problem(client.post("/v1/webhooks", json={"url": url, "events": ["*"]}), 422, ["body", "url"])


def test_only_an_unrestricted_admin_manages_webhooks(wclient):
    for scope, models in (("maintain", None), ("admin", ["m"])):
        k = wclient.post("/v1/keys", json={"name": f"k{scope}", "scope": scope, "models": models}).json()
        h = {"Authorization": f"Bearer {k['key']}"}
        assert_problem(
            wclient.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/", "events": ["*"]}, headers=h), 403
        )
        assert_problem(wclient.get("/v1/webhooks", headers=h), 403)


def test_signed_deliveries_retried_until_accepted(wclient):
    """The receiver fails the first two attempts of each message: every event arrives,
    signed, after three attempts, and the delivery log tells it."""

    def answer(n: int, headers: dict[str, str], body: bytes) -> int:
        return 200 if attempts[headers["webhook-id"]] >= 3 else 500

    attempts: Counter[str] = Counter()

    def counting(n: int, headers: dict[str, str], body: bytes) -> int:
        attempts[headers["webhook-id"]] += 1
        return answer(n, headers, body)

    with Receiver(counting) as rx:
        w = wclient.post("/v1/webhooks", json={"url": rx.url, "events": ["alias.*", "model.created"]}).json()
        create_model(wclient, "m")  # model.created (sent), version.created (not subscribed)
        wclient.put("/v1/models/m/aliases/prod", json={"version": 1, "reason": "go"})
        got = rx.wait_for(6)  # 2 messages × 3 attempts
        time.sleep(0.3)
        verifier = Verifier(w["secret"])
        delivered = [r for r in got if attempts[r["headers"]["webhook-id"]] >= 3]
        bodies = {}
        for r in got:
            payload = verifier.verify(r["body"], r["headers"])  # every attempt is signed
            assert r["headers"]["content-type"] == "application/json"
            bodies[r["headers"]["webhook-id"]] = payload
        assert len(rx.received) == 6 and delivered
        types = sorted(b["type"] for b in bodies.values())
        assert types == ["alias.moved", "model.created"]
        for msg_id, payload in bodies.items():
            assert str(payload["id"]) == msg_id and payload["model"] == "m"
        events = {e["id"]: e for e in wclient.get("/v1/events").json()["items"]}
        for payload in bodies.values():
            assert payload == events[payload["id"]]  # the body is the event as the feed shows it
        ds = wait_until(lambda: [d for d in deliveries(wclient, w["id"]) if d["status"] == "delivered"] or None)
        ds = deliveries(wclient, w["id"])
        assert len(ds) == 2 and all(d["status"] == "delivered" for d in ds), ds
        for d in ds:
            assert d["attempts"] == 3 and d["last_status"] == 200 and d["delivered_at"] and d["next_attempt_at"] is None
            assert [a["status"] for a in d["log"]] == [500, 500, 200]
            assert d["log"][0]["error"] == "HTTP 500"
        text = wclient.get("/metrics").text
        assert 'steward_webhook_attempts_total{outcome="delivered"} 2.0' in text
        assert 'steward_webhook_attempts_total{outcome="pending"} 4.0' in text
        timestamps = sorted(r["t"] for r in rx.received if r["headers"]["webhook-id"] == ds[0]["msg_id"])
        assert timestamps[1] - timestamps[0] >= 0.02 and timestamps[2] - timestamps[1] >= 0.04  # backed off


def test_filters_by_model_and_ping(wclient):
    with Receiver() as rx:
        w = wclient.post("/v1/webhooks", json={"url": rx.url, "events": ["*"], "models": ["b"]}).json()
        create_model(wclient, "a")
        create_model(wclient, "b")
        got = rx.wait_for(2)
        assert {orjson.loads(r["body"])["model"] for r in got} == {"b"}
        r = wclient.post(f"/v1/webhooks/{w['id']}/test")
        assert r.status_code == 202 and r.json()["type"] == "ping"
        ping = rx.wait_for(3)[-1]
        assert ping["headers"]["webhook-id"].startswith("ping_")
        assert Verifier(w["secret"]).verify(ping["body"], ping["headers"])["type"] == "ping"
        loc = r.headers["location"]
        assert wait_until(lambda: wclient.get(loc).json()["status"] == "delivered")
        time.sleep(0.3)
        assert len(rx.received) == 3


def test_a_delivery_that_never_succeeds_fails_after_max_attempts(make_settings):
    with (
        Receiver(lambda n, h, b: 503) as rx,
        TestClient(create_app(make_settings(**FAST, webhook_max_attempts=3)), headers=auth()) as c,
    ):
        w = c.post("/v1/webhooks", json={"url": rx.url, "events": ["model.created"]}).json()
        create_model(c, "m")
        d = wait_until(lambda: next((d for d in deliveries(c, w["id"]) if d["status"] == "failed"), None))
        assert d["attempts"] == 3 and d["last_status"] == 503 and d["next_attempt_at"] is None
        assert c.get(f"/v1/webhooks/{w['id']}").json()["failed"] == 1
        time.sleep(0.5)
        assert len(rx.received) == 3  # no fourth attempt


def test_redirects_are_not_followed(wclient):
    with Receiver(lambda n, h, b: 302) as rx:
        w = wclient.post("/v1/webhooks", json={"url": rx.url, "events": ["model.created"]}).json()
        create_model(wclient, "m")
        rx.wait_for(1)
        d = wait_until(lambda: next((d for d in deliveries(wclient, w["id"]) if d["log"]), None))
        assert d["log"][0]["status"] == 302 and d["status"] in ("pending", "sending")


def test_concurrent_delivery_loops_claim_each_delivery_once(make_settings):
    """Three delivery loops (as three worker processes would run) share the deliveries:
    each message is sent exactly once."""
    settings = make_settings(**FAST, run_worker=False)
    with Receiver() as rx, TestClient(create_app(settings), headers=auth()) as c:
        c.post("/v1/webhooks", json={"url": rx.url, "events": ["alias.moved"]})
        create_model(c, "m")
        for i in range(60):
            c.put("/v1/models/m/aliases/prod", json={"version": 1, "reason": str(i)})
        ctx = c.app.state.ctx
        loops = [Deliverer(ctx.db, ctx.webhooks, settings, name=f"loop-{i}") for i in range(3)]
        stop = threading.Event()

        def run(d: Deliverer) -> None:
            while not stop.is_set():
                d.run_once()

        threads = [threading.Thread(target=run, args=(d,)) for d in loops]
        for t in threads:
            t.start()
        rx.wait_for(60)
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(30)
        for d in loops:
            d.stop()
        ids = Counter(r["headers"]["webhook-id"] for r in rx.received)
        assert len(ids) == 60 and set(ids.values()) == {1}, ids


def test_a_secret_sealed_with_another_key_fails_its_deliveries_not_the_loop(make_settings):
    """Deliveries of a webhook whose secret this process cannot unseal (its
    STEWARD_SECRETS_KEY changed) fail with the reason; other webhooks still deliver."""
    import os

    settings = make_settings(**{**FAST, "webhook_backoff_seconds": 0.01}, run_worker=False, webhook_max_attempts=2)
    with Receiver() as rx, TestClient(create_app(settings), headers=auth()) as c:
        lost = c.post("/v1/webhooks", json={"url": rx.url, "events": ["model.created"]}).json()
        ctx = c.app.state.ctx
        with ctx.db.write() as s:  # as if sealed under another key
            s.get(Webhook, lost["id"]).secret = b"s1" + os.urandom(40)
        ok = c.post("/v1/webhooks", json={"url": rx.url, "events": ["model.created"]}).json()
        create_model(c, "m")
        d = Deliverer(ctx.db, ctx.webhooks, settings)
        for _ in range(20):
            d.run_once()
            time.sleep(0.02)
        d.stop()
        (failed,) = deliveries(c, lost["id"])
        assert failed["status"] == "failed" and "unsealed" in failed["last_error"] and failed["attempts"] == 2
        (good,) = deliveries(c, ok["id"])
        assert good["status"] == "delivered" and len(rx.received) == 1
