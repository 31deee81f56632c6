"""Exports of a :class:`~app.engine.nn.network.Network` to other runtimes, as bytes.

Three targets (:data:`TARGETS`):

``onnx``
    :func:`to_onnx` builds an ONNX model with :mod:`onnx.helper`. One input
    ``input`` float32 ``[N, input_dim]`` (``N`` is the symbolic ``dim_param "N"``)
    and one output ``output`` float32 ``[N, output_dim]`` equal to Steward's
    ``Network.forward`` (predict ``outputs``)::

        h_0 = input
        h_{i+1} = f(Gemm(h_i, W_i, b_i, transB=1)) = f(h_i · W_iᵀ + b_i)   (hidden layers)
        output  = link(Gemm(h_{L-1}, W_{L-1}, b_{L-1}, transB=1))

    ``f`` ∈ Relu / Tanh / Sigmoid; ``link`` is nothing (regression), Sigmoid
    (binary) or Softmax(axis=1) (multiclass). Weights keep the ``[out, in]``
    layout of the wire format and are stored as initializers named like the wire
    tensors (``layers.{i}.weight`` / ``layers.{i}.bias``).

    Quantized versions are exported weight-only QDQ: the integer tensor is an
    int8 / uint8 initializer ``layers.{i}.weight_quantized`` and
    ``DequantizeLinear(q, scale, zero_point, axis=0)`` produces
    ``W = (q − zero_point) · scale`` (per output row when ``scale`` is ``[out]``,
    per tensor when it is ``[]``), which feeds the same Gemm. float16 weights are
    float16 initializers followed by ``Cast(to=FLOAT)``. Biases stay float32.

    Supported opsets: :data:`MIN_OPSET` ..= :data:`MAX_OPSET` (13 ..= 21). 13 is the
    first with per-axis ``DequantizeLinear`` and the axis=-1 ``Softmax``; 21 is the
    newest opset of the oldest onnx (1.16) and onnxruntime (1.18) the project
    depends on. The IR version is the lowest one that allows the chosen opset
    (``onnx.helper.find_min_ir_version_for``), so older runtimes load the file.

``torch``
    :func:`to_torch_state` gives a safetensors file whose tensor names are those of
    ``torch.nn.Sequential(Linear, Act, Linear, Act, …, Linear[, Sigmoid | Softmax(dim=1)])``
    (``0.weight``, ``0.bias``, ``2.weight`` …) plus a JSON description of the
    modules (also embedded in the file's ``__metadata__["architecture"]``).

``npz``
    :func:`to_npz` gives ``numpy.savez`` bytes with ``layers.{i}.weight`` /
    ``layers.{i}.bias`` float32 arrays and a 0-d unicode array ``architecture``
    (the same JSON); ``numpy.load(..., allow_pickle=False)`` reads it.

:func:`verify_onnx` is the check an export passes before it is offered:
``onnx.checker.check_model(full_check=True)``, the input / output contract above,
then ONNX Runtime on probe inputs compared with ``Network.forward``.

Exceptions::

    ExportError                  base class
    ├── OpsetError (ValueError)  opset outside MIN_OPSET..MAX_OPSET (a client error)
    ├── QuantizedTensorError     stored quantized tensors that do not match the network
    └── ExportVerificationError  the built file failed the checker, ONNX Runtime or the
                                 comparison; ``stage`` and ``evidence`` say where and why

Nothing here performs I/O other than turning arrays into bytes.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save as safetensors_save

from app.engine.codec import dequantize
from app.engine.nn.network import F32, Network

TARGETS = ("onnx", "torch", "npz")
MEDIA_TYPES = {
    "onnx": "application/onnx",
    "torch": "application/octet-stream",
    "npz": "application/octet-stream",
}
FILE_EXTENSIONS = {"onnx": ".onnx", "torch": ".safetensors", "npz": ".npz"}

MIN_OPSET = 13
MAX_OPSET = 21
DEFAULT_OPSET = 17
SUPPORTED_OPSETS = range(MIN_OPSET, MAX_OPSET + 1)

INPUT_NAME = "input"
OUTPUT_NAME = "output"
BATCH_DIM = "N"
PRODUCER = "steward"
ARCHITECTURE_FORMAT = "steward.sequential/v1"

DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-4

_ONNX_ACTIVATIONS = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid"}
_TORCH_ACTIVATIONS = {"relu": "ReLU", "tanh": "Tanh", "sigmoid": "Sigmoid"}
_QDQ_DTYPES = {np.dtype(np.int8): TensorProto.INT8, np.dtype(np.uint8): TensorProto.UINT8}


# --------------------------------------------------------------------------- errors
class ExportError(Exception):
    """Base class of everything this module raises on purpose."""


class OpsetError(ExportError, ValueError):
    """The requested opset is outside :data:`SUPPORTED_OPSETS`."""

    def __init__(self, opset: object) -> None:
        super().__init__(f"opset {opset} is not supported; choose one in {MIN_OPSET}..{MAX_OPSET}")
        self.opset = opset


class QuantizedTensorError(ExportError, ValueError):
    """Quantized tensors passed to :func:`to_onnx` that do not describe the network.

    ``loc`` names the tensor (``layers.{i}.weight`` …).
    """

    def __init__(self, loc: str, msg: str) -> None:
        super().__init__(f"{loc}: {msg}")
        self.loc = loc
        self.msg = msg


class ExportVerificationError(ExportError):
    """An exported file that must not be offered.

    ``stage`` is ``"checker"`` (onnx.checker refused it), ``"contract"`` (input /
    output names, types or shapes differ from the documented ones), ``"runtime"``
    (ONNX Runtime could not load or run it) or ``"compare"`` (outputs differ from
    ``Network.forward`` beyond the tolerance). ``evidence`` is a JSON-ready dict
    (e.g. ``max_abs_error``, ``tolerance``, the worst probe's index, expected and
    actual values).
    """

    def __init__(self, stage: str, message: str, evidence: dict[str, Any] | None = None) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.message = message
        self.evidence = evidence or {}


# --------------------------------------------------------------------------- ONNX
def check_opset(opset: int) -> int:
    """Return ``opset`` if it is in :data:`SUPPORTED_OPSETS`, else raise :class:`OpsetError`."""
    if isinstance(opset, bool) or not isinstance(opset, int | np.integer) or opset not in SUPPORTED_OPSETS:
        raise OpsetError(opset)
    return int(opset)


def _quantized_layer(
    i: int, W: np.ndarray, quantized: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(q, scale, zero_point)`` for layer ``i`` if its stored weight is int8 / uint8.

    ``q`` [out, in] int8|uint8; ``scale`` float32 [out] or []; ``zero_point`` has
    ``q``'s dtype and ``scale``'s shape (zeros when the stored set has none). Checks
    that ``(q − zero_point) · scale`` equals the network's weight ``W``.
    """
    wname = f"layers.{i}.weight"
    q = quantized.get(wname)
    if q is None or not np.issubdtype(q.dtype, np.integer):
        return None
    if q.dtype not in _QDQ_DTYPES:
        raise QuantizedTensorError(wname, f"only int8 and uint8 weights export as QDQ, got {q.dtype}")
    if q.shape != W.shape:
        raise QuantizedTensorError(wname, f"shape {list(q.shape)} differs from the network's {list(W.shape)}")
    scale = quantized.get(f"layers.{i}.weight_scale")
    if scale is None:
        raise QuantizedTensorError(f"layers.{i}.weight_scale", "an integer weight needs a scale")
    scale = np.asarray(scale, dtype=F32)
    if scale.shape not in ((), (W.shape[0],)):
        raise QuantizedTensorError(
            f"layers.{i}.weight_scale", f"expected shape [] or [{W.shape[0]}], got {list(scale.shape)}"
        )
    zp_name = f"layers.{i}.weight_zero_point"
    zp_in = quantized.get(zp_name)
    if zp_in is None:
        zp = np.zeros(scale.shape, dtype=q.dtype)
    else:
        zp_arr = np.asarray(zp_in)
        info = np.iinfo(q.dtype)
        if (
            zp_arr.shape != scale.shape
            or not np.all(np.isfinite(zp_arr))
            or not np.array_equal(zp_arr, np.round(zp_arr))
            or zp_arr.min(initial=0) < info.min
            or zp_arr.max(initial=0) > info.max
        ):
            raise QuantizedTensorError(
                zp_name, f"must be whole numbers in the range of {q.dtype}, shaped like the scale"
            )
        zp = zp_arr.astype(q.dtype)
    if not np.allclose(dequantize(q, scale, zp), W, rtol=1e-6, atol=1e-7):
        raise QuantizedTensorError(wname, "its dequantized value differs from the network's weight")
    return q, scale, zp


