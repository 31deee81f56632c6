"""/v1/models/{name}/versions: list, get, weight downloads, imports (good and bad), aliases."""

from __future__ import annotations

import json
import pickle
import struct

import numpy as np
import pytest
import safetensors.numpy as stnp
from fastapi.testclient import TestClient

from app.main import create_app
from tests.api_helpers import assert_problem, create_model, safetensors_bytes, weights
from tests.conftest import auth

OCTET = {"Content-Type": "application/octet-stream"}


def upload(client: TestClient, name: str, data: bytes, **headers: str):
    return client.post(f"/v1/models/{name}/versions", content=data, headers=OCTET | headers)


def random_tensors(seed: int, sizes=(3, 4, 1)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(len(sizes) - 1):
        out[f"layers.{i}.weight"] = rng.normal(size=(sizes[i + 1], sizes[i])).astype(np.float32)
        out[f"layers.{i}.bias"] = rng.normal(size=sizes[i + 1]).astype(np.float32)
    return out


def blob_files(settings) -> set[str]:
    return {p.name for p in settings.blob_dir.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- list / get
def test_list_newest_first_with_pagination(client):
    create_model(client)
    for seed in range(4):
        assert upload(client, "m", safetensors_bytes(random_tensors(seed))).status_code == 201
    seen, cursor = [], None
    while True:
        r = client.get("/v1/models/m/versions", params={"limit": 2} | ({"cursor": cursor} if cursor else {}))
        assert r.status_code == 200, r.text
        seen += [v["version"] for v in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == [5, 4, 3, 2, 1]
    items = client.get("/v1/models/m/versions").json()["items"]
    assert [v["parent"] for v in items] == [4, 3, 2, 1, None]
    assert [v["operation"] for v in items] == ["import"] * 4 + ["init"]
    assert client.get("/v1/models/m").json()["latest_version"] == 5


@pytest.mark.parametrize("cursor", ["abc", "-1", "99999999999"])
def test_list_bad_cursor(client, cursor):
    create_model(client)
    assert_problem(client.get("/v1/models/m/versions", params={"cursor": cursor}), 422, ["query", "cursor"])


def test_get_version_errors(client):
    create_model(client)
    assert_problem(client.get("/v1/models/m/versions/2"), 404)
    assert_problem(client.get("/v1/models/m/versions/0"), 422, ["path", "version"])
    assert_problem(client.get("/v1/models/m/versions/one"), 422, ["path", "version"])
    assert_problem(client.get("/v1/models/x/versions/1"), 404)
    assert_problem(client.get("/v1/models/x/versions"), 404)
    assert_problem(client.get("/v1/models/m/versions/2/weights"), 404)


# --------------------------------------------------------------------------- download
def test_weights_download_layout_and_metadata(client):
    create_model(client, "churn", task="multiclass", input_dim=5, output_dim=3, hidden=[6, 4])
    v = client.get("/v1/models/churn/versions/1").json()
    r = client.get("/v1/models/churn/versions/1/weights")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    assert int(r.headers["content-length"]) == len(r.content)
    assert "churn-v1.safetensors" in r.headers["content-disposition"]
    assert r.headers["x-steward-blob-sha256"] == v["sha256"]
    (n,) = struct.unpack("<Q", r.content[:8])
    meta = json.loads(r.content[8 : 8 + n])["__metadata__"]
    assert meta["model"] == "churn" and meta["version"] == "1" and meta["task"] == "multiclass"
    t = stnp.load(r.content)
    expected = {0: (6, 5), 1: (4, 6), 2: (3, 4)}
    assert set(t) == {f"layers.{i}.{p}" for i in expected for p in ("weight", "bias")}
    for i, shape in expected.items():
        assert t[f"layers.{i}.weight"].shape == shape and t[f"layers.{i}.weight"].dtype == np.float32
        assert t[f"layers.{i}.bias"].shape == (shape[0],) and t[f"layers.{i}.bias"].dtype == np.float32


def test_weights_load_into_pytorch_and_agree_with_predict(client):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load as torch_load

    create_model(client, "t", task="binary", input_dim=4, hidden=[5], activation="tanh", seed=3)
    state = torch_load(client.get("/v1/models/t/versions/1/weights").content)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Linear(4, 5), torch.nn.Linear(5, 1)])

        def forward(self, x):  # type: ignore[no-untyped-def]
            return torch.sigmoid(self.layers[1](torch.tanh(self.layers[0](x))))

    net = Net()
    net.load_state_dict(state, strict=True)
    X = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(X)).numpy()
    got = np.array(client.post("/v1/models/t/predict", json={"inputs": X.tolist()}).json()["outputs"])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- import
