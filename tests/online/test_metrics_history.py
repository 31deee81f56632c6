"""``GET /v1/models/{name}/metrics/history`` on SQLite and PostgreSQL: a model learns real data
(breast cancer as a binary model, diabetes as a regression) through ``/update``; each bucket's
loss and accuracy equal a per-sample reference (the engine's learner stepped one sample at a
time, each sample scored beforehand with a hand-written numpy forward pass and loss), with all
points, fewer points and windows of offsets; bad queries are 422 at the field, an unknown
model 404; a learner that takes over replays without failing or duplicating points; labels of
recorded predictions show as the bucket's ``served`` figures."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.context import AppContext
from app.core.tables import MetricPoint
from app.engine.nn.online import Mark, OnlineLearner
from app.engine.nn.optim import OptimizerConfig
from app.main import create_app
from app.online.learner import LearnerRuntime, learner_config
from app.online.repository import MetricPointRepository
from app.registry.models import get_model
from tests.api_helpers import assert_problem
from tests.conftest import auth
from tests.online.test_learner import create, expire_leases, model_params, send
from tests.online_helpers import wait_until

EPS = 1e-7  # the engine's probability clip of the cross-entropy
EVERY = 50  # STEWARD_METRICS_POINT_SAMPLES of these tests
CHUNK = 30  # samples per /update


# --------------------------------------------------------------------------- data and reference
def dataset(task: str) -> tuple[np.ndarray, np.ndarray]:
    """Two shuffled passes over scikit-learn's breast cancer (binary) or diabetes (regression,
    target standardized), inputs standardized, float32."""
    from sklearn.datasets import load_breast_cancer, load_diabetes
    from sklearn.preprocessing import StandardScaler

    if task == "binary":
        X, y = load_breast_cancer(return_X_y=True)
        Y = y.astype(np.int64)
    else:
        X, y = load_diabetes(return_X_y=True)
        Y = ((y - y.mean()) / y.std()).astype(np.float32)
    X = StandardScaler().fit_transform(X).astype(np.float32)
    rng = np.random.default_rng(0)
    order = np.concatenate([rng.permutation(len(X)), rng.permutation(len(X))])
    return X[order], Y[order]


SPECS = {
    "binary": {"task": "binary", "input_dim": 30, "hidden": [8], "activation": "tanh",
               "optimizer": {"kind": "sgd", "learning_rate": 0.05, "l2": 1e-3}},
    "regression": {"task": "regression", "input_dim": 10, "output_dim": 1, "hidden": [8], "activation": "tanh",
                   "optimizer": {"kind": "sgd", "learning_rate": 0.01}},
}  # fmt: skip


def forward(weights: list[np.ndarray], biases: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    """float64 forward pass of one sample: tanh hidden layers, a linear last layer."""
    a = x.astype(np.float64)
    for i, (W, b) in enumerate(zip(weights, biases, strict=True)):
        a = W.astype(np.float64) @ a + b.astype(np.float64)
        if i < len(weights) - 1:
            a = np.tanh(a)
    return a


def reference(ctx: AppContext, name: str, X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-sample test-then-train losses and hits (None for a regression): the engine's
    learner, from the model's first version, steps one sample at a time; before each step
    the sample is scored here with the current parameters (sigmoid + binary cross-entropy,
    ½‖ŷ − y‖²; a hit is ``p ≥ ½`` equal to the label)."""
    with ctx.db.read() as s:
        m = get_model(s, name)
    lrn = OnlineLearner(
        model_params(ctx, name, 1).copy(),
        OptimizerConfig.from_spec(m.optimizer),
        config=learner_config(m, ctx.settings.learner_window),
    )
    losses, hits = [], []
    for x, y in zip(X, Y, strict=True):
        net = lrn.network
        z = forward(net.weights, net.biases, x)
        if m.task == "binary":
            p = float(np.clip(1 / (1 + np.exp(-z[0])), EPS, 1 - EPS))
            losses.append(-(y * np.log(p) + (1 - y) * np.log1p(-p)))
            hits.append(int(p >= 0.5) == int(y))
        else:
            losses.append(0.5 * float(((z - np.float64(y)) ** 2).sum()))
        res = lrn.learn_many(x[None], np.asarray(y)[None])
        assert res.applied == 1 and res.pause is None
    return np.array(losses), (np.array(hits) if m.task == "binary" else None)


