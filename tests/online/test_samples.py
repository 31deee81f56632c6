"""Labelled samples → packed float32 arrays, with errors at the sample's 0-based index."""

from __future__ import annotations

import numpy as np
import pytest

from app.core.errors import Invalid
from app.online.samples import check_matrix, parse_samples, parse_targets


def loc_of(fn, *args) -> list:
    with pytest.raises(Invalid) as e:
        fn(*args)
    return e.value.errors[0]["loc"]


def test_check_matrix_packs_float32():
    X = check_matrix([[1, 2.5], [3, -4]], 2, ["body", "inputs"])
    assert X.dtype == np.float32 and X.tolist() == [[1.0, 2.5], [3.0, -4.0]]


@pytest.mark.parametrize(
    ("rows", "loc"),
    [
        ([], ["body", "inputs"]),
        ("x", ["body", "inputs"]),
        ([[1, 2], [1]], ["body", "inputs", 1]),
        ([[1, 2], 3], ["body", "inputs", 1]),
        ([[1, "a"]], ["body", "inputs", 0, 1]),
        ([[1, 1e39]], ["body", "inputs", 0, 1]),
        ([[1, float("nan")]], ["body", "inputs", 0, 1]),
        ([[float("-inf"), 1]], ["body", "inputs", 0, 0]),
    ],
)
def test_check_matrix_errors(rows, loc):
    assert loc_of(check_matrix, rows, 2, ["body", "inputs"]) == loc


def test_parse_samples_per_task():
    X, Y = parse_samples("binary", 2, 1, [{"x": [1, 2], "y": 1}, {"x": [3, 4], "y": 0.0}], ["s"])
    assert X.dtype == np.float32 and Y.dtype == np.float32 and Y.tolist() == [1.0, 0.0]
    _, Y = parse_samples("multiclass", 2, 3, [{"x": [1, 2], "y": 2}, {"x": [3, 4], "y": 1.0}], ["s"])
    assert Y.dtype == np.int64 and Y.tolist() == [2, 1]
    _, Y = parse_samples("regression", 2, 2, [{"x": [1, 2], "y": [0.5, 1]}], ["s"])
    assert Y.shape == (1, 2) and Y.dtype == np.float32
    _, Y = parse_samples("regression", 2, 1, [{"x": [1, 2], "y": 0.5}], ["s"])
    assert Y.shape == (1, 1)


@pytest.mark.parametrize(
    ("task", "out", "samples", "loc"),
    [
        ("binary", 1, [{"x": [1, 2], "y": 1}, {"x": [1], "y": 1}], ["s", 1, "x"]),
        ("binary", 1, [{"x": [1, 2], "y": 2}], ["s", 0, "y"]),
        ("binary", 1, [{"x": [1, 2], "y": True}], ["s", 0, "y"]),
        ("multiclass", 3, [{"x": [1, 2], "y": 3}], ["s", 0, "y"]),
        ("multiclass", 3, [{"x": [1, 2], "y": 0.5}], ["s", 0, "y"]),
        ("regression", 2, [{"x": [1, 2], "y": [1]}], ["s", 0, "y"]),
        ("regression", 2, [{"x": [1, 2], "y": [1, 1e39]}], ["s", 0, "y", 1]),
        ("regression", 1, [{"x": [1, 2], "y": float("nan")}], ["s", 0, "y"]),
        ("regression", 1, [{"x": [1, 2]}], ["s", 0, "y"]),
        ("regression", 1, [{"y": 1}], ["s", 0, "x"]),
        ("regression", 1, [{"x": [1, 2], "y": 1, "z": 0}], ["s", 0, "z"]),
        ("regression", 1, [[1, 2]], ["s", 0]),
        ("regression", 1, [{"x": [1, None], "y": 1}], ["s", 0, "x", 1]),
        ("regression", 1, [{"x": [1, 2], "y": 1}, {"x": [float("inf"), 2], "y": 1}], ["s", 1, "x", 0]),
        ("regression", 1, [], ["s"]),
    ],
)
def test_parse_samples_errors_name_the_sample(task, out, samples, loc):
    assert loc_of(parse_samples, task, 2, out, samples, ["s"]) == loc


def test_parse_targets_accepts_a_one_element_list_for_binary():
    assert parse_targets("binary", 1, [[1], 0], ["y"]).tolist() == [1.0, 0.0]
