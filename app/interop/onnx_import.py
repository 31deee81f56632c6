"""Dense networks read out of ONNX files (``torch.onnx.export``, ``skl2onnx``, Steward's own).

The file is parsed with the ``onnx`` package and inspected as data: nothing in it
is executed here (ONNX Runtime only runs it in :func:`verify_import`, after the
graph was accepted). Accepted graphs are one chain, from the single graph input,
of::

    [Cast(to float) | Flatten(axis=1) | Reshape([-1, d]) | Identity]*      (input side)
    ( Gemm(x, B, C)  transA=0, transB 0|1 (alpha / beta folded into W / b)
    | MatMul(x, B) [Add(·, c)]*                                            (dense layer)
    ) [Relu | Tanh | Sigmoid | Softmax(axis=1|-1)]                          (its activation)
    … repeated, with Identity / Reshape([-1, d]) / Flatten / Cast(float) anywhere

where ``B``, ``C``, ``c`` are constants: initializers, ``Constant`` nodes, or
constant expressions of ``Identity``, ``Cast``, ``Transpose``, ``Reshape``,
``Squeeze``, ``Unsqueeze`` and ``DequantizeLinear`` (so Steward's own QDQ exports
import too). Layer ``i`` becomes ``W_i`` [out, in] (``Bᵀ`` for MatMul and
``transB=0``) and ``b_i`` [out], float32.

Which output is followed
    The chain ends at the tensor ``T`` where it stops being a single chain: ``T``
    is a graph output, feeds several nodes, or feeds a non-dense operator. ``T`` is
    the followed output (``ImportedNetwork.followed_tensor``): for
    ``torch.onnx.export`` it is the graph output itself; for skl2onnx
    ``MLPRegressor`` it is ``variable`` (with several targets, skl2onnx 1.20 reshapes
    ``[N, k]`` to ``[N·k, 1]``; a reshape that is not ``[N, width]`` ends the chain,
    so the followed tensor is the ``[N, k]`` one before it); for ``MLPClassifier`` it is the softmax
    (multiclass: ``probabilities`` with ``zipmap=False``, the tensor feeding
    ``ZipMap`` → ``output_probability`` otherwise) or the sigmoid ``p`` (binary:
    skl2onnx's ``probabilities`` is ``Concat(1 − p, p)``, Steward's output is the
    column ``p``). Everything computed from ``T`` is label post-processing and is
    ignored, but may only use :data:`POST_OPS` (``ArgMax``, ``ZipMap``,
    ``ArrayFeatureExtractor``, ``Concat``, ``Sub``, ``Cast``, ``Reshape`` …) and
    never another dense computation.

Anything else is refused with :class:`OnnxImportError` naming the operator and
node. Exceptions (all :class:`~app.core.errors.StewardError` problems, so the file is
untrusted input end to end: :func:`from_onnx` and :func:`verify_import` raise nothing
else — one boundary in each turns any other failure of the decoding into a problem
naming the node, initializer or stage it happened in)::

    OnnxImportError (422, ValueError)   the file cannot be mapped (loc, op_type, node)
    ├── OnnxUnreadableError (400)       not an ONNX model at all
    ├── OnnxTooLargeError (413)         larger than max_bytes, or expands far beyond it
    └── OnnxVerificationError (422)     ONNX Runtime disagrees with Steward's forward
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from app.core.errors import StewardError, decoding
from app.engine.nn.network import ACTIVATIONS, F32, TASKS, Network
from app.interop.export import DEFAULT_ATOL, DEFAULT_RTOL, compare_outputs

_DEFAULT_DOMAINS = ("", "ai.onnx")
_ML_DOMAIN = "ai.onnx.ml"

#: operators that may form the dense chain
CORE_OPS = frozenset(
    {"Gemm", "MatMul", "Add", "Relu", "Tanh", "Sigmoid", "Softmax", "Identity", "Cast", "Flatten", "Reshape"}
)
#: operators whose presence after the followed tensor would mean more computation
_COMPUTE_OPS = frozenset({"Gemm", "MatMul", "Add", "Relu", "Tanh", "Sigmoid", "Softmax"})
#: constant expressions evaluated with numpy (all inputs constant)
CONST_OPS = frozenset(
    {"Constant", "Identity", "Cast", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "DequantizeLinear"}
)
#: label post-processing allowed after the followed tensor: (domain, op_type)
POST_OPS = frozenset(
    {
        *((d, op) for d in _DEFAULT_DOMAINS for op in (
            "ArgMax", "Cast", "Concat", "Sub", "Reshape", "Identity", "Flatten", "Squeeze", "Unsqueeze",
        )),
        (_ML_DOMAIN, "ZipMap"),
        (_ML_DOMAIN, "ArrayFeatureExtractor"),
    }
)  # fmt: skip
_ACTIVATION_OPS = {"Relu": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid", "Softmax": "softmax"}
_FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.DOUBLE)


# --------------------------------------------------------------------------- errors
class OnnxImportError(StewardError, ValueError):
    """An ONNX file that cannot be imported: a 422 problem (``application/problem+json``
    through :mod:`app.core.errors`), with ``operator`` and ``node`` when there is one.

    ``loc`` says where (``"body"``, ``"input"``, ``"output"``, ``"layers"``,
    ``"activation"``, ``"node:<name>"``, ``"initializer:<name>"``); ``op_type`` /
    ``node`` name the offending operator when there is one; ``msg`` is the human sentence.
    """

    status, title, slug = 422, "Unprocessable Content", "validation"

    def __init__(self, msg: str, *, loc: str = "body", op_type: str | None = None, node: str | None = None) -> None:
        super().__init__(msg, errors=[{"loc": ["body", loc], "msg": msg}], operator=op_type, node=node)
        self.msg = msg
        self.loc = loc
        self.op_type = op_type
        self.node = node


class OnnxUnreadableError(OnnxImportError):
    """The bytes are not an ONNX model at all (400)."""

    status, title, slug = 400, "Bad Request", "bad-request"


class OnnxTooLargeError(OnnxImportError):
    """The file is larger than the allowed ``max_bytes``, or decoding it would need far
    more memory than its size (413)."""

    status, title, slug = 413, "Content Too Large", "payload-too-large"


class OnnxVerificationError(OnnxImportError):
    """ONNX Runtime's output of the followed tensor differs from ``Network.forward``;
    ``evidence`` holds ``max_abs_error``, ``tolerance`` and the worst probe."""

    def __init__(self, msg: str, evidence: dict[str, Any]) -> None:
        super().__init__(msg, loc="body")
        self.evidence = evidence
        self.extra["evidence"] = evidence


def _node_label(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"#{index} ({node.op_type})"


def _unsupported(node: onnx.NodeProto, index: int, why: str) -> OnnxImportError:
    label = _node_label(node, index)
    op = node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"
    return OnnxImportError(
        f"unsupported operator {op} (node {label!r}): {why}",
        loc=f"node:{label}",
        op_type=node.op_type,
        node=label,
    )


# --------------------------------------------------------------------------- result
@dataclass
class ImportedNetwork:
    """Dense layers found in an ONNX graph, not yet tied to a Steward model.

    ``weights[i]`` [out_i, in_i] and ``biases[i]`` [out_i] float32;
    ``hidden_activations[i]`` is the activation after layer ``i < L-1`` (``relu``,
    ``tanh``, ``sigmoid``, ``softmax`` or ``identity`` when there is none);
    ``output_link`` is what follows the last layer (``identity``, ``sigmoid``,
    ``softmax``, or ``relu`` / ``tanh``, which no task accepts).
    """

    weights: list[np.ndarray]
    biases: list[np.ndarray]
    hidden_activations: list[str]
    output_link: str
    layer_nodes: list[str]
    input_name: str
    input_shape: list[int]  # feature dims after the batch dim, e.g. [64] or [8, 8]
    input_elem_type: int  # TensorProto.FLOAT or DOUBLE
    fixed_batch: int | None  # the batch size when the graph input fixes it
    followed_tensor: str
    followed_output: str | None  # the graph output equal to followed_tensor, if any
    ignored_outputs: list[str]
    opset: int
    producer: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def input_dim(self) -> int:
        return int(self.weights[0].shape[1])

    @property
    def output_dim(self) -> int:
        return int(self.weights[-1].shape[0])

    @property
    def hidden(self) -> list[int]:
        return [int(w.shape[0]) for w in self.weights[:-1]]

    @property
    def n_layers(self) -> int:
        return len(self.weights)

    @property
    def activation(self) -> str | None:
        """The one hidden activation, None without hidden layers, ``"mixed"`` if they differ."""
        acts = set(self.hidden_activations)
        if not acts:
            return None
        return acts.pop() if len(acts) == 1 else "mixed"

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary (for job results and error details)."""
        return {
            "layers": [self.input_dim, *self.hidden, self.output_dim],
            "hidden_activations": self.hidden_activations,
            "output_link": self.output_link,
            "followed_tensor": self.followed_tensor,
            "followed_output": self.followed_output,
            "ignored_outputs": self.ignored_outputs,
            "opset": self.opset,
            "producer": self.producer,
        }

    def output_transform(self, task: str) -> str:
        """How ONNX Runtime's followed tensor ``T`` maps onto Steward's outputs for ``task``.

        ``"none"`` (equal), ``"sigmoid"`` / ``"softmax"`` (``T`` are logits; the task's
        link is applied), ``"softmax_column_1"`` (``T`` is a 2-class softmax; a binary
        model's ``p = T[:, 1] = σ(z₁ − z₀)``). Raises :class:`OnnxImportError` if the
        graph's output link does not fit the task.
        """
        link, out = self.output_link, self.output_dim
        last = f"layer {self.n_layers - 1} (node {self.layer_nodes[-1]!r})"
        if task == "regression":
            if link == "identity":
                return "none"
            raise OnnxImportError(f"{last} ends with {link}; a regression model has an identity output", loc="output")
        if task == "binary":
            if link == "sigmoid" and out == 1:
                return "none"
            if link == "identity" and out == 1:
                return "sigmoid"
            if link == "softmax" and out == 2:
                return "softmax_column_1"
            raise OnnxImportError(
                f"{last} gives {out} outputs with {link}; a binary model needs one sigmoid "
                "output (or one logit, or a 2-class softmax)",
                loc="output",
            )
        if task == "multiclass":
            if link == "softmax":
                return "none"
            if link == "identity":
                return "softmax"
            raise OnnxImportError(
                f"{last} ends with {link}; a multiclass model needs a softmax output (or logits)",
                loc="output",
            )
        raise ValueError(f"unknown task {task!r}")

    def check_against(self, *, task: str, activation: str, input_dim: int, output_dim: int, n_layers: int) -> Network:
        """Map the imported layers onto a Steward model spec; return its float32 :class:`Network`.

        Checks, in order: input width, number of dense layers, every hidden
        activation equals ``activation``, the output link fits ``task`` (see
        :meth:`output_transform`; a 2-class softmax becomes one sigmoid unit with
        ``w = w₁ − w₀``, ``b = b₁ − b₀``), and the output width. Hidden widths are
        free (neuron-pruned models are narrower than their spec). Raises
        :class:`OnnxImportError` with a precise ``loc`` and sentence.
        """
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}")
        if self.input_dim != input_dim:
            raise OnnxImportError(
                f"the ONNX graph takes {self.input_dim} input features, the model expects {input_dim}",
                loc="input",
            )
        if self.n_layers != n_layers:
            raise OnnxImportError(
                f"the ONNX graph has {self.n_layers} dense layers "
                f"{[self.input_dim, *self.hidden, self.output_dim]}, the model has {n_layers}",
                loc="layers",
            )
        for i, act in enumerate(self.hidden_activations):
            if act != activation:
                raise OnnxImportError(
                    f"layer {i} (node {self.layer_nodes[i]!r}) is followed by {act}, "
                    f"the model's hidden activation is {activation}",
                    loc="activation",
                )
        transform = self.output_transform(task)
        weights = [w.copy() for w in self.weights]
        biases = [b.copy() for b in self.biases]
        if transform == "softmax_column_1":
            weights[-1] = (weights[-1][1:2] - weights[-1][0:1]).astype(F32)
            biases[-1] = (biases[-1][1:2] - biases[-1][0:1]).astype(F32)
        if weights[-1].shape[0] != output_dim:
            raise OnnxImportError(
                f"the ONNX graph gives {self.output_dim} outputs, the model expects {output_dim}",
                loc="output",
            )
        meta = {"onnx": {**self.describe(), "output_transform": transform}}
        return Network(task, activation, weights, biases, meta)


