"""Errors: a problem+json answer (RFC 9457) as :class:`StewardError`."""

from __future__ import annotations

from typing import Any

import httpx


class StewardError(Exception):
    """The service answered with a problem: ``status``, ``title``, ``detail``, and for
    validation failures ``errors`` (``[{"loc": [...], "msg": ...}]``); ``body`` is the
    whole problem document."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        self.type = str(body.get("type", ""))
        self.title = str(body.get("title", ""))
        self.detail = str(body.get("detail", ""))
        self.errors: list[dict[str, Any]] = list(body.get("errors") or [])
        super().__init__(f"{status} {self.title}: {self.detail}")


class TransportError(Exception):
    """The service could not be reached (after the retries a request allows)."""


def raise_for_problem(r: httpx.Response) -> None:
    if r.status_code < 400:
        return
    try:
        body = r.json()
        if not isinstance(body, dict):
            body = {"detail": str(body)}
    except ValueError:
        body = {"title": r.reason_phrase, "detail": r.text[:500]}
    raise StewardError(r.status_code, body)
