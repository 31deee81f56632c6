"""Per-model gauges of the sample log and the learner, read from the database at every
``/metrics`` scrape, so any process reports every model whoever holds its learner."""

from __future__ import annotations

from prometheus_client import Gauge

from app.core.db import Database
from app.core.metrics import Metrics
from app.online.repository import LearnerRepository


class OnlineGauges:
    def __init__(self, db: Database, metrics: Metrics) -> None:
        self.db = db
        self.metrics = metrics
        r = metrics.registry
        self.accepted = Gauge("steward_model_samples_accepted", "Samples in the model's log", ["model"], registry=r)
        self.applied = Gauge("steward_model_samples_applied", "Samples the learner has applied", ["model"], registry=r)
        self.paused = Gauge("steward_model_paused", "1 while the model's learner is paused", ["model"], registry=r)

    def refresh(self) -> None:
        with self.db.read() as s:
            rows = LearnerRepository(s).progress_all()
        for name, accepted, status, through in rows:
            applied = int(through if through is not None else -1) + 1
            self.accepted.labels(name).set(accepted)
            self.applied.labels(name).set(applied)
            self.paused.labels(name).set(1 if status == "paused" else 0)
            self.metrics.learner_lag.labels(name).set(max(int(accepted) - applied, 0))
