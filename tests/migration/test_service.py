"""The migrate service below HTTP, on both databases: probes from the model's log,
duplicate export jobs, and what a retried job does."""

from __future__ import annotations

import numpy as np
import pytest

from app.background import make_worker
from app.context import AppContext
from app.core.migrations import upgrade
from app.core.tables import Job, SampleBatch, utcnow
from app.interop.export import ExportVerificationError, to_npz, to_torch_state
from app.interop.export_verify import verify_npz, verify_torch_state
from app.migration.repository import ExportRepository
from app.migration.schemas import MigrateIn
from app.migration.service import N_REAL_PROBES, recent_inputs
from app.registry.models import get_model
from app.registry.schemas import ModelCreate
from tests.interop.test_export import make_net


@pytest.fixture
def ctx(make_settings):
    settings = make_settings(run_worker=False)
    upgrade(settings.url)
    c = AppContext.build(settings)
    c.models.create(
        ModelCreate(name="m", task="binary", input_dim=3, hidden=[4], checkpoint_every=250, checkpoint_seconds=7.5)
    )
    yield c
    c.close()


def append_log(ctx, X: np.ndarray, y: np.ndarray) -> None:
    """Append samples to the log as /update would (one packed row)."""
    with ctx.db.write() as s:
        m = get_model(s, "m", for_update=True)
        s.add(
            SampleBatch(
                model_id=m.id,
                first_offset=m.next_offset,
                count=len(X),
                x=X.astype(np.float32).tobytes(),
                y=y.astype(np.float32).tobytes(),
                created_at=utcnow(),
            )
        )
        m.next_offset += len(X)


def submit(ctx, **body) -> str:
    return ctx.migration.submit("m", MigrateIn.model_validate(body))


def job(ctx, jid) -> Job:
    return ctx.jobs.get(jid)


def test_probes_include_the_newest_log_samples(ctx):
    rng = np.random.default_rng(0)
    X1, X2 = rng.normal(size=(50, 3)), rng.normal(size=(40, 3))
    append_log(ctx, X1, np.ones(50))
    append_log(ctx, X2, np.zeros(40))
    with ctx.db.read() as s:
        got = recent_inputs(s, get_model(s, "m"))
    np.testing.assert_array_equal(got, np.concatenate([X1, X2])[-N_REAL_PROBES:].astype(np.float32))
    jid = submit(ctx, target="onnx")
    assert make_worker(ctx).run_once() == jid
    j = job(ctx, jid)
    assert j.status == "succeeded", j.error
    assert j.result["verification"]["n_probes"] == 64 + N_REAL_PROBES
    with ctx.db.read() as s:
        m = get_model(s, "m")
        e = ExportRepository(s).get(ctx.versions.get(s, m, 1).id, "onnx")
        assert e.meta["probes"] == {"random": 64, "real": N_REAL_PROBES}
        assert e.meta["job_id"] == jid and e.meta["verification"] == j.result["verification"]


def test_duplicate_jobs_build_once(ctx):
    first, second = submit(ctx, target="npz"), submit(ctx, target="npz")
    w = make_worker(ctx)
    assert w.run_once() == first and w.run_once() == second
    a, b = job(ctx, first), job(ctx, second)
    assert a.result["reused"] is False and b.result["reused"] is True
    assert a.result["sha256"] == b.result["sha256"]
    with ctx.db.read() as s:
        m = get_model(s, "m")
        assert len(ExportRepository(s).for_version(ctx.versions.get(s, m, 1).id)) == 1


def test_a_lost_blob_is_rebuilt(ctx):
    jid = submit(ctx, target="torch")
    w = make_worker(ctx)
    w.run_once()
    sha = job(ctx, jid).result["sha256"]
    ctx.blobs.path(sha).unlink()
    jid2 = submit(ctx, target="torch")
    w.run_once()
    res = job(ctx, jid2).result
    assert res["reused"] is False and ctx.blobs.exists(res["sha256"])


# --------------------------------------------------------------------------- engine-side checks
def test_torch_and_npz_verification_catch_tampering():
    net = make_net("multiclass", "tanh")
    X = np.random.default_rng(0).normal(size=(20, net.input_dim)).astype(np.float32)
    data, _ = to_torch_state(net, name="m", version=1)
    assert verify_torch_state(data, net, X)["max_abs_error"] == 0.0
    assert verify_npz(to_npz(net), net, X)["max_abs_error"] == 0.0
    other = net.copy()
    other.weights[1][0, 0] += 1.0
    with pytest.raises(ExportVerificationError) as e:
        verify_torch_state(to_torch_state(other, name="m", version=1)[0], net, X)
    assert e.value.stage == "compare" and e.value.evidence["max_abs_error"] > 1e-3
    with pytest.raises(ExportVerificationError) as e:
        verify_npz(to_npz(other), net, X)
    assert e.value.stage == "compare"
    with pytest.raises(ExportVerificationError) as e:
        verify_npz(b"not an npz", net, X)
    assert e.value.stage == "reload"
    # strict loading: an unused tensor or a wrong shape is a contract failure
    from app.interop.export import architecture, torch_state_dict
    from app.interop.export_verify import sequential_forward

    modules, state = architecture(net)["modules"], torch_state_dict(net)
    with pytest.raises(ExportVerificationError) as e:
        sequential_forward(modules, {**state, "9.weight": state["0.weight"]}, X, lambda k, _i: str(k))
    assert e.value.stage == "contract" and e.value.evidence["unexpected"] == ["9.weight"]
    with pytest.raises(ExportVerificationError) as e:
        sequential_forward(modules, {**state, "2.weight": state["2.weight"][:3]}, X, lambda k, _i: str(k))
    assert e.value.stage == "contract"


