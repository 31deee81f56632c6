"""Standard Webhooks signatures, checked against the ``standardwebhooks`` library and a
hand-written HMAC; secrets; sealing at rest."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stat

import pytest
from standardwebhooks.webhooks import Webhook as Verifier

from app.core import sealing
from app.webhooks import signing


def test_a_signature_verifies_with_the_reference_library_and_by_hand():
    secret = signing.new_secret()
    key = signing.secret_key(secret)
    assert len(key) == signing.KEY_BYTES
    body = b'{"id":7,"type":"alias.moved","data":{"version":3}}'
    import time

    ts = int(time.time())
    sig = signing.sign(key, "7", ts, body)
    headers = {"webhook-id": "7", "webhook-timestamp": str(ts), "webhook-signature": sig}
    assert Verifier(secret).verify(body, headers) == {"id": 7, "type": "alias.moved", "data": {"version": 3}}
    by_hand = base64.b64encode(hmac.new(key, f"7.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
    assert sig == "v1," + by_hand
    # another body, id or key does not verify
    with pytest.raises(Exception):  # noqa: B017 (the library raises its own WebhookVerificationError)
        Verifier(secret).verify(body + b" ", headers)
    with pytest.raises(Exception):  # noqa: B017
        Verifier(signing.new_secret()).verify(body, headers)


@pytest.mark.parametrize(
    "bad",
    ["", "abc", "whsec_", "whsec_***", "whsec_" + base64.b64encode(b"x" * 8).decode(), "whsec_" + "A" * 200],
)
def test_secrets_that_are_not_standard_are_refused(bad):
    with pytest.raises(ValueError):
        signing.secret_key(bad)


def test_sealed_secrets_open_with_their_key_and_row_only(tmp_path):
    key = sealing.load_key(None, tmp_path)
    path = tmp_path / sealing.KEY_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sealing.load_key(None, tmp_path) == key  # the same file next time
    secret = signing.new_secret()
    sealed = sealing.seal(key, secret, "wh_1")
    assert secret.encode() not in sealed and secret[6:].encode() not in sealed
    assert sealing.unseal(key, sealed, "wh_1") == secret
    with pytest.raises(sealing.SealError):
        sealing.unseal(key, sealed, "wh_2")  # bound to its webhook
    with pytest.raises(sealing.SealError):
        sealing.unseal(os.urandom(32), sealed, "wh_1")
    with pytest.raises(sealing.SealError):
        sealing.unseal(key, sealed[:-1] + bytes([sealed[-1] ^ 1]), "wh_1")
    configured = base64.b64encode(os.urandom(32)).decode()
    assert sealing.load_key(configured, tmp_path) == base64.b64decode(configured)
    for bad in ("nope!", base64.b64encode(b"short").decode()):
        with pytest.raises(ValueError):
            sealing.load_key(bad, tmp_path)
