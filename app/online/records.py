"""The ids Steward makes for recorded predictions.

A recorded ``/predict`` without ids of its own gets ids that name where each prediction
is: ``p-{batch}-{position}-{token}``, the ``prediction_batches`` row, the input's position
in it (both decimal, no leading zeros) and the row's random 48-bit ``token`` (12 lowercase
hex digits). So such an id needs no row of its own — a recorded predict of 256 inputs
writes one row, not 257 — and a label finds its prediction by reading the id.

The token makes the ids unguessable within a model and stale ones harmless: an id is
Steward's only when its batch exists, belongs to the model, holds the position and
carries the same token (:func:`parse` reads the form, the caller checks the row). Any
other string, including one of this form that does not check out, is a client's id,
looked up in ``predictions``."""

from __future__ import annotations

import re
import secrets

_FORM = re.compile(r"p-([1-9][0-9]{0,17})-(0|[1-9][0-9]{0,9})-([0-9a-f]{12})")
TOKEN_BITS = 48


def new_token() -> int:
    return secrets.randbits(TOKEN_BITS)


def make_ids(batch_id: int, token: int, n: int) -> list[str]:
    """The ids of the ``n`` predictions of batch ``batch_id``."""
    tail = f"-{token:012x}"
    head = f"p-{batch_id}-"
    return [f"{head}{k}{tail}" for k in range(n)]


def parse(pid: str) -> tuple[int, int, int] | None:
    """``(batch, position, token)`` of an id of Steward's form, else None."""
    m = _FORM.fullmatch(pid)
    if m is None:
        return None
    return int(m[1]), int(m[2]), int(m[3], 16)
