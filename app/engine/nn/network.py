"""Dense feed-forward networks in pure numpy (float32).

A network is a list of layers ``i = 0 .. L-1`` (input side first). Layer ``i``
has ``weights[i]`` of shape ``[out_i, in_i]`` and ``biases[i]`` of shape
``[out_i]`` -- the layout of a PyTorch ``nn.Linear``. Hidden layers apply the
network's ``activation``; the output layer applies the task's link:

=============  ==================  ==========================================
task           output link         per-sample loss  (z = pre-activation)
=============  ==================  ==========================================
regression     identity            ½‖ŷ − y‖²,           ∂ℓ/∂z = ŷ − y
binary         sigmoid (out = 1)   −y log ŷ − (1−y) log(1−ŷ), ∂ℓ/∂z = ŷ − y
multiclass     softmax (out ≥ 2)   −log ŷ_y,             ∂ℓ/∂z = ŷ − onehot(y)
=============  ==================  ==========================================

Shapes: ``X`` is ``[N, input_dim]`` float32. Targets ``Y`` are ``[N, out]``
float32 for regression, ``[N]`` float32 in {0, 1} for binary, ``[N]`` int64
class indices for multiclass.

Nothing in this package performs I/O or imports from the web or database layers.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TASKS = ("regression", "binary", "multiclass")
ACTIVATIONS = ("relu", "tanh", "sigmoid")
F32 = np.float32
_EPS = 1e-7  # probability clamp for the log in cross-entropy losses


# --------------------------------------------------------------------------- activations
def _sigmoid(z: np.ndarray) -> np.ndarray:
    """Numerically stable logistic σ(z) = 1 / (1 + e^{−z}), float32."""
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``z`` [N, K]: exp(z − max) / Σ exp(z − max)."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def activate(name: str, z: np.ndarray) -> np.ndarray:
    """Hidden activation ``a = f(z)`` for ``name`` in :data:`ACTIVATIONS`."""
    a: np.ndarray
    if name == "relu":
        a = np.maximum(z, 0, dtype=z.dtype)
    elif name == "tanh":
        a = np.tanh(z)
    elif name == "sigmoid":
        a = _sigmoid(z)
    else:
        raise ValueError(f"unknown activation {name!r}")
    return a


def activation_grad(name: str, a: np.ndarray) -> np.ndarray:
    """f'(z) expressed through the activation's output ``a = f(z)``.

    relu: 1[a > 0]; tanh: 1 − a²; sigmoid: a (1 − a).
    """
    g: np.ndarray
    if name == "relu":
        g = (a > 0).astype(a.dtype)
    elif name == "tanh":
        g = 1.0 - a * a
    elif name == "sigmoid":
        g = a * (1.0 - a)
    else:
        raise ValueError(f"unknown activation {name!r}")
    return g


def output_link(task: str, z: np.ndarray) -> np.ndarray:
    """Output of the last layer: identity, sigmoid or softmax of ``z`` [N, out]."""
    if task == "regression":
        return z
    if task == "binary":
        return _sigmoid(z)
    if task == "multiclass":
        return _softmax(z)
    raise ValueError(f"unknown task {task!r}")


# --------------------------------------------------------------------------- network
@dataclass
class Network:
    """Parameters of a dense network plus what is needed to run it.

    ``weights[i]``: [out_i, in_i] float32, ``biases[i]``: [out_i] float32.
    """

    task: str
    activation: str
    weights: list[np.ndarray]
    biases: list[np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def input_dim(self) -> int:
        return int(self.weights[0].shape[1])

    @property
    def output_dim(self) -> int:
        return int(self.weights[-1].shape[0])

    @property
    def hidden(self) -> list[int]:
        """Widths of the hidden layers (may differ from the model spec after neuron pruning)."""
        return [int(w.shape[0]) for w in self.weights[:-1]]

    @property
    def n_params(self) -> int:
        return int(sum(w.size + b.size for w, b in zip(self.weights, self.biases, strict=True)))

    def copy(self) -> Network:
        return Network(
            self.task,
            self.activation,
            [w.copy() for w in self.weights],
            [b.copy() for b in self.biases],
            dict(self.meta),
        )

    def forward(self, X: np.ndarray) -> np.ndarray:
        """Outputs ŷ [N, out] for inputs ``X`` [N, in] (after the output link)."""
        a = np.asarray(X, dtype=F32)
        last = len(self.weights) - 1
        for i, (W, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            z = a @ W.T
            z += b
            a = activate(self.activation, z) if i < last else z
        return output_link(self.task, a)

    def forward_trace(self, X: np.ndarray) -> list[np.ndarray]:
        """Activations of every layer: ``[X, a_0, ..., a_{L-2}, ŷ]`` (for backprop)."""
        acts = [np.asarray(X, dtype=F32)]
        last = len(self.weights) - 1
        for i, (W, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            z = acts[-1] @ W.T
            z += b
            acts.append(activate(self.activation, z) if i < last else output_link(self.task, z))
        return acts


def labels(task: str, outputs: np.ndarray) -> np.ndarray | None:
    """Class labels from outputs: binary 1 where ŷ ≥ 0.5, multiclass argmax; None for regression."""
    if task == "binary":
        return (outputs[:, 0] >= 0.5).astype(np.int64)
    if task == "multiclass":
        lab: np.ndarray = outputs.argmax(axis=1).astype(np.int64)
        return lab
    return None


def per_sample_loss(task: str, outputs: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Loss of each sample, shape [N] float64 (see the module table)."""
    out = outputs.astype(np.float64)
    loss: np.ndarray
    if task == "regression":
        y = np.asarray(Y, dtype=np.float64).reshape(out.shape)
        loss = 0.5 * ((out - y) ** 2).sum(axis=1)
    elif task == "binary":
        p = np.clip(out[:, 0], _EPS, 1 - _EPS)
        y1 = np.asarray(Y, dtype=np.float64).reshape(-1)
        loss = -(y1 * np.log(p) + (1 - y1) * np.log1p(-p))
    elif task == "multiclass":
        idx = np.asarray(Y, dtype=np.int64).reshape(-1)
        p = np.clip(out[np.arange(out.shape[0]), idx], _EPS, 1.0)
        loss = -np.log(p)
    else:
        raise ValueError(f"unknown task {task!r}")
    return loss


