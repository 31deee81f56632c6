"""API keys: create (secret shown once, stored as sha256), list, revoke, authenticate.

Keys are 256-bit random tokens, so a plain sha256 is the right hash: there is
nothing to brute-force, and lookups stay one indexed query — done once per process:
a valid key's principal is cached by its hash (:mod:`app.core.cache`). Revoking a key
drops it from this process's cache at once and from every other process's within
``STEWARD_CACHE_REFRESH_SECONDS``; unknown and revoked keys are never cached.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.core.cache import Caches, ReadCache
from app.core.db import KEYS_SUBJECT, Database
from app.core.errors import Forbidden, NotFound, Unauthorized
from app.core.tables import ApiKey, utcnow
from app.keys.repository import ApiKeyRepository
from app.keys.schemas import KeyCreate, KeyCreated, KeyOut

SCOPES = ("read", "ingest", "maintain", "admin")
RANK = {s: i for i, s in enumerate(SCOPES)}
PREFIX = "stw_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's id, name, scope and optional model restriction."""

    id: str
    name: str
    scope: str
    models: tuple[str, ...] | None

    @property
    def actor(self) -> dict[str, str]:
        """Who made a change, as the alias history and the events name a key."""
        return {"key_id": self.id, "key_name": self.name}

    def has(self, scope: str) -> bool:
        return RANK[self.scope] >= RANK[scope]

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models

    def check_model(self, model: str) -> None:
        """403 unless this key may use ``model``: the one check for every place a request
        names a model (path, body, job params)."""
        if not self.may_use(model):
            raise Forbidden(f"this key is not allowed to use model {model!r}")

    def check_unrestricted(self) -> None:
        """Key management needs a key without a model restriction: a restricted one could
        otherwise mint itself an unrestricted key."""
        if self.models is not None:
            raise Forbidden("managing API keys needs an admin key that is not restricted to models")


BOOTSTRAP = Principal(id="bootstrap", name="STEWARD_ADMIN_KEY", scope="admin", models=None)


def key_out(k: ApiKey) -> KeyOut:
    return KeyOut(id=k.id, name=k.name, scope=k.scope, models=k.models, prefix=k.prefix, created_at=k.created_at)  # type: ignore[arg-type]


class KeyService:
    #: Most keys cached per process.
    CACHED_KEYS = 10_000

    def __init__(self, db: Database, bootstrap_admin: str | None, caches: Caches | None = None) -> None:
        self.db = db
        self._boot = hash_key(bootstrap_admin) if bootstrap_admin else None
        self._caches = caches
        self._cache: ReadCache[str, Principal] | None = caches.store(self.CACHED_KEYS) if caches else None

    def create(self, body: KeyCreate) -> KeyCreated:
        with self.db.write() as s:
            return self._create(s, body)

    def _create(self, s: Session, body: KeyCreate) -> KeyCreated:
        secret = new_secret()
        k = ApiKey(
            id=secrets.token_hex(8),
            name=body.name,
            scope=body.scope,
            models=sorted(set(body.models)) if body.models is not None else None,
            key_hash=hash_key(secret),
            prefix=secret[: len(PREFIX) + 6],
            created_at=utcnow(),
        )
        ApiKeyRepository(s).add(k)
        return KeyCreated(**key_out(k).model_dump(), key=secret)

    def page(self, *, cursor: str | None, limit: int) -> tuple[list[KeyOut], str | None]:
        with self.db.read() as s:
            rows = ApiKeyRepository(s).page(after=cursor, limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return [key_out(k) for k in rows], (rows[-1].id if more and rows else None)

    def revoke(self, key_id: str) -> None:
        with self.db.write() as s:
            repo = ApiKeyRepository(s)
            k = repo.get(key_id)
            if k is None or k.revoked_at is not None:
                raise NotFound(f"no API key with id {key_id!r}")
            repo.revoke(k, utcnow())

    def bootstrap(self, token: str | None) -> Principal | None:
        """The bootstrap admin (``STEWARD_ADMIN_KEY``) when ``token`` is its key, without
        touching the database; None otherwise."""
        if not token or self._boot is None or not hmac.compare_digest(hash_key(token), self._boot):
            return None
        return BOOTSTRAP

    def cached(self, token: str | None) -> Principal | None:
        """The caller of ``token`` when that needs no database: the bootstrap admin, or a
        key this process has cached; None otherwise (then :meth:`authenticate`)."""
        if not token:
            return None
        h = hash_key(token)
        if self._boot is not None and hmac.compare_digest(h, self._boot):
            return BOOTSTRAP
        return self._cache.get(h) if self._cache is not None else None

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        boot = self.bootstrap(token)
        if boot is not None:
            return boot
        h = hash_key(token)
        if self._cache is not None:
            hit = self._cache.get(h)
            if hit is not None:
                return hit
        epoch = self._caches.epoch() if self._caches is not None else 0
        with self.db.read() as s:
            k = ApiKeyRepository(s).by_hash(h)
        if k is None or k.revoked_at is not None:
            raise Unauthorized("unknown or revoked API key")
        p = Principal(id=k.id, name=k.name, scope=k.scope, models=tuple(k.models) if k.models is not None else None)
        if self._cache is not None:
            self._cache.put(h, p, KEYS_SUBJECT, epoch)
        return p

    def ensure_admin(self) -> str | None:
        """On first start without STEWARD_ADMIN_KEY, create an admin key and return
        its secret (to be shown once). Returns None when an admin key exists."""
        if self._boot is not None:
            return None
        with self.db.write() as s:
            if ApiKeyRepository(s).count_admin() > 0:
                return None
            return self._create(s, KeyCreate(name="bootstrap-admin", scope="admin")).key