# --------------------------------------------------------------------------- constants
#: element types a constant ``Cast`` may produce (numpy holds them exactly)
_CAST_TYPES = frozenset(
    {
        TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BOOL,
        TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64,
        TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64,
    }
)  # fmt: skip
#: the most nodes (and initializers) a graph may have: dense networks have tens
MAX_NODES = 10_000
#: the largest batch size a graph input may fix (verification pads probes to it)
MAX_FIXED_BATCH = 4096
#: the most dimensions a constant may have (weights are 2-D; numpy stops at 64)
_MAX_RANK = 8
#: constant expressions may expand the file's tensors at most this many times over
#: (int8 weights dequantized to float32 and cast to double are 8×)
EXPANSION = 8


class _ConstError(Exception):
    """A constant expression whose inputs or attributes do not make sense (the sentence)."""


def _type_name(elem: int) -> str:
    try:
        return str(TensorProto.DataType.Name(elem))
    except ValueError:
        return f"unknown type {elem}"


def _tensor_value(t: TensorProto, where: str, loc: str = "body") -> np.ndarray:
    """The numpy value of an initializer or ``Constant`` tensor, named ``where`` in errors.

    String tensors are refused unread: a weight is a number, and a file of millions of
    empty strings would become millions of Python objects."""
    if t.data_type == TensorProto.STRING:
        raise OnnxImportError(f"{where} is a string tensor; a weight must be numeric", loc=loc)
    if t.data_type == TensorProto.UNDEFINED or t.data_type not in helper.get_all_tensor_dtypes():
        raise OnnxImportError(f"{where} has an unknown element type {t.data_type}", loc=loc)
    if any(d < 0 for d in t.dims) or len(t.dims) > _MAX_RANK:
        raise OnnxImportError(f"{where} has dimensions {list(t.dims)}", loc=loc)
    try:
        return numpy_helper.to_array(t)
    except Exception as e:  # the declared dims do not match the data, an unknown type…
        raise OnnxImportError(f"{where} cannot be read: {type(e).__name__}: {e}", loc=loc) from None


