"""Pending deliveries survive a SIGKILL of the service (a real uvicorn process), on both
databases: the receiver is down while the service tries, the service is killed, and
after a restart the receiver gets every message, signed with the same secret."""

from __future__ import annotations

import time

import orjson
from standardwebhooks.webhooks import Webhook as Verifier

from tests.online_helpers import Server, free_port, wait_until
from tests.webhooks.receiver import Receiver

ENV = {
    "STEWARD_RUN_LEARNER": "false",
    "STEWARD_WEBHOOK_ALLOW_PRIVATE": "true",
    "STEWARD_WEBHOOK_BACKOFF_SECONDS": "0.2",
    "STEWARD_WEBHOOK_BACKOFF_MAX_SECONDS": "0.5",
    "STEWARD_WEBHOOK_POLL_SECONDS": "0.05",
}


def test_a_pending_delivery_arrives_after_a_sigkill(db_url, tmp_path):
    port = free_port()
    rx = Receiver(port=port)  # not listening yet: connections are refused
    data = tmp_path / "data"
    with Server(db_url, data, **ENV) as s, s.client() as c:
        w = c.post("/v1/webhooks", json={"url": rx.url, "events": ["alias.*"]}).json()
        assert c.post("/v1/models", json={"name": "m", "task": "binary", "input_dim": 2}).status_code == 201
        c.put("/v1/models/m/aliases/prod", json={"version": 1})

        def tried() -> bool:
            ds = c.get(f"/v1/webhooks/{w['id']}/deliveries").json()["items"]
            return bool(ds) and ds[0]["attempts"] >= 2

        wait_until(tried, 30, "two failed attempts")
        (d,) = c.get(f"/v1/webhooks/{w['id']}/deliveries").json()["items"]
        assert d["status"] in ("pending", "sending") and d["last_status"] is None and d["last_error"]
        c.delete("/v1/models/m/aliases/prod")  # one more, right before the kill
        s.kill()
    with rx, Server(db_url, data, **ENV) as s2, s2.client() as c:
        got = rx.wait_for(2, timeout=60)
        verifier = Verifier(w["secret"])
        payloads = [verifier.verify(r["body"], r["headers"]) for r in got]
        assert sorted(p["type"] for p in payloads) == ["alias.deleted", "alias.moved"]
        assert {r["headers"]["webhook-id"] for r in got} == {str(p["id"]) for p in payloads}

        def all_delivered() -> bool:
            ds = c.get(f"/v1/webhooks/{w['id']}/deliveries").json()["items"]
            return len(ds) == 2 and all(x["status"] == "delivered" for x in ds)

        wait_until(all_delivered, 30, "both delivered")
        moved = next(
            x for x in c.get(f"/v1/webhooks/{w['id']}/deliveries").json()["items"] if x["type"] == "alias.moved"
        )
        assert moved["attempts"] >= 3 and moved["log"][-1]["status"] == 200
        time.sleep(0.5)
        assert len(rx.received) == 2 and orjson.loads(got[0]["body"])["model"] == "m"


def test_steward_worker_processes_deliver_each_message_once(db_url, tmp_path):
    """The API runs no worker; two ``steward worker`` processes share the deliveries: every
    message arrives once."""
    import os
    import subprocess
    import sys

    from tests.conftest import ADMIN

    data = tmp_path / "data"
    with Receiver() as rx, Server(db_url, data, **ENV, STEWARD_RUN_WORKER="false") as s, s.client() as c:
        c.post("/v1/webhooks", json={"url": rx.url, "events": ["alias.moved"]})
        c.post("/v1/models", json={"name": "m", "task": "binary", "input_dim": 2})
        env = {**os.environ, **ENV, "STEWARD_DATABASE_URL": db_url, "STEWARD_DATA_DIR": str(data)}
        env["STEWARD_ADMIN_KEY"] = ADMIN
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(2)
        ]
        try:
            for i in range(30):
                c.put("/v1/models/m/aliases/prod", json={"version": 1, "reason": str(i)})
            got = rx.wait_for(30, timeout=60)
            time.sleep(1.0)
            ids = [r["headers"]["webhook-id"] for r in rx.received]
            assert len(ids) == 30 and len(set(ids)) == 30 and len(got) >= 30
        finally:
            for w in workers:
                w.terminate()
            for w in workers:
                w.wait(30)