@pytest.mark.parametrize("task", ["regression", "binary", "multiclass"])
def test_import_round_trip_keeps_the_sha256(client, task):
    create_model(client, task=task, output_dim=3 if task == "multiclass" else 1, hidden=[4, 2])
    v1 = client.get("/v1/models/m/versions/1").json()
    data = client.get("/v1/models/m/versions/1/weights").content
    r = upload(client, "m", data)
    assert r.status_code == 201, r.text
    v2 = r.json()
    assert r.headers["location"] == "/v1/models/m/versions/2"
    assert v2["version"] == 2 and v2["parent"] == 1 and v2["operation"] == "import"
    assert v2["sha256"] == v1["sha256"] and v2["size_bytes"] == v1["size_bytes"]
    assert client.get("/v1/models/m/versions/2/weights").content != data  # its own metadata
    assert weights(client, "m", 2).keys() == weights(client, "m", 1).keys()
    X = [[0.1, -0.2, 0.3], [1.0, 2.0, -3.0]]
    p1 = client.post("/v1/models/m/predict", json={"inputs": X, "version": 1}).json()["outputs"]
    p2 = client.post("/v1/models/m/predict", json={"inputs": X, "version": 2}).json()["outputs"]
    assert p1 == p2


def test_import_of_new_parameters_is_what_predict_uses(client):
    create_model(client)
    t = random_tensors(5)
    r = upload(
        client, "m", safetensors_bytes(t, {"anything": "ignored"}), **{"Content-Type": "application/safetensors"}
    )
    assert r.status_code == 201, r.text
    back = weights(client, "m", 2)
    for k in t:
        np.testing.assert_array_equal(back[k], t[k])
    X = np.array([[0.5, -1.0, 2.0]], dtype=np.float32)
    out = client.post("/v1/models/m/predict", json={"inputs": X.tolist()}).json()
    hidden = np.maximum(X @ t["layers.0.weight"].T + t["layers.0.bias"], 0)
    np.testing.assert_allclose(out["outputs"], hidden @ t["layers.1.weight"].T + t["layers.1.bias"], rtol=1e-5)
    assert out["version"] == 2


def _header_bytes(header: dict, body: bytes = b"") -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + body


