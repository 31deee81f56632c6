"""Predict and evaluate with any version (quantized and pruned ones included).

**The predict hot path.** A production client calls ``/predict`` once per event, so a
request that is valid and whose target is known does no database read and no thread
hop: the key comes from the key cache (:mod:`app.keys.service`), the served version
from the target cache here (model name, version or alias → the detached model and
version rows), the network from the version cache (:class:`~app.registry.versions.NetworkCache`),
and the body is read by orjson straight into a float32 matrix when its bytes are plain
(:func:`plain_request`). Anything else — a first request, a body the fast reading does
not settle — takes the strict path (:meth:`PredictService.predict_strict`), which
decides every error exactly as before; the fast path only ever answers what the strict
one would, byte for byte.

Targets are dropped when the model's aliases or versions change or the model is deleted
(:mod:`app.core.cache`: at once in this process, within ``STEWARD_CACHE_REFRESH_SECONDS``
in the others).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from app.core.cache import Caches, ReadCache
from app.core.db import Database, model_subject
from app.core.errors import BadRequest, Forbidden, Invalid, NotFound, validation_problem
from app.core.jsonbody import loads
from app.core.schemas import NAME_PATTERN
from app.core.tables import Model, Version
from app.engine.nn import network
from app.engine.nn.evaluation import evaluate
from app.feedback.service import FeedbackService
from app.online.samples import SampleSpec, check_matrix, parse_samples, plain_matrix
from app.online.service import OnlineService, Target
from app.predict.schemas import EvaluateOut, PredictIn
from app.registry.models import get_model
from app.registry.versions import MAX_VERSION, VersionService

_ALIAS = re.compile(NAME_PATTERN)
#: Forward passes up to this many multiply-adds (rows × parameters, ≈ 1 ms) run on the
#: event loop; larger ones in the thread pool, so one big batch does not hold up others.
INLINE_WORK = 1 << 23
_KEYS = ("inputs", "version", "alias", "record")
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


@dataclass(frozen=True)
class Served:
    """A resolved predict target: the model and version rows (detached, read-only)."""

    model: Model
    version: Version


def check_ids(ids: list[str], n: int, record: bool) -> None:
    """A recorded predict's ``ids``: with ``record``, one per input, each once."""
    if not record:
        raise Invalid.at(["body", "ids"], 'ids go with "record": true')
    if len(ids) != n:
        raise Invalid.at(["body", "ids"], f"expected one id per input ({n}), got {len(ids)}")
    seen: set[str] = set()
    for i, pid in enumerate(ids):
        if pid in seen:
            raise Invalid.at(["body", "ids", i], f"id {pid!r} is given twice")
        seen.add(pid)


def plain_request(body: bytes, doc: Any) -> tuple[Any, int | None, str | None, bool] | None:
    """``(inputs, version, alias, record)`` of a predict body that orjson parsed into
    ``doc``, when the bytes are plain enough to trust that reading; None otherwise (the
    strict path).

    Plain: an object with ``inputs``, at most one of a valid ``version`` (an integer in
    range) or ``alias`` (a name), optionally ``record`` (a boolean), and no other key; no
    backslash; exactly the ``"``, ``t`` and ``f`` characters those keys, the alias and the
    boolean account for. Then no string, boolean or repeated key (orjson keeps the last
    silently; the strict reading refuses it) can hide in the inputs: what remains there is
    numbers, ``null`` and brackets, which :func:`~app.online.samples.plain_matrix` checks."""
    if type(doc) is not dict or "inputs" not in doc or not set(doc) <= set(_KEYS):
        return None
    record = doc.get("record", False)
    if type(record) is not bool:
        return None
    version, alias = doc.get("version"), doc.get("alias")
    if version is not None and alias is not None:
        return None
    if version is not None and (type(version) is not int or not 1 <= version <= MAX_VERSION):
        return None
    if alias is not None and (type(alias) is not str or _ALIAS.fullmatch(alias) is None):
        return None
    text = "".join(doc) + (alias or "") + (str(record).lower() if "record" in doc else "")
    quotes = 2 * len(doc) + (2 if alias is not None else 0)
    if (
        b"\\" in body
        or body.count(b'"') != quotes
        or body.count(b"t") != text.count("t")
        or body.count(b"f") != text.count("f")
    ):
        return None
    return doc["inputs"], version, alias, record