class _Constants:
    """Initializers plus lazily evaluated constant expressions (numpy only).

    Only what the dense chain asks for is read: an initializer becomes an array the
    first time it is used (string tensors, e.g. class labels of post-processing, are
    never read), a constant expression is evaluated iteratively (a chain of thousands of
    ``Identity`` nodes is no deeper than one) and refuses a loop. Reading and evaluating
    stop with :class:`OnnxTooLargeError` once the arrays made would pass ``budget``
    bytes. Any failure of a node is an :class:`OnnxImportError` naming it.
    """

    def __init__(self, graph: onnx.GraphProto, opset: int, budget: int) -> None:
        self.initializers: dict[str, TensorProto] = {t.name: t for t in graph.initializer}
        self.values: dict[str, np.ndarray] = {}
        self.producers: dict[str, tuple[int, onnx.NodeProto]] = {}
        self.opset = opset
        self.budget = budget
        self.limit = budget

    def has(self, name: str) -> bool:
        return name in self.initializers or name in self.producers

    def get(self, name: str) -> np.ndarray:
        """The value of ``name`` (an initializer or a constant expression's output)."""
        stack = [name]
        expanded: set[str] = set()
        while stack:
            top = stack[-1]
            if top in self.values:
                stack.pop()
                continue
            if top in self.initializers:
                self._read(top)
                stack.pop()
                continue
            index, node = self.producers[top]
            missing = [n for n in node.input if n and n not in self.values and n not in self.initializers]
            if missing:
                if top in expanded:  # its inputs were asked for and still are not there
                    raise _unsupported(node, index, "the constant expression depends on itself")
                expanded.add(top)
                for n in missing:
                    if n not in self.producers:
                        raise _unsupported(node, index, f"input {n!r} is neither an initializer nor a constant")
                stack.extend(missing)
                continue
            self._evaluate(index, node)
            stack.pop()
        return self.values[name]

    def _read(self, name: str) -> np.ndarray:
        if name not in self.values:
            value = _tensor_value(self.initializers[name], f"initializer {name!r}", f"initializer:{name}")
            self._spend(int(value.nbytes), f"initializer {name!r}")
            self.values[name] = value
        return self.values[name]

    def _spend(self, nbytes: int, what: str, node: tuple[int, onnx.NodeProto] | None = None) -> None:
        self.budget -= nbytes
        if self.budget < 0:
            label = _node_label(node[1], node[0]) if node else None
            raise OnnxTooLargeError(
                f"constants ({what}) expand the file's tensors past {self.limit} bytes",
                loc=f"node:{label}" if node else "body",
                op_type=node[1].op_type if node else None,
                node=label,
            )

    def _evaluate(self, index: int, node: onnx.NodeProto) -> None:
        try:
            ins = [self._read(n) if n in self.initializers else self.values[n] if n else None for n in node.input]
        except OnnxImportError as e:
            if isinstance(e, OnnxTooLargeError):
                raise
            raise _const_failure(node, index, e.msg) from None
        try:
            outs = _eval_const(node, ins, self.opset)
        except OnnxImportError:
            raise
        except _ConstError as e:
            raise _const_failure(node, index, str(e)) from None
        except Exception as e:  # numpy's own refusal: still this node's fault
            raise _const_failure(node, index, f"{type(e).__name__}: {e}") from None
        if outs is None:
            raise _unsupported(node, index, "only simple constant expressions are evaluated")
        for out_name, v in zip(node.output, outs, strict=False):
            if v.flags.owndata and not any(v is i for i in ins):  # new memory, not a view
                self._spend(int(v.nbytes), f"node {_node_label(node, index)!r} {node.op_type}", (index, node))
            self.values[out_name] = v