def check_buckets(answer: dict[str, Any], losses: np.ndarray, hits: np.ndarray | None, before: int = -1) -> None:
    """Each point's bucket runs from the point before it (``before`` for the first: the last
    recorded point before the range) through its offset; its means, and the running means at
    the point, equal the reference's."""
    prev = before
    assert answer["points"], answer
    for pt in answer["points"]:
        o = pt["offset"]
        sl = slice(prev + 1, o + 1)
        assert pt["samples"] == o - prev
        pre = pt["prequential"]
        np.testing.assert_allclose(pre["loss"], losses[sl].mean(), rtol=1e-5)
        np.testing.assert_allclose(pre["running_loss"], losses[: o + 1].mean(), rtol=1e-5)
        if hits is None:
            assert pre["accuracy"] is None and pre["running_accuracy"] is None
        else:
            np.testing.assert_allclose(pre["accuracy"], hits[sl].mean(), rtol=1e-12)
            np.testing.assert_allclose(pre["running_accuracy"], hits[: o + 1].mean(), rtol=1e-12)
        assert pt["served"] is None
        prev = o


def last_per_bucket(offsets: list[int], lo: int, hi: int, n: int) -> list[int]:
    """The last recorded offset of each non-empty bucket of ``n`` equal-width buckets of lo..hi."""
    last: dict[int, int] = {}
    for o in offsets:
        if lo <= o <= hi:
            last[(o - lo) * n // (hi - lo + 1)] = o
    return [last[k] for k in sorted(last)]


def expected_points(n: int, every: int = EVERY) -> list[int]:
    """Where the learner records points over offsets 0..n-1: every ``every`` samples, at the
    same offsets however the samples arrived (here 30 per request) and were sliced."""
    return [o for o in range(n) if (o + 1) % every == 0]


def history(c: TestClient, name: str = "m", **q: Any) -> dict[str, Any]:
    r = c.get(f"/v1/models/{name}/metrics/history", params=q)
    assert r.status_code == 200, r.text
    return r.json()


# --------------------------------------------------------------------------- fixtures
@pytest.fixture
def lc(make_settings) -> Iterator[TestClient]:
    """An app whose learner thread runs (no job worker), recording a point every 50 samples."""
    with TestClient(create_app(make_settings(run_worker=False, metrics_point_samples=EVERY)), headers=auth()) as c:
        yield c


@pytest.fixture(params=["binary", "regression"])
def learned(request: pytest.FixtureRequest, lc: TestClient) -> tuple[TestClient, np.ndarray, np.ndarray | None]:
    """Model ``m`` learned two passes of real data, 30 samples per ``/update?wait=true`` (the
    learner publishes at the end of each); the reference losses and hits."""
    task = request.param
    X, Y = dataset(task)
    create(lc, "m", **SPECS[task])
    for i in range(0, len(X), CHUNK):
        send(lc, "m", X[i : i + CHUNK], Y[i : i + CHUNK])
    losses, hits = reference(lc.app.state.ctx, "m", X, Y)  # type: ignore[attr-defined]
    return lc, losses, hits


# --------------------------------------------------------------------------- bucket means
def test_every_point_answers_exact_means_against_a_per_sample_reference(learned):
    c, losses, hits = learned
    n = len(losses)
    got = history(c, points=2000)  # more buckets than offsets: every recorded point answers
    offsets = [p["offset"] for p in got["points"]]
    assert offsets == expected_points(n)
    assert got["model"] == "m" and got["from_offset"] == 0 and got["to_offset"] == offsets[-1]
    assert got["recorded"] == len(offsets)
    check_buckets(got, losses, hits)
    assert all(p["at"].endswith("Z") or p["at"].endswith("+00:00") for p in got["points"])
    # the default: 200 buckets
    assert history(c) == history(c, points=200)


def test_fewer_points_keep_exact_bucket_means(learned):
    c, losses, hits = learned
    every = [p["offset"] for p in history(c, points=2000)["points"]]
    last = every[-1]
    for n in (7, 3, 1):
        got = history(c, points=n)
        assert [p["offset"] for p in got["points"]] == last_per_bucket(every, 0, last, n)
        assert got["recorded"] == len(every)
        assert sum(p["samples"] for p in got["points"]) == last + 1
        check_buckets(got, losses, hits)
    one = history(c, points=1)["points"]
    assert len(one) == 1 and one[0]["offset"] == last
    np.testing.assert_allclose(one[0]["prequential"]["loss"], losses[: last + 1].mean(), rtol=1e-5)


def test_windows_of_offsets(learned):
    c, losses, hits = learned
    every = [p["offset"] for p in history(c, points=2000)["points"]]
    lo, hi = 200, 700
    got = history(c, from_offset=lo, to_offset=hi, points=4)
    assert (got["from_offset"], got["to_offset"]) == (lo, hi)
    assert got["recorded"] == len([o for o in every if lo <= o <= hi])
    assert [p["offset"] for p in got["points"]] == last_per_bucket(every, lo, hi, 4)
    # the first bucket steps from the last point recorded before the range
    check_buckets(got, losses, hits, before=max(o for o in every if o < lo))
    # a window that starts on a point, all points
    got = history(c, from_offset=every[3], to_offset=every[9], points=2000)
    assert [p["offset"] for p in got["points"]] == every[3:10]
    check_buckets(got, losses, hits, before=every[2])
    # from only: up to the newest point; to only: from 0
    got = history(c, from_offset=every[-3])
    assert got["to_offset"] == every[-1] and [p["offset"] for p in got["points"]] == every[-3:]
    got = history(c, to_offset=every[1] + 5)
    assert got["from_offset"] == 0 and [p["offset"] for p in got["points"]] == every[:2]
    check_buckets(got, losses, hits)
    # past the newest point, and between two points: nothing recorded there
    got = history(c, from_offset=every[-1] + 1)
    assert got == {"model": "m", "from_offset": every[-1] + 1, "to_offset": every[-1] + 1, "recorded": 0, "points": []}
    got = history(c, from_offset=every[0] + 1, to_offset=every[1] - 1)
    assert got["recorded"] == 0 and got["points"] == []
    assert history(c, from_offset=2**62, to_offset=2**62)["points"] == []


# --------------------------------------------------------------------------- the contract
@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("from_offset=-1", "from_offset"),
        ("to_offset=-1", "to_offset"),
        ("from_offset=10&to_offset=9", "from_offset"),
        (f"to_offset={2**62 + 1}", "to_offset"),
        ("points=0", "points"),
        ("points=2001", "points"),
        ("points=abc", "points"),
        ("from_offset=1.5", "from_offset"),
    ],
)
def test_bad_queries_are_422_at_the_field(client, query, field):
    create(client, "m", task="binary", input_dim=3)
    assert_problem(client.get(f"/v1/models/m/metrics/history?{query}"), 422, ["query", field])


