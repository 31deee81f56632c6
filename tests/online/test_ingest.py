"""``app.online.ingest``: the fast path (orjson + ``np.asarray``) must accept exactly
what the slow path (:func:`app.online.samples.check_sample`, the definition of validity) accepts, with
identical arrays, and reject the rest with the slow path's error."""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Iterator

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core.errors import BadRequest, Invalid
from app.core.jsonbody import loads
from app.online import ingest
from app.online.ingest import parse_json, parse_ndjson, plain_bytes
from app.online.samples import F32_MAX, F32_ROUNDS_TO_INF, SampleSpec, convert, number_problem

SPECS = [SampleSpec("binary", 3, 1), SampleSpec("multiclass", 3, 4), SampleSpec("regression", 3, 2)]
REG1 = SampleSpec("regression", 3, 1)


def reference(spec: SampleSpec, samples: list) -> tuple[np.ndarray, np.ndarray] | Invalid:
    """The slow path alone, on the strict reading of the same text."""
    samples = loads(dumps(samples))
    try:
        X, Y = convert(spec, samples, 0, trusted=False)
    except Invalid as e:
        return e
    return X.astype(np.float32), Y


def dumps(doc: object) -> bytes:
    """orjson's text, or the standard library's for integers orjson does not write (> 64 bits)."""
    try:
        return orjson.dumps(doc)
    except TypeError:
        with _no_int_limit():
            return json.dumps(doc).encode()


@contextlib.contextmanager
def _no_int_limit() -> Iterator[None]:
    before = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        yield
    finally:
        sys.set_int_max_str_digits(before)


def same(spec: SampleSpec, body: bytes, samples: list) -> None:
    want = reference(spec, samples)
    try:
        got = parse_json(spec, body)
    except Invalid as e:
        assert isinstance(want, Invalid), f"fast path refused what the slow path accepts: {e.body()}"
        assert e.body()["errors"] == want.body()["errors"]
        return
    assert not isinstance(want, Invalid), f"fast path accepted what the slow path refuses: {want.body()}"
    X, Y = got
    assert X.dtype == np.float32 and X.shape == want[0].shape
    assert X.tobytes() == want[0].tobytes()
    assert Y.dtype == want[1].dtype and Y.tobytes() == want[1].tobytes()
    # and the same as NDJSON
    nd = b"".join(dumps(s) + b"\n" for s in samples)
    Xn, Yn = parse_ndjson(spec, nd)
    assert Xn.tobytes() == X.tobytes() and Yn.tobytes() == Y.tobytes()


EDGE_FLOATS = [
    0.0,
    -0.0,
    1e-45,
    1e-50,
    F32_MAX,
    -F32_MAX,
    float(np.nextafter(F32_MAX, np.inf)),  # a double above float32's max: rounds to it, accepted
    float(np.nextafter(F32_MAX, 0)),
    3.4028235e38,  # float32's max as printed (above F32_MAX as a double): rounds to it, accepted
    -3.4028235e38,
    float(np.nextafter(F32_ROUNDS_TO_INF, 0)),  # the largest double that rounds to a finite float32
    -float(np.nextafter(F32_ROUNDS_TO_INF, 0)),
    3.4028235677973366e38,  # F32_ROUNDS_TO_INF: a tie, rounds to inf in float32
    -3.4028235677973366e38,
    float(np.nextafter(F32_ROUNDS_TO_INF, np.inf)),
    3.4028236e38,
    1e300,
    2.0**60,
    123456789,
    2**63 - 1,
    -(2**63),
    1.0000000001,
    0.9999999999,
]

value = st.one_of(
    st.sampled_from(EDGE_FLOATS),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=0, max_value=4),
    # integers around the bound, beyond 64 bits (orjson reads them as doubles): the strict reading decides
    st.sampled_from([2**128 - 2**103 - 1, 2**128 - 2**103, 2**128 - 2**104, 2**128, -(2**128 - 2**103 - 1), 10**39]),
    st.sampled_from([10**400, -(10**4299), 10**5000]),  # beyond double range, beyond the int-string limit
)
odd = st.one_of(st.none(), st.booleans(), st.text(max_size=3), st.just("1.5"), st.lists(value, max_size=2))


