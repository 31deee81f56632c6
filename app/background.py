"""Background components started by the lifespan (and by ``steward worker``):
the online learner and the job worker. Each is a thread with a ``stop()``."""

from __future__ import annotations

from collections.abc import Callable

from app.context import AppContext


def start_background(ctx: AppContext) -> Callable[[], None]:
    """Start what the settings ask for; return a function that stops it all gracefully."""
    stops: list[Callable[[], None]] = []

    def stop() -> None:
        for fn in reversed(stops):
            fn()

    return stop
