"""Steward with an outbox that writes nothing: the B side of ``bench/bench_events.py``'s
A/B, to tell the outbox's own cost from the cost of the changes that emit events.

Everything is Steward's own code but :func:`app.core.outbox.write_events`, replaced before
the app is built: it drops the events a unit of work emitted and writes no row, takes no id
from the counter and notifies no one (:meth:`app.core.db.Database._bump` calls it through the
module, ``outbox.write_events(s)``, so the replacement is what every commit runs). The feed of
this server stays empty.

Served by ``uvicorn bench.steward_no_outbox_app:app`` with the same flags and environment as
Steward; as ``app.main``, importing this module builds nothing: ``app`` is made when asked for.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

import app.core.outbox as ob


def write_nothing(s: Session) -> None:
    """What the outbox would write is dropped (as a rollback drops it)."""
    s.info.pop(ob.PENDING, None)


ob.write_events = write_nothing  # before the app (and app.core.db) is imported


def __getattr__(name: str) -> Any:
    if name == "app":
        from app.main import create_app

        return create_app()
    raise AttributeError(name)
