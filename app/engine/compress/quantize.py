"""Post-training weight quantization of a :class:`~app.engine.nn.network.Network`.

Weights ``W`` [out, in] float32 are stored as integers ``q`` with a float32 ``scale`` and, for
some schemes, an integer ``zero_point``; the dequantized weight is ``(q − zero_point) · scale``
(exactly :func:`app.engine.codec.dequantize`). Biases stay float32.

A *channel* is an output row ``c`` (``per_channel``: ``scale`` [out]); ``per_tensor`` uses one
value for the whole matrix (``scale`` of shape []). ``round`` is round-half-to-even
(``np.rint``, as in ONNX). Scales are computed in float64 and stored as float32; ``q`` is then
computed from the *stored* float32 scale, in float32: ``W / scale``.

=====================  ==========================================================================
scheme                 formula
=====================  ==========================================================================
int8 symmetric         ``scale = max|W_c| / 127``, ``q = clip(round(W / scale), −127, 127)``,
                       no zero point (−128 is never used)
uint8 symmetric        the same scale, ``zero_point = 128``: ``q = round(W / scale) + 128`` in
                       [1, 255] (0 unused), so the grid is symmetric around 0 like int8's
int8 / uint8           ``lo = min(min W_c, 0)``, ``hi = max(max W_c, 0)`` (range widened to
asymmetric             contain 0), ``scale = (hi − lo) / 255``,
                       ``zero_point = clip(round(qmin − lo / scale), qmin, qmax)``,
                       ``q = clip(round(W / scale) + zero_point, qmin, qmax)``;
                       (qmin, qmax) = (−128, 127) for int8, (0, 255) for uint8
float16                ``W.astype(float16)``; no scale (|W| must be ≤ 65504)
=====================  ==========================================================================

Guarantees: ``0.0`` is exactly representable (``W = 0`` gives ``q = zero_point``), and
``|W − dequant(q)| ≤ scale / 2`` for every entry up to float32 rounding (the clip in the
asymmetric scheme moves an extreme value by less than the zero point's rounding, ≤ ½).
A channel whose scale would be 0 or subnormal (all |W_c| < 127 · 2⁻¹²⁶, i.e. an all-zero
row) gets ``scale = 1``; its entries quantize to the zero point and dequantize to 0.0, within
the bound. The symmetric clip is a no-op: ``|W / scale| ≤ 127 · (1 + 2⁻²³) < 127.5``.

Speed and memory: one tensor at a time, in blocks of ``block_rows`` rows with preallocated
float32 buffers, so the work stays in cache and only the integer output is allocated. The
per-layer error report (``max`` and ``mean`` of ``|W − dequant(q)|``) is computed in the same
pass as ``scale · |W / scale − (q − zero_point)|`` (equal to the dequantized difference up to
float32 rounding of ``(q − zero_point) · scale``, ≈ 1 ulp of |W|); it costs about a third of
the time. ``threads > 1`` splits the rows of each tensor between threads (numpy
releases the GIL); results are identical for any ``threads`` and ``block_rows``.

Everything here is pure numpy: no I/O, no imports from the web or database layers.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.engine.nn.network import F32, Network

DTYPES = ("int8", "uint8", "float16")
SCHEMES = ("symmetric", "asymmetric")
GRANULARITIES = ("per_channel", "per_tensor")

#: Rows per block: 64 rows of a 4096-wide matrix is 1 MiB of float32 (≈ one core's L2).
BLOCK_ROWS = 64
_TINY = float(np.finfo(np.float32).tiny)
_F16_MAX = float(np.finfo(np.float16).max)  # 65504


class QuantizeError(ValueError):
    """Invalid quantization request (unknown dtype / scheme / granularity, nothing to
    quantize) or weights that cannot be quantized (non-finite, out of float16 range)."""


@dataclass(frozen=True)
class Scheme:
    """A checked quantization scheme.

    ``qmin`` / ``qmax``: the integer range used; ``zero_point``: the fixed zero point of the
    symmetric uint8 scheme (128), None when none or computed (asymmetric)."""

    dtype: str
    scheme: str
    granularity: str

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def is_float(self) -> bool:
        return self.dtype == "float16"

    @property
    def asymmetric(self) -> bool:
        return not self.is_float and self.scheme == "asymmetric"

    @property
    def qmin(self) -> int:
        if self.asymmetric:
            return -128 if self.dtype == "int8" else 0
        return -127 if self.dtype == "int8" else 1

    @property
    def qmax(self) -> int:
        if self.asymmetric:
            return 127 if self.dtype == "int8" else 255
        return 127 if self.dtype == "int8" else 255

    @property
    def fixed_zero_point(self) -> int | None:
        return 128 if (self.dtype == "uint8" and not self.asymmetric) else None

    @property
    def has_zero_point(self) -> bool:
        return self.asymmetric or self.fixed_zero_point is not None


def make_scheme(dtype: str, scheme: str = "symmetric", granularity: str = "per_channel") -> Scheme:
    """Check the options (names of API.md) and return the :class:`Scheme`. For ``float16`` the
    scheme and granularity are accepted but have no effect."""
    if dtype not in DTYPES:
        raise QuantizeError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if scheme not in SCHEMES:
        raise QuantizeError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if granularity not in GRANULARITIES:
        raise QuantizeError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    return Scheme(dtype, scheme, granularity)


def qparams(lo: np.ndarray, hi: np.ndarray, sch: Scheme) -> tuple[np.ndarray, np.ndarray | None]:
    """Scales (float32) and zero points (float64 holding integers, or None) from the minima
    ``lo`` and maxima ``hi`` of each channel (any shape, float). See the module table."""
    lo64 = np.minimum(np.asarray(lo, dtype=np.float64), 0.0)
    hi64 = np.maximum(np.asarray(hi, dtype=np.float64), 0.0)
    if sch.asymmetric:
        scale = ((hi64 - lo64) / float(sch.qmax - sch.qmin)).astype(F32)
    else:
        scale = (np.maximum(-lo64, hi64) / 127.0).astype(F32)
    scale = np.where(scale >= _TINY, scale, F32(1.0)).astype(F32)
    if sch.asymmetric:
        zp = np.clip(np.rint(sch.qmin - lo64 / scale.astype(np.float64)), sch.qmin, sch.qmax)
    elif sch.fixed_zero_point is not None:
        zp = np.full(scale.shape, float(sch.fixed_zero_point))
    else:
        zp = None
    return scale, zp


# --------------------------------------------------------------------------- one tensor
@dataclass
class QuantizedTensor:
    """``q`` [out, in] (int8 / uint8 / float16), ``scale`` float32 [out] or [] (None for
    float16), ``zero_point`` [out] or [] in ``q``'s dtype (None when the scheme has none),
    and the error ``|W − dequant(q)|`` (max and mean; None when not computed)."""

    q: np.ndarray
    scale: np.ndarray | None
    zero_point: np.ndarray | None
    max_abs_error: float | None
    mean_abs_error: float | None

    def dequantize(self) -> np.ndarray:
        """``(q − zero_point) · scale`` as float32 [out, in] (float16: ``q.astype(float32)``)."""
        if self.scale is None:
            return self.q.astype(F32)
        qf = self.q.astype(F32)
        zp = None if self.zero_point is None else self.zero_point.astype(F32)
        s = self.scale
        if s.ndim == 1:
            s = s[:, None]
            zp = None if zp is None else zp[:, None]
        if zp is not None:
            qf -= zp
        W: np.ndarray = qf * s
        return W


def _row_ranges(n: int, parts: int) -> list[tuple[int, int]]:
    step = -(-n // parts)
    return [(a, min(n, a + step)) for a in range(0, n, step)]


def _minmax_rows(r0: int, r1: int, W: np.ndarray, lo: np.ndarray, hi: np.ndarray, block_rows: int) -> None:
    """Row minima / maxima of ``W[r0:r1]`` into ``lo[r0:r1]`` / ``hi[r0:r1]``."""
    for a in range(r0, r1, block_rows):
        b = min(r1, a + block_rows)
        np.minimum.reduce(W[a:b], axis=1, out=lo[a:b])
        np.maximum.reduce(W[a:b], axis=1, out=hi[a:b])


class _Job:
    """Quantization of one tensor; ``run(r0, r1)`` handles a row range (one per thread)."""

    def __init__(self, W: np.ndarray, sch: Scheme, block_rows: int, report_error: bool, name: str) -> None:
        self.W, self.sch, self.block_rows, self.report, self.name = W, sch, block_rows, report_error, name
        out = W.shape[0]
        self.q = np.empty(W.shape, dtype=np.float16 if sch.is_float else sch.np_dtype)
        # error per row, in units of the row's scale: max and sum of |W / scale − (q − zp)|
        self.err_max = np.zeros(out, dtype=F32)
        self.err_sum = np.zeros(out, dtype=F32)
        self.row_lo = np.empty(out, dtype=F32)
        self.row_hi = np.empty(out, dtype=F32)
        # per-tensor parameters (set before run for per_tensor granularity)
        self.tensor_scale: np.ndarray | None = None
        self.tensor_zp: np.ndarray | None = None
        self.scale = np.empty(out, dtype=F32)
        self.zp = np.empty(out, dtype=np.float64)

    def run(self, r0: int, r1: int) -> None:
        W, sch, br = self.W, self.sch, self.block_rows
        cols = W.shape[1]
        buf = np.empty((br, cols), dtype=F32)
        rbuf = np.empty((br, cols), dtype=F32)
        ones = np.ones(cols, dtype=F32)
        colv = np.empty((br, 1), dtype=F32)
        zcol = np.empty((br, 1), dtype=F32)
        per_channel = sch.granularity == "per_channel"
        s_col: np.ndarray
        z_col: np.ndarray | np.float32 | None
        for a in range(r0, r1, br):
            b = min(r1, a + br)
            m = b - a
            blk, bb, rr = W[a:b], buf[:m], rbuf[:m]
            if sch.is_float:
                qb = self.q[a:b]
                np.copyto(qb, blk, casting="same_kind")
                if self.report:
                    np.subtract(blk, qb, out=bb)
                    self._err(bb, a, b, ones)
                continue
            if per_channel:
                np.minimum.reduce(blk, axis=1, out=self.row_lo[a:b])
                np.maximum.reduce(blk, axis=1, out=self.row_hi[a:b])
                _check_range(self.row_lo[a:b], self.row_hi[a:b], sch, self.name)
                s, zp = qparams(self.row_lo[a:b], self.row_hi[a:b], sch)
                self.scale[a:b] = s
                s_col = colv[:m]
                s_col[:, 0] = s
                if zp is not None:
                    self.zp[a:b] = zp
                    z_col = zcol[:m]
                    z_col[:, 0] = zp
                else:
                    z_col = None
            else:
                assert self.tensor_scale is not None, "the per-tensor scale is set before run"
                s_col = self.tensor_scale
                z_col = None if self.tensor_zp is None else F32(self.tensor_zp)
            # q = clip(round(W / s) + zp, qmin, qmax) = r + zp with r = clip(round(W / s), qmin − zp, qmax − zp)
            np.divide(blk, s_col, out=bb)  # W / scale
            r = rr if self.report else bb
            np.rint(bb, out=r)
            if sch.asymmetric:
                assert z_col is not None, "asymmetric schemes have a zero point"
                np.clip(r, sch.qmin - z_col, sch.qmax - z_col, out=r)
            if self.report:
                np.subtract(bb, r, out=bb)  # (W − dequant(q)) / scale, exact in float32
                self._err(bb, a, b, ones)
            if z_col is not None:
                r += z_col
            np.copyto(self.q[a:b], r, casting="unsafe")

    def _err(self, d: np.ndarray, a: int, b: int, ones: np.ndarray) -> None:
        """Row max and row sum of |d| into ``err_max[a:b]`` / ``err_sum[a:b]``."""
        np.abs(d, out=d)
        np.maximum.reduce(d, axis=1, out=self.err_max[a:b])
        np.dot(d, ones, out=self.err_sum[a:b])  # row sums by BLAS gemv: ~3× np.sum(axis=1)

    def errors(self) -> tuple[float, float]:
        """(max, mean) of |W − dequant(q)| over the tensor (after every row was run)."""
        s: np.ndarray | np.float64
        if self.sch.is_float:
            s = np.float64(1.0)
        elif self.sch.granularity == "per_channel":
            s = self.scale.astype(np.float64)
        else:
            s = np.float64(self.tensor_scale)
        emax = float((self.err_max * s).max())
        emean = float((self.err_sum.astype(np.float64) * s).sum() / self.W.size)
        return emax, emean


def quantize_tensor(
    W: np.ndarray,
    dtype: str = "int8",
    scheme: str = "symmetric",
    granularity: str = "per_channel",
    *,
    block_rows: int = BLOCK_ROWS,
    threads: int = 1,
    report_error: bool = True,
    name: str = "weight",
) -> QuantizedTensor:
    """Quantize one weight matrix ``W`` [out, in] (float32, finite) — see the module table.

    Raises :class:`QuantizeError` (naming ``name``) for non-finite values, or values beyond
    float16's range for ``float16``.
    """
    sch = make_scheme(dtype, scheme, granularity)
    W = np.ascontiguousarray(W, dtype=F32)
    if W.ndim != 2:
        raise QuantizeError(f"{name}: expected a 2-D [out, in] matrix, got shape {list(W.shape)}")
    out = W.shape[0]
    job = _Job(W, sch, max(1, int(block_rows)), report_error, name)
    ranges = _row_ranges(out, max(1, int(threads))) if out else []
    pool = ThreadPoolExecutor(len(ranges)) if len(ranges) > 1 else None
    try:

        def each(fn: Callable[..., None], *args: Any) -> None:
            if pool is None:
                for r in ranges:
                    fn(*r, *args)
            else:
                for f in [pool.submit(fn, *r, *args) for r in ranges]:
                    f.result()

        if sch.is_float or sch.granularity == "per_tensor":
            each(_minmax_rows, W, job.row_lo, job.row_hi, job.block_rows)
            _check_range(job.row_lo, job.row_hi, sch, name)
            if not sch.is_float:
                s, zp = qparams(job.row_lo.min(initial=0.0), job.row_hi.max(initial=0.0), sch)
                job.tensor_scale, job.tensor_zp = s, zp
        each(job.run)
    finally:
        if pool is not None:
            pool.shutdown()

    scale: np.ndarray | None
    zero_point: np.ndarray | None
    if sch.is_float:
        scale = zero_point = None
    elif sch.granularity == "per_channel":
        scale = job.scale
        zero_point = job.zp.astype(sch.np_dtype) if sch.has_zero_point else None
    else:
        scale = np.asarray(job.tensor_scale, dtype=F32).reshape(())
        zero_point = np.asarray(job.tensor_zp).astype(sch.np_dtype).reshape(()) if sch.has_zero_point else None
    emax, emean = job.errors() if report_error else (None, None)
    return QuantizedTensor(job.q, scale, zero_point, emax, emean)


def _check_range(lo: np.ndarray, hi: np.ndarray, sch: Scheme, name: str) -> None:
    if lo.size and not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise QuantizeError(f"{name}: contains NaN or infinite values")
    if sch.is_float and lo.size and max(-float(lo.min()), float(hi.max())) > _F16_MAX:
        raise QuantizeError(f"{name}: values beyond ±{_F16_MAX:g} do not fit float16")


# --------------------------------------------------------------------------- network
@dataclass
class QuantizeResult:
    """Tensors to store (API layout) plus the error report.

    ``tensors``: ``layers.{i}.weight`` (int8 / uint8 / float16 [out, in]),
    ``layers.{i}.weight_scale`` (float32 [out] or [], integer dtypes only),
    ``layers.{i}.weight_zero_point`` (same dtype as the weight, [out] or []; asymmetric and
    uint8 symmetric), ``layers.{i}.bias`` (float32 [out], shared with the input network).
    ``layers[i]``: ``{"max_abs_error", "mean_abs_error"}`` of ``|W_i − dequant(q_i)|``.
    """

    tensors: dict[str, np.ndarray]
    dtype: str
    scheme: str
    granularity: str
    layers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def max_abs_error(self) -> float | None:
        vals = [d["max_abs_error"] for d in self.layers]
        return None if not vals or None in vals else max(vals)

    @property
    def mean_abs_error(self) -> float | None:
        """Mean over all weight entries (weighted by layer size)."""
        if not self.layers or any(d["mean_abs_error"] is None for d in self.layers):
            return None
        n = sum(d["size"] for d in self.layers)
        return sum(d["mean_abs_error"] * d["size"] for d in self.layers) / n if n else 0.0

    def report(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype,
            "scheme": self.scheme,
            "granularity": self.granularity,
            "max_abs_error": self.max_abs_error,
            "mean_abs_error": self.mean_abs_error,
            "layers": [dict(d) for d in self.layers],
        }


def quantize_network(
    net: Network,
    dtype: str = "int8",
    scheme: str = "symmetric",
    granularity: str = "per_channel",
    *,
    block_rows: int = BLOCK_ROWS,
    threads: int = 1,
    report_error: bool = True,
) -> QuantizeResult:
    """Quantize every weight matrix of ``net`` (one tensor at a time); biases stay float32.

    Peak extra memory: the quantized outputs (¼ of the float32 weights for int8, ½ for
    float16) plus two ``block_rows × in`` float32 buffers per thread.
    Raises :class:`QuantizeError` for bad options or weights (naming ``layers.{i}.weight``).
    """
    sch = make_scheme(dtype, scheme, granularity)
    if not net.weights or sum(int(W.size) for W in net.weights) == 0:
        raise QuantizeError("the network has no weights to quantize")
    res = QuantizeResult({}, sch.dtype, sch.scheme, sch.granularity)
    for i, (W, b) in enumerate(zip(net.weights, net.biases, strict=True)):
        qt = quantize_tensor(
            W,
            dtype,
            scheme,
            granularity,
            block_rows=block_rows,
            threads=threads,
            report_error=report_error,
            name=f"layers.{i}.weight",
        )
        res.tensors[f"layers.{i}.weight"] = qt.q
        if qt.scale is not None:
            res.tensors[f"layers.{i}.weight_scale"] = qt.scale
        if qt.zero_point is not None:
            res.tensors[f"layers.{i}.weight_zero_point"] = qt.zero_point
        res.tensors[f"layers.{i}.bias"] = np.ascontiguousarray(b, dtype=F32)
        res.layers.append({"max_abs_error": qt.max_abs_error, "mean_abs_error": qt.mean_abs_error, "size": int(W.size)})
    return res


def is_quantized(tensors: dict[str, np.ndarray]) -> bool:
    """True when any ``layers.{i}.weight`` is stored as an integer or float16 tensor."""
    return any(
        name.endswith(".weight") and (np.issubdtype(t.dtype, np.integer) or t.dtype == np.float16)
        for name, t in tensors.items()
    )


__all__ = [
    "BLOCK_ROWS",
    "DTYPES",
    "GRANULARITIES",
    "SCHEMES",
    "QuantizeError",
    "QuantizeResult",
    "QuantizedTensor",
    "Scheme",
    "is_quantized",
    "make_scheme",
    "qparams",
    "quantize_network",
    "quantize_tensor",
]
