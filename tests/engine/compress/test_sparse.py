"""Sparse storage encoding: exact round trips, real size savings with safetensors, the codec
hooks (decode_stored, describe) and refusal of inconsistent encodings."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load, save

from app.engine import codec
from app.engine.compress import prune as pr
from app.engine.compress import quantize as qz
from app.engine.compress import sparse
from app.engine.nn.network import F32, init_network

META = {"model": "m", "version": "3", "task": "multiclass"}


def pruned_net(sparsity: float, hidden=(96, 48), scope="global", seed=0):
    net = init_network("multiclass", "relu", 64, 10, list(hidden), seed)
    net.biases = [np.random.default_rng(seed).standard_normal(b.shape).astype(F32) for b in net.biases]
    return pr.prune_magnitude(net, sparsity, scope=scope).network if sparsity else net


def assert_same_tensors(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k


@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.95])
@pytest.mark.parametrize(
    "form",
    ["float32", "float16", "int8-symmetric", "int8-asymmetric", "uint8-symmetric", "uint8-asymmetric"],
)
def test_round_trip_is_exact_and_smaller(sparsity, form):
    net = pruned_net(sparsity)
    if form == "float32":
        dense = codec.to_tensors(net)
    else:
        dtype, _, scheme = form.partition("-")
        dense = qz.quantize_network(net, dtype, scheme or "symmetric", "per_channel").tensors
    enc = sparse.encode(dense)
    assert sparse.is_sparse(enc)
    assert "layers.0.weight.mask" in enc and "layers.1.weight.mask" in enc  # the big matrices
    back = sparse.decode(load(save(enc, metadata=META)))  # through a real safetensors blob
    assert_same_tensors(back, dense)
    assert len(save(enc, metadata=META)) < len(save(dense, metadata=META))
    if form == "float32":  # values + 1 bit per entry, plus biases and header
        n_bytes = sum(W.size for W in net.weights) * 4
        assert len(save(enc, metadata=META)) <= (1.0 - sparsity + 1 / 32) * n_bytes + 2048


def test_zero_point_is_the_fill_value():
    # asymmetric: a pruned (zero) weight is q = zero_point, not q = 0
    net = pruned_net(0.8)
    q = qz.quantize_network(net, "uint8", "asymmetric", "per_channel").tensors
    enc = sparse.encode(q, min_saving=0)
    for i, W in enumerate(net.weights):
        nz = int(np.count_nonzero(W))
        assert enc[f"layers.{i}.weight.values"].size == nz
        assert enc[f"layers.{i}.weight.values"].dtype == np.uint8


def test_dense_weights_stay_dense():
    dense = codec.to_tensors(pruned_net(0.0))
    enc = sparse.encode(dense)
    assert not sparse.is_sparse(enc)
    assert all(enc[k] is dense[k] for k in dense)
    assert codec.decode_stored(enc) is enc


def test_layout_of_the_encoding():
    W = np.array([[0, 1.5, 0, 0, 0, 0, 0, 0, 0, -2.0], [0] * 10, [3.0] + [0] * 9], dtype=F32)
    enc = sparse.encode_weight(W)
    assert enc["shape"].tolist() == [3, 10] and enc["shape"].dtype == np.int64
    assert enc["mask"].dtype == np.uint8 and enc["mask"].shape == (3, 2)
    assert enc["mask"].tolist() == [[0b01000000, 0b01000000], [0, 0], [0b10000000, 0]]
    assert enc["values"].tolist() == [1.5, -2.0, 3.0]
    assert sparse.decode_weight(enc["shape"], enc["mask"], enc["values"]).tolist() == W.tolist()


def test_negative_zero_comes_back_as_positive_zero():
    W = np.array([[-0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]], dtype=F32)
    enc = sparse.encode_weight(W)
    back = sparse.decode_weight(enc["shape"], enc["mask"], enc["values"])
    assert np.array_equal(back, W) and not np.signbit(back).any()


@pytest.mark.parametrize("cols", [1, 7, 8, 9, 300])
def test_odd_shapes_and_small_blocks(monkeypatch, cols):
    monkeypatch.setattr(sparse, "_BLOCK_ELEMS", 17)
    rng = np.random.default_rng(cols)
    W = rng.standard_normal((23, cols)).astype(F32)
    W[rng.random(W.shape) < 0.7] = 0.0
    W[5] = 0.0
    enc = sparse.encode_weight(W)
    assert sparse.decode_weight(enc["shape"], enc["mask"], enc["values"]).tobytes() == W.tobytes()


def test_codec_loads_a_sparse_version():
    net = pruned_net(0.8)
    enc = sparse.encode(codec.to_tensors(net))
    with pytest.raises(codec.TensorError):  # from_tensors alone keeps its strict names
        codec.from_tensors(enc, task="multiclass", activation="relu", input_dim=64, output_dim=10, n_layers=3)
    back = codec.from_tensors(
        codec.decode_stored(enc), task="multiclass", activation="relu", input_dim=64, output_dim=10, n_layers=3
    )
    for a, b in zip(back.weights + back.biases, net.weights + net.biases, strict=True):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("form", ["float32", "int8", "uint8-asymmetric"])
def test_describe_sees_through_the_encoding(form):
    net = pruned_net(0.7, scope="layer")
    if form == "float32":
        dense = codec.to_tensors(net)
    else:
        dtype, _, scheme = form.partition("-")
        dense = qz.quantize_network(net, dtype, scheme or "symmetric").tensors
    want = pr.weight_sparsity(net.weights)[0]
    dtype_label, s_dense = codec.describe(dense)
    assert codec.describe(sparse.encode(dense)) == (dtype_label, pytest.approx(s_dense))
    assert dtype_label == form.partition("-")[0]
    # quantized: a zero weight (q == zero point) counts as zero; symmetric small weights may round to 0 too
    assert s_dense >= want - 1e-12
    if form == "float32" or "asymmetric" in form:
        assert s_dense == pytest.approx(want, abs=0.01)


def _encoded():
    enc = sparse.encode(codec.to_tensors(pruned_net(0.8, hidden=(32, 24))), min_saving=0)
    assert all(f"layers.{i}.weight.mask" in enc for i in range(3))
    return enc


@pytest.mark.parametrize(
    ("mutate", "loc"),
    [
        (lambda t: t.pop("layers.1.weight.values"), "layers.1.weight.values"),
        (lambda t: t.pop("layers.0.weight.shape"), "layers.0.weight.shape"),
        (lambda t: t.__setitem__("layers.0.weight.values", t["layers.0.weight.values"][:-1]), "layers.0.weight.values"),
        (lambda t: t.__setitem__("layers.0.weight.shape", np.array([32, 65], np.int64)), "layers.0.weight.mask"),
        (lambda t: t.__setitem__("layers.0.weight.shape", np.array([32.0, 64.0], F32)), "layers.0.weight.shape"),
        (lambda t: t.__setitem__("layers.0.weight", np.zeros((32, 64), F32)), "layers.0.weight"),
        (
            lambda t: t.__setitem__("layers.2.weight.mask", t["layers.2.weight.mask"].astype(np.int8)),
            "layers.2.weight.mask",
        ),
    ],
)
def test_inconsistent_encodings_are_refused(mutate, loc):
    t = _encoded()
    mutate(t)
    with pytest.raises(codec.TensorError) as exc:
        codec.decode_stored(t)
    assert exc.value.loc == loc


def test_padding_bits_must_be_zero():
    W = np.zeros((2, 10), dtype=F32)
    W[0, 0] = 1.0
    enc = sparse.encode_weight(W)
    enc["mask"][1, 1] = 0b00000001  # a bit beyond column 10
    with pytest.raises(codec.TensorError, match="padding"):
        sparse.decode_weight(enc["shape"], enc["mask"], enc["values"])
