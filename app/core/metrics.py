"""Prometheus metrics in a registry of the app's own (tests build many apps)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Label sets whose metric children are kept at hand (beyond, ``labels()`` each time).
CHILDREN_KEPT = 4096


class Metrics:
    """Prometheus metrics in a registry of this app's own (tests build many apps)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # prometheus_client's labels() takes a lock and builds the key on every call: the
        # hot paths keep their children (observe_request, accept_samples)
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._accepted_children: dict[str, Any] = {}
        self.requests = Counter("steward_http_requests", "HTTP requests", ["method", "route", "status"], registry=r)
        self.latency = Histogram(
            "steward_http_request_seconds", "HTTP request latency", ["method", "route"], registry=r
        )
        self.samples_accepted = Counter(
            "steward_samples_accepted", "Samples accepted into the log", ["model"], registry=r
        )
        self.samples_applied = Counter(
            "steward_samples_applied", "Samples applied by the online learner", ["model"], registry=r
        )
        self.learner_lag = Gauge("steward_learner_lag", "Accepted but not yet applied samples", ["model"], registry=r)
        self.learner_step_seconds = Histogram(
            "steward_learner_step_seconds",
            "Mean seconds per learner step, observed per applied chunk",
            ["model"],
            buckets=(1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 1e-2),
            registry=r,
        )
        self.jobs = Counter("steward_jobs_finished", "Jobs finished", ["kind", "status"], registry=r)
        self.versions = Counter("steward_versions_created", "Versions created", ["operation"], registry=r)
        self.webhook_attempts = Counter(
            "steward_webhook_attempts",
            "Webhook delivery attempts by outcome (delivered, pending: to be retried, failed: attempts used up)",
            ["outcome"],
            registry=r,
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count an HTTP request under its route template and record its latency."""
        key = (method, route, status)
        pair = self._request_children.get(key)
        if pair is None:
            pair = (self.requests.labels(method, route, str(status)), self.latency.labels(method, route))
            if len(self._request_children) < CHILDREN_KEPT:
                self._request_children[key] = pair
        pair[0].inc()
        pair[1].observe(seconds)

    def accept_samples(self, model: str, n: int) -> None:
        """Count ``n`` samples accepted into ``model``'s log."""
        child = self._accepted_children.get(model)
        if child is None:
            child = self.samples_accepted.labels(model)
            if len(self._accepted_children) < CHILDREN_KEPT:
                self._accepted_children[model] = child
        child.inc(n)
