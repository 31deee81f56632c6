"""``/update`` bodies → packed float32 arrays, fast, with precise per-sample errors.

Two body formats (API.md, "Online learning"):

* JSON ``{"samples": [{"x": [...], "y": ...}, ...]}``, read whole (the body limit
  bounds it); above :data:`JSON_WHOLE_MAX` bytes its samples array is cut at top-level
  commas by a vectorized scanner (:func:`split_samples`) and parsed slice by slice,
  so parsing costs the packed arrays plus one slice's Python objects, not a Python
  object per number of the whole body (≈ 20× the text);
* NDJSON (``application/x-ndjson``): one sample object per line, consumed chunk
  by chunk as it arrives, so memory stays bounded by the packed arrays (about
  a third of the text) plus one chunk of parsed lines.

What a valid sample is, the packed arrays and the errors are defined once, in
:mod:`app.online.samples`; this module reads the bytes. orjson parses them and
:func:`app.online.samples.convert` checks and packs the samples, on its fast path when
the bytes are "plain" (:func:`plain_bytes`): no ``t`` and no ``f`` (so no ``true`` /
``false``) and exactly as many ``"`` as the keys of ``n`` well-formed samples need
(``"x"`` and ``"y"``: 4 per sample, plus 2 for ``"samples"`` in a JSON body). Any
string value, extra key or string inside a sample adds quotes, and a missing key makes
``s["x"]`` fail, so in plain bytes every sample is an object with exactly the keys ``x``
and ``y`` and no strings anywhere; ``null`` becomes NaN, refused by the range check.
Anything else (a non-standard token such as ``NaN`` included) takes the slow path.

Errors (API.md): one bad sample rejects the request with 422 at
``["body", "samples", i, "x" | "y"]`` (``i`` the 0-based sample index, for NDJSON
as for JSON; blank NDJSON lines are skipped and do not count); a line that is
not JSON is 400 naming its 1-based line number.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from app.core.errors import BadRequest, Invalid
from app.core.jsonbody import loads
from app.online.samples import SAMPLES, SampleSpec, convert, fast, kind, parse_samples

#: NDJSON text is parsed in slices of about this many bytes (whole lines).
NDJSON_SLICE = 256 * 1024
QUOTE = ord('"')
#: Bodies shorter than this are scanned by ``bytes`` methods, longer ones by numpy.
SMALL_BODY = 4096
BACKSLASH = ord("\\")
COMMA = ord(",")
#: JSON's whitespace within a line (bytes.isspace() would also take \v and \f).
JSON_SPACE = b" \t\r"


def plain_bytes(data: bytes, quotes: int) -> bool:
    """True when ``data`` holds no JSON boolean and exactly ``quotes`` double quotes:
    the ones of the keys of well-formed samples (4 each, ``"x"`` and ``"y"``, plus 2
    for ``"samples"`` in a JSON body). Then no string, extra key or boolean can hide
    in what orjson parsed, and the fast path may trust ``np.asarray``.

    Nor can a duplicate key (orjson keeps the last value silently): every key costs at
    least 2 quotes, every sample orjson returned has both ``x`` and ``y`` and the body
    ``samples``, so exactly the expected count means no other key, repeated or not. So
    the fast path needs no check of its own; everything else goes to the strict reading,
    which refuses duplicates (:func:`app.core.jsonbody.loads`)."""
    if b"t" in data or b"f" in data:  # memchr: fast
        return False
    return count_quotes(data) == quotes


def count_quotes(data: bytes) -> int:
    """How many double quotes ``data`` holds."""
    if len(data) < SMALL_BODY:  # numpy's call costs more than counting a small body
        return data.count(b'"')
    # one vectorized pass (bytes.count is a byte-at-a-time loop, ~5× slower)
    return int(np.count_nonzero(np.frombuffer(data, np.uint8) == QUOTE))


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
def _read(body: bytes, what: str) -> Any:
    """The strict reading (:func:`app.core.jsonbody.loads`) of a body or line that orjson's
    reading did not settle: malformed JSON or a duplicate key is 400; numbers orjson
    refuses (NaN, Infinity, 1e999, integers of any length) are read, for a 422 at their place."""
    try:
        return loads(body)
    except (ValueError, RecursionError) as e:
        raise BadRequest(f"{what}: {e}") from None


def parse_json(spec: SampleSpec, body: bytes) -> tuple[np.ndarray, np.ndarray]:
    """A whole JSON body ``{"samples": [...]}`` → (X float32, Y).

    orjson's reading is used only when the bytes are plain (:func:`plain_bytes`: no
    duplicate key can hide in them) and the fast path accepts the samples; anything
    else is decided on the strict reading, :func:`_read`.

    A body larger than :data:`JSON_WHOLE_MAX` is parsed slice by slice (:func:`_parse_sliced`,
    each slice read the same way) when :func:`split_samples` can find its samples;
    otherwise, and for small bodies, at once. Both give the same arrays and errors."""
    if len(body) > JSON_WHOLE_MAX:
        where = split_samples(body)
        if where is not None:
            out = _parse_sliced(spec, body, *where)
            if out is not None:
                return out
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    samples = doc.get("samples") if type(doc) is dict and len(doc) == 1 else None
    if type(samples) is list and samples and plain_bytes(body, 2 + 4 * len(samples)):
        out = fast(spec, samples)
        if out is not None:
            return out
    del doc
    doc = _read(body, "malformed JSON body")
    if not isinstance(doc, dict):
        raise Invalid.at(["body"], f'expected an object {{"samples": [...]}}, got {kind(doc)}')
    for k in doc:
        if k != "samples":
            raise Invalid.at(["body", str(k)], "unexpected field")
    if "samples" not in doc:
        raise Invalid.at(SAMPLES, "field required")
    return parse_samples(spec, doc.pop("samples"), SAMPLES, trusted=False)


# --------------------------------------------------------------------------- JSON, in slices
#: JSON bodies up to this size are parsed whole (≈ 20× their size, bounded); larger ones in slices.
JSON_WHOLE_MAX = 1 << 20
#: Slices of a larger body hold whole samples, about this many bytes (:func:`split_samples`).
JSON_SLICE = 256 * 1024
#: The scanner looks at the body in chunks of this many bytes (its temporaries: ~13 bytes each).
SCAN_CHUNK = 256 * 1024
#: Deeper samples go to the whole-body parser (orjson's own limit counts the wrapping levels).
SCAN_MAX_DEPTH = 256
_HEAD = re.compile(rb'[ \t\n\r]*\{[ \t\n\r]*"samples"[ \t\n\r]*:[ \t\n\r]*\[')
_TAIL = re.compile(rb"[ \t\n\r]*\}[ \t\n\r]*")
_DELTA = np.zeros(256, np.int8)
_DELTA[[ord("["), ord("{")]] = 1
_DELTA[[ord("]"), ord("}")]] = -1


def split_samples(body: bytes) -> tuple[int, np.ndarray, int] | None:
    """Where the samples of a body ``{"samples": [...]}`` are, found without parsing it.

    Returns ``(start, commas, end)``: the array's elements are the byte ranges between
    ``start`` (just after ``[``), the top-level ``commas`` (int64 positions) and ``end``
    (the closing ``]``). None when the body is not exactly that object (whitespace
    aside), nests deeper than :data:`SCAN_MAX_DEPTH` or never closes the array: the
    whole-body parser then decides (and reports) as before.

    A vectorized pass per :data:`SCAN_CHUNK`: a quote not preceded by an odd run of
    backslashes toggles "inside a string", and outside strings ``[`` ``{`` / ``]`` ``}``
    move the depth. Whether the elements are valid JSON is left to the parser.
    """
    m = _HEAD.match(body)
    if m is None:
        return None
    start = m.end()
    depth, in_str, run = 1, 0, 0  # carried between chunks; run: backslashes ending the last chunk
    commas: list[np.ndarray] = []
    mv = memoryview(body)
    for c0 in range(start, len(body), SCAN_CHUNK):
        c1 = min(c0 + SCAN_CHUNK, len(body))
        a = np.frombuffer(mv[c0:c1], np.uint8)
        d = _DELTA[a]
        comma = a == COMMA
        if in_str or body.find(b'"', c0, c1) >= 0:
            q = a == QUOTE
            if run or body.find(b"\\", c0, c1) >= 0:
                q &= ~_escaped(a, run)
                plain = np.flatnonzero(a != BACKSLASH)
                run = run + len(a) if len(plain) == 0 else len(a) - 1 - int(plain[-1])
            inside = ((np.cumsum(q, dtype=np.int32) + in_str) & 1).astype(bool)
            in_str = int(inside[-1])
            inside |= q  # the quotes themselves are not structural either
            d[inside] = 0
            comma &= ~inside
        else:
            run = 0
        level = np.cumsum(d, dtype=np.int32)
        level += depth
        closed = np.flatnonzero(level == 0)
        stop = int(closed[0]) if len(closed) else len(a)
        if int(level[:stop].max(initial=depth)) > SCAN_MAX_DEPTH:
            return None
        commas.append(np.flatnonzero(comma[:stop] & (level[:stop] == 1)) + c0)
        if len(closed):
            end = c0 + stop
            if _TAIL.fullmatch(body, end + 1) is None:
                return None
            return start, np.concatenate(commas).astype(np.int64), end
        depth = int(level[-1])
    return None


def _escaped(a: np.ndarray, run: int) -> np.ndarray:
    """Per byte of ``a``: preceded by an odd run of backslashes (``run`` of them end the
    previous chunk)."""
    n = len(a)
    idx = np.arange(n, dtype=np.int64)
    last = np.maximum.accumulate(np.where(a == BACKSLASH, -1, idx))  # last non-backslash at or before i
    before = np.empty(n, np.int64)  # backslashes right before i
    before[0] = run
    prev = last[:-1]
    before[1:] = np.where(prev >= 0, idx[:-1] - prev, idx[1:] + run)
    return (before & 1).astype(bool)


def _parse_sliced(
    spec: SampleSpec, body: bytes, start: int, commas: np.ndarray, end: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Parse the samples array in slices of about :data:`JSON_SLICE` bytes of whole
    elements, each wrapped as its own array, packing each slice's samples before the
    next is read: memory is the packed arrays plus one slice's objects.

    Same answers as the whole-body parser: a 400 when any slice is not JSON even for
    the standard library (with orjson's first complaint, placed in the body; an empty
    element at a slice's end is called a trailing comma there), else the
    first bad sample's 422 (sample indices count from the array's start), else the
    arrays. None (the caller parses the body whole) if a slice does not hold as many
    elements as the scanner found."""
    n = len(commas) + 1
    if n == 1 and not body[start:end].strip(b" \t\n\r"):
        raise Invalid.at(SAMPLES, "expected at least one sample")
    starts = np.empty(n, np.int64)
    starts[0] = start
    starts[1:] = commas + 1
    ends = np.empty(n, np.int64)
    ends[:-1] = commas
    ends[-1] = end
    cuts = np.unique(np.searchsorted(starts, np.arange(start, end, JSON_SLICE), side="left"))
    bounds = [*cuts[cuts < n].tolist(), n]
    row = 4 * spec.input_dim + np.dtype(spec.y_dtype).itemsize * max(spec.output_dim, 1)
    out = SampleArrays(spec, capacity=min(n, 4 * len(body) // row + 1))
    first_error: Exception | None = None
    first_at = 0
    broken = False
    pending: Invalid | None = None
    for i, j in itertools.pairwise(bounds):
        lo, hi = int(starts[i]), int(ends[j - 1])
        text = b"[" + body[lo:hi] + b"]"
        try:  # as parse_json: orjson's reading only for plain bytes (no duplicate key can hide)
            docs = orjson.loads(text)
        except orjson.JSONDecodeError:
            docs = None
        trusted = type(docs) is list and plain_bytes(text, 4 * len(docs))
        if not trusted:
            try:
                docs = loads(text)
            except (ValueError, RecursionError) as e:
                first_error, first_at = e, lo - 1
                broken = True
                break
        if type(docs) is not list or len(docs) != j - i:
            return None
        if pending is not None:
            continue  # only looking for a malformed slice now, which would answer 400 instead
        try:
            X, Y = convert(spec, docs, out.n, trusted=trusted)
        except Invalid as e:
            pending = e
            continue
        del docs
        out.extend(X, Y)
    if broken:
        assert first_error is not None
        raise BadRequest(f"malformed JSON body: {_placed(first_error, body, first_at)}")
    if pending is not None:
        raise pending
    X, Y = out.arrays()
    return X, Y


def _placed(e: Exception, body: bytes, shift: int) -> str:
    """``e`` (raised for a slice that starts at ``body[shift]``) with its place in the whole
    body's terms when it has one: ``msg: line L column C (char P)``."""
    at = getattr(e, "pos", None)
    if not isinstance(at, int):
        return str(e)
    pos = shift + at
    line = body.count(b"\n", 0, pos) + 1
    col = pos - body.rfind(b"\n", 0, pos)
    return f"{getattr(e, 'msg', e)}: line {line} column {col} (char {pos})"


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
        try:
            docs = [orjson.loads(ln) for ln in lines]
        except orjson.JSONDecodeError:
            docs = None
        if docs is not None and plain_bytes(part, 4 * len(docs)):
            out = fast(self.spec, docs)
            if out is not None:
                self.out.extend(*out)
                return
        # Line by line on the strict reading, so the first problem is reported, in order.
        for offset, ln in enumerate(raw):
            if not ln.strip(JSON_SPACE):
                continue
            number = first_line + offset
            i = self.out.n
            try:
                doc = loads(ln)
            except (ValueError, RecursionError) as e:
                raise BadRequest(
                    f"line {number} of the NDJSON body (sample {i}) is not valid JSON: {e}",
                    errors=[{"loc": [*SAMPLES, i], "msg": f"malformed JSON: {e}", "line": number}],
                ) from None
            X, Y = convert(self.spec, [doc], i, trusted=False)
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
        if not plain_bytes(part, 4 * n):
            return False
        out = fast(self.spec, docs)
        if out is None:
            return False
        self.out.extend(*out)
        self._line += n
        return True


def parse_ndjson(spec: SampleSpec, body: bytes) -> tuple[np.ndarray, np.ndarray]:
    """A whole NDJSON body (tests and small bodies) → (X, Y)."""
    p = NDJSONParser(spec)
    for k in range(0, len(body), NDJSON_SLICE):
        p.feed(body[k : k + NDJSON_SLICE])
    return p.finish()
