"""Background components started by the lifespan (and by ``steward worker``):
the online learner and the job worker. Each is a thread with a ``stop()``."""

from __future__ import annotations

from collections.abc import Callable

from app.context import AppContext


def start_background(ctx: AppContext) -> Callable[[], None]:
    """Start what the settings ask for; return a function that stops it all gracefully."""
    stops: list[Callable[[], None]] = []
    from app.online.learner import LearnerRuntime, install_metrics
    from app.online.service import online_service

    install_metrics(ctx)  # /metrics reports every model's log and learner, wherever it runs
    online = online_service(ctx)
    forget: list[Callable[[str], None]] = [online.forget]
    if ctx.settings.run_learner:
        learner = LearnerRuntime(ctx)
        ctx.extras["learner"] = learner
        forget.append(learner.forget)
        learner.start()
        stops.append(learner.stop)
    ctx.extras["on_model_deleted"] = lambda name: [fn(name) for fn in forget]
    if ctx.settings.run_worker:
        from app.jobs.runner import Worker
        from app.worker.handlers import HANDLERS

        worker = Worker(ctx, HANDLERS).start()
        stops.append(worker.stop)

    def stop() -> None:
        for fn in reversed(stops):
            fn()

    return stop
