"""Webhook secrets at rest: they must sign, so they cannot be hashed; they are sealed
with AES-256-GCM under a key kept outside the database — ``STEWARD_SECRETS_KEY``
(base64 of 32 bytes; set the same one on every process of a deployment), else the file
``secrets.key`` in the data directory (made on first use, mode 0600). A database dump or
backup alone does not reveal them; each sealed secret is bound to its webhook's id (the
AEAD's associated data), so it cannot be moved to another row."""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = b"s1"
KEY_FILE = "secrets.key"


class SealError(Exception):
    """A sealed secret that this key cannot open (another key, or altered bytes)."""


def load_key(configured: str | None, data_dir: Path) -> bytes:
    """The sealing key: the configured one, else the data directory's key file (created
    with 0600 and O_EXCL on first use, so concurrent first starts agree on one)."""
    if configured:
        try:
            key = base64.b64decode(configured, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("STEWARD_SECRETS_KEY must be base64 of 32 bytes") from None
        if len(key) != 32:
            raise ValueError(f"STEWARD_SECRETS_KEY must be base64 of 32 bytes, not {len(key)}")
        return key
    path = data_dir / KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{KEY_FILE}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, base64.b64encode(secrets.token_bytes(32)) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process made it first: theirs wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    key = base64.b64decode(path.read_bytes().strip())
    if len(key) != 32:
        raise ValueError(f"{path} does not hold base64 of 32 bytes")
    return key


def seal(key: bytes, secret: str, bound_to: str) -> bytes:
    nonce = secrets.token_bytes(12)
    return VERSION + nonce + AESGCM(key).encrypt(nonce, secret.encode(), bound_to.encode())


def unseal(key: bytes, sealed: bytes, bound_to: str) -> str:
    if sealed[:2] != VERSION or len(sealed) < 2 + 12 + 16:
        raise SealError("not a sealed secret")
    try:
        return AESGCM(key).decrypt(sealed[2:14], sealed[14:], bound_to.encode()).decode()
    except InvalidTag:
        raise SealError("the secret was sealed with another key (STEWARD_SECRETS_KEY) or altered") from None
