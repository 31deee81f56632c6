"""What a valid labelled sample is — the one definition — and its packed arrays.

Every place that takes labelled samples checks them here, so the same bad sample gets
the same answer everywhere: ``/update`` (JSON and NDJSON bodies, :mod:`app.online.ingest`),
``/evaluate``, and the jobs' ``samples``, ``eval_samples``, ``fine_tune.samples`` and
transfer ``samples`` (:func:`parse_samples`).

**A sample** is an object ``{"x": [...], "y": ...}`` with no other key: ``x`` holds
``input_dim`` numbers; ``y`` is 0 or 1 for binary (``[0]`` / ``[1]`` too), an integer class
index in ``0..output_dim−1`` for multiclass (``2.0`` counts as 2), and for regression a
number (``output_dim`` 1) or a list of ``output_dim`` numbers. A number is a JSON number
(not a boolean, string or null), finite and within float32 range: it rounds to a finite
float32 (:func:`number_problem`).

**Packed arrays** (the sample log's layout, :mod:`app.online.log`): ``X`` float32
``[n, input_dim]``; ``Y`` float32 ``[n, output_dim]`` for regression, float32 ``[n]`` in
{0, 1} for binary, int64 ``[n]`` for multiclass.

**Errors** (API.md, "Errors"): the first problem, samples in order and ``x`` before ``y``,
as a 422 at ``[*loc, i, "x" | "y"]`` (an unexpected key: ``[*loc, i, key]``; not an
object: ``[*loc, i]``) with ``i`` the 0-based sample index. A bad number names its
position in the message: ``"x[2]: overflows float32"``. ``loc`` is ``["body", "samples"]``
for ``/update`` and ``/evaluate``, the field's place in a job body (e.g.
``["body", "fine_tune", "samples"]``).

**Slow path.** :func:`check_sample` walks the samples in order and raises the first error
with its precise place. It is the definition of validity.

**Fast path.** One ``np.asarray(..., float32)`` call fills ``X`` and vectorized checks do
the rest. ``np.asarray`` would silently turn a boolean into 1.0, a numeric string into its
value and ``None`` into NaN, so the fast path is only taken for samples the caller vouches
hold none of these: ``/update`` by counting the bytes' quotes
(:func:`app.online.ingest.plain_bytes`), parsed request bodies by their Python types
(:func:`plain_objects`). Ragged or nested lists show up as a wrong shape or a
``ValueError``, NaN / ∞ / overflow as a failed range check. Whatever the fast path does not
accept goes to the slow path, so it accepts a subset of what the slow path accepts, with
identical arrays, and every error comes from the slow path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.core.errors import Invalid

F32_MAX = float(np.finfo(np.float32).max)
#: The smallest magnitude that rounds to ±inf as float32: FLT_MAX + ulp/2 = 2**128 − 2**103
#: (a tie, rounded to even: to infinity). A number is within float32 range when it rounds
#: to a finite float32, i.e. ``abs(v) < F32_ROUNDS_TO_INF``: ``3.4028235e38`` (float32's
#: largest value as printed, a little above ``F32_MAX``) is in range. This is the one bound:
#: :func:`number_problem` and the fast paths' checks all use it.
F32_ROUNDS_TO_INF = float(2**128 - 2**103)  # 3.4028235677973366e38, exact in float64
#: Where the samples of an ``/update`` or ``/evaluate`` body are.
SAMPLES: list[str | int] = ["body", "samples"]
_NUMBER_TYPES = frozenset((int, float))


@dataclass(frozen=True)
class SampleSpec:
    """What one sample of a model must look like."""

    task: str
    input_dim: int
    output_dim: int

    @classmethod
    def of(cls, model: Any) -> SampleSpec:
        """The spec of a model (anything with ``task``, ``input_dim`` and ``output_dim``)."""
        return cls(str(model.task), int(model.input_dim), int(model.output_dim))

    @property
    def y_dtype(self) -> Any:
        return np.int64 if self.task == "multiclass" else np.float32

    @property
    def y_shape(self) -> tuple[int, ...]:
        return (self.output_dim,) if self.task == "regression" else ()


# --------------------------------------------------------------------------- the definition
def _bad(loc: list[str | int], i: int, field: str | None, msg: str) -> Invalid:
    return Invalid.at([*loc, i] if field is None else [*loc, i, field], msg)


def kind(v: Any) -> str:
    """``v``'s JSON type, for messages (``"a string"``, ``"null"`` …)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def number_problem(v: Any) -> str | None:
    """Why ``v`` is not a finite float32 number, or None when it is one."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return f"expected a number, got {kind(v)}"
    if isinstance(v, float) and not math.isfinite(v):
        word = "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")
        return f"{word} is not a finite number"
    try:
        d = float(v)  # a number is read as a double, then rounded to float32 (as np.asarray does)
    except OverflowError:  # an integer beyond double range
        return "overflows float32"
    if abs(d) >= F32_ROUNDS_TO_INF:
        return "overflows float32"
    return None


def check_sample(spec: SampleSpec, smp: Any, i: int, loc: list[str | int] = SAMPLES) -> None:
    """Raise the first problem of sample ``i`` (x before y), or return."""
    if not isinstance(smp, dict):
        raise _bad(loc, i, None, f'expected an object {{"x": [...], "y": ...}}, got {kind(smp)}')
    for k in smp:
        if k not in ("x", "y"):
            raise _bad(loc, i, str(k), "unexpected field (a sample has only x and y)")
    if "x" not in smp:
        raise _bad(loc, i, "x", "field required")
    x = smp["x"]
    if not isinstance(x, list):
        raise _bad(loc, i, "x", f"expected a list of {spec.input_dim} numbers, got {kind(x)}")
    if len(x) != spec.input_dim:
        raise _bad(loc, i, "x", f"expected {spec.input_dim} values, got {len(x)}")
    for j, v in enumerate(x):
        why = number_problem(v)
        if why is not None:
            raise _bad(loc, i, "x", f"x[{j}]: {why}")
    if "y" not in smp:
        raise _bad(loc, i, "y", "field required")
    _check_label(spec, smp["y"], i, loc)


def _check_label(spec: SampleSpec, y: Any, i: int, loc: list[str | int]) -> None:
    if spec.task == "binary":
        if isinstance(y, list) and len(y) == 1:
            y = y[0]
        if isinstance(y, bool) or not isinstance(y, int | float) or y not in (0, 1):
            raise _bad(loc, i, "y", f"expected 0 or 1, got {y!r}" if _is_num(y) else f"expected 0 or 1, got {kind(y)}")
        return
    if spec.task == "multiclass":
        k = spec.output_dim
        if not _is_num(y) or (isinstance(y, float) and not (math.isfinite(y) and y.is_integer())):
            raise _bad(loc, i, "y", f"expected an integer class index in 0..{k - 1}, got {y!r}")
        if not 0 <= int(y) < k:
            raise _bad(loc, i, "y", f"class index must be in 0..{k - 1}, got {int(y)}")
        return
    if spec.output_dim == 1 and not isinstance(y, list):
        y = [y]
    if not isinstance(y, list) or len(y) != spec.output_dim:
        got = f"{len(y)} values" if isinstance(y, list) else kind(y)
        raise _bad(loc, i, "y", f"expected {spec.output_dim} target values, got {got}")
    for j, v in enumerate(y):
        why = number_problem(v)
        if why is not None:
            raise _bad(loc, i, "y", f"y[{j}]: {why}" if spec.output_dim > 1 else why)


def _is_num(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, int | float)


# --------------------------------------------------------------------------- conversion
def _in_f32_range(A: np.ndarray) -> bool:
    """All values of a float64 array round to finite float32 values (NaN fails both comparisons)."""
    return A.size == 0 or bool(A.max() < F32_ROUNDS_TO_INF and A.min() > -F32_ROUNDS_TO_INF)


def _finite_f32(A: np.ndarray) -> bool:
    """All values of a float32 array (cast from doubles) finite: a double in float32 range
    lands on a finite value (at most ±F32_MAX), one beyond it on ±inf, NaN fails both."""
    return A.size == 0 or bool(A.max() <= F32_MAX and A.min() >= -F32_MAX)


def _fast_labels(spec: SampleSpec, ys: list[Any], n: int) -> np.ndarray | None:
    """Vectorized labels of a plain chunk, or None to take the slow path.

    Labels are read as float64 (exact for every JSON number the slow path accepts as
    a label), so 1.0000000001 is not mistaken for 1 as a float32 cast would."""
    try:
        Y = np.asarray(ys, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        return None
    if spec.task == "regression":
        if Y.ndim == 1 and spec.output_dim == 1:
            Y = Y.reshape(n, 1)
        if Y.shape != (n, spec.output_dim) or not _in_f32_range(Y):
            return None
        return Y.astype(np.float32)
    if Y.ndim == 2 and Y.shape[1] == 1 and spec.task == "binary":
        Y = Y.reshape(n)
    if Y.shape != (n,):
        return None
    if spec.task == "binary":
        if not ((Y == 0) | (Y == 1)).all():
            return None
        return Y.astype(np.float32)
    if not (np.floor(Y) == Y).all() or Y.min() < 0 or Y.max() >= spec.output_dim:
        return None
    return Y.astype(np.int64)


#: Up to this many samples the fast path checks them value by value in Python first
#: (for a handful of values numpy's per-call costs are most of the work).
FEW = 4


def _few(spec: SampleSpec, samples: list[Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`fast` for a few samples of the common form — ``x`` a flat list of numbers,
    ``y`` a number of the task's kind — checked by Python's ``min``/``max`` and type
    checks, packed by the same conversions; None for anything else (the vectorized path
    then decides)."""
    number, d, task = _NUMBER_TYPES, spec.input_dim, spec.task
    xs: list[Any] = []
    ys: list[Any] = []
    try:
        for s in samples:
            x, y = s["x"], s["y"]
            if type(x) is not list or len(x) != d or not set(map(type, x)) <= number:
                return None
            # as doubles, like the slow path (rounding keeps the order: the extremes stay extreme)
            if not (float(max(x)) < F32_ROUNDS_TO_INF and float(min(x)) > -F32_ROUNDS_TO_INF):
                return None
            total = sum(x)  # NaN (which max and min pass over) makes it NaN; the rest is bounded
            if total != total:
                return None
            ty = type(y)
            if task == "multiclass":
                if ty is not int or not 0 <= y < spec.output_dim:
                    return None
            elif ty not in number or (
                y != 0 and y != 1 if task == "binary" else not -F32_ROUNDS_TO_INF < float(y) < F32_ROUNDS_TO_INF
            ):
                return None
            xs.append(x)
            ys.append(y)
    except (KeyError, TypeError, OverflowError):  # (an integer beyond double range)
        return None
    if task == "regression" and spec.output_dim != 1:
        return None
    with np.errstate(over="ignore"):  # a value just past float32's largest rounds to it
        X = np.asarray(xs, dtype=np.float32)
        if task == "multiclass":
            return X, np.asarray(ys, dtype=np.int64)
        Y = np.asarray(ys, dtype=np.float64).astype(np.float32)
    return X, (Y.reshape(len(ys), 1) if task == "regression" else Y)