def to_onnx(
    net: Network,
    *,
    name: str,
    version: int,
    opset: int = DEFAULT_OPSET,
    quantized: Mapping[str, np.ndarray] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    """Serialized ONNX model computing ``net.forward`` (see the module docstring).

    ``quantized`` is the stored tensor set of a quantized version in the wire
    layout (``layers.{i}.weight`` int8|uint8|float16, ``layers.{i}.weight_scale``,
    optional ``layers.{i}.weight_zero_point``); ``net`` must be its dequantized
    network (``codec.from_tensors``). Integer layers become int8/uint8 initializers
    + ``DequantizeLinear``, float16 layers float16 initializers + ``Cast``; every
    other layer uses ``net``'s float32 weight. ``metadata`` adds string
    ``metadata_props`` next to ``steward.model``, ``steward.version``,
    ``steward.task``, ``steward.activation``, ``steward.weights``.

    Raises :class:`OpsetError`, :class:`QuantizedTensorError`.
    """
    opset = check_opset(opset)
    quantized = quantized or {}
    initializers: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    last = len(net.weights) - 1
    weight_kinds: set[str] = set()
    x = INPUT_NAME
    for i, (W, b) in enumerate(zip(net.weights, net.biases, strict=True)):
        w_name, b_name = f"layers.{i}.weight", f"layers.{i}.bias"
        qparams = _quantized_layer(i, W, quantized)
        stored = quantized.get(w_name)
        if qparams is not None:
            q, scale, zp = qparams
            weight_kinds.add(f"{q.dtype} qdq")
            initializers += [
                numpy_helper.from_array(np.ascontiguousarray(q), f"{w_name}_quantized"),
                numpy_helper.from_array(np.ascontiguousarray(scale), f"layers.{i}.weight_scale"),
                numpy_helper.from_array(np.ascontiguousarray(zp), f"layers.{i}.weight_zero_point"),
            ]
            attrs: dict[str, Any] = {"axis": 0} if scale.ndim == 1 else {}
            nodes.append(
                helper.make_node(
                    "DequantizeLinear",
                    [f"{w_name}_quantized", f"layers.{i}.weight_scale", f"layers.{i}.weight_zero_point"],
                    [w_name],
                    name=f"layers.{i}.dequantize",
                    **attrs,
                )
            )
        elif stored is not None and stored.dtype == np.float16:
            if stored.shape != W.shape:
                raise QuantizedTensorError(
                    w_name, f"shape {list(stored.shape)} differs from the network's {list(W.shape)}"
                )
            weight_kinds.add("float16")
            initializers.append(numpy_helper.from_array(np.ascontiguousarray(stored), f"{w_name}_float16"))
            nodes.append(
                helper.make_node("Cast", [f"{w_name}_float16"], [w_name], to=TensorProto.FLOAT, name=f"layers.{i}.cast")
            )
        else:
            weight_kinds.add("float32")
            initializers.append(numpy_helper.from_array(np.ascontiguousarray(W, dtype=F32), w_name))
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(b, dtype=F32), b_name))

        is_last = i == last
        z = OUTPUT_NAME if is_last and net.task == "regression" else f"layers.{i}.linear"
        nodes.append(helper.make_node("Gemm", [x, w_name, b_name], [z], name=f"layers.{i}.gemm", transB=1))
        if not is_last:
            x = f"layers.{i}.{net.activation}"
            nodes.append(
                helper.make_node(_ONNX_ACTIVATIONS[net.activation], [z], [x], name=f"layers.{i}.{net.activation}")
            )
        elif net.task == "binary":
            nodes.append(helper.make_node("Sigmoid", [z], [OUTPUT_NAME], name="output.sigmoid"))
        elif net.task == "multiclass":
            nodes.append(helper.make_node("Softmax", [z], [OUTPUT_NAME], name="output.softmax", axis=1))
        elif net.task != "regression":
            raise ValueError(f"unknown task {net.task!r}")

    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, net.input_dim])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, net.output_dim])],
        initializers,
        doc_string=f"Steward model {name!r} version {version}: {net.task} MLP "
        f"{[net.input_dim, *net.hidden, net.output_dim]} ({net.activation})",
    )
    opset_ids = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opset_ids, producer_name=PRODUCER)
    model.ir_version = helper.find_min_ir_version_for(opset_ids)
    model.model_version = int(version)
    props = {
        "steward.model": name,
        "steward.version": str(version),
        "steward.task": net.task,
        "steward.activation": net.activation,
        "steward.layers": json.dumps([net.input_dim, *net.hidden, net.output_dim]),
        "steward.weights": "+".join(sorted(weight_kinds)),
        **dict(metadata or {}),
    }
    helper.set_model_props(model, {k: str(v) for k, v in props.items()})
    data: bytes = model.SerializeToString()
    return data


