"""How the client makes sample bodies, without a service: the fast paths (numeric arrays a
block at a time, CSV rows of plain numbers sent as their text) send what the general
path sends (the same float32 values, the same labels), fall back to it for anything else,
and the upload makes its next body while the current one is answered."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from steward_client import Client
from steward_client.cli import Usage, read_samples
from steward_client.client import poll_delays, sample_line, sample_lines


def decoded(lines: Any) -> list[dict[str, Any]]:
    out = []
    for line in lines:
        assert isinstance(line, bytes) and line.endswith(b"\n") and line.count(b"\n") == 1
        out.append(json.loads(line))
    return out


def general(X: Any, y: Any) -> list[dict[str, Any]]:
    """The general path: one sample at a time, every value as given."""
    return decoded(sample_line(x, t) for x, t in zip(X, y, strict=True))


def as_stored(samples: list[dict[str, Any]]) -> tuple[np.ndarray, list[Any]]:
    """What the service keeps: x as float32, y as sent."""
    return np.array([s["x"] for s in samples], dtype=np.float32), [s["y"] for s in samples]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.float16])
def test_array_rows_arrive_as_the_float32_values_the_general_path_gives(dtype):
    rng = np.random.default_rng(0)
    if dtype is np.int64:
        X = rng.integers(-(10**15), 10**15, size=(5000, 7))  # more digits than float32 keeps
    else:
        top = 1e4 if dtype is np.float16 else 1e30
        X = (rng.normal(size=(5000, 7)) * rng.choice([1e-30, 1e-3, 1.0, top], size=(5000, 1))).astype(dtype)
    X[0] = 0.0
    X[1, 0] = -0.0
    y = rng.integers(0, 3, size=5000)
    fast = decoded(sample_lines(X, y))
    Xf, yf = as_stored(fast)
    Xg, yg = as_stored(general(X, y))
    assert np.array_equal(Xf, Xg) and yf == yg == y.tolist()
    assert sum(map(len, sample_lines(X, y))) <= sum(len(sample_line(x, t)) for x, t in zip(X, y, strict=True))


def test_labels_of_any_shape_and_a_block_with_a_value_float32_cannot_hold():
    X = np.arange(12, dtype=np.float64).reshape(6, 2)
    X[4, 1] = 1e39  # beyond float32: that block is sent as given, for the service to refuse it by name
    Y = np.arange(12, dtype=np.float64).reshape(6, 2) / 4  # multi-output regression
    fast = decoded(sample_lines(X, Y))
    assert fast == general(X, Y)
    assert fast[4]["x"] == [8.0, 1e39] and fast[1]["y"] == [0.5, 0.75]
    nan = np.array([[np.nan, 1.0]])
    assert sample_lines(nan, np.array([1])).__next__() == sample_line([np.nan, 1.0], 1)


def test_other_inputs_take_the_general_path():
    assert decoded(sample_lines([[1, 2]], [3])) == [{"x": [1, 2], "y": 3}]
    assert decoded(sample_lines(np.zeros((1, 2)), iter([1]))) == [{"x": [0.0, 0.0], "y": 1}]
    assert decoded(sample_lines([([1.5], 0), {"x": [2.5], "y": 1}])) == [{"x": [1.5], "y": 0}, {"x": [2.5], "y": 1}]
    with pytest.raises(ValueError):  # zip(strict=True): the lengths differ
        list(sample_lines(np.zeros((2, 2)), np.zeros(3)))


def test_csv_rows_of_plain_numbers_are_sent_as_their_text_and_the_rest_as_before(tmp_path: Path):
    path = tmp_path / "s.csv"
    path.write_text(
        "a,label,b\n"
        "0.5,1,-2\n"
        "1e-3,0,3.25E+2\r\n"
        "-0,1.0,0.1\n"  # a float label that is a class: 1
        "0.25,2.5,4\n"  # a regression label
        " 1.5,1,2.\n"  # a space, "2.": float() reads them
        "+1,0,.5\n"
        '"2",1,"3"\n'  # quoted: the csv module's row
        "\n"  # a blank line
        "7,1,8\n"
    )
    lines, total = read_samples(path, "label")
    got = decoded(lines)
    assert total == 8 and got[:4] == [
        {"x": [0.5, -2], "y": 1},
        {"x": [1e-3, 325.0], "y": 0},
        {"x": [-0.0, 0.1], "y": 1},
        {"x": [0.25, 4], "y": 2.5},
    ]
    assert got[4:] == [
        {"x": [1.5, 2.0], "y": 1},
        {"x": [1.0, 0.5], "y": 0},
        {"x": [2.0, 3.0], "y": 1},
        {"x": [7, 8], "y": 1},
    ]
    assert b'{"x":[1e-3,3.25E+2],"y":0}\n' in list(read_samples(path, "label")[0])  # the text itself
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n1,x\n")
    with pytest.raises(Usage, match=r"bad\.csv:3"):
        list(read_samples(tmp_path / "bad.csv", None)[0])


def test_ndjson_lines_are_checked_and_sent_as_they_are(tmp_path: Path):
    path = tmp_path / "s.ndjson"
    path.write_bytes(b'{"x": [1, 2], "y": 0}\n\n{"y": 1, "x": [3, 4], "note": "dropped"}\n{"x": [5, 6], "y": 1}')
    lines = list(read_samples(path, None)[0])
    assert lines == [b'{"x": [1, 2], "y": 0}\n', b'{"x":[3,4],"y":1}\n', b'{"x": [5, 6], "y": 1}\n']
    path.write_bytes(b'{"x": [1, 2], "y": 0}\n[1, 2]\n')
    with pytest.raises(Usage, match=r"s\.ndjson:2"):
        list(read_samples(path, None)[0])


class Recorder(httpx.BaseTransport):
    """Answers every /update at once, recording the bodies and which thread made them."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        n = body.count(b"\n")
        first = sum(b.count(b"\n") for b in self.bodies)
        self.bodies.append(body)
        answer = {"accepted": n, "first_offset": first, "last_offset": first + n - 1, "duplicate": False}
        return httpx.Response(202, json=answer)


