"""migrate through the HTTP API, on both databases: every export loaded by its real
consumer (onnx.checker + ONNX Runtime, PyTorch ``load_state_dict(strict=True)``,
``numpy.load``) and compared with the service's own predict, for each task and
activation, float, pruned and quantized versions; reuse of existing exports; the
skl2onnx round trip through the ONNX import; bad input that stores nothing."""

from __future__ import annotations

import io
import json
import struct
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import safetensors.numpy as stnp

from app.engine.nn.network import ACTIVATIONS, Network
from app.interop.export import probe_inputs
from tests.conftest import auth
from tests.interop.test_export import OUT_DIM, build_sequential, make_net, quantized_version

WAIT = {"Prefer": "wait=60"}


# --------------------------------------------------------------------------- helpers
def create_model(client, name: str, task: str, activation: str, hidden: list[int], input_dim: int = 9) -> None:
    body = {
        "name": name,
        "task": task,
        "input_dim": input_dim,
        "output_dim": OUT_DIM[task],
        "hidden": hidden,
        "activation": activation,
    }
    r = client.post("/v1/models", json=body)
    assert r.status_code == 201, r.text


def import_tensors(client, name: str, tensors: dict[str, np.ndarray]) -> dict:
    r = client.post(
        f"/v1/models/{name}/versions",
        content=stnp.save({k: np.ascontiguousarray(v) for k, v in tensors.items()}),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 201, r.text
    return r.json()


def net_tensors(net: Network) -> dict[str, np.ndarray]:
    out = {}
    for i, (W, b) in enumerate(zip(net.weights, net.biases, strict=True)):
        out[f"layers.{i}.weight"], out[f"layers.{i}.bias"] = W, b
    return out


def migrate(client, name: str, **body) -> dict:
    r = client.post(f"/v1/models/{name}/migrate", json=body, headers=WAIT)
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["kind"] == "migrate"
    return job


def export(client, name: str, version: int, target: str, **extra) -> tuple[dict, bytes]:
    job = migrate(client, name, **{"from": version, "target": target, **extra})
    assert job["status"] == "succeeded", job
    res = job["result"]
    assert res["version"] == version and res["target"] == target
    assert res["max_abs_error"] <= 1e-5 and res["tolerance"] == {"atol": 1e-5, "rtol": 1e-4}
    r = client.get(res["url"])
    assert r.status_code == 200, r.text
    ext = {"onnx": "onnx", "torch": "safetensors", "npz": "npz"}[target]
    assert r.headers["content-disposition"] == f'attachment; filename="{name}-v{version}.{ext}"'
    assert r.headers["content-type"] == ("application/onnx" if target == "onnx" else "application/octet-stream")
    assert r.headers["x-steward-blob-sha256"] == res["sha256"] and len(r.content) == res["size_bytes"]
    return res, r.content


def predict(client, name: str, version: int, X: np.ndarray) -> np.ndarray:
    r = client.post(f"/v1/models/{name}/predict", json={"inputs": X.tolist(), "version": version})
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["outputs"], dtype=np.float64)


def run_onnx(data: bytes, X: np.ndarray) -> np.ndarray:
    model = onnx.load_model_from_string(data)
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["output"]
    return session.run(["output"], {"input": X.astype(np.float32)})[0]


def run_torch(data: bytes, X: np.ndarray) -> np.ndarray:
    torch = pytest.importorskip("torch")
    from safetensors.torch import load as load_torch

    (n,) = struct.unpack("<Q", data[:8])
    arch = json.loads(json.loads(data[8 : 8 + n])["__metadata__"]["architecture"])
    model = build_sequential(arch)
    model.load_state_dict(load_torch(data), strict=True)
    with torch.no_grad():
        return model(torch.from_numpy(X.astype(np.float32))).numpy()