def probe_inputs(input_dim: int, rng: np.random.Generator, n: int = 64, real: np.ndarray | None = None) -> np.ndarray:
    """Probe inputs ``[n + len(real), input_dim]`` float32 for :func:`verify_onnx`.

    Half are standard normal, half are standard normal × 4 (to reach saturated
    activations); ``real`` samples (e.g. from the model's sample log) come first.
    """
    z = rng.standard_normal((n, input_dim)).astype(F32)
    z[n // 2 :] *= F32(4.0)
    if real is not None and len(real):
        z = np.concatenate([np.asarray(real, dtype=F32).reshape(-1, input_dim), z])
    return z


def compare_outputs(got: np.ndarray, expected: np.ndarray, *, atol: float, rtol: float) -> tuple[bool, dict[str, Any]]:
    """Elementwise ``|got − expected| ≤ atol + rtol·|expected|`` over ``[N, out]`` arrays.

    Returns ``(ok, evidence)`` with ``max_abs_error`` and, for the worst element
    (largest excess over its bound), its probe index, column and both values.
    """
    got = np.asarray(got, dtype=np.float64)
    exp = np.asarray(expected, dtype=np.float64)
    evidence: dict[str, Any] = {"tolerance": {"atol": atol, "rtol": rtol}}
    if got.shape != exp.shape:
        evidence["shape"] = {"got": list(got.shape), "expected": list(exp.shape)}
        return False, evidence
    if not np.isfinite(got).all():
        evidence["non_finite"] = int((~np.isfinite(got)).sum())
        evidence["max_abs_error"] = float("inf")
        return False, evidence
    err = np.abs(got - exp)
    evidence["max_abs_error"] = float(err.max(initial=0.0))
    excess = err - (atol + rtol * np.abs(exp))
    ok = bool((excess <= 0).all())
    if err.size:
        r, c = np.unravel_index(int(np.argmax(excess)), err.shape)
        evidence["worst"] = {
            "probe": int(r),
            "column": int(c),
            "expected": float(exp[r, c]),
            "got": float(got[r, c]),
        }
    return ok, evidence


def _check_contract(model: onnx.ModelProto, net: Network) -> None:
    """The documented input / output contract of an export, else ``stage="contract"``."""

    def dims(vi: onnx.ValueInfoProto) -> list[str | int]:
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    want_in: list[str | int] = [BATCH_DIM, net.input_dim]
    want_out: list[str | int] = [BATCH_DIM, net.output_dim]
    found = {
        "inputs": [(i.name, i.type.tensor_type.elem_type, dims(i)) for i in inputs],
        "outputs": [(o.name, o.type.tensor_type.elem_type, dims(o)) for o in model.graph.output],
    }
    if found != {
        "inputs": [(INPUT_NAME, TensorProto.FLOAT, want_in)],
        "outputs": [(OUTPUT_NAME, TensorProto.FLOAT, want_out)],
    }:
        raise ExportVerificationError(
            "contract",
            f"expected one float input {INPUT_NAME!r} {want_in} and one float output {OUTPUT_NAME!r} {want_out}",
            {"found": json.loads(json.dumps(found))},
        )


def verify_onnx(
    model_bytes: bytes,
    net: Network,
    probes: np.ndarray,
    *,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    raise_on_failure: bool = True,
) -> dict[str, Any]:
    """Check an exported file before it is offered.

    1. ``onnx.checker.check_model(model, full_check=True)`` (includes strict shape
       inference);
    2. the contract: one input ``input`` float ``[N, input_dim]``, one output
       ``output`` float ``[N, output_dim]``;
    3. ONNX Runtime (CPU) runs ``probes`` [n, input_dim] and its outputs ``ŷ_ort``
       are compared with ``ŷ = net.forward(probes)``: every element must satisfy
       ``|ŷ_ort − ŷ| ≤ atol + rtol·|ŷ|``.

    Returns ``{"ok": True, "max_abs_error", "tolerance": {"atol", "rtol"},
    "n_probes", "opset", "runtime"}``. On failure raises
    :class:`ExportVerificationError` (or, with ``raise_on_failure=False`` and a
    failed comparison only, returns the same dict with ``"ok": False`` and the
    evidence).
    """
    import onnxruntime as ort  # heavy import, only needed here

    probes = np.ascontiguousarray(probes, dtype=F32)
    try:
        model = onnx.load_model_from_string(model_bytes)
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # onnx raises several unrelated types here
        raise ExportVerificationError("checker", str(e), {"error": type(e).__name__}) from e
    _check_contract(model, net)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: probes})
    except Exception as e:  # onnxruntime's own exception classes are not importable portably
        raise ExportVerificationError("runtime", str(e), {"error": type(e).__name__}) from e
    ok, evidence = compare_outputs(got, net.forward(probes), atol=atol, rtol=rtol)
    result = {
        "ok": ok,
        "max_abs_error": evidence.get("max_abs_error"),
        "tolerance": {"atol": atol, "rtol": rtol},
        "n_probes": int(probes.shape[0]),
        "opset": opset,
        "runtime": f"onnxruntime {ort.__version__}",
    }
    if not ok:
        if raise_on_failure:
            raise ExportVerificationError(
                "compare",
                f"ONNX Runtime differs from Steward's outputs beyond atol={atol}, rtol={rtol} "
                f"(max |error| {evidence.get('max_abs_error')})",
                evidence,
            )
        result["evidence"] = evidence
    return result


