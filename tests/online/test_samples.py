"""``app.online.samples``: the one definition of a valid sample. Parsed request bodies
(``/evaluate``, job data) get exactly the arrays and the errors ``/update`` gives, and over
HTTP the same bad sample is the same 422 whichever endpoint it is sent to."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core.errors import Invalid
from app.core.jsonbody import loads
from app.online.ingest import parse_json
from app.online.samples import SampleSpec, check_matrix, convert, parse_samples, plain_objects
from tests.online.test_ingest import REG1, SPECS, dumps, sample

BIN2 = SampleSpec("binary", 2, 1)


def error_of(fn, *args) -> dict:
    with pytest.raises(Invalid) as e:
        fn(*args)
    return e.value.errors[0]


def test_check_matrix_packs_float32():
    X = check_matrix([[1, 2.5], [3, -4]], 2, ["body", "inputs"])
    assert X.dtype == np.float32 and X.tolist() == [[1.0, 2.5], [3.0, -4.0]]


@pytest.mark.parametrize(
    ("rows", "loc", "msg"),
    [
        ([], ["body", "inputs"], "expected a non-empty list"),
        ("x", ["body", "inputs"], "expected a non-empty list"),
        ([[1, 2], [1]], ["body", "inputs", 1], "expected 2 values, got 1"),
        ([[1, 2], 3], ["body", "inputs", 1], "expected a list of 2 numbers, got int"),
        ([[1, "a"]], ["body", "inputs", 0, 1], "expected a number, got a string"),
        ([[1, True]], ["body", "inputs", 0, 1], "expected a number, got a boolean"),
        ([[1, 1e39]], ["body", "inputs", 0, 1], "overflows float32"),
        ([[1, float("nan")]], ["body", "inputs", 0, 1], "NaN is not a finite number"),
        ([[float("-inf"), 1]], ["body", "inputs", 0, 0], "-Infinity is not a finite number"),
    ],
)
def test_check_matrix_errors_share_the_number_rule(rows, loc, msg):
    assert error_of(check_matrix, rows, 2, ["body", "inputs"]) == {"loc": loc, "msg": msg}


def test_parse_samples_per_task():
    X, Y = parse_samples(BIN2, [{"x": [1, 2], "y": 1}, {"x": [3, 4], "y": 0.0}], ["s"])
    assert X.dtype == np.float32 and Y.dtype == np.float32 and Y.tolist() == [1.0, 0.0]
    _, Y = parse_samples(BIN2, [{"x": [1, 2], "y": [1]}, {"x": [3, 4], "y": 0}], ["s"])
    assert Y.tolist() == [1.0, 0.0]
    _, Y = parse_samples(SampleSpec("multiclass", 2, 3), [{"x": [1, 2], "y": 2}, {"x": [3, 4], "y": 1.0}], ["s"])
    assert Y.dtype == np.int64 and Y.tolist() == [2, 1]
    _, Y = parse_samples(SampleSpec("regression", 2, 2), [{"x": [1, 2], "y": [0.5, 1]}], ["s"])
    assert Y.shape == (1, 2) and Y.dtype == np.float32
    _, Y = parse_samples(SampleSpec("regression", 2, 1), [{"x": [1, 2], "y": 0.5}], ["s"])
    assert Y.shape == (1, 1)


@pytest.mark.parametrize(
    ("task", "out", "samples", "loc", "msg"),
    [
        ("binary", 1, [{"x": [1, 2], "y": 1}, {"x": [1], "y": 1}], ["s", 1, "x"], "expected 2 values, got 1"),
        ("binary", 1, [{"x": [1, 2], "y": 2}], ["s", 0, "y"], "expected 0 or 1, got 2"),
        ("binary", 1, [{"x": [1, 2], "y": True}], ["s", 0, "y"], "expected 0 or 1, got a boolean"),
        ("multiclass", 3, [{"x": [1, 2], "y": 3}], ["s", 0, "y"], "class index must be in 0..2, got 3"),
        ("multiclass", 3, [{"x": [1, 2], "y": 0.5}], ["s", 0, "y"], "expected an integer class index in 0..2, got 0.5"),
        ("regression", 2, [{"x": [1, 2], "y": [1]}], ["s", 0, "y"], "expected 2 target values, got 1 values"),
        ("regression", 2, [{"x": [1, 2], "y": [1, 1e39]}], ["s", 0, "y"], "y[1]: overflows float32"),
        ("regression", 1, [{"x": [1, 2], "y": float("nan")}], ["s", 0, "y"], "NaN is not a finite number"),
        ("regression", 1, [{"x": [1, 2]}], ["s", 0, "y"], "field required"),
        ("regression", 1, [{"y": 1}], ["s", 0, "x"], "field required"),
        (
            "regression",
            1,
            [{"x": [1, 2], "y": 1, "z": 0}],
            ["s", 0, "z"],
            "unexpected field (a sample has only x and y)",
        ),
        ("regression", 1, [[1, 2]], ["s", 0], 'expected an object {"x": [...], "y": ...}, got a list'),
        ("regression", 1, [{"x": [1, None], "y": 1}], ["s", 0, "x"], "x[1]: expected a number, got null"),
        (
            "regression",
            1,
            [{"x": [1, 2], "y": 1}, {"x": [float("inf"), 2], "y": 1}],
            ["s", 1, "x"],
            "x[0]: Infinity is not a finite number",
        ),
        ("regression", 1, [], ["s"], "expected at least one sample"),
        ("regression", 1, {"x": [1, 2], "y": 1}, ["s"], "expected a list of samples, got an object"),
    ],
)
def test_parse_samples_errors_name_the_sample(task, out, samples, loc, msg):
    assert error_of(parse_samples, SampleSpec(task, 2, out), samples, ["s"]) == {"loc": loc, "msg": msg}


def test_plain_objects_screens_what_numpy_would_coerce():
    assert plain_objects([{"x": [1, 2.5], "y": 1}, {"y": [0.5], "x": []}])
    for bad in (True, None, "1", [1], {"a": 1}):
        assert not plain_objects([{"x": [1, bad], "y": 1}])
        assert not plain_objects([{"x": [1, 2], "y": bad}] if not isinstance(bad, list) else [{"x": [1], "y": [bad]}])
    assert not plain_objects([{"x": [1, 2], "y": 1, "z": 0}])
    assert not plain_objects([{"x": [1, 2], "z": 0}])
    assert not plain_objects([[1, 2]])


@pytest.mark.parametrize("spec", [*SPECS, REG1], ids=lambda s: f"{s.task}-{s.output_dim}")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(samples=st.lists(sample(), min_size=1, max_size=4))
def test_parsed_samples_get_the_arrays_and_errors_of_the_slow_path_and_of_update(spec, samples) -> None:
    """The fast path on parsed objects (:func:`plain_objects`) changes nothing but speed, and
    a parsed body gives what ``/update``'s bytes give (a parsed body is the strict reading
    of its text, :func:`app.core.jsonbody.loads`, as every JSON body is)."""
    body = dumps({"samples": samples})
    samples = loads(body)["samples"]
    try:
        want = convert(spec, samples, 0, trusted=False)
    except Invalid as e:
        for fn, arg in ((parse_samples, samples), (parse_json, body)):
            with pytest.raises(Invalid) as got:
                fn(spec, arg)
            assert got.value.errors == e.errors
        return
    for X, Y in (parse_samples(spec, samples), parse_json(spec, body)):
        assert X.dtype == np.float32 and X.tobytes() == want[0].astype(np.float32).tobytes()
        assert Y.dtype == want[1].dtype and Y.tobytes() == want[1].tobytes()


# --------------------------------------------------------------------------- over HTTP
GOOD = {"x": [0.5, 1.0, -2.0], "y": 1}
#: (bad sample, the field it is refused at, the message), for a binary model with input_dim 3
BAD = [
    ({"x": [0.5, 1.0], "y": 1}, "x", "expected 3 values, got 2"),
    ({"x": [0.5, "1", -2.0], "y": 1}, "x", "x[1]: expected a number, got a string"),
    ({"x": [0.5, True, -2.0], "y": 1}, "x", "x[1]: expected a number, got a boolean"),
    ({"x": [0.5, None, -2.0], "y": 1}, "x", "x[1]: expected a number, got null"),
    ({"x": [0.5, 1.0, 1e39], "y": 1}, "x", "x[2]: overflows float32"),
    ({"x": [0.5, float("nan"), -2.0], "y": 1}, "x", "x[1]: NaN is not a finite number"),
    ({"x": [0.5, 1.0, -2.0], "y": 2}, "y", "expected 0 or 1, got 2"),
    ({"x": [0.5, 1.0, -2.0]}, "y", "field required"),
    ({"x": [0.5, 1.0, -2.0], "y": 1, "w": 0}, "w", "unexpected field (a sample has only x and y)"),
    ([0.5, 1.0, -2.0], None, 'expected an object {"x": [...], "y": ...}, got a list'),
]


def _post(client, path: str, body: dict) -> dict:
    r = client.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    return r.json()["errors"][0]


def test_the_same_bad_sample_is_the_same_422_everywhere(client, subtests):
    """/update (JSON and NDJSON), /evaluate and every job body that takes samples report a bad
    sample at ``[..., i, field]`` with the same message; nothing is queued or stored."""
    client.post("/v1/models", json={"name": "m", "task": "binary", "input_dim": 3, "hidden": [4]})
    for bad, field, msg in BAD:
        samples = [GOOD, bad, GOOD]
        where = [1] if field is None else [1, field]
        want = {"loc": ["body", "samples", *where], "msg": msg}
        with subtests.test(bad=bad):
            assert _post(client, "/v1/models/m/update", {"samples": samples}) == want
            nd = "".join(json.dumps(s) + "\n" for s in samples)
            r = client.post("/v1/models/m/update", content=nd, headers={"Content-Type": "application/x-ndjson"})
            assert r.status_code == 422 and r.json()["errors"][0] == want, r.text
            assert _post(client, "/v1/models/m/evaluate", {"samples": samples}) == want
            assert _post(client, "/v1/models/m/batch-update", {"samples": samples}) == want
            got = _post(client, "/v1/models/m/prune", {"sparsity": 0.5, "eval_samples": samples})
            assert got == {"loc": ["body", "eval_samples", *where], "msg": msg}
            got = _post(client, "/v1/models/m/quantize", {"dtype": "int8", "eval_samples": samples})
            assert got == {"loc": ["body", "eval_samples", *where], "msg": msg}
            got = _post(client, "/v1/models/m/prune", {"sparsity": 0.5, "fine_tune": {"samples": samples}})
            assert got == {"loc": ["body", "fine_tune", "samples", *where], "msg": msg}
            transfer = {"mode": "transfer", "new_model": "t", "task": "binary", "samples": samples}
            assert _post(client, "/v1/models/m/migrate", transfer) == want
    assert client.get("/v1/jobs").json()["items"] == []
    assert client.get("/v1/models/m").json()["online"]["accepted"] == 0


_LABEL = st.one_of(
    st.integers(-3, 4),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1.0, 2.0, -0.0, 1e39, 3.4028235e38, True, False, None, "1", [1], [0.5]]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    spec=st.sampled_from([SampleSpec("binary", 2, 1), SampleSpec("multiclass", 2, 3), SampleSpec("regression", 2, 1)]),
    ys=st.lists(_LABEL, min_size=1, max_size=6),
)
def test_labels_packed_as_arrays_are_packed_as_one_by_one(spec, ys) -> None:
    """pack_labels checks plain labels as arrays: what it accepts so is exactly what the
    label-by-label check accepts, packed alike; anything else goes to that check."""
    from app.online.samples import _check_label, _pack_labels, _plain_labels

    plain = _plain_labels(spec, ys)
    try:
        for k, y in enumerate(ys):
            _check_label(spec, y, k, ["body", "labels"])
        slow = _pack_labels(spec, ys)
    except Invalid:
        assert plain is None
        return
    if plain is not None:
        assert plain.dtype == slow.dtype and plain.shape == slow.shape
        np.testing.assert_array_equal(plain, slow)


def test_plain_labels_take_the_array_path():
    from app.online.samples import _plain_labels

    assert _plain_labels(SampleSpec("binary", 2, 1), [0, 1, 1.0]) is not None
    assert _plain_labels(SampleSpec("multiclass", 2, 3), [0, 2, 1]) is not None
    assert _plain_labels(SampleSpec("regression", 2, 1), [0.5, -3, 1e30]) is not None
    assert _plain_labels(SampleSpec("binary", 2, 1), [0, True]) is None
