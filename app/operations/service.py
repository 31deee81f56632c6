"""Health, readiness and the Prometheus text."""

from __future__ import annotations

from prometheus_client import generate_latest

from app.core.blobs import BlobStore
from app.core.db import Database
from app.core.errors import NotFound, insufficient_storage
from app.core.metrics import Metrics
from app.online.metrics import OnlineGauges


class OperationsService:
    def __init__(
        self, db: Database, blobs: BlobStore, metrics: Metrics, gauges: OnlineGauges, *, enabled: bool
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.metrics = metrics
        self.gauges = gauges
        self.enabled = enabled

    def readiness(self) -> dict[str, str]:
        """Per dependency, ``ok`` or ``error: <type>``."""
        checks: dict[str, str] = {}
        try:
            self.db.ping()
            checks["database"] = "ok"
        except Exception as e:
            checks["database"] = f"error: {type(e).__name__}"
        try:
            self.blobs.check()
            checks["blob_store"] = "ok"
        except Exception as e:
            full = " (the data directory is full)" if insufficient_storage(e) is not None else ""
            checks["blob_store"] = f"error: {type(e).__name__}{full}"
        return checks

    def metrics_text(self) -> bytes:
        if not self.enabled:
            raise NotFound("metrics are disabled (STEWARD_METRICS_ENABLED=false)")
        self.gauges.refresh()
        return generate_latest(self.metrics.registry)
