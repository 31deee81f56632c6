"""Recorded predictions and delayed labels through the API, on SQLite and PostgreSQL:
``predict`` with ``record``, ``POST /labels`` (JSON, NDJSON, duplicates, conflicts, unknown
ids, all or nothing, Idempotency-Key), labelled samples in the log and learned exactly
like ``/update``'s, the versions' ``served`` metrics against a loss computed from the
recorded outputs, and expiry."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.online.log import read_log
from app.registry.models import get_model
from tests.api_helpers import assert_problem
from tests.conftest import auth
from tests.online.test_learner import checkpoint, close, create, data, ref_linear, weights

NDJSON = {"Content-Type": "application/x-ndjson"}
EPS = 1e-7


@pytest.fixture
def lc(make_settings) -> Iterator[TestClient]:
    """An app whose learner thread runs (no job worker)."""
    with TestClient(create_app(make_settings(run_worker=False)), headers=auth()) as c:
        yield c


def key(c: TestClient, scope: str) -> dict[str, str]:
    r = c.post("/v1/keys", json={"name": scope, "scope": scope})
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['key']}"}


def record(c: TestClient, X: np.ndarray, ids: list[str] | None = None, **kw: Any) -> dict:
    body: dict[str, Any] = {"inputs": X.tolist(), "record": True, **kw}
    if ids is not None:
        body["ids"] = ids
    r = c.post("/v1/models/m/predict", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def label(c: TestClient, pairs: list[tuple[str, Any]], expect: int = 202, **kw: Any) -> Any:
    r = c.post("/v1/models/m/labels", json={"labels": [{"id": i, "y": y} for i, y in pairs]}, **kw)
    assert r.status_code == expect, r.text
    return r.json() if expect == 202 else r


def accepted(c: TestClient) -> int:
    return int(c.get("/v1/models/m").json()["online"]["accepted"])


def bce(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), EPS, 1 - EPS)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


# --------------------------------------------------------------------------- recording
def test_a_recorded_predict_answers_ids_and_the_same_outputs(lc):
    create(lc, "m", task="binary", input_dim=4, hidden=[3])
    X = data("binary", 5, 4)[0]
    plain = lc.post("/v1/models/m/predict", json={"inputs": X.tolist()}).json()
    made = record(lc, X)
    assert made["outputs"] == plain["outputs"] and made["labels"] == plain["labels"]
    assert made["version"] == 1 and len(set(made["prediction_ids"])) == 5
    mine = record(lc, X[:2], ids=["order-1", "order 2"])
    assert mine["prediction_ids"] == ["order-1", "order 2"] and mine["outputs"] == plain["outputs"][:2]
    assert "prediction_ids" not in plain or plain["prediction_ids"] is None


def test_a_repeated_recorded_predict_answers_the_first_answer(lc):
    create(lc, "m", task="regression", input_dim=3, hidden=[])
    X = data("regression", 3, 3)[0]
    first = record(lc, X, ids=["a", "b", "c"])
    t = {k: v for k, v in _weights(lc).items()}
    t["layers.0.bias"] = t["layers.0.bias"] + 1.0  # version 2 answers otherwise
    imported = lc.post("/v1/models/m/versions", content=_safetensors(t))
    assert imported.status_code == 201
    assert lc.put("/v1/models/m/aliases/production", json={"version": 2}).status_code in (200, 201)
    again = record(lc, X, ids=["a", "b", "c"])
    assert again == first  # same version, same outputs
    fresh = record(lc, X, ids=["d", "e", "f"])
    assert fresh["version"] == 2 and fresh["outputs"] != first["outputs"]
    other = X.copy()
    other[1, 0] += 1
    r = lc.post("/v1/models/m/predict", json={"inputs": other.tolist(), "record": True, "ids": ["a", "b", "c"]})
    assert_problem(r, 409, ["body", "ids", 1])
    r = lc.post("/v1/models/m/predict", json={"inputs": X[:2].tolist(), "record": True, "ids": ["x", "a"]})
    assert_problem(r, 409, ["body", "ids", 1])
    versions = lc.get("/v1/models/m/versions/1").json(), lc.get("/v1/models/m/versions/2").json()
    assert [v["served"]["predictions"] for v in versions] == [3, 3]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"inputs": [[1, 2, 3]], "ids": ["a"]}, ["body", "ids"]),
        ({"inputs": [[1, 2, 3]], "record": True, "ids": ["a", "b"]}, ["body", "ids"]),
        ({"inputs": [[1, 2, 3], [1, 2, 3]], "record": True, "ids": ["a", "a"]}, ["body", "ids", 1]),
        ({"inputs": [[1, 2, 3]], "record": True, "ids": [""]}, ["body", "ids", 0]),
        ({"inputs": [[1, 2, 3]], "record": True, "ids": ["x" * 129]}, ["body", "ids", 0]),
        ({"inputs": [[1, 2, 3]], "record": True, "ids": ["é"]}, ["body", "ids", 0]),
        ({"inputs": [[1, 2, 3]], "record": True, "ids": [7]}, ["body", "ids", 0]),
        ({"inputs": [[1, 2, 3]], "record": 1}, ["body", "record"]),
    ],
)
def test_bad_recorded_predicts_are_422_and_record_nothing(client, body, loc):
    create(client, "m", task="regression", input_dim=3, hidden=[])
    assert_problem(client.post("/v1/models/m/predict", json=body), 422, loc)
    assert client.get("/v1/models/m/versions/1").json()["served"]["predictions"] == 0


def test_recording_needs_scope_ingest(client):
    create(client, "m", task="regression", input_dim=3, hidden=[])
    body = {"inputs": [[1, 2, 3]], "record": True}
    assert_problem(client.post("/v1/models/m/predict", json=body, headers=key(client, "read")), 403)
    plain = client.post("/v1/models/m/predict", json={"inputs": [[1, 2, 3]]}, headers=key(client, "read"))
    assert plain.status_code == 200
    r = client.post("/v1/models/m/predict", json=body, headers=key(client, "ingest"))
    assert r.status_code == 200 and len(r.json()["prediction_ids"]) == 1


# --------------------------------------------------------------------------- labels
def test_labels_become_samples_of_the_log(client):
    create(client, "m", task="binary", input_dim=4, hidden=[3])
    X = data("binary", 6, 4)[0]
    ids = record(client, X)["prediction_ids"]
    a = label(client, [(ids[4], 1), (ids[1], 0), (ids[2], 1)])
    assert a == {"accepted": 3, "duplicates": 0, "first_offset": 0, "last_offset": 2, "duplicate": False}
    lines = f'{{"id": "{ids[0]}", "y": [0]}}\n\n{{"y": 1, "id": "{ids[5]}"}}\n'
    b = client.post("/v1/models/m/labels", content=lines, headers=NDJSON)
    assert b.status_code == 202, b.text
    assert b.json()["first_offset"] == 3 and b.json()["accepted"] == 2
    assert accepted(client) == 5
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    with ctx.db.read() as s:
        Xl, Yl = read_log(s, get_model(s, "m"), 0, 4)
    np.testing.assert_array_equal(Xl, X[[4, 1, 2, 0, 5]])
    np.testing.assert_array_equal(Yl, np.array([1, 0, 1, 0, 1], np.float32))


def test_duplicates_conflicts_and_unknown_ids_change_nothing(client):
    create(client, "m", task="multiclass", input_dim=3, output_dim=3, hidden=[])
    ids = record(client, data("multiclass", 4, 3)[0], ids=["a", "b", "c", "d"])["prediction_ids"]
    assert label(client, [("a", 2), ("b", 0)])["accepted"] == 2
    again = label(client, [("a", 2.0), ("c", 1), ("c", 1)])
    assert again == {"accepted": 1, "duplicates": 2, "first_offset": 2, "last_offset": 2, "duplicate": False}
    nothing = label(client, [("a", 2)])
    assert nothing == {"accepted": 0, "duplicates": 1, "first_offset": None, "last_offset": None, "duplicate": False}
    before = accepted(client)
    assert_problem(label(client, [("d", 0), ("a", 1)], expect=409), 409, ["body", "labels", 1, "y"])
    assert_problem(label(client, [("d", 0), ("d", 1)], expect=409), 409, ["body", "labels", 1, "y"])
    assert_problem(label(client, [("d", 0), ("zz", 1)], expect=422), 422, ["body", "labels", 1, "id"])
    assert_problem(label(client, [("d", 3)], expect=422), 422, ["body", "labels", 0, "y"])
    assert_problem(label(client, [("d", 1.5)], expect=422), 422, ["body", "labels", 0, "y"])
    assert accepted(client) == before  # all or nothing: "d" was not taken
    assert label(client, [("d", 0)])["accepted"] == 1
    assert len(ids) == 4


@pytest.mark.parametrize(
    ("content", "status", "loc"),
    [
        (b'{"labels": []}', 422, ["body", "labels"]),
        (b'{"labels": [{"id": "a"}]}', 422, ["body", "labels", 0, "y"]),
        (b'{"labels": [{"y": 1}]}', 422, ["body", "labels", 0, "id"]),
        (b'{"labels": [{"id": "a", "y": 1, "x": [1]}]}', 422, ["body", "labels", 0, "x"]),
        (b'{"labels": [5]}', 422, ["body", "labels", 0]),
        (b'{"labels": [{"id": 5, "y": 1}]}', 422, ["body", "labels", 0, "id"]),
        (b'{"labels": [{"id": "a", "y": true}]}', 422, ["body", "labels", 0, "y"]),
        (b'{"labels": [], "more": 1}', 422, ["body", "more"]),
        (b"[1]", 422, ["body"]),
        (b'{"labels": [{"id": "a", "id": "b", "y": 1}]}', 400, None),
        (b'{"labels": [', 400, None),
    ],
)
def test_malformed_label_bodies_are_precise(client, content, status, loc):
    create(client, "m", task="binary", input_dim=3, hidden=[])
    record(client, np.zeros((1, 3), np.float32), ids=["a"])
    r = client.post("/v1/models/m/labels", content=content, headers={"Content-Type": "application/json"})
    assert_problem(r, status, loc)
    assert accepted(client) == 0


def test_labels_need_scope_ingest_and_a_known_model(client):
    create(client, "m", task="binary", input_dim=3, hidden=[])
    r = client.post("/v1/models/m/labels", json={"labels": [{"id": "a", "y": 1}]}, headers=key(client, "read"))
    assert_problem(r, 403)
    assert_problem(client.post("/v1/models/nope/labels", json={"labels": [{"id": "a", "y": 1}]}), 404)
    r = client.post("/v1/models/m/labels", content=b"a", headers={"Content-Type": "text/plain"})
    assert_problem(r, 415)


def test_an_idempotency_key_repeats_the_first_answer(client):
    create(client, "m", task="binary", input_dim=3, hidden=[])
    record(client, np.zeros((2, 3), np.float32), ids=["a", "b"])
    h = {"Idempotency-Key": "lbl-1"}
    first = label(client, [("a", 1)], headers=h)
    again = label(client, [("a", 1)], headers=h)
    assert again == {**first, "duplicate": True}
    assert_problem(label(client, [("b", 1)], expect=409, headers=h), 409, ["header", "Idempotency-Key"])
    assert accepted(client) == 1


# --------------------------------------------------------------------------- served metrics
def test_served_metrics_score_the_outputs_that_were_served(client):
    create(client, "m", task="binary", input_dim=4, hidden=[5])
    X, Y = data("binary", 40, 4)
    made = record(client, X[:25])
    made2 = record(client, X[25:])
    served = np.array(made["outputs"] + made2["outputs"])[:, 0]
    ids = made["prediction_ids"] + made2["prediction_ids"]
    chosen = list(range(0, 40, 3))
    label(client, [(ids[i], int(Y[i])) for i in chosen])
    v = client.get("/v1/models/m/versions/1").json()["served"]
    want = bce(served[chosen], Y[chosen].astype(np.float64))
    assert v["predictions"] == 40 and v["labelled"] == len(chosen)
    assert v["loss"] == pytest.approx(want.mean(), rel=1e-6)
    assert v["accuracy"] == ((served[chosen] >= 0.5).astype(int) == Y[chosen]).mean()
    listed = client.get("/v1/models/m/versions").json()["items"]
    assert listed[-1]["served"] == v


def test_served_metrics_of_a_regression_have_no_accuracy(client):
    create(client, "m", task="regression", input_dim=3, output_dim=2, hidden=[])
    X = data("regression", 5, 3)[0]
    made = record(client, X)
    Y = np.arange(10, dtype=np.float64).reshape(5, 2) / 7
    label(client, [(made["prediction_ids"][i], Y[i].tolist()) for i in range(5)])
    v = client.get("/v1/models/m/versions/1").json()["served"]
    out = np.array(made["outputs"])
    assert v["loss"] == pytest.approx((0.5 * ((out - Y) ** 2).sum(axis=1)).mean(), rel=1e-6)
    assert v["accuracy"] is None and v["labelled"] == 5


# --------------------------------------------------------------------------- learning
def test_labelled_samples_are_learned_exactly_like_updates(lc):
    X, Y = data("binary", 60, 5)
    lr = 0.05
    create(lc, "m", task="binary", input_dim=5, optimizer={"kind": "sgd", "learning_rate": lr})
    W0, b0 = weights(lc, "m", 1)
    ids = record(lc, X)["prediction_ids"]
    order = np.random.default_rng(3).permutation(60)
    label(lc, [(ids[i], int(Y[i])) for i in order])
    v = checkpoint(lc, "m")
    assert v["applied_through"] == 59
    Wr, br, _, _ = ref_linear(W0[0], b0[0], X[order], Y[order], "binary", lr)
    Ws, bs = weights(lc, "m", v["version"])
    close([Ws[0], bs[0]], [Wr, br])


# --------------------------------------------------------------------------- expiry
def test_expired_predictions_are_forgotten(make_settings):
    with TestClient(create_app(make_settings(prediction_ttl_seconds=1)), headers=auth()) as c:
        create(c, "m", task="binary", input_dim=3, hidden=[])
        record(c, np.zeros((2, 3), np.float32), ids=["old", "labelled"])
        label(c, [("labelled", 1)])
        time.sleep(1.2)
        record(c, np.ones((1, 3), np.float32), ids=["new"])
        assert c.app.state.ctx.feedback.purge() == 1  # type: ignore[attr-defined]
        assert_problem(label(c, [("old", 1)], expect=422), 422, ["body", "labels", 0, "id"])
        assert label(c, [("new", 0)])["accepted"] == 1
        assert accepted(c) == 2  # the labelled one lives on as a sample


# --------------------------------------------------------------------------- helpers
def _weights(c: TestClient) -> dict[str, np.ndarray]:
    import safetensors.numpy as stnp

    return dict(stnp.load(c.get("/v1/models/m/versions/1/weights").content))


def _safetensors(t: dict[str, np.ndarray]) -> bytes:
    import safetensors.numpy as stnp

    return stnp.save({k: np.ascontiguousarray(v) for k, v in t.items()})


# --------------------------------------------------------------------------- crashes
@pytest.mark.slow
def test_sigkill_between_predict_and_label_loses_and_doubles_nothing(db_url, tmp_path):
    """Recorded predictions answered before a SIGKILL are there after the restart; labels
    sent while the server dies, then retried after it, become each one sample, once."""
    import threading

    from tests.online_helpers import Server, wait_until

    data_dir = tmp_path / "data"
    X = data("binary", 400, 4, seed=5)[0]
    Y = (X[:, 0] > 0).astype(int)
    srv = Server(db_url, data_dir, STEWARD_RUN_WORKER="false").start()
    recorded: list[str] = []
    labelled: dict[int, dict] = {}
    try:
        with srv.client() as c:
            assert c.post("/v1/models", json={"name": "m", "task": "binary", "input_dim": 4}).status_code == 201
            for k in range(0, 400, 20):  # answered = recorded
                r = c.post("/v1/models/m/predict", json={"inputs": X[k : k + 20].tolist(), "record": True})
                assert r.status_code == 200, r.text
                recorded += r.json()["prediction_ids"]
        stop = threading.Event()

        def send_labels() -> None:
            with srv.client(timeout=10) as c:
                for k in range(0, 400, 10):
                    if stop.is_set():
                        return
                    body = {"labels": [{"id": recorded[i], "y": int(Y[i])} for i in range(k, k + 10)]}
                    try:
                        r = c.post("/v1/models/m/labels", json=body, headers={"Idempotency-Key": f"l-{k}"})
                    except Exception:
                        return  # the server died under us
                    if r.status_code == 202:
                        labelled[k] = r.json()
                    time.sleep(0.02)

        t = threading.Thread(target=send_labels)
        t.start()
        wait_until(lambda: len(labelled) >= 10, 60, "10 acknowledged label requests")
        srv.kill()
        stop.set()
        t.join(30)
    finally:
        srv.kill()
    srv2 = Server(db_url, data_dir, STEWARD_RUN_WORKER="false").start()
    try:
        with srv2.client() as c:
            assert c.get("/v1/models/m").json()["online"]["accepted"] >= 10 * len(labelled)
            for k in range(0, 400, 10):  # the client retries everything, as it cannot know
                body = {"labels": [{"id": recorded[i], "y": int(Y[i])} for i in range(k, k + 10)]}
                r = c.post("/v1/models/m/labels", json=body, headers={"Idempotency-Key": f"l-{k}"})
                assert r.status_code == 202, r.text
                if k in labelled:
                    assert r.json() == {**labelled[k], "duplicate": True}
            # without the keys, every label is now a duplicate: nothing is added twice
            body = {"labels": [{"id": recorded[i], "y": int(Y[i])} for i in range(400)]}
            again = c.post("/v1/models/m/labels", json=body).json()
            assert again["accepted"] == 0 and again["duplicates"] == 400
            assert c.get("/v1/models/m").json()["online"]["accepted"] == 400
            served = c.get("/v1/models/m/versions/1").json()["served"]
            assert served["predictions"] == 400 and served["labelled"] == 400
    finally:
        srv2.stop()


def test_the_fast_and_the_strict_recorded_predict_answer_alike(client):
    """A plain recorded predict is carried by the group commit; one the fast reading does
    not settle (here an escaped alias) takes the strict path: the same answer but the ids,
    both recorded and labellable."""
    create(client, "m", task="binary", input_dim=3, hidden=[4])
    X = [[0.5, -1.0, 2.0], [1.5, 0.25, -0.5]]
    fast = client.post("/v1/models/m/predict", json={"inputs": X, "record": True}).json()
    body = b'{"inputs": [[0.5, -1.0, 2.0], [1.5, 0.25, -0.5]], "record": true, "alias": "l\\u0061test"}'
    strict = client.post("/v1/models/m/predict", content=body, headers={"Content-Type": "application/json"}).json()
    ids = fast.pop("prediction_ids") + strict.pop("prediction_ids")
    assert fast == strict and len(set(ids)) == 4
    assert label(client, [(i, 1) for i in ids])["accepted"] == 4
    assert client.get("/v1/models/m/versions/1").json()["served"]["predictions"] == 4


# --------------------------------------------------------------------------- the ids Steward makes
def test_made_ids_name_their_request_and_nothing_else(client):
    """A made id resolves only to its own batch, position and token, in its own model: every
    altered form is unknown (422), never another prediction; a client may name its ids in
    the same form, and they are its own."""
    create(client, "m", task="binary", input_dim=2, hidden=[])
    create(client, "other", task="binary", input_dim=2, hidden=[])
    X = data("binary", 3, 2)[0]
    ids = record(client, X)["prediction_ids"]
    r = client.post("/v1/models/other/predict", json={"inputs": X.tolist(), "record": True})
    theirs = r.json()["prediction_ids"]
    batch, pos, token = ids[0].split("-")[1:]
    forged = [
        f"p-{batch}-{pos}-{int(token, 16) ^ 1:012x}",  # another token
        f"p-{batch}-3-{token}",  # past the batch's end
        f"p-{batch}-0{pos}-{token}",  # not the canonical form
        f"p-{int(batch) + 10}-0-{token}",  # no such batch
        theirs[0],  # another model's
        ids[0].upper(),
    ]
    for bad in forged:
        assert_problem(label(client, [(bad, 1)], expect=422), 422, ["body", "labels", 0, "id"])
    assert accepted(client) == 0
    # a client's id of the same form is just a client's id
    mine = record(client, X[:1], ids=[forged[0]])["prediction_ids"]
    assert mine == [forged[0]]
    assert label(client, [(forged[0], 1), (ids[2], 0)])["accepted"] == 2
    # a made id sent back with the same input answers the first answer; with another, 409
    again = client.post("/v1/models/m/predict", json={"inputs": X[1:2].tolist(), "record": True, "ids": [ids[1]]})
    assert again.status_code == 200 and again.json()["prediction_ids"] == [ids[1]]
    other = client.post("/v1/models/m/predict", json={"inputs": X[:1].tolist(), "record": True, "ids": [ids[1]]})
    assert_problem(other, 409, ["body", "ids", 0])


@pytest.mark.parametrize(
    "content",
    [
        b'{"labels": [{"id": "a", "y": 1}, {"id": "b", "y": 0}]}',
        b'{"labels": [{"id": "a", "id": "b", "y": 1}, {"id": 5, "y": 1}]}',  # a repeat the count could miss
        b'{"labels": [{"id": "a\\"b", "y": 1}]}',
        b'{"labels": [{"id": "a", "y": "1"}]}',
        b'{"\\u006cabels": [{"id": "a", "y": 1}]}',
        b'{"labels": [{"id": "a", "y": 1e999}]}',
        b'{"labels": [{"id": "a", "y": 123456789012345678901234567890}]}',
        b'{"labels": [{"id": "a", "y": NaN}]}',
        b'{"labels": [{"id": "a", "y": 1}], "labels": [{"id": "b", "y": 1}]}',
    ],
)
def test_the_fast_reading_of_a_labels_body_is_the_strict_one(content):
    """orjson reads a labels body only when its reading cannot differ from the strict one's
    (no repeated key, nothing orjson reads otherwise): same labels or same error."""
    from app.core.errors import StewardError
    from app.feedback.service import _fast_items, parse_labels, strict_items
    from app.online.samples import SampleSpec

    spec = SampleSpec("binary", 2, 1)

    def outcome(read: Any) -> Any:
        try:
            ids, Y = parse_labels(spec, read())
            return ids, Y.tolist()
        except StewardError as e:
            return e.status, [err.get("loc") for err in e.errors or []]

    fast = _fast_items(content)
    if fast is not None:
        assert outcome(lambda: fast) == outcome(lambda: strict_items(content))


@pytest.mark.parametrize(
    "content",
    [
        b'{"id": "a", "y": 1}\n{"id": "b", "y": 0}',
        b'{"id": "a", "id": "b", "y": 1}\n{"id": "c", "y": 0}',
        b'{"id": "a\\"b", "y": 1}',
        b'{"id": "a", "y": "1"}',
        b'{"id": "a", "y": NaN}',
        b'{"id": "a", "y": 1}\n{"id": ',
        b"\n\n",
    ],
)
@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_ndjson_labels_read_in_chunks_are_read_as_a_whole(content, chunk):
    """NDJSON labels are read line by line as chunks arrive, orjson only where it cannot
    differ: any chunking gives what the strict reading of each line gives."""
    from app.core.errors import StewardError
    from app.core.jsonbody import loads
    from app.feedback.service import LabelLines

    def chunked() -> Any:
        lines = LabelLines()
        for i in range(0, len(content), chunk):
            lines.feed(content[i : i + chunk])
        return lines.finish()

    def whole() -> Any:
        items = [loads(line) for line in content.split(b"\n") if line.strip()]
        if not items:
            raise StewardError("empty")
        return items

    def outcome(read: Any) -> Any:
        try:
            return read()
        except (StewardError, ValueError):
            return "error"

    assert outcome(chunked) == outcome(whole)


def test_concurrent_labels_and_updates_share_commits_and_count_once(client):
    """Label requests for the same predictions race each other and /update requests: each
    prediction becomes exactly one sample, the answers' counts add up (accepted once,
    duplicates the rest), and the log holds every labelled input once and every update,
    at contiguous offsets."""
    import threading

    create(client, "m", task="binary", input_dim=3, hidden=[])
    X, Y = data("binary", 60, 3)
    ids = record(client, X)["prediction_ids"]
    pairs = [(i, int(y)) for i, y in zip(ids, Y, strict=True)]
    U = data("binary", 5, 3, seed=1)[0]
    answers: list[dict] = []
    errors: list[str] = []

    def send(kind: int) -> None:
        for _ in range(3):
            if kind < 4:
                body = {"labels": [{"id": i, "y": y} for i, y in pairs[kind * 7 :] + pairs[: kind * 7]]}
                r = client.post("/v1/models/m/labels", json=body)
            else:
                r = client.post("/v1/models/m/update", json={"samples": [{"x": x, "y": 0} for x in U.tolist()]})
            if r.status_code != 202:
                errors.append(r.text)
            elif kind < 4:
                answers.append(r.json())

    threads = [threading.Thread(target=send, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sum(a["accepted"] for a in answers) == 60
    assert sum(a["duplicates"] for a in answers) == 60 * 11
    assert accepted(client) == 60 + 6 * 5
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    with ctx.db.read() as s:
        Xl, Yl = read_log(s, get_model(s, "m"), 0, 89)
    truth = {tuple(x): float(y) for x, y in zip(X.tolist(), Y.tolist(), strict=True)}
    mine = np.array([tuple(row) in truth for row in Xl.tolist()])
    assert sorted(map(tuple, Xl[mine].tolist())) == sorted(truth)  # each labelled input exactly once
    assert [truth[tuple(x)] for x in Xl[mine].tolist()] == Yl[mine].tolist()  # with its label
    np.testing.assert_array_equal(Xl[~mine], np.tile(U, (6, 1)))
