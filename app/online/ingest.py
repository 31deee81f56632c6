"""``/update`` bodies → packed float32 arrays, fast, with precise per-sample errors.

Two body formats (API.md, "Online learning"):

* JSON ``{"samples": [{"x": [...], "y": ...}, ...]}``, read whole (the body limit
  bounds it);
* NDJSON (``application/x-ndjson``): one sample object per line, consumed chunk
  by chunk as it arrives, so memory stays bounded by the packed arrays (about
  a third of the text) plus one chunk of parsed lines.

Output shapes (the sample log's packed layout, see :func:`app.training.data.unpack_batch`):
``X`` float32 ``[n, input_dim]``; ``Y`` float32 ``[n, output_dim]`` for
regression, float32 ``[n]`` in {0, 1} for binary, int64 ``[n]`` for multiclass.

**Fast path.** orjson parses the bytes; a list comprehension picks out the
``x`` / ``y`` references; one ``np.asarray(..., float32)`` call per chunk fills
``X`` and vectorized checks do the rest. ``np.asarray`` would silently turn a
boolean into 1.0, a numeric string into its value and ``null`` into NaN, so the
fast path is only trusted for "plain" bytes (:func:`plain_bytes`): no ``t`` and
no ``f`` (so no ``true`` / ``false``) and exactly as many ``"`` as the keys of
``n`` well-formed samples need (``"x"`` and ``"y"``: 4 per sample, plus 2 for
``"samples"`` in a JSON body). Any string value, extra key or string inside a
sample adds quotes, and a missing key makes ``s["x"]`` fail, so in plain bytes
every sample is an object with exactly the keys ``x`` and ``y`` and no strings
anywhere. Ragged or nested lists show up as a wrong shape or a ``ValueError``,
``null`` as NaN (refused by the range check).

**Slow path.** Anything unusual (a check failed, a non-standard token such as
``NaN``) falls back to :func:`_check_sample`, which walks the samples in order
and raises the first error with its precise place. It is the definition of
validity: the fast path accepts a subset of what it accepts, with identical
arrays.

Errors (API.md): one bad sample rejects the request with 422 at
``["body", "samples", i, "x" | "y"]`` (``i`` the 0-based sample index, for NDJSON
as for JSON; blank NDJSON lines are skipped and do not count); a line that is
not JSON is 400 naming its 1-based line number.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from app.core.errors import BadRequest, Invalid

F32_MAX = float(np.finfo(np.float32).max)
SAMPLES: list[str | int] = ["body", "samples"]
#: NDJSON text is parsed in slices of about this many bytes (whole lines).
NDJSON_SLICE = 256 * 1024
QUOTE = ord('"')
#: JSON's whitespace within a line (bytes.isspace() would also take \v and \f).
JSON_SPACE = b" \t\r"


@dataclass(frozen=True)
class SampleSpec:
    """What one sample of a model must look like."""

    task: str
    input_dim: int
    output_dim: int

    @property
    def y_dtype(self) -> Any:
        return np.int64 if self.task == "multiclass" else np.float32

    @property
    def y_shape(self) -> tuple[int, ...]:
        return (self.output_dim,) if self.task == "regression" else ()


# --------------------------------------------------------------------------- errors
def _bad(i: int, field: str | None, msg: str) -> Invalid:
    loc = [*SAMPLES, i] if field is None else [*SAMPLES, i, field]
    return Invalid.at(loc, msg)


def _kind(v: Any) -> str:
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


def _number_problem(v: Any) -> str | None:
    """Why ``v`` is not a finite float32 number, or None when it is one."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return f"expected a number, got {_kind(v)}"
    if isinstance(v, float) and not math.isfinite(v):
        word = "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")
        return f"{word} is not a finite number"
    if abs(v) > F32_MAX:
        return "overflows float32"
    return None