def _bad_imports() -> list:
    good = random_tensors(0)

    def with_(**changes: np.ndarray | None) -> bytes:
        t = dict(good)
        for k, v in changes.items():
            k = k.replace("__", ".")
            if v is None:
                t.pop(k)
            else:
                t[k] = v
        return safetensors_bytes(t)

    nan = good["layers.0.weight"].copy()
    nan[1, 2] = np.nan
    inf = good["layers.1.bias"].copy()
    inf[0] = np.inf
    valid = safetensors_bytes(good)
    huge = struct.pack("<Q", 2**60) + b"{}"
    w0 = {"dtype": "F32", "shape": [4, 3], "data_offsets": [0, 48]}
    return [
        pytest.param(
            with_(layers__0__weight=np.zeros((3, 4), np.float32)), 422, ["body", "layers.0.weight"], id="shape"
        ),
        pytest.param(
            with_(layers__0__weight=np.zeros((4, 3, 1), np.float32)), 422, ["body", "layers.0.weight"], id="rank"
        ),
        pytest.param(with_(layers__1__bias=np.zeros(2, np.float32)), 422, ["body", "layers.1.bias"], id="bias-shape"),
        pytest.param(with_(layers__0__weight=nan), 422, ["body", "layers.0.weight"], id="nan"),
        pytest.param(with_(layers__1__bias=inf), 422, ["body", "layers.1.bias"], id="inf"),
        pytest.param(
            with_(layers__0__weight=good["layers.0.weight"].astype(np.float64)),
            422,
            ["body", "layers.0.weight"],
            id="float64",
        ),
        pytest.param(
            with_(layers__0__weight=np.ones((4, 3), np.int32)),
            422,
            ["body", "layers.0.weight_scale"],
            id="int-no-scale",
        ),
        pytest.param(
            with_(layers__0__bias=good["layers.0.bias"].astype(np.float16)),
            422,
            ["body", "layers.0.bias"],
            id="f16-bias",
        ),
        pytest.param(with_(layers__1__bias=None), 422, ["body", "layers.1.bias"], id="missing"),
        pytest.param(
            with_(layers__2__weight=np.zeros((1, 1), np.float32)), 422, ["body", "layers.2.weight"], id="extra-layer"
        ),
        pytest.param(with_(**{"classifier": np.zeros(1, np.float32)}), 422, ["body", "classifier"], id="extra-name"),
        pytest.param(safetensors_bytes({}), 422, ["body"], id="no-tensors"),
        pytest.param(b"", 400, None, id="empty"),
        pytest.param(b"\x00\x01garbage" * 10, 400, None, id="garbage"),
        pytest.param(pickle.dumps(good), 400, None, id="pickle"),
        pytest.param(huge, 400, None, id="huge-header"),
        pytest.param(struct.pack("<Q", 64) + b"{}", 400, None, id="header-past-end"),
        pytest.param(_header_bytes({}).replace(b"{}", b"[]"), 400, None, id="header-not-object"),
        pytest.param(struct.pack("<Q", 4) + b"\xff\xfe{]", 400, None, id="header-not-json"),
        pytest.param(valid + b"\x00" * 8, 400, None, id="trailing-bytes"),
        pytest.param(valid[:-4], 400, None, id="truncated"),
        pytest.param(
            _header_bytes({"layers.0.weight": w0 | {"data_offsets": [0, 40]}}, b"\0" * 48), 400, None, id="offsets"
        ),
        pytest.param(
            _header_bytes(
                {"layers.0.weight": w0, "layers.0.bias": {"dtype": "F32", "shape": [4], "data_offsets": [32, 48]}},
                b"\0" * 48,
            ),
            400,
            None,
            id="overlap",
        ),
        pytest.param(_header_bytes({"layers.0.weight": w0 | {"dtype": "Q4"}}, b"\0" * 48), 422, None, id="dtype-name"),
        pytest.param(_header_bytes({"__metadata__": {"a": 1}}), 400, None, id="metadata-not-strings"),
    ]


@pytest.fixture
def quiet(make_settings):
    """A client of an app without the background learner and worker (which write blobs)."""
    settings = make_settings(run_learner=False, run_worker=False)
    with TestClient(create_app(settings), headers=auth()) as c:
        yield c, settings


def test_bad_imports_are_4xx_and_store_nothing(quiet, subtests):
    client, settings = quiet
    create_model(client)
    before = blob_files(settings)
    for case in _bad_imports():
        data, status, loc = case.values
        with subtests.test(case.id):
            assert_problem(upload(client, "m", data), status, loc)
            assert [v["version"] for v in client.get("/v1/models/m/versions").json()["items"]] == [1]
            assert client.get("/v1/models/m").json()["latest_version"] == 1
            assert blob_files(settings) == before


def test_import_wrong_media_type_and_unknown_model(client):
    create_model(client)
    data = safetensors_bytes(random_tensors(1))
    r = client.post("/v1/models/m/versions", content=data, headers={"Content-Type": "text/plain"})
    assert_problem(r, 415)
    assert_problem(upload(client, "nope", data), 404)
    assert len(client.get("/v1/models/m/versions").json()["items"]) == 1


def test_import_larger_than_the_body_limit_is_413(make_settings):
    with TestClient(create_app(make_settings(max_body_bytes=2048)), headers=auth()) as c:
        create_model(c, input_dim=50, hidden=[20])
        data = c.get("/v1/models/m/versions/1/weights").content
        assert len(data) > 2048
        assert_problem(upload(c, "m", data), 413)

        def chunks():  # no Content-Length: the limit applies while streaming
            yield data[:1000]
            yield data[1000:]

        r = c.post("/v1/models/m/versions", content=chunks(), headers=OCTET)
        assert_problem(r, 413)
        assert len(c.get("/v1/models/m/versions").json()["items"]) == 1