@st.composite
def sample(draw: st.DrawFn) -> object:
    x = draw(st.lists(value, min_size=3, max_size=3) | st.lists(value | odd, min_size=2, max_size=4))
    y = draw(value | odd | st.lists(value, min_size=1, max_size=2))
    s: dict[str, object] = {"x": x, "y": y}
    extra = draw(st.sampled_from([None, None, None, "x", "z", "drop-y"]))
    if extra == "z":
        s["z"] = draw(value)
    elif extra == "drop-y":
        del s["y"]
    return s


@pytest.mark.parametrize("spec", [*SPECS, REG1], ids=lambda s: f"{s.task}-{s.output_dim}")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(samples=st.lists(sample(), min_size=1, max_size=4))
def test_fast_path_agrees_with_the_slow_path(spec: SampleSpec, samples: list) -> None:
    body = dumps({"samples": samples})
    same(spec, body, samples)


@pytest.mark.parametrize(
    ("spec", "smp", "loc", "words"),
    [
        (SPECS[0], {"x": ["1.5", 2, 3], "y": 1}, ["body", "samples", 0, "x"], "got a string"),  # numpy would take it
        (SPECS[0], {"x": [True, 2, 3], "y": 1}, ["body", "samples", 0, "x"], "got a boolean"),
        (SPECS[0], {"x": [None, 2, 3], "y": 1}, ["body", "samples", 0, "x"], "got null"),
        (SPECS[0], {"x": [1, 2, 3], "y": 1.0000000001}, ["body", "samples", 0, "y"], "expected 0 or 1"),
        (SPECS[0], {"x": [1, 2, 3], "y": "1"}, ["body", "samples", 0, "y"], "got a string"),
        (SPECS[0], {"x": [1, 2, 3], "y": 1, "w": 2}, ["body", "samples", 0, "w"], "unexpected field"),
        (SPECS[0], {"x": [1, 2, 3]}, ["body", "samples", 0, "y"], "field required"),
        (SPECS[0], {"x": [1, 2, 3e38 * 2], "y": 1}, ["body", "samples", 0, "x"], "overflows float32"),
        (SPECS[1], {"x": [1, 2, 3], "y": 2.5}, ["body", "samples", 0, "y"], "integer class index"),
        (SPECS[1], {"x": [1, 2, 3], "y": 4}, ["body", "samples", 0, "y"], "0..3"),
        (SPECS[2], {"x": [1, 2, 3], "y": [1, None]}, ["body", "samples", 0, "y"], "got null"),
    ],
)
def test_values_numpy_would_coerce_are_refused_at_their_place(
    spec: SampleSpec, smp: dict, loc: list, words: str
) -> None:
    good = {"x": [0.5, 1, 2], "y": [1, 2] if spec.task == "regression" else 1}
    samples = [good, good, smp]
    loc = [*loc[:2], 2, *loc[3:]]
    body = orjson.dumps({"samples": samples})
    with pytest.raises(Invalid) as e:
        parse_json(spec, body)
    err = e.value.body()["errors"][0]
    assert err["loc"] == loc and words in err["msg"], err
    with pytest.raises(Invalid) as e2:
        parse_ndjson(spec, b"".join(orjson.dumps(s) + b"\n" for s in samples))
    assert e2.value.body()["errors"][0]["loc"] == loc


def test_values_orjson_refuses_are_422_not_400() -> None:
    spec = SPECS[0]
    for text, why in (("NaN", "NaN"), ("Infinity", "Infinity"), ("1e400", "Infinity")):
        body = b'{"samples": [{"x": [1, 2, 3], "y": 0}, {"x": [1, ' + text.encode() + b', 3], "y": 0}]}'
        with pytest.raises(Invalid) as e:
            parse_json(spec, body)
        err = e.value.body()["errors"][0]
        assert err["loc"] == ["body", "samples", 1, "x"] and why in err["msg"], err
    with pytest.raises(BadRequest):
        parse_json(spec, b'{"samples": [{"x": [1, 2, 3], "y": 0}')


def test_the_float32_values_are_the_rounding_of_the_decimal_text() -> None:
    """Every value is the float32 nearest to the number written (through float64, as
    json.loads + numpy would give), for random floats across the exponent range."""
    rng = np.random.default_rng(5)
    n = 2000
    X = rng.standard_normal((n, 3)) * 10.0 ** rng.integers(-40, 38, (n, 3))
    samples = [{"x": [float(v) for v in row], "y": int(k % 2)} for k, row in enumerate(X)]
    body = orjson.dumps({"samples": samples})
    got, Y = parse_json(SPECS[0], body)
    want = np.array([[float(v) for v in s["x"]] for s in json.loads(body)["samples"]]).astype(np.float32)
    assert got.tobytes() == want.tobytes()
    assert Y.tolist() == [k % 2 for k in range(n)]


