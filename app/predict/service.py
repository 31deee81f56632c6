"""Predict and evaluate with any version (quantized and pruned ones included)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app.engine.nn import network
from app.online.samples import check_matrix, parse_samples
from app.predict.schemas import EvaluateOut, PredictOut
from app.registry.models import get_model
from app.registry.versions import VersionService


class PredictService:
    def __init__(self, versions: VersionService) -> None:
        self.versions = versions

    def predict(
        self, s: Session, name: str, inputs: list[list[float]], *, version: int | None, alias: str | None
    ) -> PredictOut:
        m = get_model(s, name)
        X = check_matrix(inputs, m.input_dim, ["body", "inputs"])
        v = self.versions.resolve(s, m, version=version, alias=alias)
        net = self.versions.load(m, v)
        out = net.forward(X)
        lab = network.labels(m.task, out)
        return PredictOut(
            model=m.name,
            version=v.version,
            outputs=out.astype(np.float64).tolist(),
            labels=None if lab is None else lab.tolist(),
        )

    def evaluate(
        self, s: Session, name: str, samples: list[dict[str, Any]], *, version: int | None, alias: str | None
    ) -> EvaluateOut:
        m = get_model(s, name)
        X, Y = parse_samples(m.task, m.input_dim, m.output_dim, samples, ["body", "samples"])
        v = self.versions.resolve(s, m, version=version, alias=alias)
        net = self.versions.load(m, v)
        out = net.forward(X)
        loss = float(network.per_sample_loss(m.task, out, Y).mean())
        return EvaluateOut(
            model=m.name, version=v.version, loss=loss, accuracy=network.accuracy(m.task, out, Y), n=len(X)
        )