# --------------------------------------------------------------------------- torch / npz
def architecture(net: Network) -> dict[str, Any]:
    """JSON-ready description of the ``torch.nn.Sequential`` equivalent to ``net``.

    ``modules[k]`` is ``{"index": k, "type": <torch.nn class name>, ...kwargs}``:
    ``Linear`` (``in_features``, ``out_features``, ``bias``) at even indices, the
    hidden activation (``ReLU`` / ``Tanh`` / ``Sigmoid``) between them, and the
    output link last: ``Sigmoid`` (binary), ``Softmax`` with ``dim=1`` (multiclass),
    nothing (regression). Rebuild with ``Sequential(*(getattr(nn, m["type"])(**kwargs)
    for m in modules))`` where kwargs are the entries other than index / type.
    """
    modules: list[dict[str, Any]] = []
    last = len(net.weights) - 1
    for i, W in enumerate(net.weights):
        modules.append(
            {
                "index": len(modules),
                "type": "Linear",
                "in_features": int(W.shape[1]),
                "out_features": int(W.shape[0]),
                "bias": True,
            }
        )
        if i < last:
            modules.append({"index": len(modules), "type": _TORCH_ACTIVATIONS[net.activation]})
    if net.task == "binary":
        modules.append({"index": len(modules), "type": "Sigmoid"})
    elif net.task == "multiclass":
        modules.append({"index": len(modules), "type": "Softmax", "dim": 1})
    return {
        "format": ARCHITECTURE_FORMAT,
        "container": "torch.nn.Sequential",
        "task": net.task,
        "activation": net.activation,
        "input_dim": net.input_dim,
        "output_dim": net.output_dim,
        "modules": modules,
    }


