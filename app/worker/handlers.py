"""Job kind → handler. Prune, quantize and migrate register here too."""

from __future__ import annotations

from app.compression.prune import run_prune
from app.compression.quantize import run_quantize
from app.jobs.runner import Handler
from app.migration.service import run_migrate
from app.training.service import run_batch_update

HANDLERS: dict[str, Handler] = {
    "batch_update": run_batch_update,
    "prune": run_prune,
    "quantize": run_quantize,
    "migrate": run_migrate,
}