def _check_sample(spec: SampleSpec, smp: Any, i: int) -> None:
    """Raise the first problem of sample ``i`` (x before y), or return."""
    if not isinstance(smp, dict):
        raise _bad(i, None, f'expected an object {{"x": [...], "y": ...}}, got {_kind(smp)}')
    for k in smp:
        if k not in ("x", "y"):
            raise _bad(i, str(k), "unexpected field (a sample has only x and y)")
    if "x" not in smp:
        raise _bad(i, "x", "field required")
    x = smp["x"]
    if not isinstance(x, list):
        raise _bad(i, "x", f"expected a list of {spec.input_dim} numbers, got {_kind(x)}")
    if len(x) != spec.input_dim:
        raise _bad(i, "x", f"expected {spec.input_dim} values, got {len(x)}")
    for j, v in enumerate(x):
        why = _number_problem(v)
        if why is not None:
            raise _bad(i, "x", f"x[{j}]: {why}")
    if "y" not in smp:
        raise _bad(i, "y", "field required")
    _check_label(spec, smp["y"], i)


def _check_label(spec: SampleSpec, y: Any, i: int) -> None:
    if spec.task == "binary":
        if isinstance(y, list) and len(y) == 1:
            y = y[0]
        if isinstance(y, bool) or not isinstance(y, int | float) or y not in (0, 1):
            raise _bad(i, "y", f"expected 0 or 1, got {y!r}" if _is_num(y) else f"expected 0 or 1, got {_kind(y)}")
        return
    if spec.task == "multiclass":
        k = spec.output_dim
        if not _is_num(y) or (isinstance(y, float) and not (math.isfinite(y) and y.is_integer())):
            raise _bad(i, "y", f"expected an integer class index in 0..{k - 1}, got {y!r}")
        if not 0 <= int(y) < k:
            raise _bad(i, "y", f"class index must be in 0..{k - 1}, got {int(y)}")
        return
    if spec.output_dim == 1 and not isinstance(y, list):
        y = [y]
    if not isinstance(y, list) or len(y) != spec.output_dim:
        got = f"{len(y)} values" if isinstance(y, list) else _kind(y)
        raise _bad(i, "y", f"expected {spec.output_dim} target values, got {got}")
    for j, v in enumerate(y):
        why = _number_problem(v)
        if why is not None:
            raise _bad(i, "y", f"y[{j}]: {why}" if spec.output_dim > 1 else why)


def _is_num(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, int | float)


# --------------------------------------------------------------------------- conversion
def _in_f32_range(A: np.ndarray) -> bool:
    """All values finite and within float32 range (NaN fails both comparisons)."""
    return A.size == 0 or bool(A.max() <= F32_MAX and A.min() >= -F32_MAX)


def _inside_f32(A: np.ndarray) -> bool:
    """All values of a float32 array strictly inside (-F32_MAX, F32_MAX): finite, and
    certainly not the rounding of a larger double (those land on ±F32_MAX or ±inf)."""
    return A.size == 0 or bool(A.max() < F32_MAX and A.min() > -F32_MAX)


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