def fast(spec: SampleSpec, samples: list[Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """(X float32, Y packed) of plain samples (see the module docstring), or None for
    the slow path. Call it only on samples known plain (:func:`plain_objects`,
    :func:`app.online.ingest.plain_bytes`)."""
    n = len(samples)
    if n <= FEW:
        few = _few(spec, samples)
        if few is not None:
            return few
    try:
        xs = [s["x"] for s in samples]
        ys = [s["y"] for s in samples]
        with np.errstate(over="ignore", invalid="ignore"):
            X = np.asarray(xs, dtype=np.float32)
    except (KeyError, TypeError, ValueError, OverflowError, IndexError):
        return None
    if X.shape != (n, spec.input_dim) or not _finite_f32(X):
        return None
    Y = _fast_labels(spec, ys, n)
    if Y is None:
        return None
    return X, Y


def _slow(spec: SampleSpec, samples: list[Any], base: int, loc: list[str | int]) -> tuple[np.ndarray, np.ndarray]:
    for k, smp in enumerate(samples):
        check_sample(spec, smp, base + k, loc)
    n = len(samples)
    X = np.array([s["x"] for s in samples], dtype=np.float64).reshape(n, spec.input_dim)
    return X, _pack_labels(spec, [s["y"] for s in samples])


def _pack_labels(spec: SampleSpec, ys: list[Any]) -> np.ndarray:
    """The packed ``Y`` of labels already checked (:func:`_check_label`)."""
    if spec.task == "binary":
        return np.array([y[0] if isinstance(y, list) else y for y in ys], dtype=np.float32)
    if spec.task == "multiclass":
        return np.array([int(y) for y in ys], dtype=np.int64)
    Y = np.array([y if isinstance(y, list) else [y] for y in ys], dtype=np.float64).astype(np.float32)
    return Y.reshape(len(ys), spec.output_dim)


def _plain_labels(spec: SampleSpec, ys: list[Any]) -> np.ndarray | None:
    """The packed ``Y`` of labels that are all plain numbers of the task's kind and in
    range, checked as arrays (no Python call per label); None when any is not (a boolean,
    a list, a string, out of range …): :func:`pack_labels` then checks them one by one."""
    types = set(map(type, ys))
    try:
        if spec.task == "multiclass":
            if types != {int}:
                return None
            Y = np.array(ys, dtype=np.int64)
            return Y if ((Y >= 0) & (spec.output_dim > Y)).all() else None
        if not types <= _NUMBER_TYPES or (spec.task == "regression" and spec.output_dim != 1):
            return None
        A = np.array(ys, dtype=np.float64)
    except OverflowError:  # an integer beyond int64 / float64
        return None
    if spec.task == "binary":
        return A.astype(np.float32) if ((A == 0) | (A == 1)).all() else None
    if not (np.abs(A) < F32_ROUNDS_TO_INF).all():  # (NaN compares False: refused too)
        return None
    return A.astype(np.float32).reshape(len(ys), 1)


def pack_labels(spec: SampleSpec, ys: list[Any], loc: list[str | int]) -> np.ndarray:
    """Check labels as a sample's ``y`` is checked (label ``k`` answers at ``[*loc, k, "y"]``)
    and pack them as the log's ``Y``."""
    if ys:
        plain = _plain_labels(spec, ys)
        if plain is not None:
            return plain
    for k, y in enumerate(ys):
        _check_label(spec, y, k, loc)
    return _pack_labels(spec, ys)


def convert(
    spec: SampleSpec, samples: list[Any], base: int = 0, *, trusted: bool, loc: list[str | int] = SAMPLES
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and pack ``samples`` (sample ``k`` has index ``base + k`` in errors at ``loc``).

    Returns ``(X, Y)``: ``X`` float32, float64 or integer ``[n, input_dim]`` with every
    value within float32 range (cast it with ``astype(float32, copy=False)``), ``Y``
    packed per task. Pass ``trusted=True`` only for samples known to hold no boolean,
    string or null (:func:`app.online.ingest.plain_bytes`, :func:`plain_objects`);
    otherwise the slow path decides.
    """
    out = fast(spec, samples) if trusted else None
    return out if out is not None else _slow(spec, samples, base, loc)


def plain_objects(samples: list[Any]) -> bool:
    """True when every sample is a dict with exactly the keys ``x`` and ``y`` whose values
    are ints, floats or lists of them (no boolean, string, null or deeper nesting): the
    parsed-object counterpart of :func:`app.online.ingest.plain_bytes`, which lets the
    fast path trust ``np.asarray``. A few type checks per sample, no per-value Python
    call."""
    number = _NUMBER_TYPES
    for s in samples:
        if type(s) is not dict or len(s) != 2 or "x" not in s or "y" not in s:
            return False
        x, y = s["x"], s["y"]
        if type(x) is not list or not number.issuperset(map(type, x)):
            return False
        if type(y) is list:
            if not number.issuperset(map(type, y)):
                return False
        elif type(y) not in number:
            return False
    return True


def parse_samples(
    spec: SampleSpec, samples: Any, loc: list[str | int] = SAMPLES, *, trusted: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The list of samples of a parsed request body (``/update``'s JSON, ``/evaluate``, job
    data) → (X float32, Y packed), errors at ``loc``. ``trusted``: see :func:`convert`;
    None decides by :func:`plain_objects`."""
    if not isinstance(samples, list):
        raise Invalid.at(loc, f"expected a list of samples, got {kind(samples)}")
    if not samples:
        raise Invalid.at(loc, "expected at least one sample")
    if trusted is None:
        trusted = plain_objects(samples)
    X, Y = convert(spec, samples, 0, trusted=trusted, loc=loc)
    return X.astype(np.float32, copy=False), Y


# --------------------------------------------------------------------------- predict inputs
def check_matrix(rows: Any, width: int, loc: list[str | int]) -> np.ndarray:
    """Predict inputs: ``rows`` (a list of lists of ``width`` numbers) → float32 [n, width].

    Each number is checked as a sample's ``x`` values are (:func:`number_problem`); an
    error names its row and column, ``[*loc, i, j]``, or the row for a wrong length.
    """
    if not isinstance(rows, list) or not rows:
        raise Invalid.at(loc, "expected a non-empty list")
    if all(type(r) is list and _NUMBER_TYPES.issuperset(map(type, r)) for r in rows):  # as plain_objects
        try:
            arr = np.asarray(rows, dtype=np.float64)
        except (ValueError, OverflowError):  # ragged rows, an int beyond double range
            arr = None
        if arr is not None and arr.shape == (len(rows), width) and _in_f32_range(arr):
            return arr.astype(np.float32)
    for i, r in enumerate(rows):
        if not isinstance(r, list):
            raise Invalid.at([*loc, i], f"expected a list of {width} numbers, got {kind(r)}")
        if len(r) != width:
            raise Invalid.at([*loc, i], f"expected {width} values, got {len(r)}")
        for j, v in enumerate(r):
            why = number_problem(v)
            if why is not None:
                raise Invalid.at([*loc, i, j], why)
    raise Invalid.at(loc, "expected a list of rows of numbers")  # pragma: no cover - a value numpy refused


def plain_matrix(rows: Any, width: int) -> np.ndarray | None:
    """:func:`check_matrix`'s result without its per-value type check, for rows that the
    caller knows hold nothing but numbers, ``null`` and nesting (parsed from bytes with no
    string and no boolean: :func:`app.predict.service.plain_request`); None when anything
    is off (ragged, wrong width, out of float32 range, ``null``) — then
    :func:`check_matrix` says what."""
    if type(rows) is not list or not rows:
        return None
    try:
        arr = np.asarray(rows, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        return None
    if arr.shape != (len(rows), width) or not _in_f32_range(arr):
        return None
    return arr.astype(np.float32)
