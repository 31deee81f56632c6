"""The README's webhook verification snippet (standard library only) verifies what the
delivery loop signs, and refuses a tampered body, another secret and an old timestamp."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from app.webhooks import signing

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def snippet() -> Any:
    m = re.search(r"<!-- tested python: webhook verification -->\n```python\n(.*?)\n```", README, re.S)
    assert m, "the README lost its verification snippet"
    scope: dict[str, Any] = {}
    exec(compile(m[1], "README.md", "exec"), scope)
    return scope["verify"]


def test_the_readme_snippet_verifies_steward_signatures():
    verify = snippet()
    secret = signing.new_secret()
    body = b'{"id":12,"type":"version.created","at":"2026-12-01T09:30:00Z","model":"m","data":{}}'
    ts = int(time.time())
    headers = {
        "webhook-id": "12",
        "webhook-timestamp": str(ts),
        "webhook-signature": signing.sign(signing.secret_key(secret), "12", ts, body),
    }
    assert verify(secret, headers, body)
    assert not verify(secret, headers, body.replace(b"12", b"13"))
    assert not verify(signing.new_secret(), headers, body)
    assert not verify(secret, {**headers, "webhook-id": "13"}, body)
    old = ts - 3600
    stale = {
        **headers,
        "webhook-timestamp": str(old),
        "webhook-signature": signing.sign(signing.secret_key(secret), "12", old, body),
    }
    assert not verify(secret, stale, body)
    # several signatures (a rotated secret): one matching is enough
    both = {**headers, "webhook-signature": "v1,AAAA " + headers["webhook-signature"]}
    assert verify(secret, both, body)
