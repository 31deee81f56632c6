"""Optimizers for :class:`~app.engine.nn.network.Network` parameters (float32, in place).

One step, for every trainable layer ``i`` (not in ``frozen``), with ``dW``, ``db``
the loss gradient (a mean over the batch) and ``t`` the step count after the step::

    g_W = (dW + l2 · W) ⊙ mask_i          g_b = db            (l2 never touches biases)
    if clip_norm:  c = clip_norm / (‖(g_W, g_b)‖₂ + 1e-6)  over all trainable layers;
                   if c < 1: g ← c · g                        (= torch.nn.utils.clip_grad_norm_)
    sgd:   v ← μ v + g;  θ ← θ − η v            (μ = 0: θ ← θ − η g, no state; torch.optim.SGD)
    adam:  m ← m + (1 − β1)(g − m)              (≡ β1 m + (1 − β1) g)
           v ← β2 v + (1 − β2) g²
           θ ← θ − (η / (1 − β1ᵗ)) · m / (√v / √(1 − β2ᵗ) + ε)    (torch.optim.Adam)

``mask_i`` (bool ``[out_i, in_i]``, optional) pins pruned weights: where it is False
the gradient is zeroed and the weight is kept at exactly 0.

State is stored flat: one float32 vector per moment in the *parameter layout*
(:func:`param_layout`: layer 0 weight row-major, layer 0 bias, layer 1 weight, …),
with per-layer views. :meth:`Optimizer.state_dict` gives it as named arrays
(``t``, ``momentum.layers.{i}.weight``, ``exp_avg.layers.{i}.bias``, …) that can be
stored in a safetensors file and restored for a bit-identical continuation.

Every constant enters the arithmetic as float32 (like a Python scalar applied to a
float32 tensor in numpy ≥ 2 or torch), and the list API (:meth:`Optimizer.step`) and
the flat API (:meth:`Optimizer.bind_flat`, used by the online learner) run the same
element-wise operations in the same order, so they agree bit for bit except for the
summation order inside the clip norm.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from app.engine.nn.network import F32, Network

KINDS = ("sgd", "adam")
#: Per-layer masks as accepted by :func:`normalize_masks`: a sequence with one entry per
#: layer, or a dict ``{layer: mask}`` (missing layers are unmasked).
MaskSpec = Sequence[np.ndarray | None] | dict[int, np.ndarray | None]
CLIP_EPS = 1e-6  # added to the global norm before dividing (torch's clip_grad_norm_ convention)


@dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer hyper-parameters (see the module docstring for the formulas)."""

    kind: str = "sgd"
    learning_rate: float = 0.01
    momentum: float = 0.0
    l2: float = 0.0
    clip_norm: float | None = None
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"optimizer.{name}: {why}, got {getattr(self, name)!r}")

        if self.kind not in KINDS:
            raise bad("kind", f"expected one of {', '.join(KINDS)}")
        for name in ("learning_rate", "momentum", "l2", "beta1", "beta2", "eps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise bad(name, "expected a finite number")
        if self.learning_rate <= 0:
            raise bad("learning_rate", "must be > 0")
        if not 0 <= self.momentum < 1:
            raise bad("momentum", "must be in [0, 1)")
        if self.l2 < 0:
            raise bad("l2", "must be ≥ 0")
        if not 0 <= self.beta1 < 1:
            raise bad("beta1", "must be in [0, 1)")
        if not 0 <= self.beta2 < 1:
            raise bad("beta2", "must be in [0, 1)")
        if self.eps <= 0:
            raise bad("eps", "must be > 0")
        if self.clip_norm is not None and (
            isinstance(self.clip_norm, bool)
            or not isinstance(self.clip_norm, int | float)
            or not math.isfinite(self.clip_norm)
            or self.clip_norm <= 0
        ):
            raise bad("clip_norm", "must be a finite number > 0 or null")

    @property
    def is_plain_sgd(self) -> bool:
        """True when a step is exactly θ ← θ − η ∇ℓ (sgd, no momentum, no l2, no clipping)."""
        return self.kind == "sgd" and self.momentum == 0 and self.l2 == 0 and self.clip_norm is None

    def replace(self, **changes: Any) -> OptimizerConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OptimizerConfig:
        """Build from a mapping; unknown keys are an error."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"optimizer: unknown field(s) {', '.join(sorted(unknown))}")
        return cls(**d)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None, *, learning_rate: float | None = None) -> OptimizerConfig:
        """From a model's stored ``optimizer`` spec (the API's ``optimizer`` object; None: the
        defaults): the fields of this class are taken, any other key is ignored.
        ``learning_rate`` (when not None) replaces the spec's, as a job's option does."""
        d = {k: v for k, v in (spec or {}).items() if k in cls.__dataclass_fields__}
        if learning_rate is not None:
            d["learning_rate"] = learning_rate
        return cls(**d)


# --------------------------------------------------------------------------- layout
def param_layout(net: Network) -> list[tuple[int, int, int]]:
    """Flat layout of the parameters: ``(weight_start, bias_start, end)`` per layer.

    Layer ``i``'s weight occupies ``[weight_start, bias_start)`` (row-major
    ``[out, in]``), its bias ``[bias_start, end)``; layers follow each other.
    """
    out, pos = [], 0
    for W, b in zip(net.weights, net.biases, strict=True):
        ws, bs = pos, pos + W.size
        pos = bs + b.size
        out.append((ws, bs, pos))
    return out


def _layer_views(flat: np.ndarray, net: Network) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-layer weight / bias views of a flat vector in :func:`param_layout` order."""
    Ws, bs = [], []
    for (ws, bst, end), W in zip(param_layout(net), net.weights, strict=True):
        Ws.append(flat[ws:bst].reshape(W.shape))
        bs.append(flat[bst:end])
    return Ws, bs