def _fast(spec: SampleSpec, samples: list[Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """(X float32, Y packed) of a plain chunk (see the module docstring), or None for
    the slow path."""
    n = len(samples)
    try:
        xs = [s["x"] for s in samples]
        ys = [s["y"] for s in samples]
        with np.errstate(over="ignore", invalid="ignore"):
            X = np.asarray(xs, dtype=np.float32)
    except (KeyError, TypeError, ValueError, OverflowError, IndexError):
        return None
    if X.shape != (n, spec.input_dim) or not _inside_f32(X):
        return None
    Y = _fast_labels(spec, ys, n)
    if Y is None:
        return None
    return X, Y


def _slow(spec: SampleSpec, samples: list[Any], base: int) -> tuple[np.ndarray, np.ndarray]:
    for k, smp in enumerate(samples):
        _check_sample(spec, smp, base + k)
    n = len(samples)
    X = np.array([s["x"] for s in samples], dtype=np.float64).reshape(n, spec.input_dim)
    ys = [s["y"] for s in samples]
    if spec.task == "binary":
        Y = np.array([y[0] if isinstance(y, list) else y for y in ys], dtype=np.float32)
    elif spec.task == "multiclass":
        Y = np.array([int(y) for y in ys], dtype=np.int64)
    else:
        Y = np.array([y if isinstance(y, list) else [y] for y in ys], dtype=np.float64).astype(np.float32)
    return X, Y


def convert(
    spec: SampleSpec, samples: list[Any], base: int = 0, *, trusted: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and pack ``samples`` (sample ``k`` has index ``base + k`` in errors).

    Returns ``(X, Y)``: ``X`` float32, float64 or integer ``[n, input_dim]`` with every
    value within float32 range (cast it with ``astype(float32, copy=False)``), ``Y``
    packed per task. Pass ``trusted=True`` only for samples parsed by orjson from
    :func:`plain_bytes`; otherwise the slow path decides.
    """
    out = _fast(spec, samples) if trusted else None
    return out if out is not None else _slow(spec, samples, base)


def _std_loads(data: bytes | str) -> Any:
    """The standard library parser, which also reads NaN / Infinity / -Infinity and
    numbers out of double range (as infinities), so they can be reported as 422."""
    return json.loads(data)


def plain_bytes(data: bytes, quotes: int) -> bool:
    """True when ``data`` holds no JSON boolean and exactly ``quotes`` double quotes:
    the ones of the keys of well-formed samples (4 each, ``"x"`` and ``"y"``, plus 2
    for ``"samples"`` in a JSON body). Then no string, extra key or boolean can hide
    in what orjson parsed, and the fast path may trust ``np.asarray``."""
    if b"t" in data or b"f" in data:  # memchr: fast
        return False
    # the count as one vectorized pass (bytes.count is a byte-at-a-time loop, ~5× slower)
    return int(np.count_nonzero(np.frombuffer(data, np.uint8) == QUOTE)) == quotes


# --------------------------------------------------------------------------- buffers
class SampleArrays:
    """Growing packed arrays (capacity doubles); ``X`` / ``Y`` are views of the filled part."""

    def __init__(self, spec: SampleSpec, capacity: int = 1024) -> None:
        self.spec = spec
        self.n = 0
        self._X = np.empty((max(capacity, 1), spec.input_dim), dtype=np.float32)
        self._Y = np.empty((max(capacity, 1), *spec.y_shape), dtype=spec.y_dtype)

    def _grow(self, need: int) -> None:
        cap = len(self._X)
        if need <= cap:
            return
        while cap < need:
            cap *= 2
        X = np.empty((cap, self.spec.input_dim), dtype=np.float32)
        Y = np.empty((cap, *self.spec.y_shape), dtype=self.spec.y_dtype)
        X[: self.n] = self._X[: self.n]
        Y[: self.n] = self._Y[: self.n]
        self._X, self._Y = X, Y

    def extend(self, X: np.ndarray, Y: np.ndarray) -> None:
        k = len(X)
        self._grow(self.n + k)
        np.copyto(self._X[self.n : self.n + k], X, casting="unsafe")
        np.copyto(self._Y[self.n : self.n + k], Y, casting="unsafe")
        self.n += k

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Views ``(X[:n], Y[:n])`` of the filled part."""
        return self._X[: self.n], self._Y[: self.n]


# --------------------------------------------------------------------------- JSON
def parse_json(spec: SampleSpec, body: bytes) -> tuple[np.ndarray, np.ndarray]:
    """A whole JSON body ``{"samples": [...]}`` → (X float32, Y)."""
    trusted = True
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        try:  # NaN, Infinity or 1e400 are 422 at their sample, not 400
            doc = _std_loads(body)
        except (ValueError, RecursionError):
            raise BadRequest(f"malformed JSON body: {e}") from None
        trusted = False
    if not isinstance(doc, dict):
        raise Invalid.at(["body"], f'expected an object {{"samples": [...]}}, got {_kind(doc)}')
    for k in doc:
        if k != "samples":
            raise Invalid.at(["body", str(k)], "unexpected field")
    if "samples" not in doc:
        raise Invalid.at(SAMPLES, "field required")
    samples = doc["samples"]
    if not isinstance(samples, list):
        raise Invalid.at(SAMPLES, f"expected a list of samples, got {_kind(samples)}")
    if not samples:
        raise Invalid.at(SAMPLES, "expected at least one sample")
    X, Y = convert(spec, samples, 0, trusted=trusted and plain_bytes(body, 2 + 4 * len(samples)))
    del doc, samples
    return X.astype(np.float32, copy=False), Y


# --------------------------------------------------------------------------- NDJSON
class NDJSONParser:
    """Incremental NDJSON reader: :meth:`feed` bytes as they arrive, then :meth:`finish`.

    Whole lines are parsed in slices of about :data:`NDJSON_SLICE` bytes; their
    samples go straight into :class:`SampleArrays`. ``on_bytes`` (if given) sees
    every byte fed, in order (the request hash for idempotency).
    """

    def __init__(self, spec: SampleSpec, on_bytes: Callable[[bytes], None] | None = None) -> None:
        self.spec = spec
        self.out = SampleArrays(spec)
        self._pending = bytearray()
        self._line = 0  # lines consumed so far (1-based numbers in errors)
        self._on_bytes = on_bytes

    def feed(self, chunk: bytes) -> None:
        if self._on_bytes is not None:
            self._on_bytes(chunk)
        self._pending += chunk
        if len(self._pending) >= NDJSON_SLICE:
            cut = self._pending.rfind(b"\n")
            if cut >= 0:
                part = bytes(self._pending[: cut + 1])
                del self._pending[: cut + 1]
                self._parse(part)

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        if self._pending:
            part = bytes(self._pending)
            self._pending.clear()
            self._parse(part)
        if self.out.n == 0:
            raise Invalid.at(SAMPLES, "expected at least one sample (one JSON object per line)")
        return self.out.arrays()

    def _parse(self, part: bytes) -> None:
        if self._parse_joined(part):
            return
        raw = part.split(b"\n")
        if raw and raw[-1] == b"":
            raw.pop()
        first_line = self._line + 1
        self._line += len(raw)
        lines = [ln for ln in raw if ln.strip(JSON_SPACE)]
        if not lines:
            return
        loads = orjson.loads
        try:
            docs = [loads(ln) for ln in lines]
        except orjson.JSONDecodeError:
            docs = None
        base = self.out.n
        if docs is not None:
            X, Y = convert(self.spec, docs, base, trusted=plain_bytes(part, 4 * len(docs)))
            self.out.extend(X, Y)
            return
        # A line did not parse: go line by line so the first problem is reported, in order.
        for offset, ln in enumerate(raw):
            if not ln.strip(JSON_SPACE):
                continue
            number = first_line + offset
            i = self.out.n
            try:
                doc = loads(ln)
                trusted = plain_bytes(ln, 4)
            except orjson.JSONDecodeError as e:
                try:
                    doc = _std_loads(ln)
                    trusted = False
                except (ValueError, RecursionError):
                    raise BadRequest(
                        f"line {number} of the NDJSON body (sample {i}) is not valid JSON: {e}",
                        errors=[{"loc": [*SAMPLES, i], "msg": f"malformed JSON: {e}", "line": number}],
                    ) from None
            X, Y = convert(self.spec, [doc], i, trusted=trusted)
            self.out.extend(X, Y)

    def _parse_joined(self, part: bytes) -> bool:
        """Fast path: parse a slice of well-formed lines as ONE JSON array.

        Sound only when every line is exactly one ``{…}`` with no brace inside (a
        sample never has one): checked byte-wise — every line starts with ``{`` and
        ends with ``}``, and there are as many of each as lines. Then array elements
        and lines coincide. Anything else (blank lines, CR, a bad line) → False and
        the line-by-line path decides.
        """
        if not part.endswith(b"\n"):
            part += b"\n"
        a = np.frombuffer(part, np.uint8)
        nl = np.flatnonzero(a == 10)
        n = len(nl)
        if (
            n == 0
            or a[0] != 123
            or not (a[nl - 1] == 125).all()
            or not (a[nl[:-1] + 1] == 123).all()
            or np.count_nonzero(a == 123) != n
            or np.count_nonzero(a == 125) != n
        ):
            return False
        try:
            docs = orjson.loads(b"[" + part[:-1].replace(b"\n", b",") + b"]")
        except orjson.JSONDecodeError:
            return False
        if len(docs) != n:  # pragma: no cover - excluded by the byte checks
            return False
        X, Y = convert(self.spec, docs, self.out.n, trusted=plain_bytes(part, 4 * n))
        self.out.extend(X, Y)
        self._line += n
        return True


def parse_ndjson(spec: SampleSpec, body: bytes) -> tuple[np.ndarray, np.ndarray]:
    """A whole NDJSON body (tests and small bodies) → (X, Y)."""
    p = NDJSONParser(spec)
    for k in range(0, len(body), NDJSON_SLICE):
        p.feed(body[k : k + NDJSON_SLICE])
    return p.finish()
