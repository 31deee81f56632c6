"""Dashboard sessions: the API key a person signs in with, kept in an HttpOnly cookie
sealed with AES-256-GCM under the service's secrets key (:mod:`app.core.sealing`), with
its expiry and a CSRF token.

The browser cannot read the cookie (HttpOnly) and nobody can forge or alter one without
the key (the AEAD's tag; the associated data binds it to this use). Every request
authenticates the key inside again, so revoking the key ends its sessions. A form that
changes state carries the session's CSRF token, compared in constant time; the cookie is
also ``SameSite=Strict`` and scoped to ``/ui``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import time
from dataclasses import dataclass

import orjson

from app.core import sealing

COOKIE = "steward_session"
BOUND_TO = "steward-ui-session"


@dataclass(frozen=True)
class UiSession:
    key: str
    csrf: str
    expires: float

    def csrf_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self.csrf.encode())


class Sessions:
    """Issues and opens session cookies (``seconds``: how long one lasts)."""

    def __init__(self, key: bytes, seconds: float) -> None:
        self._key = key
        self.seconds = seconds

    def issue(self, api_key: str) -> tuple[str, UiSession]:
        sess = UiSession(api_key, secrets.token_urlsafe(24), time.time() + self.seconds)
        payload = orjson.dumps({"k": sess.key, "c": sess.csrf, "e": sess.expires}).decode()
        sealed = sealing.seal(self._key, payload, BOUND_TO)
        return base64.urlsafe_b64encode(sealed).decode().rstrip("="), sess

    def open(self, cookie: str | None) -> UiSession | None:
        """The session in ``cookie``, or None (absent, altered, sealed with another key, expired)."""
        if not cookie or len(cookie) > 4096:
            return None
        try:
            sealed = base64.urlsafe_b64decode(cookie + "=" * (-len(cookie) % 4))
            d = orjson.loads(sealing.unseal(self._key, sealed, BOUND_TO))
            sess = UiSession(str(d["k"]), str(d["c"]), float(d["e"]))
        except (binascii.Error, ValueError, sealing.SealError, KeyError, TypeError, UnicodeDecodeError):
            return None
        return sess if sess.expires > time.time() else None