def run_npz(data: bytes, X: np.ndarray) -> np.ndarray:
    """The npz file read by numpy alone, its architecture interpreted by hand."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arch = json.loads(str(arrays["architecture"]))
    a, k = X.astype(np.float32), 0
    for m in arch["modules"]:
        if m["type"] == "Linear":
            W, b = arrays[f"layers.{k}.weight"], arrays[f"layers.{k}.bias"]
            assert W.dtype == np.float32 and W.shape == (m["out_features"], m["in_features"])
            a, k = a @ W.T + b, k + 1
        elif m["type"] == "ReLU":
            a = np.maximum(a, 0)
        elif m["type"] == "Tanh":
            a = np.tanh(a)
        elif m["type"] == "Sigmoid":
            a = 1 / (1 + np.exp(-a))
        else:
            assert m["type"] == "Softmax" and m["dim"] == 1
            e = np.exp(a - a.max(axis=1, keepdims=True))
            a = e / e.sum(axis=1, keepdims=True)
    return a


def check_all_targets(client, name: str, version: int, X: np.ndarray) -> dict[str, tuple[dict, bytes]]:
    expected = predict(client, name, version, X)
    out = {}
    for target, run, tol in (
        ("onnx", run_onnx, {"rtol": 1e-4, "atol": 1e-5}),
        ("torch", run_torch, {"rtol": 1e-5, "atol": 1e-6}),
        ("npz", run_npz, {"rtol": 1e-5, "atol": 1e-6}),
    ):
        res, data = export(client, name, version, target)
        np.testing.assert_allclose(run(data, X), expected, **tol, err_msg=f"{name} v{version} {target}")
        out[target] = (res, data)
    return out


# --------------------------------------------------------------------------- every task and activation
@pytest.mark.parametrize("task", ["regression", "binary", "multiclass"])
def test_float_exports_match_predict_for_each_activation(client, task):
    X = probe_inputs(9, np.random.default_rng(1), n=40)
    for activation in ACTIVATIONS:
        name = f"{task[:3]}-{activation}"
        create_model(client, name, task, activation, [12, 7])
        v = import_tensors(client, name, net_tensors(make_net(task, activation)))["version"]
        files = check_all_targets(client, name, v, X)
        model = onnx.load_model_from_string(files["onnx"][1])
        props = {p.key: p.value for p in model.metadata_props}
        assert (props["steward.model"], props["steward.version"], props["steward.task"]) == (name, str(v), task)
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
        # the export is listed on the version and in the exports listing
        listed = client.get(f"/v1/models/{name}/versions/{v}").json()["exports"]
        assert sorted(e["target"] for e in listed) == ["npz", "onnx", "torch"]
        items = client.get(f"/v1/models/{name}/versions/{v}/exports").json()["items"]
        assert [e["target"] for e in items] == ["npz", "onnx", "torch"]
        assert items[1]["meta"]["opset"] == 17 and items[1]["meta"]["verification"]["ok"] is True


def test_quantized_and_pruned_versions(client):
    X = probe_inputs(9, np.random.default_rng(2), n=40)
    create_model(client, "qp", "multiclass", "relu", [64, 32])
    float_v = import_tensors(client, "qp", net_tensors(make_net("multiclass", "relu", hidden=[64, 32])))["version"]
    float_files = check_all_targets(client, "qp", float_v, X)

    # int8 symmetric per channel, stored as integers + scales
    _, qtensors = quantized_version(make_net("multiclass", "relu", hidden=[64, 32]))
    qv = import_tensors(client, "qp", qtensors)
    assert qv["dtype"] == "int8"
    q_files = check_all_targets(client, "qp", qv["version"], X)
    qmodel = onnx.load_model_from_string(q_files["onnx"][1])
    assert [n.op_type for n in qmodel.graph.node].count("DequantizeLinear") == 3
    assert {i.data_type for i in qmodel.graph.initializer if i.name.endswith("_quantized")} == {onnx.TensorProto.INT8}
    assert q_files["onnx"][0]["size_bytes"] < 0.5 * float_files["onnx"][0]["size_bytes"]

    # unstructured pruning: half the weights zero
    net = make_net("multiclass", "relu", hidden=[64, 32])
    for W in net.weights:
        W[np.abs(W) < np.median(np.abs(W))] = 0
    sv = import_tensors(client, "qp", net_tensors(net))
    assert sv["sparsity"] >= 0.45
    check_all_targets(client, "qp", sv["version"], X)

    # neuron pruning: narrower hidden layers than the spec
    narrow = make_net("multiclass", "relu", hidden=[5, 3])
    nv = import_tensors(client, "qp", net_tensors(narrow))
    assert nv["architecture"] == [9, 5, 3, 5]
    files = check_all_targets(client, "qp", nv["version"], X)
    arch = files["torch"][0]
    assert arch["size_bytes"] < float_files["torch"][0]["size_bytes"]


def job_version(client, name: str, path: str, body: dict) -> dict:
    r = client.post(f"/v1/models/{name}/{path}", json=body, headers=WAIT)
    assert r.status_code == 201 and r.json()["status"] == "succeeded", r.text
    return client.get(f"/v1/models/{name}/versions/{r.json()['result']['version']}").json()


@pytest.mark.parametrize("task", ["regression", "binary", "multiclass"])
def test_versions_made_by_prune_and_quantize_jobs(client, task):
    X = probe_inputs(9, np.random.default_rng(3), n=40)
    create_model(client, "c", task, "tanh", [64, 32])
    base = import_tensors(client, "c", net_tensors(make_net(task, "tanh", hidden=[64, 32])))["version"]
    made = [
        job_version(client, "c", "prune", {"from": base, "sparsity": 0.8, "scope": "global"}),
        job_version(client, "c", "prune", {"from": base, "sparsity": 0.5, "structure": "neurons"}),
        job_version(client, "c", "quantize", {"from": base, "dtype": "int8"}),
        job_version(
            client,
            "c",
            "quantize",
            {"from": base, "dtype": "uint8", "scheme": "asymmetric", "granularity": "per_tensor"},
        ),
        job_version(client, "c", "quantize", {"from": base, "dtype": "float16"}),
    ]
    sparse, narrow, int8, uint8, half = made
    assert sparse["encoding"] == "sparse" and sparse["sparsity"] >= 0.79
    assert narrow["architecture"] == [9, 32, 16, OUT_DIM[task]]
    assert (int8["dtype"], uint8["dtype"], half["dtype"]) == ("int8", "uint8", "float16")
    for v in made:
        files = check_all_targets(client, "c", v["version"], X)
        ops = [n.op_type for n in onnx.load_model_from_string(files["onnx"][1]).graph.node]
        if v["dtype"] in ("int8", "uint8"):
            assert ops.count("DequantizeLinear") == 3
        if v["dtype"] == "float16":
            assert ops.count("Cast") == 3


# --------------------------------------------------------------------------- reuse and opsets
def test_re_request_reuses_and_another_opset_replaces(client):
    create_model(client, "r", "binary", "tanh", [4])
    first, data = export(client, "r", 1, "onnx", opset=15)
    again, data2 = export(client, "r", 1, "onnx", opset=15)
    assert first["reused"] is False and again["reused"] is True
    assert again["sha256"] == first["sha256"] and data2 == data
    assert again["verification"] == first["verification"]
    # an existing torch export is reused whatever opset is sent (ignored for torch)
    t1, _ = export(client, "r", 1, "torch")
    t2, _ = export(client, "r", 1, "torch", opset=13)
    assert t2["reused"] is True and t2["sha256"] == t1["sha256"]
    # another opset replaces the stored onnx file
    other, data3 = export(client, "r", 1, "onnx", opset=19)
    assert other["reused"] is False and other["opset"] == 19
    assert other["replaced"]["opset"] == 15 and other["replaced"]["sha256"] == first["sha256"]
    assert onnx.load_model_from_string(data3).opset_import[0].version == 19
    items = client.get("/v1/models/r/versions/1/exports").json()["items"]
    assert [(e["target"], e["meta"].get("opset")) for e in items] == [("onnx", 19), ("torch", None)]
    # default opset is 17, by alias
    client.put("/v1/models/r/aliases/production", json={"version": 1})
    res = migrate(client, "r", **{"from": "production", "target": "onnx"})["result"]
    assert res["opset"] == 17 and res["version"] == 1


def test_failed_verification_fails_the_job_and_stores_nothing(client, monkeypatch):
    from app.interop import export as engine_export
    from app.migration import service

    def wrong_file(net, **kw):
        bad = net.copy()
        bad.biases[-1] = bad.biases[-1] + np.float32(0.5)
        return engine_export.to_onnx(bad, **kw)

    monkeypatch.setattr(service, "to_onnx", wrong_file)
    create_model(client, "f", "regression", "relu", [4])
    job = migrate(client, "f", **{"from": 1, "target": "onnx"})
    assert job["status"] == "failed" and job["attempts"] == 1
    err = job["error"]
    assert err["type"] == "job_error" and err["stage"] == "compare"
    assert err["evidence"]["max_abs_error"] == pytest.approx(0.5, rel=1e-3)
    assert err["evidence"]["tolerance"] == {"atol": 1e-5, "rtol": 1e-4}
    assert "worst" in err["evidence"]
    assert client.get("/v1/models/f/versions/1/exports/onnx").status_code == 404
    assert client.get("/v1/models/f/versions/1").json()["exports"] == []


# --------------------------------------------------------------------------- bad input
def n_jobs(client) -> int:
    return len(client.get("/v1/jobs").json()["items"])


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"from": 1, "target": "tflite"}, ["body", "target"]),
        ({"from": 1}, ["body", "target"]),
        ({"from": 1, "target": "onnx", "opset": 12}, ["body", "opset"]),
        ({"from": 1, "target": "onnx", "opset": 22}, ["body", "opset"]),
        ({"from": 7, "target": "onnx"}, ["body", "from"]),
        ({"from": "staging", "target": "onnx"}, ["body", "from"]),
        ({"from": 1, "target": "onnx", "new_model": "x"}, ["body", "new_model"]),
        ({"from": 1, "target": "onnx", "epochs": 3}, ["body", "epochs"]),
        ({"from": 1, "target": "onnx", "mode": "copy"}, ["body", "mode"]),
        ({"from": 1, "target": "onnx", "colour": "red"}, ["body", "colour"]),
        ({"from": 1, "mode": "transfer", "target": "onnx", "new_model": "x", "task": "binary"}, ["body", "target"]),
        ({"from": 1, "mode": "transfer", "task": "binary"}, ["body", "new_model"]),
        ({"from": 1, "mode": "transfer", "new_model": "x"}, ["body", "task"]),
        ({"from": 1, "mode": "transfer", "new_model": "x", "task": "multiclass"}, ["body", "output_dim"]),
        ({"from": 1, "mode": "transfer", "new_model": "x", "task": "binary", "output_dim": 2}, ["body", "output_dim"]),
        ({"from": 1, "mode": "transfer", "new_model": "x", "task": "binary", "freeze": 2}, ["body", "freeze"]),
        (
            {"from": 1, "mode": "transfer", "new_model": "x", "task": "binary", "copy_layers": 2},
            ["body", "copy_layers"],
        ),
        ({"from": 1, "mode": "transfer", "new_model": "x", "task": "binary"}, ["body", "samples"]),
        (
            {"from": 1, "mode": "transfer", "new_model": "x", "task": "binary", "samples": [{"x": [1, 2], "y": 1}]},
            ["body", "samples", 0, "x"],
        ),
        (
            {
                "from": 1,
                "mode": "transfer",
                "new_model": "x",
                "task": "binary",
                "samples": [{"x": [0.0] * 9, "y": 1}, {"x": [0.0] * 9, "y": 2}],
            },
            ["body", "samples", 1, "y"],
        ),
        (
            {"from": 1, "mode": "transfer", "new_model": "x", "task": "regression", "log": {"from_offset": 0}},
            ["body", "log"],
        ),
    ],
)
def test_bad_migrate_requests_are_422_and_queue_nothing(client, body, loc):
    create_model(client, "b", "multiclass", "relu", [6])
    r = client.post("/v1/models/b/migrate", json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"][0]["loc"] == loc, r.json()
    assert n_jobs(client) == 0


def test_migrate_not_found_conflict_and_scopes(client):
    create_model(client, "s", "binary", "relu", [3])
    create_model(client, "taken", "binary", "relu", [3])
    assert client.post("/v1/models/nope/migrate", json={"target": "onnx"}).status_code == 404
    r = client.post(
        "/v1/models/s/migrate",
        json={"mode": "transfer", "new_model": "taken", "task": "binary", "samples": [{"x": [0.0] * 9, "y": 1}] * 2},
    )
    assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"
    assert n_jobs(client) == 0
    # downloads: 404 before the export exists, 422 for an unknown target
    assert client.get("/v1/models/s/versions/1/exports/onnx").status_code == 404
    assert client.get("/v1/models/s/versions/9/exports/onnx").status_code == 404
    r = client.get("/v1/models/s/versions/1/exports/tflite")
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["path", "target"]
    # a read key may download but not migrate
    key = client.post("/v1/keys", json={"name": "reader", "scope": "read"}).json()["key"]
    assert client.post("/v1/models/s/migrate", json={"target": "npz"}, headers=auth(key)).status_code == 403
    res, data = export(client, "s", 1, "npz")
    r = client.get(res["url"], headers=auth(key))
    assert r.status_code == 200 and r.content == data


def test_a_model_restricted_key_cannot_create_a_model_outside_its_list_by_transfer(client):
    """Every model a request names is checked against the key's models: the path's, and a
    transfer's ``new_model`` (which the job would create)."""
    create_model(client, "s", "binary", "relu", [3])
    key = client.post("/v1/keys", json={"name": "ops", "scope": "maintain", "models": ["s"]}).json()["key"]
    body = {"mode": "transfer", "task": "binary", "samples": [{"x": [0.0] * 9, "y": k % 2} for k in range(4)]}
    r = client.post("/v1/models/s/migrate", json={**body, "new_model": "elsewhere"}, headers=auth(key))
    assert r.status_code == 403 and "elsewhere" in r.json()["detail"]
    assert n_jobs(client) == 0
    assert client.get("/v1/models/elsewhere").status_code == 404
    # the same key may export its own model, and an unrestricted key may transfer anywhere
    assert client.post("/v1/models/s/migrate", json={"target": "npz"}, headers=auth(key)).status_code in (201, 202)
    r = client.post("/v1/models/s/migrate", json={**body, "new_model": "elsewhere", "epochs": 1}, headers=WAIT)
    assert r.status_code == 201 and r.json()["status"] == "succeeded", r.text
    assert client.get("/v1/models/elsewhere").status_code == 200


