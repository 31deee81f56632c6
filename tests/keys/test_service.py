"""KeyService on both databases: hashing, authentication, scopes, revocation, bootstrap."""

from __future__ import annotations

import hashlib

import pytest

from app.core.db import Database
from app.core.errors import NotFound, Unauthorized
from app.core.migrations import upgrade
from app.core.tables import ApiKey
from app.keys.schemas import KeyCreate
from app.keys.service import SCOPES, KeyService, Principal, hash_key


@pytest.fixture
def db(db_url):
    upgrade(db_url)
    d = Database(db_url)
    yield d
    d.dispose()


def test_scope_ranks_are_ordered():
    for i, held in enumerate(SCOPES):
        p = Principal(id="x", name="x", scope=held, models=None)
        assert [p.has(s) for s in SCOPES] == [j <= i for j in range(len(SCOPES))]


def test_model_restriction():
    assert Principal("x", "x", "read", None).may_use("anything")
    p = Principal("x", "x", "read", ("a", "b"))
    assert p.may_use("a") and not p.may_use("c")


def test_hash_is_sha256_hex():
    assert hash_key("stw_abc") == hashlib.sha256(b"stw_abc").hexdigest()


def test_create_authenticate_revoke(db):
    svc = KeyService(db, None)
    with db.write() as s:
        made = svc.create(KeyCreate(name="app", scope="ingest", models=["b", "a", "a"]))
    assert made.key.startswith("stw_") and len(made.key) > 40
    assert made.models == ["a", "b"]
    with db.read() as s:
        row = s.get(ApiKey, made.id)
        assert row.key_hash == hash_key(made.key) and made.key not in (row.key_hash, row.prefix, row.name)
        p = svc.authenticate(made.key)
    assert p == Principal(id=made.id, name="app", scope="ingest", models=("a", "b"))
    with db.write() as s:
        svc.revoke(made.id)
    with db.read() as s, pytest.raises(Unauthorized):
        svc.authenticate(made.key)
    with db.write() as s, pytest.raises(NotFound):
        svc.revoke(made.id)


@pytest.mark.parametrize("token", [None, "", "stw_unknown"])
def test_unknown_tokens_are_unauthorized(db, token):
    with pytest.raises(Unauthorized) as e:
        KeyService(db, None).authenticate(token)
    assert e.value.headers["WWW-Authenticate"].startswith("Bearer")


def test_bootstrap_key_is_admin_and_suppresses_generation(db):
    svc = KeyService(db, "boot-secret-123")
    with db.write() as s:
        assert svc.ensure_admin() is None
    with db.read() as s:
        assert svc.authenticate("boot-secret-123").scope == "admin"
        assert s.query(ApiKey).count() == 0


def test_generated_admin_key_only_once(db):
    svc = KeyService(db, None)
    secret = svc.ensure_admin()
    assert secret
    assert svc.ensure_admin() is None
    assert svc.authenticate(secret).scope == "admin"


def test_pages_skip_revoked_keys(db):
    svc = KeyService(db, None)
    ids = [svc.create(KeyCreate(name=f"k{i}", scope="read")).id for i in range(5)]
    svc.revoke(ids[2])
    first, cursor = svc.page(cursor=None, limit=3)
    rest, end = svc.page(cursor=cursor, limit=3)
    assert end is None and cursor is not None
    listed = [k.id for k in first + rest]
    assert sorted(listed) == sorted(set(ids) - {ids[2]}) and listed == sorted(listed)