def _const_failure(node: onnx.NodeProto, index: int, why: str) -> OnnxImportError:
    label = _node_label(node, index)
    return OnnxImportError(
        f"cannot evaluate the constant {node.op_type} (node {label!r}): {why}",
        loc=f"node:{label}",
        op_type=node.op_type,
        node=label,
    )


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _int_list(v: Any, what: str) -> list[int]:
    """A 1-D list of integers from an attribute or an integer tensor (else :class:`_ConstError`)."""
    arr = np.asarray(v)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise _ConstError(f"{what} must be integers, got {arr.dtype}")
    if arr.ndim != 1:
        raise _ConstError(f"{what} must be a list (1-D) of integers, got shape {list(arr.shape)}")
    return [int(i) for i in arr.reshape(-1)]


def _axes(axes: list[int], rank: int, what: str) -> list[int]:
    """``axes`` normalized to ``0..rank-1``: each in ``[-rank, rank)``, none twice."""
    if any(not -rank <= ax < rank for ax in axes):
        raise _ConstError(f"{what} {axes} out of range for rank {rank}")
    norm = [ax % rank for ax in axes]
    if len(set(norm)) != len(norm):
        raise _ConstError(f"{what} {axes} name an axis twice")
    return norm


def _reshape(x: np.ndarray, shape: np.ndarray, allowzero: int = 0) -> np.ndarray:
    """ONNX ``Reshape``: ``0`` copies the input's dimension (unless ``allowzero``), one
    ``-1`` is inferred; any other target is a :class:`_ConstError` naming both shapes."""
    target = _int_list(shape, "the shape")
    if len(target) > _MAX_RANK:
        raise _ConstError(f"a shape of rank {len(target)} (at most {_MAX_RANK})")
    if any(d < -1 for d in target) or target.count(-1) > 1:
        raise _ConstError(f"shape {target} has negative dimensions (only one -1 may be inferred)")
    if not allowzero:
        if any(d == 0 and i >= x.ndim for i, d in enumerate(target)):
            raise _ConstError(f"shape {target} copies a dimension (0) the input {list(x.shape)} does not have")
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    elif 0 in target and -1 in target:
        raise _ConstError(f"shape {target} infers -1 next to a 0 with allowzero=1")
    known = math.prod(d for d in target if d != -1)
    if -1 in target:
        if known == 0 or x.size % known:
            raise _ConstError(f"cannot reshape {list(x.shape)} into {target}")
        target = [x.size // known if d == -1 else d for d in target]
    elif known != x.size:
        raise _ConstError(f"cannot reshape {list(x.shape)} ({x.size} values) into {target}")
    return x.reshape(target)


def _eval_const(node: onnx.NodeProto, ins: list[np.ndarray | None], opset: int) -> list[np.ndarray] | None:
    """numpy value of a constant node in :data:`CONST_OPS`, or None if unsupported.

    Every input and attribute is checked first: what does not fit raises
    :class:`_ConstError` with the sentence (numpy's own errors are the last line)."""
    if node.domain not in _DEFAULT_DOMAINS:
        return None
    a = _attrs(node)
    op = node.op_type
    if op == "Constant":
        if "value" in a:
            try:
                return [_tensor_value(a["value"], "its value")]
            except OnnxImportError as e:
                raise _ConstError(e.msg) from None
        for key, dtype in (("value_float", F32), ("value_floats", F32), ("value_int", np.int64)):
            if key in a:
                return [np.asarray(a[key], dtype=dtype)]
        if "value_ints" in a:
            return [np.asarray(a["value_ints"], dtype=np.int64)]
        return None
    x = ins[0] if ins else None
    if x is None:
        return None
    if op == "Identity":
        return [x]
    if x.dtype == np.object_:
        raise _ConstError("a string tensor is not a number")
    if op == "Cast":
        to = a.get("to")
        if not isinstance(to, int) or to not in _CAST_TYPES:
            name = _type_name(to) if isinstance(to, int) else repr(to)
            raise _ConstError(f"Cast to {name} is not supported (only to numeric types)")
        return [x.astype(helper.tensor_dtype_to_np_dtype(to))]
    if op == "Transpose":
        perm = a.get("perm")
        if perm is None:
            return [x.T]
        perm = _int_list(perm, "perm")
        if sorted(perm) != list(range(x.ndim)):
            raise _ConstError(f"perm {perm} is not a permutation of the {x.ndim} axes of {list(x.shape)}")
        return [np.transpose(x, perm)]
    if op == "Reshape":
        if len(ins) < 2 or ins[1] is None:
            raise _ConstError("Reshape needs a shape input")
        return [_reshape(x, ins[1], int(a.get("allowzero", 0)))]
    if op in ("Squeeze", "Unsqueeze"):
        raw = a.get("axes") if opset < 13 else (ins[1] if len(ins) > 1 else None)
        if raw is None:
            if op == "Squeeze":
                return [np.squeeze(x)]
            raise _ConstError("Unsqueeze needs axes")
        axes = _int_list(raw, "axes")
        if op == "Squeeze":
            norm = _axes(axes, x.ndim, "axes")
            if any(x.shape[ax] != 1 for ax in norm):
                raise _ConstError(f"axes {axes} of shape {list(x.shape)} are not all of size 1")
            return [np.squeeze(x, axis=tuple(norm))]
        rank = x.ndim + len(axes)
        if rank > _MAX_RANK:
            raise _ConstError(f"the result would have rank {rank} (at most {_MAX_RANK})")
        return [np.expand_dims(x, tuple(_axes(axes, rank, "axes")))]
    if op == "DequantizeLinear":
        if a.get("block_size", 0):
            return None
        if not np.issubdtype(x.dtype, np.integer):
            raise _ConstError(f"the quantized input must be integers, got {x.dtype}")
        if len(ins) < 2 or ins[1] is None or not np.issubdtype(ins[1].dtype, np.floating):
            raise _ConstError("the scale must be a float tensor")
        scale = np.asarray(ins[1], dtype=F32)
        zp_in = ins[2] if len(ins) > 2 and ins[2] is not None else None
        if zp_in is not None and (zp_in.shape != scale.shape or zp_in.dtype == np.object_):
            raise _ConstError(f"zero point of shape {list(zp_in.shape)} differs from the scale's {list(scale.shape)}")
        zp = np.asarray(zp_in if zp_in is not None else 0, dtype=F32)
        if scale.ndim > 1 or (scale.ndim == 1 and x.ndim == 0 and scale.size != 1):
            raise _ConstError(f"scale of shape {list(scale.shape)} for an input of shape {list(x.shape)}")
        if scale.ndim == 1:  # per axis: scale / zero point run along `axis`
            (ax,) = _axes([int(a.get("axis", 1))], max(x.ndim, 1), "axis")
            if scale.size == 1 and (x.ndim == 0 or x.shape[ax] != 1):  # a 1-element scale is per tensor
                return [(x.astype(F32) - zp.reshape(())) * scale.reshape(())]
            if scale.shape[0] != x.shape[ax]:
                raise _ConstError(
                    f"scale of length {scale.shape[0]} does not match axis {ax} of the input {list(x.shape)}"
                )
            shape = [1] * x.ndim
            shape[ax] = -1
            scale, zp = scale.reshape(shape), zp.reshape(shape) if zp.ndim == 1 else zp
        return [(x.astype(F32) - zp) * scale]
    return None


# --------------------------------------------------------------------------- parsing
def _load(model_bytes: bytes, max_bytes: int) -> onnx.ModelProto:
    if len(model_bytes) > max_bytes:
        raise OnnxTooLargeError(f"the ONNX file has {len(model_bytes)} bytes, the limit is {max_bytes}")
    try:
        model = onnx.load_model_from_string(bytes(model_bytes))
    except Exception as e:  # protobuf's DecodeError and friends
        raise OnnxUnreadableError(f"not a readable ONNX file ({type(e).__name__})") from None
    if model.ir_version <= 0 or not model.opset_import or not model.graph.node:
        raise OnnxUnreadableError("not an ONNX model: no IR version, opset or graph nodes")
    for what, n, limit in (
        ("nodes", len(model.graph.node), MAX_NODES),
        ("initializers", len(model.graph.initializer), MAX_NODES),
    ):
        if n > limit:
            raise OnnxImportError(f"the graph has {n} {what}; a dense network needs far fewer (at most {limit})")
    tensors = list(model.graph.initializer)
    for index, node in enumerate(model.graph.node):
        for attr in node.attribute:
            tensors += [attr.t] if attr.HasField("t") else []
            tensors += list(attr.tensors)
            if attr.HasField("g") or attr.graphs:
                raise _unsupported(node, index, "subgraphs (control flow) are not supported")
    if any(t.data_location == TensorProto.EXTERNAL for t in tensors):
        raise OnnxImportError("tensors stored in external files are not accepted; embed all weights")
    if model.graph.sparse_initializer:
        raise OnnxImportError("sparse initializers are not supported; store dense weights")
    if model.functions:
        raise OnnxImportError("model-local functions are not supported")
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # onnx.checker.ValidationError and C++ errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OnnxImportError(f"invalid ONNX model: {first}") from e
    return model


def _static_dims(shape: list[int | None] | None) -> list[int] | None:
    """``shape`` when it is given and every dimension is known, else None."""
    if shape is None:
        return None
    known = [d for d in shape if d is not None]
    return known if len(known) == len(shape) else None


def _broadcast_bias(c: np.ndarray, out: int, where: str) -> np.ndarray:
    """A constant added to ``[N, out]`` as a ``[out]`` vector (shapes [], [1], [out], [1, out])."""
    c = np.asarray(c)
    if c.size not in (1, out) or c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1):
        raise OnnxImportError(f"{where}: bias of shape {list(c.shape)} does not broadcast to [{out}]")
    return np.broadcast_to(c.reshape(-1).astype(np.float64), (out,)).copy()