def test_plain_bytes_counts_the_quotes_of_the_keys() -> None:
    assert plain_bytes(b'{"samples": [{"x": [1], "y": 0}]}', 6)
    assert not plain_bytes(b'{"samples": [{"x": [1], "y": "0"}]}', 6)  # a string value: 8 quotes
    assert not plain_bytes(b'{"samples": [{"x": [1], "y": 0, "z": 1}]}', 6)  # an extra key
    assert not plain_bytes(b'{"samples": [{"x": [1], "y": false}]}', 6)
    assert not plain_bytes(b'{"samples": [{"x": [1], "y": true}]}', 6)
    assert math.isfinite(F32_MAX)


def test_only_json_whitespace_makes_an_ndjson_line_blank() -> None:
    spec = SPECS[0]
    ok = orjson.dumps({"x": [1, 2, 3], "y": 1})
    X, _ = parse_ndjson(spec, ok + b"\n \t\r\n\n" + ok + b"\n")
    assert len(X) == 2
    with pytest.raises(BadRequest) as e:
        parse_ndjson(spec, ok + b"\n\x0b\n" + ok + b"\n")  # a vertical tab is not JSON whitespace
    assert e.value.body()["errors"][0]["line"] == 2


@pytest.mark.parametrize(
    ("v", "ok"),
    [
        (3.4028235e38, True),
        (-3.4028235e38, True),
        (F32_MAX, True),
        (float(np.nextafter(F32_ROUNDS_TO_INF, 0)), True),
        (2**128 - 2**104, True),
        (F32_ROUNDS_TO_INF, False),
        (3.4028236e38, False),
        (2**128 - 2**103, False),
        (2**128, False),
        (10**400, False),  # beyond double range
    ],
)
def test_in_float32_range_means_rounds_to_a_finite_float32(v: float, ok: bool) -> None:
    """The one bound of every number check: the value (read as a double) rounds to a
    finite float32; float32's largest value as printed, 3.4028235e38, is in range."""
    with np.errstate(over="ignore"):
        finite = bool(np.isfinite(np.float32(float(v)))) if abs(v) < 1e308 else False
    assert finite == ok
    assert (number_problem(v) is None) == ok
    body = dumps({"samples": [{"x": [1, v, 3], "y": [v, 1]}]})
    if ok:
        X, Y = parse_json(SPECS[2], body)
        assert X[0, 1] == np.float32(float(v)) and Y[0, 0] == np.float32(float(v))
    else:
        with pytest.raises(Invalid) as e:
            parse_json(SPECS[2], body)
        assert e.value.body()["errors"][0]["msg"] == "x[1]: overflows float32"


# --------------------------------------------------------------------------- large JSON bodies, in slices
def _answer(spec: SampleSpec, body: bytes) -> tuple[object, ...]:
    try:
        X, Y = parse_json(spec, body)
    except Invalid as e:
        return ("422", e.body()["errors"])
    except BadRequest:
        return ("400",)  # the message may place a slice-boundary error differently
    return ("ok", X.dtype.str, X.shape, X.tobytes(), Y.dtype.str, Y.tobytes())


ATOMS = ['"a\\\\"', '"b\\"c,]}"', '"\\\\\\""', "true", "null", "NaN", "1e400", "[1,[2]]", '{"x":[1]}', ",", "]", ""]


@st.composite
def raw_body(draw: st.DrawFn) -> bytes:
    """Sample arrays as text, with strings holding escapes, quotes and brackets, bad values
    and malformed elements, in any JSON whitespace."""
    items = []
    for _ in range(draw(st.integers(0, 12))):
        if draw(st.integers(0, 9)):
            x = [
                draw(
                    st.sampled_from(["0.5", "1", "-2", "3e38", *ATOMS[:7]])
                    if draw(st.integers(0, 9)) == 0
                    else st.just("1.25")
                )
                for _ in range(3)
            ]
            y = draw(st.sampled_from(["0", "1", "2", *ATOMS[:7]]))
            key = draw(st.sampled_from(['"x"'] * 8 + ['"x\\""', '"z"']))
            items.append(f'{{{key}: [{",".join(x)}], "y": {y}}}')
        else:
            items.append(draw(st.sampled_from(ATOMS)))
    ws = draw(st.sampled_from(["", " ", "\n", " \r\n\t"]))
    sep = "," + ws
    return f'{{{ws}"samples"{ws}:{ws}[{ws}{sep.join(items)}{ws}]{ws}}}{ws}'.encode()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=raw_body(), slice_bytes=st.integers(1, 200), chunk=st.integers(1, 64))