# --------------------------------------------------------------------------- ONNX import
def _fit(model, X, y):
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(X, y)


@pytest.fixture(scope="module")
def sklearn_digits():
    pytest.importorskip("skl2onnx")
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    clf = _fit(MLPClassifier(hidden_layer_sizes=(32,), max_iter=150, random_state=0), X, y)
    onx = convert_sklearn(clf, initial_types=[("input", FloatTensorType([None, 64]))])
    return X, clf, onx.SerializeToString()


def onnx_import(client, name: str, data: bytes, ctype: str = "application/onnx"):
    return client.post(f"/v1/models/{name}/versions", content=data, headers={"Content-Type": ctype})


def test_skl2onnx_mlp_classifier_round_trip(client, sklearn_digits):
    X, clf, data = sklearn_digits
    r = client.post(
        "/v1/models",
        json={"name": "sk", "task": "multiclass", "input_dim": 64, "output_dim": 10, "hidden": [32]},
    )
    assert r.status_code == 201
    r = onnx_import(client, "sk", data)
    assert r.status_code == 201, r.text
    v = r.json()
    assert v["operation"] == "import" and v["version"] == 2 and v["parent"] == 1
    assert r.headers["location"] == "/v1/models/sk/versions/2"
    p = v["params"]
    assert p["format"] == "onnx" and p["verification"]["ok"] is True
    assert p["verification"]["max_abs_error"] <= 1e-5
    assert p["onnx"]["layers"] == [64, 32, 10]
    pred = client.post("/v1/models/sk/predict", json={"inputs": X.tolist(), "version": 2}).json()
    np.testing.assert_array_equal(pred["labels"], clf.predict(X))
    np.testing.assert_allclose(pred["outputs"], clf.predict_proba(X), atol=1e-5)
    # and back out again: Steward's export of the imported version matches sklearn too
    _, exported = export(client, "sk", 2, "onnx")
    np.testing.assert_allclose(run_onnx(exported, X), clf.predict_proba(X), atol=1e-5)


