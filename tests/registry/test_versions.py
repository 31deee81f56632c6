"""Versions and models services: canonical encoding, upload checks, the network cache,
reference resolution, model creation and deletion — on both databases."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import safetensors.numpy as stnp

from app.core.blobs import BlobStore
from app.core.db import Database
from app.core.errors import BadRequest, Conflict, Invalid, NotFound, PayloadTooLarge
from app.core.migrations import upgrade
from app.core.tables import Alias, Learner, Version
from app.engine.nn.network import init_network
from app.interop.safetensors import decode_upload, encode, read_header
from app.registry.models import ModelService, get_model
from app.registry.repository import AliasRepository, VersionRepository
from app.registry.schemas import ModelCreate
from app.registry.versions import NetworkCache, VersionService


def tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "layers.0.weight": rng.normal(size=(4, 3)).astype(np.float32),
        "layers.0.bias": rng.normal(size=4).astype(np.float32),
        "layers.1.weight": rng.normal(size=(1, 4)).astype(np.float32),
        "layers.1.bias": rng.normal(size=1).astype(np.float32),
    }


# --------------------------------------------------------------------------- encoding
def test_encode_is_canonical_and_readable():
    t = tensors()
    a = encode(t)
    b = encode(dict(reversed(list(t.items()))))
    assert a == b
    back = stnp.load(a)
    for k in t:
        np.testing.assert_array_equal(back[k], t[k])
    (n,) = struct.unpack("<Q", a[:8])
    assert n % 8 == 0
    assert json.loads(a[8 : 8 + n])["__metadata__"]["encoding"] == "dense"
    assert encode(t, "quantized") != a


def test_decode_upload_accepts_a_safetensors_file():
    t = tensors()
    out = decode_upload(stnp.save(t, metadata={"note": "x"}), max_header=1 << 20)
    assert set(out) == set(t)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", BadRequest),
        (b"1234567", BadRequest),
        (struct.pack("<Q", 1 << 62), BadRequest),
        (struct.pack("<Q", 2) + b"[]", BadRequest),
        (struct.pack("<Q", 3) + b"{x}", BadRequest),
    ],
)
def test_read_header_refuses_non_files(data, error):
    with pytest.raises(error):
        read_header(data, max_header=1024)


def test_read_header_limit():
    data = stnp.save(tensors(), metadata={"k": "v" * 2000})
    with pytest.raises(PayloadTooLarge):
        read_header(data, max_header=1024)
    header, start = read_header(data, max_header=4096)
    assert "layers.0.weight" in header and start > 8


def test_decode_upload_refuses_bad_dtypes_and_layouts():
    head = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    raw = json.dumps(head).encode()
    ok = struct.pack("<Q", len(raw)) + raw + b"\0" * 8
    assert decode_upload(ok, max_header=1024)["w"].shape == (2,)
    with pytest.raises(BadRequest):
        decode_upload(ok + b"\0", max_header=1024)
    bad = json.dumps({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}).encode()
    with pytest.raises(BadRequest):
        decode_upload(struct.pack("<Q", len(bad)) + bad + b"\0" * 8, max_header=1024)
    odd = json.dumps({"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}).encode()
    with pytest.raises(Invalid):
        decode_upload(struct.pack("<Q", len(odd)) + odd + b"\0" * 8, max_header=1024)
    extra = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "x": 1}}).encode()
    with pytest.raises(BadRequest):
        decode_upload(struct.pack("<Q", len(extra)) + extra + b"\0" * 8, max_header=1024)


def test_network_cache_is_bounded_lru():
    nets = [init_network("regression", "relu", 10, 1, [10], i) for i in range(3)]
    size = nets[0].n_params * 4
    cache = NetworkCache(max_bytes=2 * size)
    cache.put("a", nets[0])
    cache.put("b", nets[1])
    assert cache.get("a") is nets[0]  # a is now the most recent
    cache.put("c", nets[2])
    assert cache.get("b") is None and cache.get("a") is nets[0] and cache.get("c") is nets[2]


# --------------------------------------------------------------------------- with a database
@pytest.fixture
def svc(db_url, tmp_path):
    upgrade(db_url)
    db = Database(db_url)
    versions = VersionService(BlobStore(tmp_path / "blobs"), NetworkCache(), 1 << 20)
    yield db, versions, ModelService(db, versions, max_params=10_000)
    db.dispose()


def import_st(db, versions, data: bytes):
    """A safetensors import as the import service makes it: decoded and stored first, the
    row added under the model lock."""
    with db.read() as s:
        m = get_model(s, "m")
    blob = versions.decode_safetensors(m, data)
    with db.write() as s:
        m = get_model(s, "m", for_update=True)
        latest = VersionRepository(s).latest_number(m.id)
        return versions.add(s, m, blob, operation="import", parent=latest or None, params={"format": "safetensors"})


def spec(**kw) -> ModelCreate:
    return ModelCreate.model_validate({"name": "m", "task": "regression", "input_dim": 3, "hidden": [4]} | kw)


def test_create_makes_version_1_blob_and_learner_row(svc):
    db, versions, models = svc
    models.create(spec(seed=9))
    with db.read() as s:
        m = get_model(s, "m")
        v = versions.get(s, m, 1)
        assert (v.operation, v.parent, v.dtype, v.sparsity, v.architecture) == ("init", None, "float32", 0.0, [3, 4, 1])
        assert s.get(Learner, m.id).applied_through == -1
        assert versions.blobs.exists(v.blob_sha256)
        assert versions.blobs.path(v.blob_sha256).stat().st_size == v.size_bytes
        net = versions.load(m, v)
    ref = init_network("regression", "relu", 3, 1, [4], 9)
    for a, b in zip(net.weights, ref.weights, strict=True):
        np.testing.assert_array_equal(a, b)


def test_create_refuses_duplicates_and_oversized_networks(svc):
    db, _, models = svc
    models.create(spec())
    with pytest.raises(Conflict):
        models.create(spec())
    with pytest.raises(Invalid) as e:
        models.create(spec(name="big", input_dim=1000, hidden=[100]))
    assert e.value.errors[0]["loc"] == ["body", "hidden"]
    with db.read() as s, pytest.raises(NotFound):
        get_model(s, "big")


def test_failed_unit_of_work_leaves_nothing(svc):
    db, versions, models = svc
    blob = versions.store(net=init_network("regression", "relu", 3, 1, [4], 0))
    with pytest.raises(RuntimeError), db.write() as s:
        models.add(s, spec(), blob, operation="init", params={})
        raise RuntimeError("after the version was added")
    with db.read() as s:
        assert s.query(Version).count() == 0
        with pytest.raises(NotFound):
            get_model(s, "m")


def test_resolve_version_alias_and_default(svc):
    db, versions, models = svc
    models.create(spec())
    import_st(db, versions, stnp.save(tensors(1)))
    import_st(db, versions, stnp.save(tensors(2)))
    with db.write() as s:
        m = get_model(s, "m")
        assert versions.resolve(s, m, version=None, alias=None).version == 3
        AliasRepository(s).put(m, "production", 2, by={"test": True})
    with db.read() as s:
        m = get_model(s, "m")
        assert versions.resolve(s, m, version=None, alias=None).version == 2
        assert versions.resolve(s, m, version=None, alias="latest").version == 3
        assert versions.resolve(s, m, version=1, alias=None).version == 1
        assert versions.resolve_ref(s, m, "production").version == 2
        assert versions.resolve_ref(s, m, 1).version == 1
        assert versions.resolve_ref(s, m, None).version == 3
        for bad in (0, -1, 4, 2**31, 2**63):
            with pytest.raises(NotFound):
                versions.get(s, m, bad)
        with pytest.raises(NotFound):
            versions.resolve(s, m, version=None, alias="staging")


def test_import_records_lineage_and_reuses_identical_blobs(svc):
    db, versions, models = svc
    models.create(spec())
    a = import_st(db, versions, stnp.save(tensors(1)))
    b = import_st(db, versions, stnp.save(tensors(1), metadata={"other": "metadata"}))
    assert (a.version, a.parent, b.version, b.parent) == (2, 1, 3, 2)
    assert a.blob_sha256 == b.blob_sha256 and a.params["format"] == "safetensors"
    files = [p for p in versions.blobs.root.rglob("*") if p.is_file()]
    assert len(files) == 2  # init + one imported blob


def test_delete_cascades_to_versions_and_aliases(svc):
    db, _, models = svc
    models.create(spec())
    with db.write() as s:
        AliasRepository(s).put(get_model(s, "m"), "production", 1, by={"test": True})
    models.delete("m")
    with db.read() as s:
        assert s.query(Version).count() == 0 and s.query(Alias).count() == 0 and s.query(Learner).count() == 0