def normalize_masks(net: Network, masks: MaskSpec | None) -> list[np.ndarray | None]:
    """Masks as a list of length ``L`` of bool ``[out_i, in_i]`` arrays or None (checked)."""
    L = len(net.weights)
    if masks is None:
        return [None] * L
    if isinstance(masks, dict):
        masks = [masks.get(i) for i in range(L)]
    if len(masks) != L:
        raise ValueError(f"masks: expected {L} entries (one per layer), got {len(masks)}")
    out: list[np.ndarray | None] = []
    for i, (m, W) in enumerate(zip(masks, net.weights, strict=True)):
        if m is None:
            out.append(None)
            continue
        m = np.asarray(m)
        if m.shape != W.shape:
            raise ValueError(f"masks[{i}]: expected shape {list(W.shape)}, got {list(m.shape)}")
        out.append(np.ascontiguousarray(m, dtype=bool))
    return out


def normalize_frozen(net: Network, frozen: Iterable[int] | None) -> frozenset[int]:
    L = len(net.weights)
    fr = frozenset(int(i) for i in (frozen or ()))
    for i in fr:
        if not 0 <= i < L:
            raise ValueError(f"frozen: layer {i} does not exist (0..{L - 1})")
    return fr


# --------------------------------------------------------------------------- math
class _Consts:
    """Float32 0-d arrays for the step constants (fast ufunc operands)."""

    def __init__(self, cfg: OptimizerConfig) -> None:
        self.lr = np.array(cfg.learning_rate, F32)
        self.momentum = np.array(cfg.momentum, F32)
        self.l2 = np.array(cfg.l2, F32)
        self.one_minus_b1 = np.array(1.0 - cfg.beta1, F32)
        self.b2 = np.array(cfg.beta2, F32)
        self.one_minus_b2 = np.array(1.0 - cfg.beta2, F32)
        self.eps = np.array(cfg.eps, F32)
        self.bc2_sqrt = np.array(1.0, F32)  # per step
        self.step_size = np.array(cfg.learning_rate, F32)  # per step
        self.coef = np.array(1.0, F32)  # clip scale, per step

    def set_step(self, cfg: OptimizerConfig, t: int) -> None:
        """Adam bias corrections for step ``t`` (computed in float64, stored float32)."""
        self.step_size[()] = cfg.learning_rate / (1.0 - cfg.beta1**t)
        self.bc2_sqrt[()] = math.sqrt(1.0 - cfg.beta2**t)


