"""The service side of prune / quantize, below HTTP: the weight-error report against direct
formulas, the source read one layer at a time for every storage form, blobs written straight
from the arrays (same bytes, same sha256 as before), cancel and retry leaving no half-made
version — on both databases."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.numpy as stnp

from app.background import make_worker
from app.compression import common as compress
from app.compression import prune as prune_service
from app.compression.schemas import PruneIn, QuantizeIn
from app.context import AppContext
from app.core.migrations import upgrade
from app.engine import codec
from app.engine.compress import sparse
from app.engine.compress.prune import prune_magnitude, prune_neurons
from app.engine.compress.quantize import quantize_network
from app.engine.nn.evaluation import evaluate
from app.engine.nn.network import F32, init_network
from app.interop.safetensors import encode, read_tensors
from app.jobs.contract import Canceled, Progress
from app.jobs.runner import Worker
from app.registry.models import get_model
from app.registry.repository import VersionRepository
from app.registry.schemas import ModelCreate
from app.registry.versions import tensors_architecture


@pytest.fixture
def ctx(make_settings):
    settings = make_settings(run_worker=False)
    upgrade(settings.url)
    c = AppContext.build(settings)
    c.models.create(ModelCreate(name="m", task="multiclass", input_dim=12, output_dim=3, hidden=[16, 8], seed=3))
    yield c
    c.close()


def versions(ctx):
    with ctx.db.read() as s:
        m = get_model(s, "m")
        return VersionRepository(s).page(m.id, after=None, limit=100)


def store(ctx, tensors, encoding):
    """A version of model m made of ``tensors`` (as the jobs store them); returns the row."""
    blob = ctx.versions.store(tensors=tensors, encoding=encoding)
    with ctx.db.write() as s:
        m = get_model(s, "m", for_update=True)
        v = ctx.versions.add(s, m, blob, operation="import", parent=1)
        return v.version, v


def net_of(ctx, number):
    with ctx.db.read() as s:
        m = get_model(s, "m")
        return ctx.versions.load_owned(m, ctx.versions.get(s, m, number))


# --------------------------------------------------------------------------- error report
def test_weight_errors_match_direct_formulas():
    rng = np.random.default_rng(0)
    net = init_network("multiclass", "relu", 12, 3, [16, 8], 1)
    for W in net.weights:
        W += rng.normal(scale=0.01, size=W.shape).astype(F32)
    res = prune_magnitude(net, 0.6, scope="global")
    got = compress.weight_errors(iter(net.weights), res.network)
    for i, (W0, W1) in enumerate(zip(net.weights, res.network.weights, strict=True)):
        d = np.abs(W0.astype(np.float64) - W1)
        assert got["layers"][i]["max_abs_error"] == pytest.approx(d.max())
        assert got["layers"][i]["mean_abs_error"] == pytest.approx(d.mean())
    allw = np.concatenate([np.abs(W0 - W1).ravel() for W0, W1 in zip(net.weights, res.network.weights, strict=True)])
    assert got["max_abs_error"] == pytest.approx(allw.max()) and got["mean_abs_error"] == pytest.approx(allw.mean())
    # neurons: removed units count as weights set to 0, kept ones are unchanged
    res = prune_neurons(net, 0.5, scope="layer")
    got = compress.weight_errors(iter(net.weights), res.network, res.kept_units)
    k0, k1 = res.kept_units
    masks = [np.zeros((16, 12), bool), np.zeros((8, 16), bool), np.zeros((3, 8), bool)]
    masks[0][k0, :] = True
    masks[1][np.ix_(k1, k0)] = True
    masks[2][:, k1] = True
    for i, (W0, M) in enumerate(zip(net.weights, masks, strict=True)):
        lost = np.abs(W0) * ~M
        assert got["layers"][i]["max_abs_error"] == pytest.approx(lost.max())
        assert got["layers"][i]["mean_abs_error"] == pytest.approx(lost.mean())


def test_evaluation_report():
    net = init_network("multiclass", "relu", 12, 3, [16], 0)
    X = np.random.default_rng(1).normal(size=(40, 12)).astype(F32)
    Y = np.random.default_rng(2).integers(0, 3, 40)
    before = evaluate(net, X, Y, keep_outputs=True)
    other = net.copy()
    other.weights[-1] *= F32(-1)
    after = evaluate(other, X, Y, keep_outputs=True)
    rep = compress.evaluation_report({"source": "samples", "n": 40, "_blob": "x"}, before, after)
    assert rep["data"] == {"source": "samples", "n": 40}
    assert rep["labels_changed"] == pytest.approx(np.mean(before.labels != after.labels)) and rep["labels_changed"] > 0
    assert rep["loss_increase"] == pytest.approx(after.loss - before.loss)
    assert rep["accuracy_change"] == pytest.approx(after.accuracy - before.accuracy)
    assert rep["output_change"]["max_abs"] == pytest.approx(float(np.abs(after.outputs - before.outputs).max()))


# --------------------------------------------------------------------------- storage
FORMS = ["dense", "sparse", "int8-asym", "int8-asym-sparse", "uint8-sym", "float16"]


def stored_form(net, form):
    if form == "dense":
        return codec.to_tensors(net), "dense"
    if form == "sparse":
        pruned = prune_magnitude(net, 0.7, scope="global").network
        return sparse.encode(codec.to_tensors(pruned)), "sparse"
    if form == "int8-asym-sparse":
        pruned = prune_magnitude(net, 0.7, scope="global").network
        return sparse.encode(quantize_network(pruned, "int8", "asymmetric", "per_channel").tensors), "sparse"
    dtype, scheme = {"int8-asym": ("int8", "asymmetric"), "uint8-sym": ("uint8", "symmetric")}.get(
        form, ("float16", "symmetric")
    )
    return quantize_network(net, dtype, scheme, "per_channel").tensors, "quantized"


@pytest.mark.parametrize("form", FORMS)
def test_source_weights_read_every_form_one_layer_at_a_time(ctx, form):
    net = net_of(ctx, 1)
    tensors, encoding = stored_form(net, form)
    number, row = store(ctx, tensors, encoding)
    assert row.architecture == [12, 16, 8, 3] == tensors_architecture(tensors)
    expected = net_of(ctx, number).weights  # the decoded (dequantized, densified) network
    got = list(compress.source_weights(ctx.blobs, row))
    assert len(got) == 3
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b)


def test_created_blob_is_the_canonical_encoding(ctx):
    """Writing the blob straight from the arrays gives the same bytes (and sha256) as
    :func:`encode`, for dense, sparse and quantized sets."""
    net = net_of(ctx, 1)
    for form in FORMS:
        tensors, encoding = stored_form(net, form)
        _, row = store(ctx, tensors, encoding)
        data = ctx.blobs.path(row.blob_sha256).read_bytes()
        assert data == encode(tensors, encoding)
        assert row.size_bytes == len(data)
        assert read_tensors(ctx.blobs.path(row.blob_sha256)).keys() == tensors.keys()


def test_put_file_is_content_addressed_and_idempotent(tmp_path):
    from app.core.blobs import BlobStore

    b = BlobStore(tmp_path / "blobs")
    data = stnp.save({"a": np.arange(10, dtype=np.float32)})
    sha, size = b.put(data)
    sha2, size2 = b.put_file(lambda p: p.write_bytes(data))
    assert (sha2, size2) == (sha, size) and b.get(sha) == data
    sha3, _ = b.put_file(lambda p: p.write_bytes(b"other"))
    assert b.get(sha3) == b"other"
    assert not [p for p in (tmp_path / "blobs").iterdir() if p.name.startswith(".tmp-")]

    def broken(p):
        p.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        b.put_file(broken)
    assert not [p for p in (tmp_path / "blobs").iterdir() if p.name.startswith(".tmp-")]


def test_storage_form_threshold():
    net = init_network("multiclass", "relu", 12, 3, [16, 8], 0)
    t49 = codec.to_tensors(prune_magnitude(net, 0.49, scope="global").network)
    assert compress.storage_form(t49, compress.stored_sparsity(t49)[0], "dense")[1] == "dense"
    t50 = codec.to_tensors(prune_magnitude(net, 0.5, scope="global").network)
    enc, encoding = compress.storage_form(t50, compress.stored_sparsity(t50)[0], "dense")
    assert encoding == "sparse" and sparse.is_sparse(enc)


def test_loaded_float32_weights_are_not_copied(ctx):
    """from_tensors keeps a writable float32 array as the network's weight (one copy of the
    model in memory when a version is loaded)."""
    tensors = read_tensors(ctx.blobs.path(versions(ctx)[0].blob_sha256))
    with ctx.db.read() as s:
        m = get_model(s, "m")
        net = ctx.versions.decode(m, tensors)
    assert all(np.shares_memory(W, tensors[f"layers.{i}.weight"]) for i, W in enumerate(net.weights))
    ro = {k: v.copy() for k, v in tensors.items()}
    ro["layers.0.weight"].flags.writeable = False
    with ctx.db.read() as s:
        net = ctx.versions.decode(get_model(s, "m"), ro)
    assert not np.shares_memory(net.weights[0], ro["layers.0.weight"]) and net.weights[0].flags.writeable


# --------------------------------------------------------------------------- jobs
def test_canceled_prune_leaves_no_version_and_a_retry_makes_exactly_one(ctx):
    job_id = ctx.compression.submit_prune("m", PruneIn(sparsity=0.6, scope="global"))
    calls = []

    class CancelAtThird(Progress):
        def __call__(self, fraction, **kw):
            calls.append(fraction)
            if len(calls) == 3:
                raise Canceled(self.job.id)
            super().__call__(fraction, **kw)

    def cancel_at_third(job, progress):
        return prune_service.run(ctx.compression, job, CancelAtThird(progress.heartbeat, job, progress.stopping))

    Worker(ctx.jobs.queue, {"prune": cancel_at_third}, poll_seconds=0.01).run_once()
    assert ctx.jobs.get(job_id).status == "canceled"
    assert [v.version for v in versions(ctx)] == [1]
    # the same work as a fresh job runs through and stores one version, linked to its job
    job_id = ctx.compression.submit_prune("m", PruneIn(sparsity=0.6, scope="global"))
    assert make_worker(ctx).run_once() == job_id
    rows = versions(ctx)
    assert [v.version for v in rows] == [1, 2] and rows[1].job_id == job_id
    j = ctx.jobs.get(job_id)
    assert j.status == "succeeded" and j.result["version"] == 2


def test_quantize_failure_in_the_engine_is_a_job_error(ctx):
    """A weight beyond float16's range cannot be stored as float16: the job fails at once
    (no retry) and names the tensor."""
    big = codec.to_tensors(net_of(ctx, 1))
    big["layers.1.weight"][0, 0] = 1e6
    store(ctx, big, "dense")
    job_id = ctx.compression.submit_quantize("m", QuantizeIn(dtype="float16"))
    make_worker(ctx).run_once()
    j = ctx.jobs.get(job_id)
    assert j.status == "failed" and j.attempts == 1
    assert j.error["type"] == "job_error" and "layers.1.weight" in j.error["message"]
    assert len(versions(ctx)) == 2


def test_fine_tune_gets_the_mask_and_the_mask_stays_fixed(ctx, monkeypatch):
    """The wiring around the trainer: ``fit`` gets the pruning masks, whatever it does to
    pruned weights is undone, its metrics are reported; in a search, those of the chosen point."""
    seen = []

    def fake_fit(optimizer, net, X, Y, opts, progress, *, masks=None, frozen=None):
        seen.append((masks, len(X), opts["epochs"]))
        net = net.copy()
        for W in net.weights:
            W += F32(0.001)  # also "revives" pruned weights: the service must zero them again
        progress(0.5)
        progress(1.0)
        return net, {"train": {"loss": 1.0, "n": len(X)}, "validation": {"loss": 2.0}, "epochs_run": 7}, (X, Y)

    monkeypatch.setattr(prune_service, "fit", fake_fit)
    smp = [{"x": [0.1 * j for j in range(12)], "y": j % 3} for j in range(20)]
    body = PruneIn(sparsity=0.6, scope="global", fine_tune={"samples": smp, "epochs": 3})
    job_id = ctx.compression.submit_prune("m", body)
    make_worker(ctx).run_once()
    j = ctx.jobs.get(job_id)
    assert j.status == "succeeded", j.error
    (masks, n, epochs), *_ = seen
    assert n == 20 and epochs == 3 and [M.shape for M in masks] == [(16, 12), (8, 16), (3, 8)]
    assert j.result["fine_tune"] == {"train": {"loss": 1.0, "n": 20}, "validation": {"loss": 2.0}, "epochs_run": 7}
    assert j.result["sparsity"] == 206 / 344  # ⌊0.6 · 344⌋ of the 344 weights
    public = j.params  # what GET /jobs/{id} shows
    assert "_blob" not in str(public) and public["fine_tune_data"] == {"source": "samples", "n": 20}
    recorded = next(v for v in versions(ctx) if v.version == j.result["version"]).params  # the same mapping
    assert recorded["fine_tune_data"] == public["fine_tune_data"] and "_blob" not in str(recorded)
    tuned = net_of(ctx, j.result["version"])
    for W, M in zip(tuned.weights, masks, strict=True):
        assert not W[~M].any() and W[M].all()
    # in a search every probe is fine-tuned; the result reports the chosen probe's training
    seen.clear()
    body = PruneIn(scope="global", max_loss_increase=100.0, eval_samples=smp, fine_tune={"samples": smp})
    job_id = ctx.compression.submit_prune("m", body)
    make_worker(ctx).run_once()
    j = ctx.jobs.get(job_id)
    assert j.status == "succeeded", j.error
    assert len(seen) == len(j.result["search"]["curve"]) >= 2
    assert j.result["fine_tune"]["epochs_run"] == 7 and j.result["search"]["sparsity"] == 0.99
