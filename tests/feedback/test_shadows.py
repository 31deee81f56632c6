"""Shadow scoring through the API, on SQLite and PostgreSQL: a candidate and the version it is
compared with score exactly the samples appended after the shadow started (their losses
equal an independent float64 forward pass over exactly those samples), a quantized
candidate scores with its own stored parameters (as predict with that version answers),
restart, stop, and the errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.api_helpers import assert_problem, ref_forward, safetensors_bytes, weights
from tests.conftest import auth
from tests.online.test_learner import create
from tests.online_helpers import wait_until

NDJSON = {"Content-Type": "application/x-ndjson"}
EPS = 1e-7


@pytest.fixture
def lc(make_settings) -> Iterator[TestClient]:
    """The learner thread and the job worker run."""
    with TestClient(create_app(make_settings()), headers=auth()) as c:
        yield c


def stream(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    return X, (X[:, 0] - 0.5 * X[:, 2] > 0).astype(np.int64)


def send(c: TestClient, X: np.ndarray, Y: np.ndarray) -> dict[str, Any]:
    lines = "".join(f'{{"x": {x.tolist()}, "y": {int(y)}}}\n' for x, y in zip(X, Y, strict=True))
    r = c.post("/v1/models/m/update?wait=true&timeout=60", content=lines, headers=NDJSON)
    assert r.status_code == 202 and r.json()["applied"], r.text
    return r.json()


def shadows(c: TestClient) -> dict[int, dict[str, Any]]:
    r = c.get("/v1/models/m/shadows")
    assert r.status_code == 200, r.text
    return {s["version"]: s for s in r.json()["items"]}


def bce(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64).reshape(-1), EPS, 1 - EPS)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def new_version(c: TestClient, seed: int) -> int:
    """Import version 1 with other biases as a new version."""
    t = weights(c, "m", 1)
    rng = np.random.default_rng(seed)
    for k in t:
        if k.endswith(".bias"):
            t[k] = rng.normal(size=t[k].shape).astype(np.float32)
    r = c.post("/v1/models/m/versions", content=safetensors_bytes(t))
    assert r.status_code == 201, r.text
    return int(r.json()["version"])


def test_both_sides_score_exactly_the_samples_after_the_start(lc):
    create(lc, "m", task="binary", input_dim=4, hidden=[5], optimizer={"kind": "sgd", "learning_rate": 0.05})
    assert lc.put("/v1/models/m/aliases/production", json={"version": 1}).status_code in (200, 201)
    v2 = new_version(lc, 1)
    Xb, Yb = stream(100, 1)  # appended before the shadow starts (the learner may not have them yet)
    lines = "".join(f'{{"x": {x.tolist()}, "y": {int(y)}}}\n' for x, y in zip(Xb, Yb, strict=True))
    assert lc.post("/v1/models/m/update", content=lines, headers=NDJSON).status_code == 202
    r = lc.put(f"/v1/models/m/shadows/{v2}", json=None)
    assert r.status_code == 201, r.text
    sh = r.json()
    assert (sh["against_version"], sh["since_offset"], sh["n"], sh["through"]) == (1, 100, 0, None)
    X, Y = stream(300, 2)
    send(lc, X[:120], Y[:120])
    send(lc, X[120:], Y[120:])
    got = wait_until(lambda: shadows(lc)[v2]["n"] == 300 and shadows(lc)[v2], 30, "300 shadowed samples")
    assert got["through"] == 399
    cand = ref_forward(weights(lc, "m", v2), "binary", "relu", X)
    base = ref_forward(weights(lc, "m", 1), "binary", "relu", X)
    assert got["loss"] == pytest.approx(bce(cand, Y).mean(), rel=1e-5)
    assert got["against_loss"] == pytest.approx(bce(base, Y).mean(), rel=1e-5)
    assert got["accuracy"] == ((cand.reshape(-1) >= 0.5) == Y).mean()
    assert got["against_accuracy"] == ((base.reshape(-1) >= 0.5) == Y).mean()
    # restarted: counting begins again at the log's end; stopped: gone
    again = lc.put(f"/v1/models/m/shadows/{v2}", json={"against": "latest"})
    assert again.status_code == 200 and again.json()["since_offset"] == 400 and again.json()["n"] == 0
    assert again.json()["against_version"] == v2
    assert lc.delete(f"/v1/models/m/shadows/{v2}").status_code == 204
    assert shadows(lc) == {}
    assert_problem(lc.delete(f"/v1/models/m/shadows/{v2}"), 404)


def test_a_quantized_candidate_scores_with_its_own_stored_parameters(lc):
    create(lc, "m", task="binary", input_dim=4, hidden=[8], optimizer={"kind": "sgd", "learning_rate": 0.05})
    send(lc, *stream(400, 3))
    v = lc.post("/v1/models/m/checkpoint?timeout=60").json()["version"]
    job = lc.post("/v1/models/m/quantize", json={"from": v, "dtype": "int8"}, headers={"Prefer": "wait=120"})
    assert job.status_code == 201 and job.json()["status"] == "succeeded", job.text
    q = job.json()["result"]["version"]
    assert lc.put(f"/v1/models/m/shadows/{q}", json={"against": "latest"}).status_code == 201
    X, Y = stream(200, 4)
    send(lc, X, Y)
    got = wait_until(lambda: shadows(lc)[q]["n"] == 200 and shadows(lc)[q], 30, "200 shadowed samples")
    served = np.array(lc.post("/v1/models/m/predict", json={"inputs": X.tolist(), "version": q}).json()["outputs"])
    assert got["loss"] == pytest.approx(bce(served, Y).mean(), rel=1e-9)
    assert got["against_version"] == q and got["against_loss"] == got["loss"]


def test_shadow_errors_and_scopes(lc):
    create(lc, "m", task="binary", input_dim=4, hidden=[])
    assert_problem(lc.put("/v1/models/m/shadows/9", json=None), 404)
    assert_problem(lc.put("/v1/models/m/shadows/1", json={"against": "nope"}), 422, ["body", "against"])
    assert_problem(lc.put("/v1/models/m/shadows/1", json={"against": "BAD NAME"}), 422, ["body", "against"])
    assert_problem(lc.put("/v1/models/m/shadows/0", json=None), 422, ["path", "version"])
    assert_problem(lc.get("/v1/models/nope/shadows"), 404)
    reader = lc.post("/v1/keys", json={"name": "r", "scope": "ingest"}).json()["key"]
    h = {"Authorization": f"Bearer {reader}"}
    assert_problem(lc.put("/v1/models/m/shadows/1", json=None, headers=h), 403)
    assert lc.get("/v1/models/m/shadows", headers=h).json() == {"items": []}
    assert lc.put("/v1/models/m/shadows/1", json=None).json()["against_version"] == 1  # default: latest


@pytest.mark.slow
@pytest.mark.parametrize("process", ["true", "false"], ids=["learner-process", "learner-thread"])
def test_a_shadow_counts_each_sample_once_across_a_sigkill(db_url, tmp_path, process):
    """SIGKILL while the shadowed stream is learned (checkpoints every 300 samples); after the
    restart the learner replays the log from its newest checkpoint and the client retries
    what it sent: the shadow has scored every sample after its start exactly once (its
    sums equal a forward pass over exactly those samples)."""
    import threading
    import time

    from tests.online_helpers import Server, samples

    data_dir = tmp_path / "data"
    spec = {"name": "m", "task": "binary", "input_dim": 4, "hidden": [5], "checkpoint_every": 300,
            "checkpoint_seconds": 0, "optimizer": {"kind": "sgd", "learning_rate": 0.05}}  # fmt: skip
    reqs = [(f"req-{k}", *stream(50, 100 + k)) for k in range(40)]
    env = {"STEWARD_RUN_WORKER": "false", "STEWARD_LEARNER_PROCESS": process}
    srv = Server(db_url, data_dir, STEWARD_LEARNER_LEASE_SECONDS="1", **env).start()
    try:
        with srv.client() as c:
            assert c.post("/v1/models", json=spec).status_code == 201
            assert c.put("/v1/models/m/shadows/1", json=None).status_code == 201
            v1 = weights(c, "m", 1)
        stop = threading.Event()

        def send() -> None:
            with srv.client(timeout=10) as c:
                for key, X, Y in reqs:
                    if stop.is_set():
                        return
                    body = {"samples": samples(X, Y)}
                    try:
                        c.post("/v1/models/m/update", json=body, headers={"Idempotency-Key": key})
                    except Exception:
                        return  # the server died under us
                    time.sleep(0.03)

        t = threading.Thread(target=send)
        t.start()
        with srv.client() as c:
            wait_until(lambda: shadows(c)[1]["n"] >= 500, 60, "500 shadowed samples published")
        srv.kill()
        stop.set()
        t.join(30)
    finally:
        srv.kill()
    srv2 = Server(db_url, data_dir, **env).start()
    try:
        with srv2.client() as c:
            for key, X, Y in reqs:
                body = {"samples": samples(X, Y)}
                assert c.post("/v1/models/m/update", json=body, headers={"Idempotency-Key": key}).status_code == 202
            assert c.post("/v1/models/m/checkpoint?timeout=120").status_code in (200, 201)
            got = wait_until(lambda: shadows(c)[1]["n"] >= 2000 and shadows(c)[1], 60, "2,000 shadowed samples")
    finally:
        srv2.stop()
    assert got["n"] == 2000 and got["through"] == 1999
    X = np.concatenate([x for _, x, _ in reqs])
    Y = np.concatenate([y for _, _, y in reqs])
    want = bce(ref_forward(v1, "binary", "relu", X), Y).mean()  # each sample's loss once, in any order
    assert got["loss"] == pytest.approx(want, rel=1e-5) and got["against_loss"] == got["loss"]