def _conv_model() -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    node = helper.make_node("Conv", ["input", "w"], ["output"], name="conv1")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 5, 5])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 2, 3, 3])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_bad_onnx_imports_store_nothing(client, make_settings):
    create_model(client, "imp", "multiclass", "relu", [6])
    exported = export(client, "imp", 1, "onnx")[1]

    def latest() -> int:
        return client.get("/v1/models/imp").json()["latest_version"]

    # an unsupported operator is named
    r = onnx_import(client, "imp", _conv_model())
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["operator"] == "Conv" and body["node"] == "conv1" and "Conv" in body["detail"]
    assert body["errors"][0]["loc"] == ["body", "node:conv1"]
    # mismatched shapes: another model's file
    create_model(client, "other", "multiclass", "relu", [6], input_dim=4)
    r = onnx_import(client, "other", exported)
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "input"]
    assert "9 input features" in r.json()["detail"]
    # wrong activation
    create_model(client, "tanh", "multiclass", "tanh", [6])
    r = onnx_import(client, "tanh", exported)
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "activation"]
    # corrupt bytes
    for junk in (b"\x00\x01garbage\xff" * 10, exported[: len(exported) // 2]):
        r = onnx_import(client, "imp", junk)
        assert r.status_code == 400, r.text
    # unsupported media type
    assert onnx_import(client, "imp", exported, "text/plain").status_code == 415
    assert latest() == 1
    assert client.get("/v1/models/other").json()["latest_version"] == 1
    # and the good file imports
    r = onnx_import(client, "imp", exported)
    assert r.status_code == 201 and r.json()["params"]["verification"]["max_abs_error"] <= 1e-6
    w1 = stnp.load(client.get("/v1/models/imp/versions/1/weights").content)
    w2 = stnp.load(client.get(f"/v1/models/imp/versions/{r.json()['version']}/weights").content)
    assert sorted(w1) == sorted(w2) and all(np.array_equal(w1[k], w2[k]) for k in w1)  # bit exact round trip


def test_oversized_onnx_is_413(make_settings):
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(make_settings(max_body_bytes=2048)), headers=auth()) as c:
        create_model(c, "big", "regression", "relu", [64, 64])
        _, data = export(c, "big", 1, "onnx")
        assert len(data) > 2048
        r = onnx_import(c, "big", data)
        assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json"
        assert c.get("/v1/models/big").json()["latest_version"] == 1


# --------------------------------------------------------------------------- transfer learning
def samples_of(X, y) -> list[dict]:
    return [{"x": [float(v) for v in row], "y": int(t)} for row, t in zip(X, y, strict=True)]


def weights_of(client, name: str, version: int) -> dict[str, np.ndarray]:
    r = client.get(f"/v1/models/{name}/versions/{version}/weights")
    assert r.status_code == 200
    return stnp.load(r.content)


@pytest.fixture(scope="module")
def digits_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    return train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)


