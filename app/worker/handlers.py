"""Job kind → handler. Prune, quantize and migrate register here too."""

from __future__ import annotations

from app.services.batch import run_batch_update
from app.services.migrate import run_migrate
from app.services.prune import run_prune
from app.services.quantize import run_quantize
from app.worker.runner import Handler

HANDLERS: dict[str, Handler] = {
    "batch_update": run_batch_update,
    "prune": run_prune,
    "quantize": run_quantize,
    "migrate": run_migrate,
}