def _numeric(v: np.ndarray, node: onnx.NodeProto, index: int, what: str) -> np.ndarray:
    """``v`` as float64, or a refusal naming the node when it holds no real numbers."""
    arr = np.asarray(v)
    if arr.dtype == np.object_ or arr.dtype.kind not in "biuf":
        raise _unsupported(node, index, f"the {what} must be a numeric tensor, got {arr.dtype}")
    return arr.astype(np.float64)


class _Where:
    """The node the decoding is at, so that the boundary names it."""

    def __init__(self) -> None:
        self.node: tuple[int, onnx.NodeProto] | None = None

    def error(self, sentence: str) -> OnnxImportError:
        if self.node is None:
            return OnnxImportError(sentence)
        index, node = self.node
        return _unsupported(node, index, sentence)


def from_onnx(model_bytes: bytes, *, max_bytes: int) -> ImportedNetwork:
    """Parse ``model_bytes`` and extract its dense layers (see the module docstring).

    ``max_bytes`` bounds the file size (:class:`OnnxTooLargeError`). Raises
    :class:`OnnxUnreadableError` for bytes that are no ONNX model,
    :class:`OnnxImportError` for invalid files (``onnx.checker``), external data,
    more than one graph input, a constant expression that cannot be evaluated, and
    any operator outside the accepted chain, naming it — and nothing else: this is
    the decoder's one boundary, any other failure is a 422 naming the node it
    happened at (numpy's floating-point warnings are off: non-finite results are
    refused by value).
    """
    where = _Where()
    with decoding("the ONNX file cannot be imported", where.error), np.errstate(all="ignore"):
        return _from_onnx(model_bytes, max_bytes, where)