def torch_state_dict(net: Network) -> dict[str, np.ndarray]:
    """``{"{2i}.weight": W_i [out, in], "{2i}.bias": b_i [out]}`` float32 (Sequential names)."""
    out: dict[str, np.ndarray] = {}
    for i, (W, b) in enumerate(zip(net.weights, net.biases, strict=True)):
        out[f"{2 * i}.weight"] = np.ascontiguousarray(W, dtype=F32)
        out[f"{2 * i}.bias"] = np.ascontiguousarray(b, dtype=F32)
    return out


def to_torch_state(
    net: Network, *, name: str | None = None, version: int | None = None
) -> tuple[bytes, dict[str, Any]]:
    """``(safetensors bytes, architecture dict)`` for ``nn.Sequential.load_state_dict(strict=True)``.

    Weights are float32 (quantized versions are dequantized). ``__metadata__`` holds
    ``format="pt"``, ``architecture`` (JSON of :func:`architecture`), ``task`` and,
    when given, ``model`` and ``version``.
    """
    arch = architecture(net)
    meta = {"format": "pt", "architecture": json.dumps(arch, sort_keys=True), "task": net.task}
    if name is not None:
        meta["model"] = name
    if version is not None:
        meta["version"] = str(version)
    return safetensors_save(torch_state_dict(net), metadata=meta), arch


def to_npz(net: Network) -> bytes:
    """``numpy.savez`` bytes: ``layers.{i}.weight`` [out, in] and ``layers.{i}.bias`` [out]
    float32, plus ``architecture`` (0-d unicode array holding :func:`architecture`'s
    JSON). No object arrays: ``numpy.load(f, allow_pickle=False)`` reads it."""
    arrays: dict[str, np.ndarray] = {}
    for i, (W, b) in enumerate(zip(net.weights, net.biases, strict=True)):
        arrays[f"layers.{i}.weight"] = np.ascontiguousarray(W, dtype=F32)
        arrays[f"layers.{i}.bias"] = np.ascontiguousarray(b, dtype=F32)
    arrays["architecture"] = np.array(json.dumps(architecture(net), sort_keys=True))
    buf = io.BytesIO()
    # numpy's stub types savez's allow_pickle: bool next to **kwds, so mypy checks the arrays
    # against bool too; passing allow_pickle= instead is no fix: older numpy releases (the
    # project allows 1.26) have no such parameter and would store it as an array
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()