def accuracy(task: str, outputs: np.ndarray, Y: np.ndarray) -> float | None:
    """Share of correct labels, or None for regression."""
    lab = labels(task, outputs)
    if lab is None:
        return None
    y = np.asarray(Y).reshape(-1).astype(np.int64)
    return float((lab == y).mean()) if y.size else None


def output_delta(task: str, outputs: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """∂ℓ/∂z for the output pre-activation, [N, out] float32 (ŷ − target)."""
    if task == "regression":
        return outputs - np.asarray(Y, dtype=F32).reshape(outputs.shape)
    if task == "binary":
        return outputs - np.asarray(Y, dtype=F32).reshape(-1, 1)
    if task == "multiclass":
        d = outputs.copy()
        d[np.arange(d.shape[0]), np.asarray(Y, dtype=np.int64).reshape(-1)] -= 1.0
        return d
    raise ValueError(f"unknown task {task!r}")


def gradients(net: Network, X: np.ndarray, Y: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Mean gradient of the per-sample loss over the batch, by backpropagation.

    Returns ``(dW, db, outputs)`` with ``dW[i]`` shaped like ``weights[i]``,
    ``db[i]`` like ``biases[i]`` and ``outputs`` the forward pass ŷ [N, out].
    ``dW[i] = δ_iᵀ a_{i-1} / N``, ``db[i] = Σ_n δ_i / N``,
    ``δ_{i-1} = (δ_i W_i) ⊙ f'(a_{i-1})``. The bias sum is the product ``1ᵀ δ_i`` with a
    ones vector [N] (one BLAS call, faster than a column sum; ``train.py`` does the same).
    """
    acts = net.forward_trace(X)
    n = acts[0].shape[0]
    delta = output_delta(net.task, acts[-1], Y)
    if n != 1:
        delta /= F32(n)
    ones = np.ones(n, dtype=delta.dtype)
    dW: list[np.ndarray] = []  # filled from the output layer down, reversed at the end
    db: list[np.ndarray] = []
    for i in range(len(net.weights) - 1, -1, -1):
        dW.append(delta.T @ acts[i])
        db.append(ones @ delta)
        if i:
            delta = (delta @ net.weights[i]) * activation_grad(net.activation, acts[i])
    dW.reverse()
    db.reverse()
    return dW, db, acts[-1]


# --------------------------------------------------------------------------- init
def init_network(task: str, activation: str, input_dim: int, output_dim: int, hidden: list[int], seed: int) -> Network:
    """Deterministic initial parameters for ``seed``: PyTorch's ``nn.Linear`` default.

    Every layer's weight ``W [fan_out, fan_in]`` and bias ``b [fan_out]`` are drawn
    uniformly from ``[−1/√fan_in, 1/√fan_in]`` (``kaiming_uniform_(a=√5)`` and its bias
    rule), from ``np.random.default_rng(seed)``: layer by layer, ``W`` then ``b``, in
    float64, stored as float32. Random biases matter: relu units whose hinges all start at
    the origin train markedly slower (on ``bench/bench_batch.py``'s synthetic set, 10 epochs:
    test accuracy 0.89 with these, 0.864 with He-normal weights and zero biases).
    """
    rng = np.random.default_rng(seed)
    sizes = [input_dim, *hidden, output_dim]
    weights, biases = [], []
    for fan_in, fan_out in itertools.pairwise(sizes):
        lim = 1.0 / np.sqrt(fan_in)
        weights.append(rng.uniform(-lim, lim, size=(fan_out, fan_in)).astype(F32))
        biases.append(rng.uniform(-lim, lim, size=fan_out).astype(F32))
    return Network(task, activation, weights, biases)
