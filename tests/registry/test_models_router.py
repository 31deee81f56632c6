"""/v1/models: create (with version 1), list with pagination, get, delete — on both databases."""

from __future__ import annotations

import hashlib
from datetime import datetime

import numpy as np
import orjson
import pytest
import safetensors.numpy as stnp
from fastapi.testclient import TestClient

from app.main import create_app
from app.registry.schemas import ModelCreate
from tests.api_helpers import assert_problem, create_model, model_spec, weights
from tests.conftest import auth


def test_create_answers_the_model_with_version_1(client, settings):
    spec = model_spec(
        "churn",
        task="binary",
        input_dim=30,
        hidden=[64, 32],
        activation="tanh",
        optimizer={"kind": "adam", "learning_rate": 0.001},
        checkpoint_every=500,
        checkpoint_seconds=2.5,
        seed=7,
        description="who leaves",
        tags={"team": "growth"},
    )
    r = client.post("/v1/models", json=spec)
    assert r.status_code == 201, r.text
    assert r.headers["location"] == "/v1/models/churn"
    m = r.json()
    for k in ("name", "task", "input_dim", "output_dim", "hidden", "activation", "checkpoint_every",
              "checkpoint_seconds", "seed"):  # fmt: skip
        assert m[k] == spec[k]
    assert m["description"] == "who leaves" and m["tags"] == {"team": "growth"}
    assert m["optimizer"]["kind"] == "adam" and m["optimizer"]["learning_rate"] == 0.001
    assert m["latest_version"] == 1
    assert m["aliases"] == {}
    assert m["status"] == "active" and m["status_reason"] is None
    assert m["online"]["accepted"] == 0 and m["online"]["applied"] == 0 and m["online"]["lag"] == 0
    assert datetime.fromisoformat(m["created_at"]).utcoffset().total_seconds() == 0

    got = client.get("/v1/models/churn").json()
    volatile = ("online", "updated_at")  # the background learner may publish its state meanwhile
    assert {k: v for k, v in got.items() if k not in volatile} == {k: v for k, v in m.items() if k not in volatile}
    v = client.get("/v1/models/churn/versions/1").json()
    assert v["version"] == 1 and v["parent"] is None and v["operation"] == "init"
    assert v["params"]["seed"] == 7
    # sha256 and size_bytes describe the stored blob, which holds the parameters served
    blob = (settings.blob_dir / v["sha256"][:2] / v["sha256"]).read_bytes()
    assert hashlib.sha256(blob).hexdigest() == v["sha256"] and len(blob) == v["size_bytes"]
    served = stnp.load(client.get("/v1/models/churn/versions/1/weights").content)
    stored = stnp.load(blob)
    assert set(served) == {f"layers.{i}.{p}" for i in range(3) for p in ("weight", "bias")} <= set(stored)
    for k, t in served.items():
        np.testing.assert_array_equal(stored[k], t)
    assert v["dtype"] == "float32" and v["sparsity"] == 0.0 and v["encoding"] == "dense"
    assert v["architecture"] == [30, 64, 32, 1]
    assert datetime.fromisoformat(v["created_at"]).utcoffset().total_seconds() == 0


def test_defaults_fill_the_spec(client):
    r = client.post("/v1/models", json={"name": "lin", "task": "regression", "input_dim": 2})
    assert r.status_code == 201, r.text
    m = r.json()
    assert m["hidden"] == [] and m["output_dim"] == 1 and m["activation"] == "relu"
    assert m["optimizer"]["kind"] == "sgd" and m["checkpoint_every"] == 1000 and m["seed"] == 0
    assert m["checkpoint_seconds"] == ModelCreate.model_fields["checkpoint_seconds"].default


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "1e999", "-1"])
def test_checkpoint_seconds_must_be_a_finite_non_negative_number(client, text):
    body = orjson.dumps(model_spec("bad"))[:-1] + b', "checkpoint_seconds": ' + text.encode() + b"}"
    r = client.post("/v1/models", content=body, headers={"Content-Type": "application/json"})
    assert_problem(r, 422, ["body", "checkpoint_seconds"])
    assert client.get("/v1/models").json()["items"] == []


BAD_SPECS = [
    ({"name": None}, ["body", "name"]),
    ({"name": "Churn"}, ["body", "name"]),
    ({"name": "-churn"}, ["body", "name"]),
    ({"name": "a" * 65}, ["body", "name"]),
    ({"name": "has space"}, ["body", "name"]),
    ({"task": "ranking"}, ["body", "task"]),
    ({"input_dim": 0}, ["body", "input_dim"]),
    ({"input_dim": "three"}, ["body", "input_dim"]),
    ({"input_dim": "3"}, ["body", "input_dim"]),
    ({"input_dim": True}, ["body", "input_dim"]),
    ({"input_dim": 3.5}, ["body", "input_dim"]),
    ({"output_dim": 0}, ["body", "output_dim"]),
    ({"hidden": [4, 0]}, ["body", "hidden", 1]),
    ({"hidden": "4"}, ["body", "hidden"]),
    ({"activation": "gelu"}, ["body", "activation"]),
    ({"optimizer": {"kind": "rmsprop"}}, ["body", "optimizer", "kind"]),
    ({"optimizer": {"learning_rate": -1}}, ["body", "optimizer", "learning_rate"]),
    ({"optimizer": {"momentum": 1.0}}, ["body", "optimizer", "momentum"]),
    ({"optimizer": {"momentum": False}}, ["body", "optimizer", "momentum"]),
    ({"guard": {"enabled": "yes"}}, ["body", "guard", "enabled"]),
    ({"optimizer": {"lr": 0.1}}, ["body", "optimizer", "lr"]),
    ({"checkpoint_every": 0}, ["body", "checkpoint_every"]),
    ({"checkpoint_seconds": -0.5}, ["body", "checkpoint_seconds"]),
    ({"checkpoint_seconds": 10**9}, ["body", "checkpoint_seconds"]),
    ({"checkpoint_seconds": "1"}, ["body", "checkpoint_seconds"]),
    ({"checkpoint_seconds": True}, ["body", "checkpoint_seconds"]),
    ({"seed": -1}, ["body", "seed"]),
    ({"tags": {"k": 1}}, ["body", "tags", "k"]),
    ({"colour": "red"}, ["body", "colour"]),
    ({"task": "binary", "output_dim": 2}, ["body"]),
    ({"task": "multiclass", "output_dim": 1}, ["body"]),
]