def test_unknown_model_404_and_keys(client, anon):
    assert_problem(client.get("/v1/models/nope/metrics/history"), 404)
    create(client, "m", task="binary", input_dim=3)
    assert_problem(anon.get("/v1/models/m/metrics/history"), 401)
    r = client.post("/v1/keys", json={"name": "reader", "scope": "read", "models": ["other"]})
    assert r.status_code == 201, r.text
    other = {"Authorization": f"Bearer {r.json()['key']}"}
    assert_problem(anon.get("/v1/models/m/metrics/history", headers=other), 403)
    r = client.post("/v1/keys", json={"name": "reader-m", "scope": "read"})
    reader = {"Authorization": f"Bearer {r.json()['key']}"}
    got = anon.get("/v1/models/m/metrics/history", headers=reader)
    assert got.status_code == 200, got.text
    assert got.json() == {"model": "m", "from_offset": 0, "to_offset": 0, "recorded": 0, "points": []}


# --------------------------------------------------------------------------- takeover
def points_in_table(ctx: AppContext) -> list[tuple[int, Any]]:
    with ctx.db.read() as s:
        return [(int(o), at) for o, at in s.execute(sa.select(MetricPoint.offset, MetricPoint.at).order_by("offset"))]


def test_a_learner_taking_over_replays_without_failing_or_duplicating_points(make_settings):
    st = make_settings(run_worker=False, run_learner=False, learner_lease_seconds=60, metrics_point_samples=EVERY)
    with TestClient(create_app(st), headers=auth()) as c:
        ctx: AppContext = c.app.state.ctx  # type: ignore[attr-defined]
        X, Y = dataset("binary")
        create(c, "m", **SPECS["binary"], checkpoint_every=150, checkpoint_seconds=0)
        a = LearnerRuntime(ctx.db, ctx.settings, ctx.blobs, ctx.versions, ctx.metrics, owner="A")
        for i in range(0, 400, 40):
            send(c, "m", X[i : i + 40], Y[i : i + 40], wait=False)
            a.drain()
        assert a.held[1].applied_through == 399
        mine = points_in_table(ctx)
        assert mine and mine[-1][0] == a.held[1].last_point
        # A "crashes" (its lease runs out); B takes over from the checkpoint at 299 and
        # replays 300..399 before going on: it publishes nothing below 399 and finds the
        # last point in the table
        expire_leases(ctx)
        b = LearnerRuntime(ctx.db, ctx.settings, ctx.blobs, ctx.versions, ctx.metrics, owner="B")
        b.run_once()
        b._load(1)
        h = b.held[1]
        assert h.applied_through == 299 and h.last_point == mine[-1][0]
        for i in range(400, 720, 40):
            send(c, "m", X[i : i + 40], Y[i : i + 40], wait=False)
            b.drain()
        h = b.held[1]
        assert h.applied_through == 719 and h.last_point < 719
        # up to the next point, so that the learner stands on one
        end = h.last_point + EVERY
        send(c, "m", X[720 : end + 1], Y[720 : end + 1], wait=False)
        b.drain()
        after = points_in_table(ctx)
        offsets = [o for o, _ in after]
        assert offsets == sorted(set(offsets)) and after[: len(mine)] == mine  # A's points kept as written
        # a replay meeting a recorded point again (its learner lost what it had recorded)
        # keeps the first one and does not fail
        h = b.held[1]
        assert h.applied_through == offsets[-1] == end
        h.last_point, h.dirty = -1, True
        h.points.append(Mark(end, 1, 0.0, 0))
        b._publish(h, force=True)
        assert points_in_table(ctx) == after
        b.stop()
        a.stop()
        # the history of the whole run equals the uninterrupted reference
        losses, hits = reference(ctx, "m", X[: end + 1], Y[: end + 1])
        got = history(c, points=2000)
        assert [p["offset"] for p in got["points"]] == offsets and got["recorded"] == len(offsets)
        check_buckets(got, losses, hits)