def _apply(
    kind: str,
    momentum: bool,
    c: _Consts,
    p: np.ndarray,
    g: np.ndarray,
    m: np.ndarray | None,
    v: np.ndarray | None,
    tmp: np.ndarray,
) -> None:
    """One update of ``p`` in place from the final gradient ``g`` (l2 / mask / clip applied).

    ``m`` / ``v`` are the state arrays (momentum buffer, or Adam moments), ``tmp`` a
    scratch array of ``p``'s shape. Every array is float32 and of the same shape.
    """
    if kind == "sgd":
        src = g
        if momentum:
            assert m is not None, "momentum needs its buffer"
            np.multiply(m, c.momentum, out=m)
            np.add(m, g, out=m)
            src = m
        np.multiply(src, c.lr, out=tmp)
        np.subtract(p, tmp, out=p)
        return
    assert m is not None and v is not None, "adam needs both moments"
    np.subtract(g, m, out=tmp)
    np.multiply(tmp, c.one_minus_b1, out=tmp)
    np.add(m, tmp, out=m)
    np.multiply(v, c.b2, out=v)
    np.multiply(g, g, out=tmp)
    np.multiply(tmp, c.one_minus_b2, out=tmp)
    np.add(v, tmp, out=v)
    np.sqrt(v, out=tmp)
    np.divide(tmp, c.bc2_sqrt, out=tmp)
    np.add(tmp, c.eps, out=tmp)
    np.divide(m, tmp, out=tmp)
    np.multiply(tmp, c.step_size, out=tmp)
    np.subtract(p, tmp, out=p)


def _sq(a: np.ndarray) -> float:
    r = a.reshape(-1)
    return float(r.dot(r))