def test_bad_specs_are_422_naming_the_field_and_store_nothing(client, subtests):
    for change, loc in BAD_SPECS:
        with subtests.test(change=change):
            spec = model_spec("bad")
            for k, v in change.items():
                if v is None:
                    spec.pop(k)
                else:
                    spec[k] = v
            assert_problem(client.post("/v1/models", json=spec), 422, loc)
    assert client.get("/v1/models").json()["items"] == []


def test_malformed_and_non_object_bodies(client):
    r = client.post("/v1/models", content=b'{"name": "x",', headers={"Content-Type": "application/json"})
    assert_problem(r, 400)
    assert_problem(client.post("/v1/models", json=[1, 2]), 422, ["body"])
    assert_problem(client.post("/v1/models"), 422, ["body"])
    assert client.get("/v1/models").json()["items"] == []


def test_network_over_the_parameter_limit_is_refused(make_settings):
    with TestClient(create_app(make_settings(max_params=1000)), headers=auth()) as c:
        body = assert_problem(c.post("/v1/models", json=model_spec("big", input_dim=100, hidden=[100])), 422)
        assert body["errors"][0]["loc"] == ["body", "hidden"]
        assert c.get("/v1/models").json()["items"] == []


def test_duplicate_name_is_409_and_keeps_the_first(client):
    first = create_model(client, "dup", seed=1)
    assert_problem(client.post("/v1/models", json=model_spec("dup", seed=2, input_dim=9)), 409)
    assert client.get("/v1/models/dup").json()["input_dim"] == first["input_dim"]
    assert len(client.get("/v1/models/dup/versions").json()["items"]) == 1


def test_initialisation_is_deterministic_by_seed(client):
    a = create_model(client, "a", hidden=[8, 8], seed=42)
    b = create_model(client, "b", hidden=[8, 8], seed=42)
    c = create_model(client, "c", hidden=[8, 8], seed=43)
    sha = {m["name"]: client.get(f"/v1/models/{m['name']}/versions/1").json()["sha256"] for m in (a, b, c)}
    assert sha["a"] == sha["b"] != sha["c"]
    wa, wc = weights(client, "a", 1), weights(client, "c", 1)
    assert set(wa) == {f"layers.{i}.{p}" for i in range(3) for p in ("weight", "bias")}
    for i, shape in enumerate([(8, 3), (8, 8), (1, 8)]):
        assert wa[f"layers.{i}.weight"].shape == shape and wa[f"layers.{i}.weight"].dtype == np.float32
        lim = 1 / np.sqrt(shape[1])  # PyTorch's nn.Linear default: U(±1/√fan_in), biases too
        assert np.abs(wa[f"layers.{i}.weight"]).max() <= lim and np.abs(wa[f"layers.{i}.bias"]).max() <= lim
        assert np.any(wa[f"layers.{i}.bias"])
    assert not np.array_equal(wa["layers.0.weight"], wc["layers.0.weight"])


def test_list_paginates_by_name(client):
    names = ["e", "a", "d", "b", "c"]
    for n in names:
        create_model(client, n)
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        r = client.get("/v1/models", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= 2
        seen += [m["name"] for m in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(names) and pages == 3
    full = client.get("/v1/models").json()
    assert [m["name"] for m in full["items"]] == sorted(names) and full["next_cursor"] is None
    assert full["items"][0]["latest_version"] == 1


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": -1}, {"limit": "many"}, {"limit": 100_000}])
def test_list_bad_limit(client, params):
    assert_problem(client.get("/v1/models", params=params), 422, ["query", "limit"])


def test_list_limit_above_the_configured_maximum(make_settings):
    with TestClient(create_app(make_settings(page_limit_max=3)), headers=auth()) as c:
        assert_problem(c.get("/v1/models", params={"limit": 4}), 422, ["query", "limit"])
        assert c.get("/v1/models", params={"limit": 3}).status_code == 200


def test_get_unknown_and_invalid_names(client):
    body = assert_problem(client.get("/v1/models/nope"), 404)
    assert "nope" in body["detail"]
    assert_problem(client.get("/v1/models/NOPE"), 422, ["path", "name"])


def test_delete_removes_the_model_and_its_versions(client):
    create_model(client, "gone")
    assert client.put("/v1/models/gone/aliases/production", json={"version": 1}).status_code == 201
    r = client.delete("/v1/models/gone")
    assert r.status_code == 204 and r.content == b""
    assert_problem(client.get("/v1/models/gone"), 404)
    assert_problem(client.get("/v1/models/gone/versions/1"), 404)
    assert_problem(client.delete("/v1/models/gone"), 404)
    again = create_model(client, "gone", seed=3)
    assert again["latest_version"] == 1 and again["aliases"] == {}