def test_transfer_from_digits_to_parity_beats_scratch(client, digits_split):
    Xtr, Xte, ytr, yte = digits_split
    arch = {"input_dim": 64, "hidden": [128, 64], "optimizer": {"kind": "adam", "learning_rate": 0.005}}
    r = client.post("/v1/models", json={"name": "digits", "task": "multiclass", "output_dim": 10, **arch})
    assert r.status_code == 201, r.text
    job = client.post(
        "/v1/models/digits/batch-update",
        json={"samples": samples_of(Xtr, ytr), "epochs": 30, "batch_size": 32},
        headers=WAIT,
    ).json()
    assert job["status"] == "succeeded", job
    src_v = job["result"]["version"]

    # a small training subset of the new task: even (0) / odd (1)
    small = np.random.default_rng(0).choice(len(Xtr), 100, replace=False)
    Xs, ys = Xtr[small], ytr[small] % 2
    train = {"epochs": 100, "batch_size": 16, "learning_rate": 0.01, "shuffle_seed": 1, "validation_fraction": 0.2}
    job = migrate(
        client,
        "digits",
        **{"from": src_v, "mode": "transfer", "new_model": "parity", "task": "binary", "freeze": 2},
        hidden_head=[16],
        samples=samples_of(Xs, ys),
        **train,
    )
    assert job["status"] == "succeeded", job
    assert job["model"] == "digits"  # the job belongs to the source model
    res = job["result"]
    assert (res["model"], res["version"], res["frozen"], res["copied_layers"]) == ("parity", 1, 2, 2)
    assert res["source"] == {"model": "digits", "version": src_v}

    # the same architecture (64-128-64-16-1), trained from scratch on the same 100 samples
    client.post("/v1/models", json={"name": "scratch", "task": "binary", **arch, "hidden": [128, 64, 16]})
    job = client.post(
        "/v1/models/scratch/batch-update", json={"samples": samples_of(Xs, ys), **train}, headers=WAIT
    ).json()
    assert job["status"] == "succeeded", job

    test = samples_of(Xte, yte % 2)
    acc_transfer = client.post("/v1/models/parity/evaluate", json={"samples": test, "version": 1}).json()["accuracy"]
    acc_scratch = client.post(
        "/v1/models/scratch/evaluate", json={"samples": test, "version": job["result"]["version"]}
    ).json()["accuracy"]
    assert acc_transfer >= 0.93 and acc_transfer > acc_scratch + 0.02, (acc_transfer, acc_scratch)

    # lineage on the model and the version
    model = client.get("/v1/models/parity").json()
    assert model["lineage"] == {"model": "digits", "version": src_v, "frozen": 2, "copied_layers": 2}
    assert (model["input_dim"], model["hidden"], model["output_dim"], model["latest_version"]) == (
        64,
        [128, 64, 16],
        1,
        1,
    )
    v1 = client.get("/v1/models/parity/versions/1").json()
    assert v1["operation"] == "transfer" and v1["parent"] is None
    assert v1["params"]["source"]["model"] == "digits" and v1["params"]["source"]["version"] == src_v
    assert v1["params"]["frozen"] == 2 and v1["params"]["frozen_layers"] == [0, 1]
    assert v1["metrics"]["validation"]["n"] == 20

    # frozen layers are bit-identical to the source's; the head is new
    src, new = weights_of(client, "digits", src_v), weights_of(client, "parity", 1)
    for i in (0, 1):
        for part in ("weight", "bias"):
            k = f"layers.{i}.{part}"
            assert new[k].dtype == src[k].dtype and new[k].tobytes() == src[k].tobytes(), k
    assert new["layers.2.weight"].shape == (16, 64) and new["layers.3.weight"].shape == (1, 16)

    # freezing fewer layers trains the others, and a new hidden layer can be added
    job = migrate(
        client,
        "digits",
        **{"from": src_v, "mode": "transfer", "new_model": "parity2", "task": "binary", "freeze": 1},
        hidden_head=[8],
        samples=samples_of(Xs, ys),
        epochs=3,
        batch_size=16,
    )
    assert job["status"] == "succeeded", job
    new2 = weights_of(client, "parity2", 1)
    assert new2["layers.0.weight"].tobytes() == src["layers.0.weight"].tobytes()
    assert new2["layers.1.weight"].tobytes() != src["layers.1.weight"].tobytes()
    assert client.get("/v1/models/parity2").json()["hidden"] == [128, 64, 8]
    # the transferred model exports like any other
    X = Xte[:20]
    check_all_targets(client, "parity2", 1, X)
