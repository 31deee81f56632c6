"""The resources of one running app, born in the lifespan (never at import time)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from app.core.blobs import BlobStore
from app.core.db import Database
from app.core.settings import Settings
from app.jobs.queue import Queue
from app.jobs.service import JobService
from app.keys.service import KeyService
from app.predict.service import PredictService
from app.registry.models import ModelService
from app.registry.versions import NetworkCache, VersionService


class Metrics:
    """Prometheus metrics in a registry of this app's own (tests build many apps)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
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


@dataclass
class AppContext:
    settings: Settings
    db: Database
    blobs: BlobStore
    metrics: Metrics
    versions: VersionService
    models: ModelService
    predict: PredictService
    keys: KeyService
    jobs: JobService
    extras: dict[str, Any] = field(default_factory=dict)
    batch: Any = None
    migrate: Any = None

    @classmethod
    def build(cls, settings: Settings) -> AppContext:
        db = Database(settings.url, busy_timeout_ms=settings.sqlite_busy_timeout_ms)
        blobs = BlobStore(settings.blob_dir)
        versions = VersionService(blobs, NetworkCache(), settings.max_header_bytes)
        return cls(
            settings=settings,
            db=db,
            blobs=blobs,
            metrics=Metrics(),
            versions=versions,
            models=ModelService(versions, settings.max_params),
            predict=PredictService(versions),
            keys=KeyService(settings.admin_key),
            jobs=JobService(db, Queue(db, settings.job_lease_seconds), settings.job_max_attempts),
        )

    def __post_init__(self) -> None:
        from app.training.service import BatchService

        self.batch = BatchService(self)
        from app.migration.service import MigrateService

        self.migrate = MigrateService(self)
        self.extras["import_onnx"] = self.migrate.import_onnx

    def close(self) -> None:
        self.db.dispose()