def test_points_of_a_write_that_failed_are_written_by_the_next(make_settings, monkeypatch):
    """A write of the progress that fails (disk full, a lost connection) keeps its points
    for the next one: none is lost."""
    st = make_settings(run_worker=False, run_learner=False, learner_lease_seconds=60, metrics_point_samples=10)
    with TestClient(create_app(st), headers=auth()) as c:
        ctx: AppContext = c.app.state.ctx  # type: ignore[attr-defined]
        X, Y = dataset("binary")
        create(c, "m", **SPECS["binary"])
        a = LearnerRuntime(ctx.db, ctx.settings, ctx.blobs, ctx.versions, ctx.metrics, owner="A")
        send(c, "m", X[:10], Y[:10], wait=False)
        a.drain()
        assert [o for o, _ in points_in_table(ctx)] == [9]
        real = MetricPointRepository.add_many
        calls = []

        def failing(self: Any, model_id: int, points: Any) -> None:
            calls.append([p[0] for p in points])
            if len(calls) == 1:
                raise sa.exc.OperationalError("INSERT", {}, Exception("disk I/O error"))
            real(self, model_id, points)

        monkeypatch.setattr(MetricPointRepository, "add_many", failing)
        send(c, "m", X[10:30], Y[10:30], wait=False)
        with pytest.raises(sa.exc.OperationalError):
            a.run_once()
        assert [o for o, _ in points_in_table(ctx)] == [9]
        send(c, "m", X[30:40], Y[30:40], wait=False)
        a.drain()
        assert calls[0] == [19, 29] and calls[-1][-1] == 39
        assert [o for o, _ in points_in_table(ctx)] == [9, 19, 29, 39]
        a.stop()