def test_import_header_over_the_configured_header_limit(make_settings):
    with TestClient(create_app(make_settings(max_header_bytes=1024)), headers=auth()) as c:
        create_model(c)
        meta = {f"k{i}": "x" * 40 for i in range(40)}
        assert_problem(upload(c, "m", safetensors_bytes(random_tensors(0), meta)), 413)


# --------------------------------------------------------------------------- aliases
def test_aliases_put_get_list_delete(client):
    create_model(client)
    upload(client, "m", safetensors_bytes(random_tensors(1)))
    r = client.put("/v1/models/m/aliases/production", json={"version": 1})
    assert r.status_code == 201, r.text
    assert r.json()["alias"] == "production" and r.json()["version"] == 1 and r.json()["model"] == "m"
    r = client.put("/v1/models/m/aliases/production", json={"version": 2})
    assert r.status_code == 200 and r.json()["version"] == 2
    client.put("/v1/models/m/aliases/canary", json={"version": 1})
    assert client.get("/v1/models/m/aliases/production").json()["version"] == 2
    assert client.get("/v1/models/m/aliases/latest").json()["version"] == 2
    listed = {a["alias"]: a["version"] for a in client.get("/v1/models/m/aliases").json()["items"]}
    assert listed == {"canary": 1, "production": 2, "latest": 2}
    assert client.get("/v1/models/m").json()["aliases"] == {"canary": 1, "production": 2}
    assert client.delete("/v1/models/m/aliases/canary").status_code == 204
    assert_problem(client.get("/v1/models/m/aliases/canary"), 404)
    assert_problem(client.delete("/v1/models/m/aliases/canary"), 404)
    assert client.get("/v1/models/m").json()["aliases"] == {"production": 2}


def test_alias_bad_inputs(client):
    create_model(client)
    assert_problem(client.put("/v1/models/m/aliases/production", json={"version": 9}), 404)
    assert_problem(client.put("/v1/models/m/aliases/latest", json={"version": 1}), 422, ["path", "alias"])
    assert_problem(client.delete("/v1/models/m/aliases/latest"), 422, ["path", "alias"])
    assert_problem(client.put("/v1/models/m/aliases/Prod", json={"version": 1}), 422, ["path", "alias"])
    assert_problem(client.put("/v1/models/m/aliases/p", json={"version": 0}), 422, ["body", "version"])
    assert_problem(client.put("/v1/models/m/aliases/p", json={"version": "1.5"}), 422, ["body", "version"])
    assert_problem(client.put("/v1/models/m/aliases/p", json={"version": "1"}), 422, ["body", "version"])
    assert_problem(client.put("/v1/models/m/aliases/p", json={"version": True}), 422, ["body", "version"])
    assert_problem(client.put("/v1/models/m/aliases/p", json={"version": 1, "x": 1}), 422, ["body", "x"])
    assert_problem(client.put("/v1/models/m/aliases/p", json={}), 422, ["body", "version"])
    r = client.put("/v1/models/m/aliases/p", content=b"{", headers={"Content-Type": "application/json"})
    assert_problem(r, 400)
    assert_problem(client.put("/v1/models/zz/aliases/p", json={"version": 1}), 404)
    assert_problem(client.get("/v1/models/m/aliases/nope"), 404)
    assert client.get("/v1/models/m").json()["aliases"] == {}


def test_predict_default_is_production_else_latest(client):
    create_model(client)
    upload(client, "m", safetensors_bytes(random_tensors(1)))
    X = {"inputs": [[1.0, 2.0, 3.0]]}

    def version(**kw: object) -> int:
        r = client.post("/v1/models/m/predict", json=X | kw)
        assert r.status_code == 200, r.text
        return r.json()["version"]

    assert version() == 2
    client.put("/v1/models/m/aliases/production", json={"version": 1})
    assert version() == 1
    assert version(alias="latest") == 2
    assert version(alias="production") == 1
    assert version(version=2) == 2
    upload(client, "m", safetensors_bytes(random_tensors(2)))
    assert version() == 1 and version(alias="latest") == 3
    client.delete("/v1/models/m/aliases/production")
    assert version() == 3
    assert_problem(client.post("/v1/models/m/predict", json=X | {"alias": "staging"}), 404)
