"""The composition root: the resources and services of one running app, born in the
lifespan (or by ``steward worker``), never at import time, every one typed.

Services reach each other through the fields they are given here, so the arrows
point one way: routers → this context → capability services → repositories, the
blob store and the engine; the job worker knows only the handlers registered on it
(:meth:`AppContext.job_handlers`)."""

from __future__ import annotations

from dataclasses import dataclass

from app.compression.service import CompressionService
from app.core.blobs import BlobStore
from app.core.cache import Caches
from app.core.db import Database
from app.core.metrics import Metrics
from app.core.settings import Settings
from app.events.feed import EventHub
from app.events.service import EventService
from app.feedback.service import FeedbackService
from app.jobs.contract import Handlers
from app.jobs.queue import Queue
from app.jobs.service import JobService
from app.keys.service import KeyService
from app.migration.service import MigrationService
from app.online.learner import LearnerRuntime
from app.online.metrics import OnlineGauges
from app.online.service import OnlineService
from app.operations.service import OperationsService
from app.pipelines.policies import PolicyService
from app.pipelines.service import PipelineService, step_submits
from app.predict.service import PredictService
from app.registry.models import ModelService
from app.registry.versions import NetworkCache, VersionService
from app.training.service import TrainingService
from app.webhooks.service import WebhookService


@dataclass
class AppContext:
    settings: Settings
    db: Database
    caches: Caches
    blobs: BlobStore
    metrics: Metrics
    versions: VersionService
    models: ModelService
    predict: PredictService
    keys: KeyService
    jobs: JobService
    online: OnlineService
    feedback: FeedbackService
    gauges: OnlineGauges
    training: TrainingService
    compression: CompressionService
    migration: MigrationService
    operations: OperationsService
    events: EventHub
    feed: EventService
    webhooks: WebhookService
    pipelines: PipelineService
    policies: PolicyService
    learner: LearnerRuntime | None = None

    @classmethod
    def build(cls, settings: Settings) -> AppContext:
        db = Database(settings.url, busy_timeout_ms=settings.sqlite_busy_timeout_ms)
        caches = Caches(db, settings.cache_refresh_seconds)
        blobs = BlobStore(settings.blob_dir)
        metrics = Metrics()
        versions = VersionService(blobs, NetworkCache(), settings.max_header_bytes)
        models = ModelService(db, versions, settings.max_params)
        jobs = JobService(db, Queue(db, settings.job_lease_seconds), settings.job_max_attempts)
        online = OnlineService(db, settings, metrics, models, caches)
        models.on_deleted.append(online.forget)
        gauges = OnlineGauges(db, metrics)
        feedback = FeedbackService(db, settings, online)
        hub = EventHub(db, poll_seconds=settings.events_poll_seconds, keep=settings.events_keep)
        training = TrainingService(db, blobs, versions, jobs, metrics)
        compression = CompressionService(db, blobs, versions, jobs, metrics)
        migration = MigrationService(db, blobs, versions, models, jobs, metrics, settings)
        pipelines = PipelineService(db, blobs, versions, jobs, step_submits(training, compression, migration))
        return cls(
            settings=settings,
            db=db,
            caches=caches,
            blobs=blobs,
            metrics=metrics,
            versions=versions,
            models=models,
            predict=PredictService(db, versions, caches, recorder=feedback, committer=online),
            keys=KeyService(db, settings.admin_key, caches),
            jobs=jobs,
            online=online,
            feedback=feedback,
            gauges=gauges,
            training=training,
            compression=compression,
            migration=migration,
            operations=OperationsService(db, blobs, metrics, gauges, enabled=settings.metrics_enabled),
            events=hub,
            feed=EventService(db, settings, hub),
            webhooks=WebhookService(db, settings),
            pipelines=pipelines,
            policies=PolicyService(db, settings, jobs, pipelines),
        )

    def job_handlers(self) -> Handlers:
        """Every job kind's handler, registered by its capability."""
        handlers = Handlers()
        self.training.register(handlers)
        self.compression.register(handlers)
        self.migration.register(handlers)
        self.pipelines.register(handlers)
        return handlers

    def start_learner(self) -> LearnerRuntime:
        """The online learner of this process (its thread started)."""
        learner = LearnerRuntime(self.db, self.settings, self.blobs, self.versions, self.metrics)
        self.models.on_deleted.append(learner.forget)
        self.learner = learner.start()
        return learner

    def close(self) -> None:
        self.online.close()
        self.db.dispose()