# --------------------------------------------------------------------------- served
def bce(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), EPS, 1 - EPS)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))


def test_labelled_recorded_predictions_show_as_served(lc):
    X, Y = dataset("binary")
    create(lc, "m", **SPECS["binary"])
    send(lc, "m", X[:100], Y[:100])  # points at 49 and 99
    r = lc.post("/v1/models/m/predict", json={"inputs": X[100:160].tolist(), "record": True})
    assert r.status_code == 200, r.text
    made = r.json()
    served = np.array(made["outputs"], dtype=np.float64)[:, 0]
    labels = [{"id": i, "y": int(y)} for i, y in zip(made["prediction_ids"], Y[100:160], strict=True)]
    r = lc.post("/v1/models/m/labels", json={"labels": labels})
    assert r.status_code == 202, r.text
    assert (r.json()["first_offset"], r.json()["last_offset"]) == (100, 159)  # labels become samples
    wait_until(lambda: lc.get("/v1/models/m").json()["online"]["applied_through"] == 159, 30, "the labels learned")
    send(lc, "m", X[160:220], Y[160:220])  # a point at 199
    got = history(lc)
    # the point at 149 is written with the learner's progress through 159, after the labels
    # committed (they are the samples 100..159): its bucket carries all 60
    assert [p["offset"] for p in got["points"]] == [49, 99, 149, 199]
    a, b, labelled, last = got["points"]
    assert a["served"] is None and b["served"] is None and last["served"] is None
    y = Y[100:160].astype(np.float64)
    assert labelled["served"]["labelled"] == 60
    np.testing.assert_allclose(labelled["served"]["loss"], bce(served, y).mean(), rtol=1e-9)
    assert labelled["served"]["accuracy"] == pytest.approx(((served >= 0.5) == y).mean(), abs=1e-12)
    # the same labels as the version's served metrics say
    v1 = lc.get("/v1/models/m/versions/1").json()["served"]
    assert v1["labelled"] == 60 and labelled["served"]["loss"] == pytest.approx(v1["loss"], rel=1e-12)
    # one bucket over everything carries them too; the prequential means cover the labelled samples
    whole = history(lc, points=1)["points"]
    assert len(whole) == 1 and whole[0]["served"]["labelled"] == 60
    losses, hits = reference(lc.app.state.ctx, "m", X[:220], Y[:220])  # type: ignore[attr-defined]
    for pt, lo in ((a, -1), (b, 49), (labelled, 99), (last, 149)):
        sl = slice(lo + 1, pt["offset"] + 1)
        np.testing.assert_allclose(pt["prequential"]["loss"], losses[sl].mean(), rtol=1e-5)
        assert hits is not None
        assert pt["prequential"]["accuracy"] == pytest.approx(hits[sl].mean(), abs=1e-12)