class PredictService:
    #: Most predict targets cached per process.
    CACHED_TARGETS = 10_000

    def __init__(
        self,
        db: Database,
        versions: VersionService,
        caches: Caches | None = None,
        recorder: FeedbackService | None = None,
        committer: OnlineService | None = None,
    ) -> None:
        self.db = db
        self.recorder = recorder
        #: the sample log's group commit, which also carries recorded predicts
        self.committer = committer
        self.versions = versions
        self._caches = caches
        self._targets: ReadCache[tuple[str, int | None, str | None], Served] | None = (
            caches.store(self.CACHED_TARGETS) if caches is not None else None
        )

    # ---- targets
    def resolve(self, name: str, *, version: int | None, alias: str | None) -> Served:
        """The model and version a request names (404 when there is none), from the cache
        or the database (then cached)."""
        key = (name, version, alias)
        if self._targets is not None:
            hit = self._targets.get(key)
            if hit is not None:
                return hit
        epoch = self._caches.epoch() if self._caches is not None else 0
        with self.db.read() as s:
            m = get_model(s, name)
            v = self.versions.resolve(s, m, version=version, alias=alias)
        served = Served(m, v)
        if self._targets is not None:
            self._targets.put(key, served, model_subject(m.id), epoch)
        return served

    def _resolve_known(self, name: str, version: int | None, alias: str | None) -> Served | None:
        try:
            return self.resolve(name, version=version, alias=alias)
        except NotFound:
            return None  # the strict path says so, after the body's own errors

    # ---- predict
    async def predict_body(self, name: str, body: bytes, *, may_record: bool = False) -> bytes:
        """The JSON answer to a predict request's raw ``body``: the fast path when it
        settles the request, else :meth:`predict_strict` (a recorded predict, whose caller
        ``may_record`` or is refused 403, always is)."""
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            doc = None
        req = plain_request(body, doc)
        if req is not None and req[3] and not (may_record and self.committer is not None):
            req = None  # a recorded predict the caller may not make: the strict path says 403
        if req is not None:
            inputs, version, alias, record = req
            hit = self._targets.get((name, version, alias)) if self._targets is not None else None
            served = hit or await run_in_threadpool(self._resolve_known, name, version, alias)
            if served is not None:
                X = plain_matrix(inputs, served.model.input_dim)
                if X is not None and record:
                    del doc, inputs
                    return await self._record_fast(served, X)
                if X is not None:
                    del doc, inputs
                    net = self.versions.cache.get(served.version.blob_sha256)
                    if net is not None and X.shape[0] * net.n_params <= INLINE_WORK:
                        return self.answer(served, X)
                    return await run_in_threadpool(self.answer, served, X)  # big, or read from its blob
        del doc, req
        return await run_in_threadpool(self.predict_strict, name, body, may_record)

    async def _record_fast(self, served: Served, X: np.ndarray) -> bytes:
        """A recorded predict with generated ids (which never collide, so no earlier answer
        can exist): the forward pass, then the recording carried by the sample log's group
        commit (one fsync for concurrent requests) before the answer."""
        assert self.committer is not None
        m, v = served.model, served.version
        net = self.versions.cache.get(v.blob_sha256)
        if net is not None and X.shape[0] * net.n_params <= INLINE_WORK:
            out = net.forward(X)
        else:
            out = await run_in_threadpool(lambda: self.versions.load(m, v).forward(X))
        t = Target(m.id, m.name, SampleSpec.of(m))
        append = self.committer.submit_record(t, v.version, X, out, loop=asyncio.get_running_loop())
        try:
            answer = await self.committer.wait_committed(append)
        finally:
            if not append.done:
                self.committer.abandon(append)
        return self._json(m, v.version, out, answer["ids"])

    def _json(self, m: Model, version: int, out: np.ndarray, ids: list[str] | None) -> bytes:
        doc: dict[str, Any] = {"model": m.name, "version": version, "outputs": out.astype(np.float64)}
        doc["labels"] = network.labels(m.task, out)
        if ids is not None:
            doc["prediction_ids"] = ids
        return orjson.dumps(doc, option=_NUMPY)

    def predict_strict(self, name: str, body: bytes, may_record: bool = False) -> bytes:
        """The strict reading: malformed JSON or a duplicate key is 400, the body's schema
        422 (``["body", …]``), an unknown model, version or alias 404, then the inputs'
        width and values 422 at ``["body", "inputs", i, j]``; with ``record``, the ids
        (422 at ``["body", "ids", i]``) and the caller's scope (403)."""
        try:
            doc = loads(body)
        except (ValueError, RecursionError) as e:
            raise BadRequest(f"malformed JSON body: {e}") from None
        try:
            req = PredictIn.model_validate(doc)
        except ValidationError as e:
            raise validation_problem([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from None
        del doc
        if req.ids is not None:
            check_ids(req.ids, len(req.inputs), req.record)
        served = self.resolve(name, version=req.version, alias=req.alias)
        X = check_matrix(req.inputs, served.model.input_dim, ["body", "inputs"])
        if not req.record:
            return self.answer(served, X)
        if not may_record:
            raise Forbidden("recording predictions needs a key with scope 'ingest'")
        if self.recorder is None:
            raise RuntimeError("this PredictService records nothing")
        m = served.model
        out = self.versions.load(m, served.version).forward(X)
        version, out, ids = self.recorder.record(m, served.version.version, X, out, req.ids)
        return self._json(m, version, out, ids)

    def answer(self, served: Served, X: np.ndarray) -> bytes:
        """The forward pass and its JSON: ``model``, ``version``, ``outputs`` (the float32
        outputs as the doubles they are), ``labels``."""
        m, v = served.model, served.version
        out = self.versions.load(m, v).forward(X)
        lab = network.labels(m.task, out)
        return orjson.dumps(
            {"model": m.name, "version": v.version, "outputs": out.astype(np.float64), "labels": lab},
            option=_NUMPY,
        )

    # ---- evaluate
    def evaluate(self, name: str, samples: list[Any], *, version: int | None, alias: str | None) -> EvaluateOut:
        served = self.resolve(name, version=version, alias=alias)
        m, v = served.model, served.version
        X, Y = parse_samples(SampleSpec.of(m), samples, ["body", "samples"])
        ev = evaluate(self.versions.load(m, v), X, Y)
        return EvaluateOut(model=m.name, version=v.version, loss=ev.loss, accuracy=ev.accuracy, n=ev.n)
