"""The delivery loop: a thread of the job worker (in the API process and in every
``steward worker`` process) that fans events out to deliveries, claims the due ones and
POSTs them (:mod:`app.webhooks.service` for the steps and their guarantees).

An attempt resolves the host again and connects to the address it checked
(:mod:`app.webhooks.guard`), sends the exact stored body signed for this attempt
(``webhook-id``, ``webhook-timestamp``, ``webhook-signature``), follows no redirect,
reads no proxy settings from the environment, and gives up after
``STEWARD_WEBHOOK_TIMEOUT_SECONDS``. Attempts run on a small thread pool, so one slow
receiver does not hold up the others."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx

from app.core.db import Database
from app.core.metrics import Metrics
from app.core.settings import Settings
from app.webhooks import guard
from app.webhooks.service import Claimed, WebhookService
from app.webhooks.signing import sign

log = logging.getLogger("steward.webhooks")

USER_AGENT = "Steward-Webhooks/1"


def attempt(client: httpx.Client, c: Claimed, *, allow_private: bool) -> tuple[int | None, str | None]:
    """POST one delivery; ``(HTTP status or None, error or None)``."""
    try:
        target = guard.check(c.url, allow_private=allow_private)
    except guard.Refused as e:
        return None, f"refused: {e}"
    ts = int(time.time())
    default_port = 443 if target.scheme == "https" else 80
    headers = {
        "Host": target.host if target.port == default_port else f"{target.host}:{target.port}",
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": c.msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(c.key, c.msg_id, ts, c.body),
    }
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    try:
        r = client.post(target.url(c.url), content=c.body, headers=headers, extensions=extensions)
    except httpx.TimeoutException:
        return None, "timed out"
    except httpx.HTTPError as e:
        return None, f"{type(e).__name__}: {e}"[:500]
    if 200 <= r.status_code < 300:
        return r.status_code, None
    where = f" (to {r.headers.get('location', '')[:200]})" if 300 <= r.status_code < 400 else ""
    return r.status_code, f"HTTP {r.status_code}{where}"


class Deliverer:
    """See the module doc. ``run_once()`` for tests; ``start()`` / ``stop()`` the thread."""

    def __init__(
        self,
        db: Database,
        service: WebhookService,
        settings: Settings,
        name: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.service = service
        self.metrics = metrics
        self.settings = settings
        self.owner = name or f"{socket.gethostname()}:{os.getpid()}:wh-{uuid.uuid4().hex[:6]}"
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self._thread: threading.Thread | None = None
        n = max(settings.webhook_concurrency, 1)
        self.pool = ThreadPoolExecutor(n, thread_name_prefix="steward-webhook")
        t = settings.webhook_timeout_seconds
        self.client = httpx.Client(
            timeout=httpx.Timeout(t, connect=min(t, 3.0)),
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_connections=n * 4, max_keepalive_connections=n * 2),
        )
        db.on_events.append(lambda _last: self.wake.set())

    def _send(self, c: Claimed) -> str | None:
        t0 = time.perf_counter()
        status, error = attempt(self.client, c, allow_private=self.settings.webhook_allow_private)
        ms = (time.perf_counter() - t0) * 1000
        outcome = self.service.record(c, self.owner, status=status, error=error, ms=ms)
        if outcome is not None and self.metrics is not None:
            self.metrics.webhook_attempts.labels(outcome).inc()
        if outcome is not None and outcome != "delivered":
            log.info(
                "webhook %s: delivery of %s %s after attempt %d (%s)", c.webhook_id, c.msg_id, outcome, c.attempt, error
            )
        return outcome

    def run_once(self) -> int:
        """Fan out, then claim and send what is due; returns the attempts made."""
        self.service.fan_out()
        # as many as are sent at once: a claimed delivery never waits for a thread, so its
        # lease (twice the timeout, plus 30 s) outlives its attempt
        claimed = self.service.claim(self.owner, max(self.settings.webhook_concurrency, 1))
        if claimed:
            list(self.pool.map(self._send, claimed))
        return len(claimed)

    def loop(self) -> None:
        while not self.stopping.is_set():
            try:
                made = self.run_once()
            except Exception:
                log.exception("webhook delivery loop error")
                made = 0
            if not made:
                self.wake.wait(self.settings.webhook_poll_seconds)
                self.wake.clear()

    def start(self) -> Deliverer:
        self._thread = threading.Thread(target=self.loop, name=f"webhooks-{self.owner}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(self.settings.webhook_timeout_seconds + 10)
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()