def _from_onnx(model_bytes: bytes, max_bytes: int, where: _Where) -> ImportedNetwork:
    model = _load(model_bytes, max_bytes)
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), None)
    if opset is None:
        raise OnnxImportError("the model does not import the default ONNX operator set")
    consts = _Constants(graph, opset, budget=EXPANSION * len(model_bytes) + (64 << 20))

    # the one dynamic input
    inputs = [i for i in graph.input if i.name not in consts.initializers]
    if len(inputs) != 1:
        raise OnnxImportError(f"expected one graph input, found {len(inputs)}: {[i.name for i in inputs]}", loc="input")
    x_info = inputs[0]
    ttype = x_info.type.tensor_type
    if not x_info.type.HasField("tensor_type") or ttype.elem_type not in _FLOAT_TYPES:
        raise OnnxImportError(f"graph input {x_info.name!r} must be a float or double tensor", loc="input")
    dims: list[int | None] | None = None
    if ttype.HasField("shape"):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim]
        if len(dims) < 2:
            raise OnnxImportError(
                f"graph input {x_info.name!r} has rank {len(dims)}; expected [N, features]", loc="input"
            )
        if any(d is not None and d < 0 for d in dims) or dims[0] == 0 or len(dims) > _MAX_RANK:
            raise OnnxImportError(f"graph input {x_info.name!r} has the dimensions {dims}", loc="input")
    fixed_batch = dims[0] if dims else None
    if fixed_batch is not None and fixed_batch > MAX_FIXED_BATCH:
        raise OnnxImportError(
            f"graph input {x_info.name!r} fixes the batch size at {fixed_batch}; at most {MAX_FIXED_BATCH} "
            "can be verified (export with a dynamic batch dimension)",
            loc="input",
        )

    # which tensors depend on the input; constant expressions
    dynamic = {x_info.name}
    consumers: dict[str, list[tuple[int, onnx.NodeProto]]] = {}
    static_nodes: list[tuple[int, onnx.NodeProto]] = []
    for index, node in enumerate(graph.node):
        for name in node.input:
            if name:
                consumers.setdefault(name, []).append((index, node))
        if any(n in dynamic for n in node.input):
            dynamic.update(o for o in node.output if o)
        else:
            static_nodes.append((index, node))
            for o in node.output:
                if o:
                    consts.producers[o] = (index, node)
    for index, node in static_nodes:
        is_const = node.domain in _DEFAULT_DOMAINS and node.op_type in CONST_OPS
        if not is_const and (node.domain, node.op_type) not in POST_OPS:
            raise _unsupported(node, index, "constant expressions may only use " + ", ".join(sorted(CONST_OPS)))

    graph_outputs = [o.name for o in graph.output]

    def const(node: onnx.NodeProto, index: int, pos: int) -> np.ndarray:
        name = node.input[pos] if pos < len(node.input) else ""
        if not name or not consts.has(name) or name in dynamic:
            raise _unsupported(node, index, f"input {pos} must be a constant (an initializer)")
        try:
            return consts.get(name)
        except OnnxImportError as e:
            if e.node is not None:  # a constant expression's own node
                raise
            raise _unsupported(node, index, f"input {pos}: {e.msg}") from None

    # walk the chain
    layers: list[dict[str, Any]] = []  # {"W": [out,in] f64, "b": [out] f64, "act": str|None, "node": str}
    feature_shape: list[int | None] | None = dims[1:] if dims else None
    width: int | None = None  # current feature width once 2-D
    flat = dims is None or len(dims) == 2
    if flat and feature_shape:
        width = feature_shape[0]
    stream = x_info.name
    core: set[int] = set()
    stop: tuple[int, onnx.NodeProto] | None = None  # the non-dense node that ended the chain
    while True:
        cons = consumers.get(stream, [])
        if stream in graph_outputs or len(cons) != 1:
            break
        index, node = cons[0]
        where.node = (index, node)
        if index in core:  # onnx.checker refuses cycles; this walk never relies on it
            raise _unsupported(node, index, "the graph loops back to this node")
        op = node.op_type
        a = _attrs(node)
        if (
            node.domain not in _DEFAULT_DOMAINS
            or op not in CORE_OPS
            or (op == "Cast" and a.get("to") not in _FLOAT_TYPES)
        ):
            stop = (index, node)
            break
        label = _node_label(node, index)
        if op != "Add" and node.input[0] != stream:
            raise _unsupported(node, index, "the computed tensor must be the first input")
        if not node.output or not node.output[0]:
            raise _unsupported(node, index, "the node has no output")
        cur = layers[-1] if layers else None
        if op in ("Identity", "Cast"):
            pass
        elif op == "Flatten":
            axis = a.get("axis", 1)
            if axis != 1:
                raise _unsupported(node, index, f"only Flatten(axis=1) is accepted, got axis={axis}")
            if not flat:
                static = _static_dims(feature_shape)
                if not static:
                    raise _unsupported(node, index, "the input's feature dimensions must be static")
                width = math.prod(static)
                flat = True
        elif op == "Reshape":
            try:
                target = _int_list(const(node, index, 1), "the shape")
            except _ConstError as e:
                raise _unsupported(node, index, str(e)) from None
            static = _static_dims(feature_shape)
            if not flat and static:
                width = math.prod(static)
            if width is None and len(target) == 2 and target[1] > 0:
                width = target[1]  # no static input shape: the reshape tells the width
            batch_ok = len(target) == 2 and (target[0] in (-1, 0) or target[0] == fixed_batch)
            width_ok = len(target) == 2 and (target[1] == width or (target[1] == -1 and target[0] in (0, fixed_batch)))
            if width is None or not (batch_ok and width_ok):
                if layers:  # a reshape of the outputs is post-processing: follow the tensor before it
                    stop = (index, node)
                    break
                raise _unsupported(node, index, f"only a reshape to [N, {width}] is accepted, got {target}")
            flat = True
        elif op in ("Gemm", "MatMul"):
            if not flat:
                raise _unsupported(node, index, "the input must be flattened to [N, features] first")
            B = _numeric(const(node, index, 1), node, index, "weight")
            if B.ndim != 2:
                raise _unsupported(node, index, f"the weight must be 2-D, got shape {list(B.shape)}")
            if op == "Gemm":
                if a.get("transA", 0):
                    raise _unsupported(node, index, "Gemm with transA=1 is not a dense layer")
                W = (B if a.get("transB", 0) else B.T) * float(a.get("alpha", 1.0))
                bias = np.zeros(W.shape[0])
                if len(node.input) > 2 and node.input[2]:
                    bias = float(a.get("beta", 1.0)) * _broadcast_bias(
                        _numeric(const(node, index, 2), node, index, "bias"), W.shape[0], f"node {label!r}"
                    )
            else:
                W, bias = B.T, np.zeros(B.shape[1])
            if width is not None and W.shape[1] != width:
                raise OnnxImportError(
                    f"node {label!r} expects {W.shape[1]} input features, it receives {width}",
                    loc=f"node:{label}",
                    op_type=op,
                    node=label,
                )
            if cur is not None and cur["act"] is None:
                cur["act"] = "identity"
            layers.append({"W": W, "b": bias, "act": None, "node": label})
            width = int(W.shape[0])
        elif op == "Add":
            others = [n for n in node.input if n != stream]
            if len(node.input) != 2 or len(others) != 1:
                raise _unsupported(node, index, "Add must add a constant to the computed tensor")
            if cur is None or cur["act"] is not None:  # not an open layer
                raise _unsupported(
                    node, index, "Add of a constant is only accepted right after Gemm / MatMul (as its bias)"
                )
            c = _numeric(const(node, index, list(node.input).index(others[0])), node, index, "added constant")
            cur["b"] = cur["b"] + _broadcast_bias(c, cur["W"].shape[0], f"node {label!r}")
        else:  # Relu / Tanh / Sigmoid / Softmax
            if cur is None or cur["act"] is not None:  # not an open layer
                raise _unsupported(node, index, f"{op} must directly follow a dense layer (Gemm / MatMul)")
            if op == "Softmax":
                axis = a.get("axis", -1 if opset >= 13 else 1)
                if axis not in (1, -1):
                    raise _unsupported(node, index, f"Softmax must be over the features (axis 1), got {axis}")
            cur["act"] = _ACTIVATION_OPS[op]
        core.add(index)
        stream = node.output[0]
    where.node = None

    if not layers:
        if stop is not None:
            raise _unsupported(stop[1], stop[0], "the graph must start with a dense layer (Gemm / MatMul)")
        raise OnnxImportError("no dense layer (Gemm / MatMul) found after the graph input")

    # everything computed from the followed tensor is label post-processing, never more network
    downstream = [(i, n) for i, n in enumerate(graph.node) if i not in core and any(o in dynamic for o in n.output)]
    more = next(((i, n) for i, n in downstream if n.op_type in _COMPUTE_OPS), None)
    if more is not None:
        if stop is not None:
            raise _unsupported(
                stop[1],
                stop[0],
                "only Gemm, MatMul, Add, Relu, Tanh, Sigmoid, Softmax, Identity, "
                "Cast, Flatten and Reshape may appear between dense layers",
            )
        i, n = more
        label = _node_label(n, i)
        raise OnnxImportError(
            f"the graph branches at tensor {stream!r} (node {label!r} {n.op_type} computes from a "
            "shared or exposed intermediate); only a single chain of dense layers is accepted",
            loc=f"node:{label}",
            op_type=n.op_type,
            node=label,
        )
    for index, node in downstream:
        if (node.domain, node.op_type) not in POST_OPS:
            raise _unsupported(node, index, "not a dense-network or label post-processing operator")
    dynamic_outputs = [o for o in graph_outputs if o in dynamic]
    if not dynamic_outputs:
        raise OnnxImportError("no graph output depends on the graph input", loc="output")

    weights, biases = [], []
    for i, layer in enumerate(layers):
        W = layer["W"].astype(F32)
        b = layer["b"].astype(F32)
        if not (np.isfinite(W).all() and np.isfinite(b).all()):
            raise OnnxImportError(
                f"layer {i} (node {layer['node']!r}) has NaN or infinite parameters (or values beyond float32)",
                loc=f"node:{layer['node']}",
                node=layer["node"],
            )
        weights.append(np.ascontiguousarray(W))
        biases.append(np.ascontiguousarray(b))
    input_shape = [int(d) for d in _static_dims(feature_shape) or []]
    if not input_shape:
        input_shape = [int(weights[0].shape[1])]
    return ImportedNetwork(
        weights=weights,
        biases=biases,
        hidden_activations=[str(layer["act"] or "identity") for layer in layers[:-1]],
        output_link=str(layers[-1]["act"] or "identity"),
        layer_nodes=[layer["node"] for layer in layers],
        input_name=x_info.name,
        input_shape=input_shape,
        input_elem_type=int(ttype.elem_type),
        fixed_batch=int(fixed_batch) if fixed_batch else None,
        followed_tensor=stream,
        followed_output=stream if stream in graph_outputs else None,
        ignored_outputs=[o for o in graph_outputs if o != stream],
        opset=int(opset),
        producer=" ".join(p for p in (model.producer_name, model.producer_version) if p),
    )


