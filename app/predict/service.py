"""Predict and evaluate with any version (quantized and pruned ones included)."""

from __future__ import annotations

from typing import Any

import numpy as np

from app.core.db import Database
from app.engine.nn import network
from app.engine.nn.evaluation import evaluate
from app.online.samples import SampleSpec, check_matrix, parse_samples
from app.predict.schemas import EvaluateOut, PredictOut
from app.registry.models import get_model
from app.registry.versions import VersionService


class PredictService:
    def __init__(self, db: Database, versions: VersionService) -> None:
        self.db = db
        self.versions = versions

    def predict(self, name: str, inputs: list[list[float]], *, version: int | None, alias: str | None) -> PredictOut:
        with self.db.read() as s:
            m = get_model(s, name)
            v = self.versions.resolve(s, m, version=version, alias=alias)
        X = check_matrix(inputs, m.input_dim, ["body", "inputs"])
        net = self.versions.load(m, v)
        out = net.forward(X)
        lab = network.labels(m.task, out)
        return PredictOut(
            model=m.name,
            version=v.version,
            outputs=out.astype(np.float64).tolist(),
            labels=None if lab is None else lab.tolist(),
        )

    def evaluate(self, name: str, samples: list[Any], *, version: int | None, alias: str | None) -> EvaluateOut:
        with self.db.read() as s:
            m = get_model(s, name)
            v = self.versions.resolve(s, m, version=version, alias=alias)
        X, Y = parse_samples(SampleSpec.of(m), samples, ["body", "samples"])
        ev = evaluate(self.versions.load(m, v), X, Y)
        return EvaluateOut(model=m.name, version=v.version, loss=ev.loss, accuracy=ev.accuracy, n=ev.n)
