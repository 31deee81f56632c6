"""prune and quantize through the HTTP API, on both databases: a 64-128-64-10 model trained by
scikit-learn on the digits set (imported as safetensors), int8 and sparse versions that really
are smaller, neuron pruning that shrinks the layers, the guarded search, fine-tuning with the
mask fixed, derived versions that stay usable, and bad input that queues nothing."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import safetensors.numpy as stnp
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

WAIT = {"Prefer": "wait=120"}


def samples(X, y):
    return [{"x": [float(v) for v in row], "y": int(t)} for row, t in zip(X, y, strict=True)]


@pytest.fixture(scope="module")
def digits():
    """(safetensors bytes of a trained 64-128-64-10 ReLU MLP, Xtr, ytr, Xte, yte)."""
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    clf = MLPClassifier(hidden_layer_sizes=(128, 64), max_iter=300, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(Xtr, ytr)
    tensors = {}
    for i, (c, b) in enumerate(zip(clf.coefs_, clf.intercepts_, strict=True)):
        tensors[f"layers.{i}.weight"] = np.ascontiguousarray(c.T, dtype=np.float32)
        tensors[f"layers.{i}.bias"] = b.astype(np.float32)
    return stnp.save(tensors), Xtr, ytr.astype(np.int64), Xte, yte.astype(np.int64)


def make_model(client, digits, name="digits", hidden=(128, 64)) -> int:
    blob = digits[0]
    r = client.post(
        "/v1/models",
        json={
            "name": name,
            "task": "multiclass",
            "input_dim": 64,
            "output_dim": 10,
            "hidden": list(hidden),
            "optimizer": {"kind": "adam", "learning_rate": 0.005},
        },
    )
    assert r.status_code == 201, r.text
    r = client.post(f"/v1/models/{name}/versions", content=blob, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    return r.json()["version"]


def run(client, path, body, name="digits"):
    r = client.post(f"/v1/models/{name}/{path}", json=body, headers=WAIT)
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "succeeded", job
    assert job["progress"] == 1.0
    return job["result"]


def version(client, v, name="digits"):
    return client.get(f"/v1/models/{name}/versions/{v}").json()


def labels(client, X, v, name="digits"):
    r = client.post(f"/v1/models/{name}/predict", json={"inputs": X.tolist(), "version": v})
    assert r.status_code == 200, r.text
    return np.array(r.json()["labels"])


def accuracy(client, X, y, v, name="digits"):
    r = client.post(f"/v1/models/{name}/evaluate", json={"samples": samples(X, y), "version": v})
    assert r.status_code == 200, r.text
    return r.json()


def download(client, v, name="digits"):
    r = client.get(f"/v1/models/{name}/versions/{v}/weights")
    assert r.status_code == 200
    return stnp.load(r.content)


def n_jobs(client):
    return len(client.get("/v1/jobs").json()["items"])


# --------------------------------------------------------------------------- quantize
def test_int8_per_channel_keeps_labels_and_is_small(client, digits):
    _, _, _, Xte, yte = digits
    parent = make_model(client, digits)
    res = run(
        client,
        "quantize",
        {
            "from": parent,
            "dtype": "int8",
            "scheme": "symmetric",
            "granularity": "per_channel",
            "eval_samples": samples(Xte, yte),
        },
    )
    v = res["version"]
    row = version(client, v)
    assert row["operation"] == "quantize" and row["parent"] == parent
    assert row["dtype"] == "int8" and row["encoding"] == "quantized"
    p_row = version(client, parent)
    # the stored blob really is small: ≤ 0.3 × the float32 parent
    assert row["size_bytes"] <= 0.3 * p_row["size_bytes"]
    assert res["size"] == {
        "before_bytes": p_row["size_bytes"],
        "after_bytes": row["size_bytes"],
        "ratio": pytest.approx(row["size_bytes"] / p_row["size_bytes"]),
        "encoding": "quantized",
        "parent_encoding": "dense",
    }
    # ≥ 99 % of the test labels unchanged, measured by the job and through predict
    ev = res["evaluation"]
    assert ev["n"] == len(Xte) and ev["labels_changed"] <= 0.01
    assert abs(ev["after"]["accuracy"] - ev["before"]["accuracy"]) <= 0.01
    same = np.mean(labels(client, Xte, v) == labels(client, Xte, parent))
    assert same >= 0.99
    assert same == pytest.approx(1 - ev["labels_changed"])
    # the weight error per layer: ≤ scale / 2 = max|W_c| / 254, against the parent's weights
    W = download(client, parent)
    for i, layer in enumerate(res["weight_error"]["layers"]):
        bound = float(np.abs(W[f"layers.{i}.weight"]).max()) / 254
        assert 0 < layer["max_abs_error"] <= bound * (1 + 1e-5)
        assert layer["mean_abs_error"] < layer["max_abs_error"]
    assert res["weight_error"]["max_abs_error"] == max(d["max_abs_error"] for d in res["weight_error"]["layers"])
    assert row["metrics"]["size"] == res["size"] and row["params"]["dtype"] == "int8"
    # the download keeps the quantized layout of API.md
    T = download(client, v)
    for i in range(3):
        q, s = T[f"layers.{i}.weight"], T[f"layers.{i}.weight_scale"]
        assert q.dtype == np.int8 and s.dtype == np.float32 and s.shape == (q.shape[0],)
        assert T[f"layers.{i}.bias"].dtype == np.float32
        assert f"layers.{i}.weight_zero_point" not in T
        deq = q.astype(np.float32) * s[:, None]
        assert np.abs(deq - W[f"layers.{i}.weight"]).max() <= float(s.max()) / 2 * (1 + 1e-5)


@pytest.mark.parametrize(
    ("dtype", "scheme", "granularity", "zp"),
    [
        ("uint8", "asymmetric", "per_tensor", True),
        ("int8", "asymmetric", "per_channel", True),
        ("float16", "symmetric", "per_channel", False),
    ],
)
def test_other_schemes(client, digits, dtype, scheme, granularity, zp):
    _, _, _, Xte, yte = digits
    parent = make_model(client, digits)
    res = run(
        client,
        "quantize",
        {
            "from": parent,
            "dtype": dtype,
            "scheme": scheme,
            "granularity": granularity,
            "eval_samples": samples(Xte, yte),
        },
    )
    row = version(client, res["version"])
    assert row["dtype"] == dtype
    assert res["evaluation"]["labels_changed"] <= 0.02
    T = download(client, res["version"])
    assert T["layers.0.weight"].dtype == np.dtype(dtype)
    assert ("layers.0.weight_zero_point" in T) == zp
    if granularity == "per_tensor":
        assert T["layers.0.weight_scale"].shape == ()
    assert row["size_bytes"] <= (0.55 if dtype == "float16" else 0.3) * version(client, parent)["size_bytes"]


# --------------------------------------------------------------------------- prune
def test_unstructured_80_percent_is_stored_sparse_and_downloads_dense(client, digits):
    _, _, _, Xte, yte = digits
    parent = make_model(client, digits)
    res = run(client, "prune", {"from": parent, "sparsity": 0.8, "scope": "global"})
    v = res["version"]
    row, p_row = version(client, v), version(client, parent)
    assert row["operation"] == "prune" and row["parent"] == parent
    assert row["encoding"] == "sparse" and row["dtype"] == "float32"
    assert row["sparsity"] == pytest.approx(0.8, abs=1e-4) == res["sparsity"]
    assert row["size_bytes"] < 0.5 * p_row["size_bytes"]
    assert res["size"]["after_bytes"] == row["size_bytes"] and res["size"]["encoding"] == "sparse"
    assert len(res["layer_sparsity"]) == 3 and row["metrics"]["layer_sparsity"] == res["layer_sparsity"]
    assert "evaluation" not in res  # no evaluation data, and the log is empty
    # the download is the dense API layout; the kept weights are the parent's
    W, P = download(client, v), download(client, parent)
    assert sorted(W) == sorted(P)
    zeros = 0
    for i in range(3):
        w, p = W[f"layers.{i}.weight"], P[f"layers.{i}.weight"]
        assert w.dtype == np.float32 and w.shape == p.shape
        np.testing.assert_array_equal(w[w != 0], p[w != 0])
        np.testing.assert_array_equal(W[f"layers.{i}.bias"], P[f"layers.{i}.bias"])
        assert res["layer_sparsity"][i] == pytest.approx(np.mean(w == 0))
        err = np.abs(p - w)
        assert res["weight_error"]["layers"][i]["max_abs_error"] == pytest.approx(float(err.max()))
        assert res["weight_error"]["layers"][i]["mean_abs_error"] == pytest.approx(float(err.mean()), rel=1e-5)
        zeros += int((w == 0).sum())
    assert zeros / sum(P[f"layers.{i}.weight"].size for i in range(3)) == pytest.approx(0.8, abs=1e-4)
    # predict and evaluate work on the pruned version
    assert labels(client, Xte, v).shape == (len(Xte),)
    assert accuracy(client, Xte, yte, v)["n"] == len(Xte)


def test_layer_scope_prunes_every_matrix(client, digits):
    parent = make_model(client, digits)
    res = run(client, "prune", {"from": parent, "sparsity": 0.6, "scope": "layer"})
    assert res["layer_sparsity"] == [pytest.approx(0.6, abs=1e-3)] * 3
    assert version(client, res["version"])["encoding"] == "sparse"
    low = run(client, "prune", {"from": parent, "sparsity": 0.3})
    assert version(client, low["version"])["encoding"] == "dense"  # below 0.5: stored dense


def test_neurons_really_shrink_the_layers(client, digits):
    _, _, _, Xte, yte = digits
    parent = make_model(client, digits)
    res = run(
        client, "prune", {"from": parent, "sparsity": 0.5, "structure": "neurons", "eval_samples": samples(Xte, yte)}
    )
    v = res["version"]
    row = version(client, v)
    assert row["architecture"] == [64, 64, 32, 10] == res["prune"]["architecture"]
    assert res["prune"]["unit_sparsity"] == [0.5, 0.5]
    assert res["prune"]["params_after"] < 0.5 * res["prune"]["params_before"]
    assert "fine_tune" in res["warnings"][0]
    assert row["size_bytes"] < 0.55 * version(client, parent)["size_bytes"]
    W = download(client, v)
    assert W["layers.0.weight"].shape == (64, 64) and W["layers.1.weight"].shape == (32, 64)
    assert W["layers.2.weight"].shape == (10, 32) and W["layers.1.bias"].shape == (32,)
    out = client.post("/v1/models/digits/predict", json={"inputs": Xte[:5].tolist(), "version": v}).json()
    assert len(out["outputs"]) == 5 and len(out["outputs"][0]) == 10
    ev = res["evaluation"]
    assert set(ev) >= {"before", "after", "labels_changed", "loss_increase"}
    assert ev["after"]["accuracy"] == pytest.approx(accuracy(client, Xte, yte, v)["accuracy"])
    # again, narrower; a wider target than what is left is a conflict
    res2 = run(client, "prune", {"from": v, "sparsity": 0.75, "structure": "neurons"})
    assert version(client, res2["version"])["architecture"] == [64, 32, 16, 10]
    before = n_jobs(client)
    r = client.post("/v1/models/digits/prune", json={"from": res2["version"], "sparsity": 0.5, "structure": "neurons"})
    assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"
    assert n_jobs(client) == before


def test_guarded_search_respects_the_budget(client, digits):
    _, _, _, Xte, yte = digits
    parent = make_model(client, digits)
    budget = 0.02
    res = run(
        client,
        "prune",
        {"from": parent, "scope": "global", "max_loss_increase": budget, "eval_samples": samples(Xte, yte)},
    )
    search = res["search"]
    assert search["max_loss_increase"] == budget and search["sparsity"] is not None
    curve = search["curve"]
    assert [p["sparsity"] for p in curve] == sorted(p["sparsity"] for p in curve) and len(curve) >= 2
    for p in curve:
        assert (p["loss"] - search["base_loss"] <= budget) == (p["sparsity"] <= search["sparsity"])
    assert res["sparsity"] == pytest.approx(search["sparsity"], abs=1e-3)
    # checked independently through evaluate
    base = accuracy(client, Xte, yte, parent)["loss"]
    got = accuracy(client, Xte, yte, res["version"])["loss"]
    assert base == pytest.approx(search["base_loss"], rel=1e-5)
    assert got - base <= budget + 1e-6
    assert res["evaluation"]["loss_increase"] == pytest.approx(got - base, abs=1e-5)
    # with a cap, the search stays at or below it
    capped = run(
        client,
        "prune",
        {"from": parent, "sparsity": 0.3, "max_loss_increase": 1.0, "eval_samples": samples(Xte, yte)},
    )
    assert capped["search"]["sparsity"] == 0.3
    assert max(p["sparsity"] for p in capped["search"]["curve"]) <= 0.3


def test_search_with_nothing_within_the_budget_fails_with_the_curve(client):
    # y = Σx with every weight 1: the loss is 0, and zeroing any weight raises it
    client.post("/v1/models", json={"name": "sum", "task": "regression", "input_dim": 20})
    ones = {"layers.0.weight": np.ones((1, 20), np.float32), "layers.0.bias": np.zeros(1, np.float32)}
    r = client.post(
        "/v1/models/sum/versions", content=stnp.save(ones), headers={"Content-Type": "application/octet-stream"}
    )
    assert r.status_code == 201
    X = np.random.default_rng(0).normal(size=(50, 20)).astype(np.float32)
    ev = [{"x": row.tolist(), "y": float(row.sum())} for row in X]
    r = client.post(
        "/v1/models/sum/prune", json={"max_loss_increase": 0.0, "scope": "global", "eval_samples": ev}, headers=WAIT
    )
    job = r.json()
    assert r.status_code == 201 and job["status"] == "failed" and job["attempts"] == 1, job
    assert job["error"]["type"] == "job_error" and "max_loss_increase" in job["error"]["message"]
    search = job["error"]["search"]
    assert search["base_loss"] == pytest.approx(0.0, abs=1e-6) and search["sparsity"] is None
    assert search["curve"] and all(p["loss"] > 0 for p in search["curve"])
    assert client.get("/v1/models/sum").json()["latest_version"] == 2


def test_search_uses_the_newest_log_samples_by_default(client, digits):
    _, _, _, Xte, yte = digits
    parent = make_model(client, digits)
    r = client.post("/v1/models/digits/update", json={"samples": samples(Xte[:200], yte[:200])})
    assert r.status_code == 202, r.text
    res = run(client, "prune", {"from": parent, "sparsity": 0.5, "max_loss_increase": 0.05, "eval_log": {"last": 150}})
    assert res["evaluation"]["n"] == 150
    assert res["evaluation"]["data"] == {
        "source": "log",
        "from_offset": 50,
        "to_offset": 199,
        "n": 150,
        "default": False,
    }
    res = run(client, "quantize", {"from": parent})
    assert res["evaluation"]["data"]["default"] is True and res["evaluation"]["n"] == 200


def test_80_percent_with_fine_tuning_keeps_accuracy(client, digits):
    _, Xtr, ytr, Xte, yte = digits
    parent = make_model(client, digits)
    base = accuracy(client, Xte, yte, parent)["accuracy"]
    plain = run(client, "prune", {"from": parent, "sparsity": 0.8, "scope": "global"})
    res = run(
        client,
        "prune",
        {
            "from": parent,
            "sparsity": 0.8,
            "scope": "global",
            "fine_tune": {"samples": samples(Xtr, ytr), "epochs": 15, "batch_size": 32, "learning_rate": 0.002},
            "eval_samples": samples(Xte, yte),
        },
    )
    v = res["version"]
    assert res["sparsity"] >= 0.8 - 1e-4  # the mask stayed fixed while training
    assert version(client, v)["encoding"] == "sparse"
    acc = accuracy(client, Xte, yte, v)["accuracy"]
    assert acc >= base - 0.02, (acc, base, accuracy(client, Xte, yte, plain["version"])["accuracy"])
    assert res["fine_tune"]["epochs_run"] >= 1
    P, W = download(client, parent), download(client, v)
    Q = download(client, plain["version"])
    for i in range(3):  # the same weights are zero as without fine-tuning
        np.testing.assert_array_equal(W[f"layers.{i}.weight"] == 0, Q[f"layers.{i}.weight"] == 0)
        assert P[f"layers.{i}.weight"].shape == W[f"layers.{i}.weight"].shape
    # neurons: fine-tuning the smaller network recovers what removing half the units cost
    res = run(
        client,
        "prune",
        {
            "from": parent,
            "sparsity": 0.5,
            "structure": "neurons",
            "fine_tune": {"samples": samples(Xtr, ytr), "epochs": 15, "batch_size": 32, "learning_rate": 0.002},
        },
    )
    assert version(client, res["version"])["architecture"] == [64, 64, 32, 10] and "warnings" not in res
    assert accuracy(client, Xte, yte, res["version"])["accuracy"] >= base - 0.03


# --------------------------------------------------------------------------- derived versions
def test_derived_versions_stay_usable(client, digits):
    _, _, _, Xte, yte = digits
    parent = make_model(client, digits)
    q = run(client, "quantize", {"from": parent, "dtype": "int8"})["version"]
    # prune a quantized version: from its dequantized weights, and it says so
    pq = run(client, "prune", {"from": q, "sparsity": 0.7, "scope": "global", "eval_samples": samples(Xte, yte)})
    assert pq["dequantized_from"] == {"version": q, "dtype": "int8"}
    assert version(client, pq["version"])["dtype"] == "float32"
    # quantize a sparse version: integers in the sparse encoding, smaller than its sparse parent
    qp = run(client, "quantize", {"from": pq["version"], "dtype": "int8", "eval_samples": samples(Xte, yte)})
    row = version(client, qp["version"])
    assert row["dtype"] == "int8" and row["encoding"] == "sparse" and row["sparsity"] >= 0.7 - 1e-3
    assert row["size_bytes"] < version(client, pq["version"])["size_bytes"]
    assert qp["evaluation"]["labels_changed"] <= 0.02
    T = download(client, qp["version"])  # quantized API layout, densified
    assert T["layers.0.weight"].dtype == np.int8 and "layers.0.weight.values" not in T
    assert np.mean(T["layers.1.weight"] == 0) >= 0.5
    # predict / evaluate on each, and a float16 → int8 re-quantization
    for v in (q, pq["version"], qp["version"]):
        assert accuracy(client, Xte, yte, v)["accuracy"] > 0.8
    h = run(client, "quantize", {"from": parent, "dtype": "float16"})["version"]
    hq = run(client, "quantize", {"from": h, "dtype": "int8", "eval_samples": samples(Xte, yte)})
    assert hq["dequantized_from"] == {"version": h, "dtype": "float16"}
    assert hq["evaluation"]["labels_changed"] <= 0.01
    # re-prune a pruned version higher
    pp = run(client, "prune", {"from": pq["version"], "sparsity": 0.9, "scope": "global"})
    assert version(client, pp["version"])["sparsity"] == pytest.approx(0.9, abs=1e-4)


def test_batch_update_from_quantized_and_sparse_versions(client, digits):
    _, Xtr, ytr, _, _ = digits
    parent = make_model(client, digits)
    q = run(client, "quantize", {"from": parent, "dtype": "int8"})["version"]
    body = {"samples": samples(Xtr[:300], ytr[:300]), "epochs": 1, "batch_size": 64}
    res = run(client, "batch-update", {**body, "from": q})
    assert res["dequantized_from"] == {"version": q, "dtype": "int8"}
    assert version(client, res["version"])["dtype"] == "float32"
    p = run(client, "prune", {"from": parent, "sparsity": 0.8, "scope": "global"})["version"]
    res = run(client, "batch-update", {**body, "from": p})
    assert version(client, res["version"])["sparsity"] >= 0.8 - 1e-4  # keep_sparsity by default


# --------------------------------------------------------------------------- bad input
BAD = [
    ("prune", {"sparsity": 1.0}, ["body", "sparsity"]),
    ("prune", {"sparsity": -0.1}, ["body", "sparsity"]),
    ("prune", {"sparsity": "lots"}, ["body", "sparsity"]),
    ("prune", {"sparsity": None}, ["body", "sparsity"]),
    ("prune", {"scope": "row"}, ["body", "scope"]),
    ("prune", {"structure": "channels"}, ["body", "structure"]),
    ("prune", {"from": 99}, ["body", "from"]),
    ("prune", {"from": "nope"}, ["body", "from"]),
    ("prune", {"from": 0}, ["body", "from"]),
    ("prune", {"max_loss_increase": -1}, ["body", "max_loss_increase"]),
    ("prune", {"max_loss_increase": 0.1}, ["body", "eval_samples"]),
    ("prune", {"eval_samples": [{"x": [0.0] * 63, "y": 1}]}, ["body", "eval_samples", 0, "x"]),
    ("prune", {"eval_samples": [{"x": [0.0] * 64, "y": 10}]}, ["body", "eval_samples", 0, "y"]),
    ("prune", {"eval_log": {}}, ["body", "eval_log"]),
    ("prune", {"eval_log": {"last": 5, "from_offset": 0}}, ["body", "eval_log"]),
    ("prune", {"eval_samples": [{"x": [0.0] * 64, "y": 1}], "eval_log": {}}, ["body"]),
    ("prune", {"fine_tune": {"epochs": 2}}, ["body", "fine_tune"]),
    (
        "prune",
        {"fine_tune": {"samples": [{"x": [0.0] * 64, "y": 1}] * 3, "epochs": 0}},
        ["body", "fine_tune", "epochs"],
    ),
    (
        "prune",
        {"fine_tune": {"samples": [{"x": [0.0] * 64, "y": 1}, {"x": [1.0], "y": 1}]}},
        ["body", "fine_tune", "samples", 1, "x"],
    ),
    ("prune", {"fine_tune": {"log": {"from_offset": 0}}}, ["body", "fine_tune", "log"]),
    ("prune", {"bogus": 1}, ["body", "bogus"]),
    ("quantize", {"dtype": "int4"}, ["body", "dtype"]),
    ("quantize", {"scheme": "logarithmic"}, ["body", "scheme"]),
    ("quantize", {"granularity": "per_row"}, ["body", "granularity"]),
    ("quantize", {"from": 99}, ["body", "from"]),
    ("quantize", {"from": "production"}, ["body", "from"]),
    ("quantize", {"eval_samples": []}, ["body", "eval_samples"]),
    ("quantize", {"bits": 4}, ["body", "bits"]),
]


@pytest.mark.parametrize(("op", "patch", "loc"), BAD, ids=[f"{op}-{'-'.join(map(str, loc[1:]))}" for op, _, loc in BAD])
def test_bad_input_is_422_and_queues_nothing(client, op, patch, loc):
    r = client.post(
        "/v1/models", json={"name": "b", "task": "multiclass", "input_dim": 64, "output_dim": 10, "hidden": [8]}
    )
    assert r.status_code == 201
    body = {"sparsity": 0.5, **patch} if op == "prune" else patch
    if body.get("sparsity", 0) is None:
        body.pop("sparsity")
    r = client.post(f"/v1/models/b/{op}", json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"][0]["loc"][: len(loc)] == loc
    assert n_jobs(client) == 0
    assert client.get("/v1/models/b").json()["latest_version"] == 1


def test_neurons_need_a_hidden_layer(client):
    client.post("/v1/models", json={"name": "lin", "task": "binary", "input_dim": 4})
    r = client.post("/v1/models/lin/prune", json={"sparsity": 0.5, "structure": "neurons"})
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "structure"]
    assert n_jobs(client) == 0


def test_conflicts_are_409_and_queue_nothing(client, digits):
    parent = make_model(client, digits)
    p80 = run(client, "prune", {"from": parent, "sparsity": 0.8, "scope": "global"})["version"]
    q8 = run(client, "quantize", {"from": parent, "dtype": "int8"})["version"]
    h = run(client, "quantize", {"from": parent, "dtype": "float16"})["version"]
    jobs = n_jobs(client)
    for path, body in [
        ("prune", {"from": p80, "sparsity": 0.5}),  # cannot lower the sparsity
        (
            "prune",
            {"from": p80, "sparsity": 0.5, "max_loss_increase": 0.1, "eval_samples": [{"x": [0.0] * 64, "y": 1}]},
        ),
        ("quantize", {"from": q8, "dtype": "int8"}),  # already quantized
        ("quantize", {"from": q8, "dtype": "uint8"}),
        ("quantize", {"from": q8, "dtype": "float16"}),
        ("quantize", {"from": h, "dtype": "float16"}),
    ]:
        r = client.post(f"/v1/models/digits/{path}", json=body)
        assert r.status_code == 409, (path, body, r.text)
        assert r.headers["content-type"] == "application/problem+json"
    assert n_jobs(client) == jobs
    # the same sparsity again is allowed (nothing to restore): a version equal to its parent
    again = run(client, "prune", {"from": p80, "sparsity": 0.8, "scope": "global"})
    assert version(client, again["version"])["sha256"] == version(client, p80)["sha256"]


def test_all_zero_version_has_nothing_to_quantize(client):
    client.post("/v1/models", json={"name": "z", "task": "regression", "input_dim": 3, "hidden": [2]})
    zeros = {
        "layers.0.weight": np.zeros((2, 3), np.float32),
        "layers.0.bias": np.zeros(2, np.float32),
        "layers.1.weight": np.zeros((1, 2), np.float32),
        "layers.1.bias": np.zeros(1, np.float32),
    }
    r = client.post(
        "/v1/models/z/versions", content=stnp.save(zeros), headers={"Content-Type": "application/octet-stream"}
    )
    assert r.status_code == 201, r.text
    r = client.post("/v1/models/z/quantize", json={"dtype": "int8"})
    assert r.status_code == 409 and "no non-zero weights" in r.json()["detail"]
    assert n_jobs(client) == 0


def test_unknown_model_and_scope(client):
    assert client.post("/v1/models/none/prune", json={"sparsity": 0.5}).status_code == 404
    assert client.post("/v1/models/none/quantize", json={}).status_code == 404
    client.post("/v1/models", json={"name": "s", "task": "binary", "input_dim": 2})
    key = client.post("/v1/keys", json={"name": "ing", "scope": "ingest"}).json()["key"]
    r = client.post("/v1/models/s/quantize", json={}, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 403
    r = client.post("/v1/models/s/prune", json={"sparsity": 0.5}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    assert n_jobs(client) == 0
