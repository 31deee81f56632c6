"""``prune`` and ``quantize`` as a capability: request time and the job handlers."""

from __future__ import annotations

from app.compression import prune, quantize
from app.compression.common import CompressionDeps
from app.compression.schemas import PruneIn, QuantizeIn
from app.jobs.contract import Handlers, Job, Progress


class CompressionService(CompressionDeps):
    def register(self, handlers: Handlers) -> None:
        handlers.register("prune", self.run_prune)
        handlers.register("quantize", self.run_quantize)

    def submit_prune(self, name: str, body: PruneIn) -> str:
        return prune.submit(self, name, body)

    def submit_quantize(self, name: str, body: QuantizeIn) -> str:
        return quantize.submit(self, name, body)

    def run_prune(self, job: Job, progress: Progress) -> None:
        prune.run(self, job, progress)

    def run_quantize(self, job: Job, progress: Progress) -> None:
        quantize.run(self, job, progress)