# --------------------------------------------------------------------------- verification
def _sigmoid64(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _softmax64(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


_TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda t: t,
    "sigmoid": _sigmoid64,
    "softmax": _softmax64,
    "softmax_column_1": lambda t: t[:, 1:2],
}


def _prune_to(graph: onnx.GraphProto, tensor: str, input_name: str) -> None:
    """Keep only the nodes and initializers ``tensor`` is computed from (in place)."""
    needed = {tensor}
    keep: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    nodes = [onnx.NodeProto() for _ in keep]
    for new, old in zip(nodes, reversed(keep), strict=True):
        new.CopyFrom(old)
    inits = [t for t in graph.initializer if t.name in needed]
    tensors = [TensorProto() for _ in inits]
    for new_t, old_t in zip(tensors, inits, strict=True):
        new_t.CopyFrom(old_t)
    ins = [i for i in graph.input if i.name == input_name or i.name in needed]
    infos = [onnx.ValueInfoProto() for _ in ins]
    for new_i, old_i in zip(infos, ins, strict=True):
        new_i.CopyFrom(old_i)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(tensors)
    del graph.input[:]
    graph.input.extend(infos)


def run_followed(model_bytes: bytes, imported: ImportedNetwork, probes: np.ndarray) -> np.ndarray:
    """ONNX Runtime's value of the followed tensor ``T`` for ``probes`` [n, input_dim].

    The graph's outputs are replaced by ``T`` alone and every node and initializer
    ``T`` does not depend on is dropped (label post-processing and unused constants
    never reach ONNX Runtime: it only runs what :func:`from_onnx` read and checked);
    probes are reshaped to the graph input's feature shape and cast to its element
    type; a fixed batch size is honoured by chunking (zero padded).
    Returns ``[n, out]`` float64.
    """
    import onnxruntime as ort  # heavy import, only needed here

    model = onnx.load_model_from_string(bytes(model_bytes))
    _prune_to(model.graph, imported.followed_tensor, imported.input_name)
    del model.graph.output[:]
    elem: int = TensorProto.FLOAT
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        for vi in [*inferred.graph.value_info, *inferred.graph.input]:
            if vi.name == imported.followed_tensor and vi.type.tensor_type.elem_type:
                elem = vi.type.tensor_type.elem_type
    except Exception:  # inference is only a hint for the output's type
        elem = imported.input_elem_type
    model.graph.output.append(helper.make_tensor_value_info(imported.followed_tensor, elem, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    dtype = helper.tensor_dtype_to_np_dtype(imported.input_elem_type)
    x = np.asarray(probes).reshape(-1, *imported.input_shape).astype(dtype)
    n = x.shape[0]
    b = imported.fixed_batch or n
    parts = []
    for start in range(0, n, b):
        chunk = x[start : start + b]
        real = chunk.shape[0]
        if real < b:
            chunk = np.concatenate([chunk, np.zeros((b - real, *chunk.shape[1:]), dtype=dtype)])
        (t,) = session.run([imported.followed_tensor], {imported.input_name: chunk})
        parts.append(np.asarray(t, dtype=np.float64).reshape(b, -1)[:real])
    return np.concatenate(parts) if parts else np.zeros((0, imported.output_dim))


def verify_import(
    model_bytes: bytes,
    imported: ImportedNetwork,
    net: Network,
    probes: np.ndarray,
    *,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
) -> dict[str, Any]:
    """Check that Steward's ``net.forward(probes)`` reproduces ONNX Runtime on the file.

    ``net`` is :meth:`ImportedNetwork.check_against`'s result; ONNX Runtime's
    followed tensor goes through :meth:`ImportedNetwork.output_transform` for
    ``net.task``, then ``|ŷ_ort − ŷ| ≤ atol + rtol·|ŷ|`` must hold elementwise.
    Returns ``{"ok": True, "max_abs_error", "tolerance", "n_probes",
    "followed_tensor", "output_transform"}``; raises :class:`OnnxVerificationError`
    with the evidence otherwise (also when ONNX Runtime cannot run the file) — and,
    being the last step of decoding an untrusted file, nothing else: any other failure
    is an :class:`OnnxVerificationError` too.
    """
    with (
        decoding("the ONNX file could not be verified", lambda s: OnnxVerificationError(s, {})),
        np.errstate(all="ignore"),
    ):
        return _verify_import(model_bytes, imported, net, probes, atol, rtol)


def _verify_import(
    model_bytes: bytes, imported: ImportedNetwork, net: Network, probes: np.ndarray, atol: float, rtol: float
) -> dict[str, Any]:
    transform = imported.output_transform(net.task)
    probes = np.ascontiguousarray(probes, dtype=F32)
    try:
        raw = run_followed(model_bytes, imported, probes)
    except Exception as e:  # onnxruntime's exception classes are not importable portably
        raise OnnxVerificationError(
            f"ONNX Runtime could not run the file: {str(e).strip().splitlines()[0] if str(e) else e!r}",
            {"error": type(e).__name__},
        ) from e
    got = _TRANSFORMS[transform](raw)
    ok, evidence = compare_outputs(got, net.forward(probes), atol=atol, rtol=rtol)
    result = {
        "ok": ok,
        "max_abs_error": evidence.get("max_abs_error"),
        "tolerance": {"atol": atol, "rtol": rtol},
        "n_probes": int(probes.shape[0]),
        "followed_tensor": imported.followed_tensor,
        "output_transform": transform,
    }
    if not ok:
        raise OnnxVerificationError(
            f"Steward's outputs differ from ONNX Runtime's beyond atol={atol}, rtol={rtol} "
            f"(max |error| {evidence.get('max_abs_error')})",
            evidence,
        )
    return result
