"""Quantization against independent formulas: exact scales, zero points and codes, the
½-scale error bound, exact zero, the codec round trip, blob size and digits labels."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from safetensors.numpy import save

from app.engine import codec
from app.engine.compress import quantize as qz
from app.engine.nn.network import F32, Network, init_network, labels

COMBOS = [
    (dtype, scheme, gran)
    for dtype in ("int8", "uint8")
    for scheme in ("symmetric", "asymmetric")
    for gran in ("per_channel", "per_tensor")
]


# --------------------------------------------------------------------------- reference
def reference(W: np.ndarray, dtype: str, scheme: str, gran: str):
    """The formulas of API.md / the module table, written out with plain numpy."""
    W = W.astype(F32)
    axis = 1 if gran == "per_channel" else None
    keep = gran == "per_channel"
    lo = np.minimum(W.min(axis=axis, keepdims=keep).astype(np.float64), 0.0)
    hi = np.maximum(W.max(axis=axis, keepdims=keep).astype(np.float64), 0.0)
    if scheme == "symmetric":
        scale = (np.maximum(-lo, hi) / 127.0).astype(F32)
        scale = np.where(scale < np.finfo(F32).tiny, F32(1.0), scale).astype(F32)
        q = np.clip(np.round(W / scale), -127, 127)
        zp = None
        if dtype == "uint8":
            zp = np.full_like(scale, 128.0, dtype=np.float64)
            q = q + 128
    else:
        qmin, qmax = (-128, 127) if dtype == "int8" else (0, 255)
        scale = ((hi - lo) / 255.0).astype(F32)
        scale = np.where(scale < np.finfo(F32).tiny, F32(1.0), scale).astype(F32)
        zp = np.clip(np.round(qmin - lo / scale.astype(np.float64)), qmin, qmax)
        q = np.clip(np.round(W / scale) + zp, qmin, qmax)
    out_scale = scale.reshape(-1) if keep else scale.reshape(())
    out_zp = None if zp is None else (zp.reshape(-1) if keep else zp.reshape(())).astype(dtype)
    return q.astype(dtype), out_scale.astype(F32), out_zp


def sample_matrix(rng: np.random.Generator, out: int = 17, cols: int = 29) -> np.ndarray:
    W = rng.standard_normal((out, cols)).astype(F32)
    W[0] = 0.0  # an all-zero row
    W[1] = np.abs(W[1])  # all positive: zero point at qmin
    W[2] = -np.abs(W[2])  # all negative
    W[3, ::3] = 0.0  # exact zeros inside a row
    W[4] *= F32(1e-30)  # tiny but normal scale
    W[5, 7] = F32(5e-45)  # a subnormal amid a zero row (scale would underflow)
    W[5, np.arange(cols) != 7] = 0.0
    return W


# --------------------------------------------------------------------------- exact values
@pytest.mark.parametrize(("dtype", "scheme", "gran"), COMBOS)
def test_codes_scales_and_zero_points_match_the_formulas(dtype, scheme, gran):
    rng = np.random.default_rng(0)
    W = sample_matrix(rng)
    qt = qz.quantize_tensor(W, dtype, scheme, gran)
    q_ref, s_ref, zp_ref = reference(W, dtype, scheme, gran)
    assert qt.q.dtype == np.dtype(dtype) and qt.q.shape == W.shape
    np.testing.assert_array_equal(qt.q, q_ref)
    assert qt.scale.dtype == F32 and qt.scale.shape == s_ref.shape
    np.testing.assert_array_equal(qt.scale, s_ref)
    if zp_ref is None:
        assert qt.zero_point is None
    else:
        assert qt.zero_point.dtype == np.dtype(dtype) and qt.zero_point.shape == s_ref.shape
        np.testing.assert_array_equal(qt.zero_point, zp_ref)


def test_symmetric_int8_per_channel_by_hand():
    W = np.array([[0.5, -1.27, 0.01], [0.0, 0.0, 0.0], [2.54, 1.0, -0.0]], dtype=F32)
    qt = qz.quantize_tensor(W, "int8", "symmetric", "per_channel")
    assert qt.scale.tolist() == [F32(1.27) / F32(127), 1.0, F32(2.54) / F32(127)]
    assert qt.q.tolist() == [[50, -127, 1], [0, 0, 0], [127, 50, 0]]
    assert qt.zero_point is None


def test_asymmetric_uint8_by_hand():
    W = np.array([[-1.0, 0.0, 1.55]], dtype=F32)  # range 2.55 → scale 0.01, zp = 100
    qt = qz.quantize_tensor(W, "uint8", "asymmetric", "per_tensor")
    assert qt.scale.shape == () and qt.zero_point.shape == ()
    assert float(qt.scale) == pytest.approx(0.01, rel=1e-6)
    assert int(qt.zero_point) == 100
    assert qt.q.tolist() == [[0, 100, 255]]


def test_uint8_symmetric_uses_zero_point_128():
    W = np.array([[-1.0, 0.0, 0.5, 1.0]], dtype=F32)
    qt = qz.quantize_tensor(W, "uint8", "symmetric", "per_channel")
    assert qt.zero_point.tolist() == [128]
    assert qt.q.tolist() == [[1, 128, 192, 255]]  # 0.5 · 127 = 63.5 → 64 (half to even)


@pytest.mark.parametrize(("dtype", "scheme", "gran"), COMBOS)
def test_error_bound_and_exact_zero(dtype, scheme, gran):
    rng = np.random.default_rng(1)
    W = sample_matrix(rng, 40, 57)
    W[10:20] *= F32(50.0)
    W[20:30] += F32(3.0)  # far from zero: the widened range still contains 0
    qt = qz.quantize_tensor(W, dtype, scheme, gran)
    deq = codec.dequantize(qt.q, qt.scale, qt.zero_point)
    s = qt.scale[:, None] if qt.scale.ndim else qt.scale
    err = np.abs(deq.astype(np.float64) - W.astype(np.float64))
    bound = s.astype(np.float64) / 2 * (1 + 1e-5) + 1e-45
    assert (err <= bound).all(), float((err - bound).max())
    assert (deq[W == 0] == 0.0).all()  # 0.0 exactly representable
    # the report matches the measured error up to float32 rounding of (q − zp) · s (≈ 1 ulp of |W|)
    ulp = 2.0**-23 * float(np.abs(W).max())
    assert qt.max_abs_error == pytest.approx(float(err.max()), rel=1e-6, abs=2 * ulp)
    assert qt.mean_abs_error == pytest.approx(float(err.mean()), rel=1e-6, abs=2 * ulp)


def test_float16():
    rng = np.random.default_rng(2)
    W = rng.standard_normal((9, 13)).astype(F32)
    qt = qz.quantize_tensor(W, "float16")
    assert qt.q.dtype == np.float16 and qt.scale is None and qt.zero_point is None
    np.testing.assert_array_equal(qt.q, W.astype(np.float16))
    err = np.abs(W - qt.q.astype(F32))
    assert qt.max_abs_error == pytest.approx(float(err.max()))
    assert qt.mean_abs_error == pytest.approx(float(err.mean()), rel=1e-6)
    with pytest.raises(qz.QuantizeError, match="float16"):
        qz.quantize_tensor(np.array([[7e4, 1.0]], dtype=F32), "float16")


@pytest.mark.parametrize(("dtype", "scheme", "gran"), [*COMBOS, ("float16", "symmetric", "per_channel")])
def test_blocks_and_threads_do_not_change_the_result(dtype, scheme, gran):
    rng = np.random.default_rng(3)
    W = sample_matrix(rng, 101, 37)
    a = qz.quantize_tensor(W, dtype, scheme, gran)
    b = qz.quantize_tensor(W, dtype, scheme, gran, block_rows=3, threads=3)
    c = qz.quantize_tensor(W, dtype, scheme, gran, report_error=False)
    for x in (b, c):
        np.testing.assert_array_equal(x.q, a.q)
        if a.scale is not None:
            np.testing.assert_array_equal(x.scale, a.scale)
    assert b.max_abs_error == pytest.approx(a.max_abs_error)
    assert b.mean_abs_error == pytest.approx(a.mean_abs_error, rel=1e-5)
    assert c.max_abs_error is None and c.mean_abs_error is None


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs",
    [{"dtype": "int4"}, {"dtype": "int8", "scheme": "affine"}, {"dtype": "int8", "granularity": "per_row"}],
)
def test_unknown_options(kwargs):
    net = init_network("regression", "relu", 3, 1, [2], 0)
    with pytest.raises(qz.QuantizeError):
        qz.quantize_network(net, **kwargs)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize(
    ("dtype", "gran"), [("int8", "per_channel"), ("uint8", "per_tensor"), ("float16", "per_tensor")]
)
def test_non_finite_weights_are_refused(bad, dtype, gran):
    net = init_network("regression", "relu", 3, 1, [4], 0)
    net.weights[1][0, 2] = bad
    with pytest.raises(qz.QuantizeError, match=r"layers\.1\.weight"):
        qz.quantize_network(net, dtype, "asymmetric", gran)


# --------------------------------------------------------------------------- network level
@pytest.mark.parametrize(("dtype", "scheme", "gran"), [*COMBOS, ("float16", "symmetric", "per_channel")])
def test_network_tensors_round_trip_through_codec(dtype, scheme, gran):
    net = init_network("multiclass", "tanh", 20, 4, [16, 8], 3)
    res = qz.quantize_network(net, dtype, scheme, gran)
    names = set(res.tensors)
    for i in range(3):
        assert res.tensors[f"layers.{i}.bias"].dtype == F32
        assert (f"layers.{i}.weight_scale" in names) == (dtype != "float16")
        has_zp = scheme == "asymmetric" or dtype == "uint8"
        assert (f"layers.{i}.weight_zero_point" in names) == (dtype != "float16" and has_zp)
    back = codec.from_tensors(res.tensors, task="multiclass", activation="tanh", input_dim=20, output_dim=4, n_layers=3)
    for i, (W, Wq) in enumerate(zip(net.weights, back.weights, strict=True)):
        err = np.abs(W.astype(np.float64) - Wq)
        ulp = 2.0**-23 * float(np.abs(W).max())
        assert res.layers[i]["max_abs_error"] == pytest.approx(float(err.max()), rel=1e-6, abs=2 * ulp)
        assert res.layers[i]["mean_abs_error"] == pytest.approx(float(err.mean()), rel=1e-6, abs=2 * ulp)
    assert res.max_abs_error == max(d["max_abs_error"] for d in res.layers)
    assert codec.describe(res.tensors)[0] == dtype
    assert qz.is_quantized(res.tensors) and not qz.is_quantized(codec.to_tensors(net))
    report = res.report()
    assert report["dtype"] == dtype and len(report["layers"]) == 3


def test_safetensors_round_trip_keeps_dtypes():
    from safetensors.numpy import load

    net = init_network("binary", "relu", 8, 1, [6], 0)
    res = qz.quantize_network(net, "int8", "asymmetric", "per_tensor")
    loaded = load(save(res.tensors))
    for k, v in res.tensors.items():
        assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape
        np.testing.assert_array_equal(loaded[k], v)


@pytest.mark.parametrize(("hidden", "limit"), [([128, 64], 0.3), ([512, 256], 0.27)])
def test_int8_blob_is_at_most_0_3_of_float32(hidden, limit):
    net = init_network("multiclass", "relu", 64, 10, hidden, 0)
    meta = {"model": "digits", "version": "2", "task": "multiclass"}
    dense = len(save(codec.to_tensors(net), metadata=meta))
    for gran in ("per_channel", "per_tensor"):
        q = len(save(qz.quantize_network(net, "int8", "symmetric", gran).tensors, metadata=meta))
        assert q <= limit * dense, (q, dense)


def test_int8_per_channel_keeps_digits_labels():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(F32)
    Xtr, Xte, ytr, _ = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    clf = MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=400, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(Xtr, ytr)
    net = Network(
        "multiclass",
        "relu",
        [np.ascontiguousarray(c.T, dtype=F32) for c in clf.coefs_],
        [b.astype(F32) for b in clf.intercepts_],
    )
    before = labels(net.task, net.forward(Xte))
    for dtype, scheme in (("int8", "symmetric"), ("uint8", "asymmetric")):
        res = qz.quantize_network(net, dtype, scheme, "per_channel")
        deq = codec.from_tensors(
            res.tensors, task="multiclass", activation="relu", input_dim=64, output_dim=10, n_layers=3
        )
        after = labels(net.task, deq.forward(Xte))
        assert (after == before).mean() >= 0.99


def test_no_weights_to_quantize():
    net = Network("regression", "relu", [], [])
    with pytest.raises(qz.QuantizeError, match="no weights"):
        qz.quantize_network(net)