# --------------------------------------------------------------------------- transfer
def transfer_body(**kw) -> dict:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40, 3))
    y = (X[:, 0] > 0).astype(int)
    return {
        "mode": "transfer",
        "new_model": "child",
        "task": "multiclass",
        "output_dim": 2,
        "samples": [{"x": list(map(float, x)), "y": int(t)} for x, t in zip(X, y, strict=True)],
        "epochs": 2,
        "batch_size": 8,
        **kw,
    }


def test_transfer_retry_after_commit_reports_the_same_version(ctx):
    jid = submit(ctx, **transfer_body())
    w = make_worker(ctx)
    assert w.run_once() == jid
    first = job(ctx, jid)
    assert first.status == "succeeded", first.error
    # the worker lost track after the commit: the job runs again
    with ctx.db.write() as s:
        j = s.get(Job, jid)
        j.status, j.result, j.finished_at = "queued", None, None
    assert w.run_once() == jid
    again = job(ctx, jid)
    assert again.status == "succeeded" and again.result == first.result and again.attempts == 2
    with ctx.db.read() as s:
        child = get_model(s, "child")
        assert child.lineage == {"model": "m", "version": 1, "frozen": 1, "copied_layers": 1}
        parent = get_model(s, "m")  # the online-learning cadence is copied with the spec
        cadence = ("checkpoint_every", "checkpoint_seconds")
        assert [getattr(child, k) for k in cadence] == [getattr(parent, k) for k in cadence]
        assert ctx.versions.get(s, child, 1).job_id == jid
        from app.registry.repository import VersionRepository

        assert VersionRepository(s).latest_number(child.id) == 1


def test_transfer_to_a_name_taken_meanwhile_fails_cleanly(ctx):
    jid = submit(ctx, **transfer_body())
    with ctx.db.write() as s:
        ctx.models.create(ModelCreate(name="child", task="regression", input_dim=1))
    make_worker(ctx).run_once()
    j = job(ctx, jid)
    assert j.status == "failed" and j.attempts == 1 and "child" in j.error["message"]
    with ctx.db.read() as s:
        assert get_model(s, "child").task == "regression"


def test_transfer_from_a_pruned_version_keeps_its_zeros_when_trained(ctx):
    import safetensors.numpy as stnp

    net = make_net("binary", "relu", hidden=[4], input_dim=3)
    net.weights[0][:, :2] = 0  # half of the first layer pruned
    tensors = {f"layers.{i}.{p}": t for i, (W, b) in enumerate(zip(net.weights, net.biases, strict=True))
               for p, t in (("weight", W), ("bias", b))}  # fmt: skip
    v = ctx.migration.import_version("m", stnp.save(tensors), onnx_file=False)
    # zero weight entries over all weight entries (biases are not weights): 8 of 4·3 + 1·4
    assert v.sparsity == sum(int((W == 0).sum()) for W in net.weights) / sum(W.size for W in net.weights) == 0.5
    jid = submit(ctx, **transfer_body(freeze=0, epochs=5, learning_rate=0.1), **{"from": 2})
    make_worker(ctx).run_once()
    j = job(ctx, jid)
    assert j.status == "succeeded", j.error
    with ctx.db.read() as s:
        child = get_model(s, "child")
        got = ctx.versions.load(child, ctx.versions.get(s, child, 1))
    assert not np.array_equal(got.weights[0], net.weights[0])  # trained …
    assert np.all(got.weights[0][:, :2] == 0)  # … but the pruned weights stayed zero


def test_transfer_trained_on_the_source_log(ctx):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(60, 3))
    append_log(ctx, X, (X[:, 1] > 0).astype(float))
    body = transfer_body(task="binary", output_dim=1, log={"from_offset": 10}, epochs=3)
    del body["samples"]
    jid = submit(ctx, **body)
    assert job(ctx, jid).params["data"] == {"source": "log", "from_offset": 10, "to_offset": 59, "n": 50}
    make_worker(ctx).run_once()
    j = job(ctx, jid)
    assert j.status == "succeeded", j.error
    assert j.result["train"]["n"] + j.result["validation"]["n"] == 50