def test_with_prefetch_the_next_body_is_made_in_a_helper_thread_and_its_errors_surface_in_order():
    made_in: list[str] = []

    def lines(n: int, fail_at: int | None = None) -> Any:
        for i in range(n):
            if i == fail_at:
                raise RuntimeError(f"bad sample {i}")
            made_in.append(threading.current_thread().name)
            yield sample_line([float(i)], i % 2)

    rec = Recorder()
    seen: list[int] = []
    with Client("http://steward.test", "k", transport=rec) as st:
        out = st.update_lines("m", lines(10), chunk_size=4, on_chunk=seen.append, prefetch=True)
        assert out == {"accepted": 10, "first_offset": 0, "last_offset": 9, "requests": 3} and seen == [4, 4, 2]
        assert [json.loads(x)["x"][0] for b in rec.bodies for x in b.splitlines()] == list(range(10))
        assert threading.current_thread().name not in made_in
        with pytest.raises(RuntimeError, match="bad sample 9"):
            st.update_lines("m", lines(10, fail_at=9), chunk_size=4, prefetch=True)
        assert len(rec.bodies) == 3 + 2  # the chunks before the bad one were sent
        # an iterable given to update() is read in the calling thread (a cursor may be tied to it)
        made_in.clear()
        out = st.update("m", ((x, t) for x, t in (([1.0], 0), ([2.0], 1))))
        assert out["accepted"] == 2 and made_in == []
        made_in.clear()
        st.update_lines("m", lines(5), chunk_size=2)
        assert set(made_in) == {threading.current_thread().name}


def test_a_job_is_polled_quickly_at_first_then_every_interval():
    delays = poll_delays(0.2)
    first = [next(delays) for _ in range(8)]
    assert first[0] == 0.025 and first == sorted(first) and first[-1] == 0.2
    assert sum(first[:5]) < 0.5
