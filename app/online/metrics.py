"""Per-model gauges of the sample log, the learner and its drift detection, and per-version
gauges of what each version served, read from the database at every ``/metrics`` scrape,
so any process reports every model whoever holds its learner."""

from __future__ import annotations

import sqlalchemy as sa
from prometheus_client import Gauge

from app.core.db import Database
from app.core.metrics import Metrics
from app.core.tables import Model
from app.online.repository import LearnerRepository
from app.registry.repository import ServedRepository

STATUS_CODE = {"stable": 0, "warning": 1, "drift": 2}


class OnlineGauges:
    def __init__(self, db: Database, metrics: Metrics) -> None:
        self.db = db
        self.metrics = metrics
        r = metrics.registry
        self.accepted = Gauge("steward_model_samples_accepted", "Samples in the model's log", ["model"], registry=r)
        self.applied = Gauge("steward_model_samples_applied", "Samples the learner has applied", ["model"], registry=r)
        self.paused = Gauge("steward_model_paused", "1 while the model's learner is paused", ["model"], registry=r)
        self.drift = Gauge(
            "steward_model_drift", "Drift status: 0 stable, 1 warning (inputs), 2 drift (loss)", ["model"], registry=r
        )
        self.drift_transitions = Gauge(
            "steward_model_drift_transitions", "Changes of drift status since detection started", ["model"], registry=r
        )
        self.drifting_inputs = Gauge(
            "steward_model_drifting_inputs", "Input features over the PSI threshold", ["model"], registry=r
        )
        per_version = ["model", "version"]
        self.served_predictions = Gauge(
            "steward_served_predictions", "Recorded predictions the version served", per_version, registry=r
        )
        self.served_labelled = Gauge(
            "steward_served_labelled", "Recorded predictions of the version labelled since", per_version, registry=r
        )
        self.served_loss = Gauge(
            "steward_served_loss", "Mean loss of the version's served outputs on their labels", per_version, registry=r
        )
        self.served_accuracy = Gauge(
            "steward_served_accuracy", "Accuracy of the version's served labels (classifiers)", per_version, registry=r
        )

    def refresh(self) -> None:
        with self.db.read() as s:
            rows = LearnerRepository(s).progress_all()
            served = ServedRepository(s).all()
            tasks = {str(name): str(task) for name, task in s.execute(sa.select(Model.name, Model.task))}
        for name, version, row in served:
            v = str(version)
            self.served_predictions.labels(name, v).set(row.predictions)
            self.served_labelled.labels(name, v).set(row.labelled)
            if row.labelled:
                self.served_loss.labels(name, v).set(row.loss_sum / row.labelled)
                if tasks.get(name) != "regression":
                    self.served_accuracy.labels(name, v).set(row.correct / row.labelled)
        for name, accepted, status, through, drift in rows:
            d = drift or {}
            self.drift.labels(name).set(STATUS_CODE.get(d.get("status", "stable"), 0))
            self.drift_transitions.labels(name).set(len(d.get("transitions") or []))
            self.drifting_inputs.labels(name).set(len(d.get("inputs") or []))
            applied = int(through if through is not None else -1) + 1
            self.accepted.labels(name).set(accepted)
            self.applied.labels(name).set(applied)
            self.paused.labels(name).set(1 if status == "paused" else 0)
            self.metrics.learner_lag.labels(name).set(max(int(accepted) - applied, 0))
