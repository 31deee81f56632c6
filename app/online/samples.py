"""Labelled samples → packed float32 arrays, with precise per-sample errors.

``X`` is ``[n, input_dim]`` float32. ``Y`` is ``[n, output_dim]`` float32 for
regression, ``[n]`` float32 in {0, 1} for binary and ``[n]`` int64 class indices
for multiclass. Errors name the sample's 0-based index: ``[*loc, i, "x"]``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from app.core.errors import Invalid

F32_MAX = float(np.finfo(np.float32).max)


def _bad(loc: list[str | int], msg: str) -> Invalid:
    return Invalid.at(loc, msg)


def check_matrix(rows: Any, width: int, loc: list[str | int], what: str = "row") -> np.ndarray:
    """``rows`` (list of lists of numbers) → float32 [n, width], finite, within float32 range."""
    if not isinstance(rows, list) or not rows:
        raise _bad(loc, "expected a non-empty list")
    try:
        arr = np.asarray(rows, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        arr = None
    if arr is None or arr.ndim != 2 or arr.shape[1] != width:
        for i, r in enumerate(rows):
            if not isinstance(r, list):
                raise _bad([*loc, i], f"expected a list of {width} numbers")
            if len(r) != width:
                raise _bad([*loc, i], f"expected {width} values, got {len(r)}")
            for j, v in enumerate(r):
                if isinstance(v, bool) or not isinstance(v, int | float):
                    raise _bad([*loc, i, j], "expected a number")
                if abs(v) > F32_MAX:
                    raise _bad([*loc, i, j], "value overflows float32")
        raise _bad(loc, "expected a list of rows of numbers")
    return to_f32(arr, loc)


def to_f32(arr: np.ndarray, loc: list[str | int]) -> np.ndarray:
    """Check finiteness and float32 range of a float64 array [n, ...]; return float32."""
    bad = ~np.isfinite(arr) | (np.abs(arr) > F32_MAX)
    if bad.any():
        idx = np.argwhere(bad)[0]
        v = arr[tuple(idx)]
        why = "is not a finite number" if not np.isfinite(v) else "overflows float32"
        raise _bad([*loc, *(int(i) for i in idx)], f"value {why}")
    return arr.astype(np.float32)


def parse_targets(task: str, output_dim: int, ys: list[Any], loc: list[str | int]) -> np.ndarray:
    """Validate labels ``ys[i]`` (located at ``[*loc, i, "y"]``) and pack them."""
    n = len(ys)
    if task == "multiclass":
        out = np.empty(n, dtype=np.int64)
        for i, y in enumerate(ys):
            if (
                isinstance(y, bool)
                or not isinstance(y, int | float)
                or (isinstance(y, float) and not (math.isfinite(y) and y.is_integer()))
            ):
                raise _bad([*loc, i, "y"], "expected an integer class index")
            if not 0 <= int(y) < output_dim:
                raise _bad([*loc, i, "y"], f"class index must be in 0..{output_dim - 1}, got {int(y)}")
            out[i] = int(y)
        return out
    if task == "binary":
        out_b = np.empty(n, dtype=np.float32)
        for i, y in enumerate(ys):
            if isinstance(y, list) and len(y) == 1:
                y = y[0]
            if isinstance(y, bool) or not isinstance(y, int | float) or y not in (0, 1):
                raise _bad([*loc, i, "y"], "expected 0 or 1")
            out_b[i] = float(y)
        return out_b
    out_r = np.empty((n, output_dim), dtype=np.float64)
    for i, y in enumerate(ys):
        if output_dim == 1 and not isinstance(y, list):
            y = [y]
        if not isinstance(y, list) or len(y) != output_dim:
            raise _bad([*loc, i, "y"], f"expected {output_dim} target values")
        for j, v in enumerate(y):
            if isinstance(v, bool) or not isinstance(v, int | float) or abs(v) > F32_MAX:
                raise _bad([*loc, i, "y", j] if output_dim > 1 else [*loc, i, "y"], "expected a finite float32")
        out_r[i] = y
    bad = ~np.isfinite(out_r) | (np.abs(out_r) > F32_MAX)
    if bad.any():
        i, j = (int(k) for k in np.argwhere(bad)[0])
        raise _bad([*loc, i, "y", j] if output_dim > 1 else [*loc, i, "y"], "value is not a finite float32")
    return out_r.astype(np.float32)


def parse_samples(
    task: str, input_dim: int, output_dim: int, samples: list[Any], loc: list[str | int]
) -> tuple[np.ndarray, np.ndarray]:
    """``[{"x": [...], "y": ...}, ...]`` → (X, Y) with errors at ``[*loc, i, field]``."""
    if not isinstance(samples, list) or not samples:
        raise _bad(loc, "expected a non-empty list of samples")
    xs: list[Any] = []
    ys: list[Any] = []
    for i, smp in enumerate(samples):
        if not isinstance(smp, dict):
            raise _bad([*loc, i], "expected an object with x and y")
        extra = set(smp) - {"x", "y"}
        if extra:
            raise _bad([*loc, i, sorted(extra)[0]], "unexpected field")
        if "x" not in smp:
            raise _bad([*loc, i, "x"], "field required")
        if "y" not in smp:
            raise _bad([*loc, i, "y"], "field required")
        x = smp["x"]
        if not isinstance(x, list) or len(x) != input_dim:
            got = len(x) if isinstance(x, list) else type(x).__name__
            raise _bad([*loc, i, "x"], f"expected {input_dim} values, got {got}")
        xs.append(x)
        ys.append(smp["y"])
    for i, x in enumerate(xs):
        for j, v in enumerate(x):
            if v.__class__ is not float:
                if isinstance(v, bool) or not isinstance(v, int | float):
                    raise _bad([*loc, i, "x", j], "expected a number")
                if abs(v) > F32_MAX:
                    raise _bad([*loc, i, "x", j], "value overflows float32")
    X64 = np.asarray(xs, dtype=np.float64)
    bad = ~np.isfinite(X64) | (np.abs(X64) > F32_MAX)
    if bad.any():
        i, j = (int(k) for k in np.argwhere(bad)[0])
        raise _bad([*loc, i, "x", j], "value is not a finite float32 number")
    return X64.astype(np.float32), parse_targets(task, output_dim, ys, loc)