# --------------------------------------------------------------------------- optimizer
class Optimizer:
    """Optimizer state for one network architecture; :meth:`step` updates in place.

    ``frozen``: layer indices that are never updated (their state is kept, unused).
    ``masks``: per layer, None or bool ``[out_i, in_i]``; False entries stay exactly 0.
    ``t``: number of steps taken (Adam's bias correction uses it).
    """

    def __init__(
        self,
        config: OptimizerConfig,
        net: Network,
        *,
        frozen: Iterable[int] | None = None,
        masks: MaskSpec | None = None,
    ) -> None:
        self.config = config
        self.shapes = [(tuple(W.shape), tuple(b.shape)) for W, b in zip(net.weights, net.biases, strict=True)]
        self.layout = param_layout(net)
        self.size = self.layout[-1][2] if self.layout else 0
        self.frozen = normalize_frozen(net, frozen)
        self.masks = normalize_masks(net, masks)
        self.t = 0
        self._c = _Consts(config)
        adam = config.kind == "adam"
        self._m = np.zeros(self.size, F32) if adam or config.momentum > 0 else None
        self._v = np.zeros(self.size, F32) if adam else None
        self._m_views = _layer_views(self._m, net) if self._m is not None else None
        self._v_views = _layer_views(self._v, net) if self._v is not None else None

    # ---------------------------------------------------------------- helpers
    @property
    def trainable(self) -> list[int]:
        return [i for i in range(len(self.shapes)) if i not in self.frozen]

    def set_constraints(
        self,
        *,
        frozen: Iterable[int] | None = None,
        masks: MaskSpec | None = None,
        net: Network,
    ) -> None:
        """Replace the frozen set and masks (validated against ``net``)."""
        self._check_net(net)
        self.frozen = normalize_frozen(net, frozen)
        self.masks = normalize_masks(net, masks)

    def _check_net(self, net: Network) -> None:
        shapes = [(tuple(W.shape), tuple(b.shape)) for W, b in zip(net.weights, net.biases, strict=True)]
        if shapes != self.shapes:
            raise ValueError(f"optimizer was built for layer shapes {self.shapes}, network has {shapes}")

    def _state(self, i: int, part: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        m = self._m_views[part][i] if self._m_views is not None else None
        v = self._v_views[part][i] if self._v_views is not None else None
        return m, v

    # ---------------------------------------------------------------- list API
    def step(self, net: Network, dW: Sequence[np.ndarray], db: Sequence[np.ndarray]) -> None:
        """One step on ``net`` in place from gradients ``dW[i]`` [out_i, in_i], ``db[i]`` [out_i].

        ``dW`` / ``db`` are not modified. Frozen layers are left untouched.
        """
        cfg, c = self.config, self._c
        self._check_net(net)
        train = self.trainable
        self.t += 1
        if not train:
            return
        items = []  # (param, grad, m, v)
        for i in train:
            W, b = net.weights[i], net.biases[i]
            gW = np.asarray(dW[i], dtype=F32)
            gW = gW + c.l2 * W if cfg.l2 else gW.copy()
            mask = self.masks[i]
            if mask is not None:
                gW *= mask
            gb = np.array(db[i], dtype=F32)
            items.append((W, gW, *self._state(i, 0)))
            items.append((b, gb, *self._state(i, 1)))
        if cfg.clip_norm is not None:
            norm = math.sqrt(sum(_sq(g) for _, g, _, _ in items))
            coef = cfg.clip_norm / (norm + CLIP_EPS)
            if coef < 1.0:
                c.coef[()] = coef
                for _, g, _, _ in items:
                    np.multiply(g, c.coef, out=g)
        if cfg.kind == "adam":
            c.set_step(cfg, self.t)
        mom = cfg.momentum > 0
        for p, g, m, v in items:
            _apply(cfg.kind, mom, c, p, g, m, v, np.empty_like(p))
        for i in train:
            mask = self.masks[i]
            if mask is not None:
                net.weights[i] *= mask

    # ---------------------------------------------------------------- flat API
    def trainable_segments(self) -> list[tuple[int, int]]:
        """Maximal contiguous ``[start, end)`` ranges of the flat layout that are trained."""
        segs: list[tuple[int, int]] = []
        for i in self.trainable:
            ws, _, end = self.layout[i]
            if segs and segs[-1][1] == ws:
                segs[-1] = (segs[-1][0], end)
            else:
                segs.append((ws, end))
        return segs

    def flat_mask(self) -> np.ndarray | None:
        """Float32 [size] vector: 0 at masked weights, 1 elsewhere (None without masks)."""
        if all(m is None for m in self.masks):
            return None
        vec = np.ones(self.size, F32)
        for (ws, bs, _), m in zip(self.layout, self.masks, strict=True):
            if m is not None:
                vec[ws:bs] = m.reshape(-1)
        return vec

    def bind_flat(self, P: np.ndarray, G: np.ndarray) -> Callable[[], None]:
        """An ``update()`` doing :meth:`step` on flat vectors (for per-sample loops).

        ``P`` (parameters) and ``G`` (gradient of the loss, overwritten) are float32
        ``[size]`` in :func:`param_layout` order; only the trainable segments of ``G``
        need to be filled. Same math as :meth:`step`.
        """
        cfg, c = self.config, self._c
        if P.shape != (self.size,) or G.shape != (self.size,):
            raise ValueError(f"flat vectors must have shape [{self.size}]")
        T = np.empty(self.size, F32)
        l2vec = None
        if cfg.l2:
            l2vec = np.zeros(self.size, F32)
            for ws, bs, _ in self.layout:
                l2vec[ws:bs] = c.l2
        mvec = self.flat_mask()
        segs = []
        for s, e in self.trainable_segments():
            segs.append(
                (
                    P[s:e],
                    G[s:e],
                    T[s:e],
                    self._m[s:e] if self._m is not None else None,
                    self._v[s:e] if self._v is not None else None,
                    l2vec[s:e] if l2vec is not None else None,
                    mvec[s:e] if mvec is not None else None,
                )
            )
        kind, mom, clip, adam = cfg.kind, cfg.momentum > 0, cfg.clip_norm, cfg.kind == "adam"
        mul, add = np.multiply, np.add

        if len(segs) == 1 and clip is None:  # the common case, without the loops
            p, g, tmp, m, v, l2v, mk = segs[0]
            if kind == "sgd" and not mom and l2v is not None and mk is None:

                def update_sgd_l2() -> None:
                    self.t += 1
                    mul(l2v, p, out=tmp)
                    add(g, tmp, out=g)
                    mul(g, c.lr, out=tmp)
                    np.subtract(p, tmp, out=p)

                return update_sgd_l2

            def update_segment() -> None:
                self.t += 1
                if l2v is not None:
                    mul(l2v, p, out=tmp)
                    add(g, tmp, out=g)
                if mk is not None:
                    mul(g, mk, out=g)
                if adam:
                    c.set_step(cfg, self.t)
                _apply(kind, mom, c, p, g, m, v, tmp)
                if mk is not None:
                    mul(p, mk, out=p)

            return update_segment

        def update() -> None:
            self.t += 1
            for p, g, tmp, _, _, l2v, mk in segs:
                if l2v is not None:
                    mul(l2v, p, out=tmp)
                    add(g, tmp, out=g)
                if mk is not None:
                    mul(g, mk, out=g)
            if clip is not None:
                sq = 0.0
                for seg in segs:
                    g = seg[1]
                    sq += float(g.dot(g))
                coef = clip / (math.sqrt(sq) + CLIP_EPS)
                if coef < 1.0:
                    c.coef[()] = coef
                    for seg in segs:
                        mul(seg[1], c.coef, out=seg[1])
            if adam:
                c.set_step(cfg, self.t)
            for p, g, tmp, m, v, _, mk in segs:
                _apply(kind, mom, c, p, g, m, v, tmp)
                if mk is not None:
                    mul(p, mk, out=p)

        return update

    # ---------------------------------------------------------------- state
    def _names(self) -> list[tuple[str, np.ndarray]]:
        out: list[tuple[str, np.ndarray]] = []
        groups: list[tuple[str, tuple[list[np.ndarray], list[np.ndarray]]]] = []
        if self.config.kind == "adam":
            assert self._m_views is not None and self._v_views is not None, "adam keeps both moments"
            groups = [("exp_avg", self._m_views), ("exp_avg_sq", self._v_views)]
        elif self._m_views is not None:
            groups = [("momentum", self._m_views)]
        for prefix, (Ws, bs) in groups:
            for i, (W, b) in enumerate(zip(Ws, bs, strict=True)):
                out.append((f"{prefix}.layers.{i}.weight", W))
                out.append((f"{prefix}.layers.{i}.bias", b))
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the state as named arrays: ``t`` (int64 []) and the moments (float32)."""
        d = {"t": np.array(self.t, np.int64)}
        for name, arr in self._names():
            d[name] = arr.copy()
        return d

    def load_state_dict(self, d: dict[str, np.ndarray]) -> None:
        """Restore :meth:`state_dict` output (names, shapes and dtypes must match exactly)."""
        expected = dict(self._names())
        names = set(d) - {"t"}
        if "t" not in d or names != set(expected):
            missing = sorted((set(expected) | {"t"}) - set(d))
            extra = sorted(names - set(expected))
            raise ValueError(f"optimizer state mismatch: missing {missing}, unexpected {extra}")
        t = np.asarray(d["t"])
        if t.shape not in ((), (1,)) or not np.issubdtype(t.dtype, np.integer) or int(t.reshape(-1)[0]) < 0:
            raise ValueError("optimizer state: 't' must be a non-negative integer scalar")
        for name, dst in expected.items():
            src = np.asarray(d[name])
            if src.shape != dst.shape or src.dtype != F32:
                raise ValueError(f"optimizer state {name}: expected float32 {list(dst.shape)}")
        for name, dst in expected.items():
            dst[...] = d[name]
        self.t = int(t.reshape(-1)[0])
