"""Helpers shared by the registry / predict / keys tests: problem+json assertions,
model creation, and an independent float64 forward pass written from API.md."""

from __future__ import annotations

from typing import Any

import numpy as np
import safetensors.numpy as stnp
from fastapi.testclient import TestClient
from httpx import Response

PROBLEM = "application/problem+json"


def assert_problem(r: Response, status: int, loc: list[Any] | None = None) -> dict[str, Any]:
    """``r`` is an RFC 9457 problem with ``status``; with ``loc``, some error names that place
    (``loc`` may be a prefix: the first entries of an error's ``loc``)."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].split(";")[0] == PROBLEM, r.headers["content-type"]
    body = r.json()
    assert body["status"] == status
    assert isinstance(body["type"], str) and body["type"]
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    if loc is not None:
        locs = [e["loc"] for e in body.get("errors") or []]
        assert any(lc[: len(loc)] == loc for lc in locs), f"no error at {loc}: {body}"
    return body


def model_spec(name: str = "m", **kw: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": name, "task": "regression", "input_dim": 3, "output_dim": 1, "hidden": [4]}
    spec.update(kw)
    return spec


def create_model(client: TestClient, name: str = "m", **kw: Any) -> dict[str, Any]:
    r = client.post("/v1/models", json=model_spec(name, **kw))
    assert r.status_code == 201, r.text
    return r.json()


def weights(client: TestClient, name: str, version: int) -> dict[str, np.ndarray]:
    """The tensors of ``GET .../weights``, read with ``safetensors.numpy``."""
    r = client.get(f"/v1/models/{name}/versions/{version}/weights")
    assert r.status_code == 200, r.text
    return stnp.load(r.content)


def ref_forward(tensors: dict[str, np.ndarray], task: str, activation: str, X: np.ndarray) -> np.ndarray:
    """Forward pass in float64 from the wire layout alone: ``z = a Wᵀ + b``; hidden layers
    apply relu / tanh / sigmoid; the output is identity (regression), sigmoid (binary)
    or softmax (multiclass)."""
    n_layers = len([k for k in tensors if k.endswith(".bias")])
    a = np.asarray(X, dtype=np.float64)
    for i in range(n_layers):
        W = tensors[f"layers.{i}.weight"].astype(np.float64)
        b = tensors[f"layers.{i}.bias"].astype(np.float64)
        z = a @ W.T + b
        if i < n_layers - 1:
            if activation == "relu":
                a = np.maximum(z, 0.0)
            elif activation == "tanh":
                a = np.tanh(z)
            else:
                a = 1.0 / (1.0 + np.exp(-z))
        else:
            a = z
    if task == "binary":
        return 1.0 / (1.0 + np.exp(-a))
    if task == "multiclass":
        e = np.exp(a - a.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return a


def safetensors_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    return stnp.save(tensors, metadata=metadata)