def test_a_body_parsed_in_slices_answers_as_the_whole_body(body: bytes, slice_bytes: int, chunk: int) -> None:
    """Whatever the slice and scan-chunk sizes, the sliced parser gives the whole-body
    parser's arrays, or its 422 (same place, same message), or a 400 when it gives one."""
    spec = SPECS[0]
    whole = _answer(spec, body)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ingest, "JSON_WHOLE_MAX", 0)
        mp.setattr(ingest, "JSON_SLICE", slice_bytes)
        mp.setattr(ingest, "SCAN_CHUNK", chunk)
        assert _answer(spec, body) == whole


def test_the_scanner_finds_the_elements_or_declines() -> None:
    body = b' {"samples" : [ {"x": "a,b\\"]"} , [1,{"c":2}] ,3 ] }\n'
    where = ingest.split_samples(body)
    assert where is not None
    start, commas, end = where
    elements = [body[a + 1 : b] for a, b in zip([start - 1, *commas.tolist()], [*commas.tolist(), end], strict=True)]
    assert [e.strip() for e in elements] == [b'{"x": "a,b\\"]"}', b'[1,{"c":2}]', b"3"]
    assert ingest.split_samples(b'{"samples": [1], "other": 2}') is None  # the whole-body parser answers
    assert ingest.split_samples(b'{"other": 2, "samples": [1]}') is None
    assert ingest.split_samples(b'{"samples": [1, 2}') is None


def _big_body(n: int) -> bytes:
    rng = np.random.default_rng(1)
    X = np.round(rng.normal(size=(n, 3)), 4).tolist()
    return orjson.dumps({"samples": [{"x": x, "y": k % 2} for k, x in enumerate(X)]})


def _parse_peak(body: bytes) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        X, Y = parse_json(SPECS[0], body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert X.shape == (200_000, 3) and Y.shape == (200_000,)
    return peak


def test_parsing_a_large_json_body_is_bounded_by_a_small_multiple_of_it() -> None:
    """Parsed whole, a body became a Python object per number (≈ 20× the text); in slices
    the peak is the packed arrays plus one slice's objects and the scanner's temporaries.
    tracemalloc counts numpy's buffers too."""
    body = _big_body(200_000)  # ~7 MB
    peak = _parse_peak(body)
    assert peak < 3 * len(body), (peak, len(body))
    with pytest.MonkeyPatch.context() as mp:  # the measure tells them apart
        mp.setattr(ingest, "JSON_WHOLE_MAX", 1 << 40)
        assert _parse_peak(body) > 8 * len(body)


@pytest.mark.parametrize(
    ("bad", "status"),
    [
        (b'{"x": [1, 2, 3], "x": [1, 2, 3], "y": 1}', 400),  # a duplicate key: malformed, in any slice
        (b'{"x": [1, ' + b"9" * 5000 + b', 3], "y": 1}', 422),  # beyond any float: at its sample
        (b'{"x": [1, 1e999, 3], "y": 1}', 422),
    ],
)
def test_a_sliced_body_reads_each_slice_as_strictly_as_a_whole_body(bad: bytes, status: int) -> None:
    """A body parsed in slices answers as the whole-body reading does: a duplicate key is a
    400, a number orjson refuses is read and answered 422 at its sample (here in a late slice)."""
    spec = SampleSpec("binary", 3, 1)
    good = b'{"x": [0.5, 1.5, 2.5], "y": 0}'
    n = (2 * ingest.JSON_WHOLE_MAX) // len(good)
    body = b'{"samples": [' + b", ".join([good] * n + [bad]) + b"]}"
    assert len(body) > ingest.JSON_WHOLE_MAX and ingest.split_samples(body) is not None  # parsed in slices
    err = BadRequest if status == 400 else Invalid
    with pytest.raises(err) as e:
        parse_json(spec, body)
    if status == 422:
        assert e.value.body()["errors"][0]["loc"] == ["body", "samples", n, "x"]
    else:
        assert "duplicate" in e.value.detail
