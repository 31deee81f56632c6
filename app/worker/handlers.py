"""Job kind → handler. Prune, quantize and migrate register here too."""

from __future__ import annotations

from app.services.batch import run_batch_update
from app.services.migrate import run_migrate
from app.worker.runner import Handler

HANDLERS: dict[str, Handler] = {
    "batch_update": run_batch_update,
    "migrate": run_migrate,
}
