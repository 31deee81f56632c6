"""The clients. Every method maps to one documented endpoint (or a loop of them), and a
problem answer raises :class:`~steward_client.errors.StewardError`.

Uploads (:meth:`Client.update`) are cut into NDJSON bodies of ``chunk_size`` samples;
each body carries an ``Idempotency-Key`` made for it, so a retry after a lost answer
(timeout, reset, 502/503/504) is answered from the first append instead of appending
twice."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from steward_client.errors import StewardError, TransportError, raise_for_problem
from steward_client.types import Appended, Event, Job, Model, Version
from steward_client.weights import read_safetensors

TERMINAL = ("succeeded", "failed", "canceled")
RETRY_STATUS = (502, 503, 504)
NDJSON = "application/x-ndjson"


#: One compact encoder (``json.dumps`` with options builds a new one at every call).
_ENC = json.JSONEncoder(separators=(",", ":"))
#: Rows of a numeric array are formatted this many at a time.
_BLOCK = 4096


def _plain(v: Any) -> Any:
    """numpy arrays and scalars as JSON values."""
    tolist = getattr(v, "tolist", None)
    return tolist() if callable(tolist) else v


def sample_line(x: Any, y: Any) -> bytes:
    """One NDJSON sample line ``{"x": …, "y": …}\\n``."""
    return (_ENC.encode({"x": _plain(x), "y": _plain(y)}) + "\n").encode()


def sample_lines(X: Any, y: Any = None) -> Iterator[bytes]:
    """NDJSON lines ``{"x": …, "y": …}`` of arrays ``X``, ``y`` (or of ``X`` alone: an
    iterable of ``(x, y)`` pairs or ``{"x", "y"}`` dicts)."""
    if y is not None:
        lines = _array_lines(X, y)
        if lines is not None:
            yield from lines
            return
    pairs: Iterable[Any] = zip(X, y, strict=True) if y is not None else X
    for item in pairs:
        if isinstance(item, dict):
            x, t = item["x"], item["y"]
        else:
            x, t = item
        yield sample_line(x, t)


def _array_lines(X: Any, y: Any) -> Iterator[bytes] | None:
    """The lines of a numeric numpy matrix ``X`` and its labels, made a block of rows at a
    time; None for anything else (the general path then does it a sample at a time).

    The service stores float32: each value is sent as its float32 value, in 9 significant
    digits (``%.9g`` reads back as exactly that float32), which is what the service would
    have stored from the full value, in a shorter body made about twice as fast as Python's
    shortest repr. A block with a value that is not finite in float32 (NaN, ±inf, beyond
    ±3.4e38) is sent as given, so that the service names the sample it refuses."""
    if type(X).__module__ != "numpy" or getattr(X, "ndim", 0) != 2 or X.dtype.kind not in "biuf":
        return None
    if not hasattr(y, "__len__") or len(X) != len(y):
        return None  # zip(strict=True) says what is wrong
    import numpy as np

    labels_all = np.asarray(y)

    def lines() -> Iterator[bytes]:
        row = ",".join(["%.9g"] * X.shape[1])
        for a in range(0, len(X), _BLOCK):
            block = X[a : a + _BLOCK]
            labels = [_ENC.encode(v) for v in labels_all[a : a + _BLOCK].tolist()]
            with np.errstate(over="ignore", invalid="ignore"):
                x32 = block.astype(np.float32)
            if not np.isfinite(x32).all():
                for x, t in zip(block.tolist(), labels, strict=True):
                    yield ('{"x":' + _ENC.encode(x) + ',"y":' + t + "}\n").encode()
                continue
            for x, t in zip(x32.tolist(), labels, strict=True):
                yield ('{"x":[' + row % tuple(x) + '],"y":' + t + "}\n").encode()

    return lines()


def chunks(lines: Iterator[bytes], size: int) -> Iterator[bytes]:
    while True:
        part = list(itertools.islice(lines, size))
        if not part:
            return
        yield b"".join(part)


def label_items(labels: Iterable[Any]) -> list[dict[str, Any]]:
    """Labels as the service takes them: ``(id, y)`` pairs or ``{"id", "y"}`` dicts."""
    return [
        {"id": x["id"], "y": _plain(x["y"])} if isinstance(x, dict) else {"id": x[0], "y": _plain(x[1])} for x in labels
    ]


def retry_delay(attempt: int) -> float:
    """Seconds before retry ``attempt + 1``: 0.2, 0.4, 0.8 … at most 5."""
    return float(min(0.2 * 2**attempt, 5.0))


def poll_delays(interval: float) -> Iterator[float]:
    """Seconds between the polls of a job: from ``interval / 8``, growing by half at each
    poll, up to ``interval`` (0.025, 0.0375 … 0.2 for 0.2: the first second has ~10 polls,
    the later ones 5)."""
    delay = interval / 8
    while True:
        yield delay
        delay = min(delay * 1.5, interval)


def outcome(r: httpx.Response, retry: bool, attempt: int, retries: int) -> httpx.Response | None:
    """The answer of an attempt, or None to retry it (a 502/503/504 while retries remain)."""
    if retry and r.status_code in RETRY_STATUS and attempt < retries:
        return None
    raise_for_problem(r)
    return r


class SSEParser:
    """Server-Sent Events, a line at a time: :meth:`feed` answers an event's fields
    (``{"id", "event", "data"}``) when a blank line ends one."""

    def __init__(self) -> None:
        self.cur: dict[str, str] = {}

    def feed(self, line: str) -> dict[str, str] | None:
        if not line:
            done, self.cur = self.cur, {}
            return done if "data" in done else None
        if not line.startswith(":"):
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            self.cur[field] = self.cur[field] + "\n" + value if field == "data" and field in self.cur else value
        return None


def _job_body(body: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments as a job body: ``from_`` is ``from``; None values are left out."""
    out = {("from" if k == "from_" else k): v for k, v in body.items() if v is not None}
    return out


class _Base:
    def __init__(self, url: str, key: str | None, timeout: float, retries: int) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.timeout = timeout
        self.retries = retries

    @staticmethod
    def _appended(total: Appended, answer: dict[str, Any]) -> None:
        total["accepted"] += int(answer.get("accepted", 0))
        if total["first_offset"] is None:
            total["first_offset"] = answer.get("first_offset")
        if answer.get("last_offset") is not None:
            total["last_offset"] = answer["last_offset"]
        total["requests"] += 1


def _filters(tags: dict[str, str] | None, q: str | None) -> dict[str, Any]:
    """List filters as query parameters: ``tag=key:value`` (each), ``q``."""
    out: dict[str, Any] = {}
    if tags:
        out["tag"] = [f"{k}:{v}" for k, v in tags.items()]
    if q:
        out["q"] = q
    return out


class Client(_Base):
    """A blocking client: ``with Client(url, key) as st: ...``."""

    def __init__(
        self,
        url: str,
        key: str | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, key, timeout, retries)
        self.http = httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # ---- plumbing
    def request(self, method: str, path: str, *, retry: bool = False, **kw: Any) -> httpx.Response:
        """One call; with ``retry`` (safe requests only) lost answers are retried."""
        for attempt in range(self.retries + 1 if retry else 1):
            try:
                r = self.http.request(method, "/v1" + path, **kw)
            except httpx.TransportError as e:
                if not retry or attempt == self.retries:
                    raise TransportError(f"{method} {self.url}/v1{path}: {e}") from e
                time.sleep(retry_delay(attempt))
                continue
            done = outcome(r, retry, attempt, self.retries)
            if done is not None:
                return done
            time.sleep(retry_delay(attempt))
        raise AssertionError("unreachable")

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        return self.request(method, path, **kw).json()

    def _pages(self, path: str, params: dict[str, Any] | None = None) -> Iterator[Any]:
        params = dict(params or {})
        while True:
            page = self._json("GET", path, params=params, retry=True)
            yield from page["items"]
            if not page.get("next_cursor"):
                return
            params["cursor"] = page["next_cursor"]

    # ---- models and versions
    def create_model(self, name: str, **spec: Any) -> Model:
        out: Model = self._json("POST", "/models", json={"name": name, **spec})
        return out

    def models(self, *, tags: dict[str, str] | None = None, q: str | None = None) -> list[Model]:
        """Every model (the key may see), or those with all of ``tags`` and ``q`` in the
        name or the description."""
        return list(self._pages("/models", _filters(tags, q)))

    def update_model(
        self, name: str, *, description: str | None = None, tags: dict[str, str | None] | None = None
    ) -> Model:
        """Change a model's description and tags (``tags`` merged: ``None`` removes a tag)."""
        body: dict[str, Any] = {k: v for k, v in (("description", description), ("tags", tags)) if v is not None}
        out: Model = self._json("PATCH", f"/models/{name}", json=body)
        return out

    def update_version(
        self, name: str, version: int, *, description: str | None = None, tags: dict[str, str | None] | None = None
    ) -> Version:
        """Change a version's description and tags (its parameters never change)."""
        body: dict[str, Any] = {k: v for k, v in (("description", description), ("tags", tags)) if v is not None}
        out: Version = self._json("PATCH", f"/models/{name}/versions/{version}", json=body)
        return out

    def model(self, name: str) -> Model:
        out: Model = self._json("GET", f"/models/{name}", retry=True)
        return out

    def delete_model(self, name: str) -> None:
        self.request("DELETE", f"/models/{name}")

    def versions(self, name: str, *, operation: str | None = None, tags: dict[str, str] | None = None) -> list[Version]:
        params = _filters(tags, None)
        if operation is not None:
            params["operation"] = operation
        return list(self._pages(f"/models/{name}/versions", params))

    def version(self, name: str, version: int) -> Version:
        out: Version = self._json("GET", f"/models/{name}/versions/{version}", retry=True)
        return out

    def weights(self, name: str, version: int, *, format: str = "numpy") -> Any:
        """A version's parameters: ``numpy`` (a dict of arrays), ``torch`` (a ``state_dict``
        of tensors) or ``bytes`` (the safetensors file)."""
        data = self.request("GET", f"/models/{name}/versions/{version}/weights", retry=True).content
        if format == "bytes":
            return data
        arrays = read_safetensors(data)
        if format == "numpy":
            return arrays
        if format == "torch":
            import torch

            return {k: torch.from_numpy(v) for k, v in arrays.items()}
        raise ValueError("format is numpy, torch or bytes")

    # ---- aliases
    def set_alias(
        self, name: str, alias: str, version: int, *, reason: str | None = None, if_match: int | str | None = None
    ) -> dict[str, Any]:
        headers = {"If-Match": "*" if if_match == "*" else f'"{if_match}"'} if if_match is not None else {}
        body: dict[str, Any] = {"version": version, **({"reason": reason} if reason else {})}
        out: dict[str, Any] = self._json("PUT", f"/models/{name}/aliases/{alias}", json=body, headers=headers)
        return out

    def alias_history(self, name: str, alias: str) -> list[dict[str, Any]]:
        return list(self._pages(f"/models/{name}/aliases/{alias}/history"))

    def rollback(self, name: str, alias: str, *, reason: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = self._json(
            "POST", f"/models/{name}/aliases/{alias}/rollback", json={"reason": reason} if reason else None
        )
        return out

    # ---- online learning and feedback
    def update(
        self,
        name: str,
        X: Any,
        y: Any = None,
        *,
        chunk_size: int = 1000,
        on_chunk: Callable[[int], None] | None = None,
    ) -> Appended:
        """Append samples to the model's log, ``chunk_size`` per request (NDJSON), each
        request with its own ``Idempotency-Key`` and retried safely; ``on_chunk(n)`` after
        each accepted chunk. Returns the totals. Numeric arrays are encoded a block at a
        time, the next body while the service answers the current one (``prefetch`` of
        :meth:`update_lines`); an iterable is read in the calling thread, one sample at a
        time."""
        arrays = _array_lines(X, y) if y is not None else None
        if arrays is not None:
            return self.update_lines(name, arrays, chunk_size=chunk_size, on_chunk=on_chunk, prefetch=True)
        return self.update_lines(name, sample_lines(X, y), chunk_size=chunk_size, on_chunk=on_chunk)

    def update_lines(
        self,
        name: str,
        lines: Iterable[bytes],
        *,
        chunk_size: int = 1000,
        on_chunk: Callable[[int], None] | None = None,
        prefetch: bool = False,
    ) -> Appended:
        """:meth:`update` with the samples already made NDJSON lines (``{"x": …, "y": …}``,
        each ending in a newline; see :func:`sample_lines`), sent as they are.

        With ``prefetch`` the next body is made (``lines`` read) in a helper thread while
        the service answers the current one, so reading and appending overlap; an error
        raised by ``lines`` surfaces when its body's turn comes. Only for iterators that
        may run in another thread (not, say, a database cursor tied to its thread)."""
        total: Appended = {"accepted": 0, "first_offset": None, "last_offset": None, "requests": 0}
        bodies = chunks(iter(lines), chunk_size)
        if not prefetch:
            for body in bodies:
                self._append(name, body, total, on_chunk)
            return total
        with ThreadPoolExecutor(1, thread_name_prefix="steward-update") as maker:
            ahead = maker.submit(next, bodies, None)
            while (made := ahead.result()) is not None:
                ahead = maker.submit(next, bodies, None)
                self._append(name, made, total, on_chunk)
        return total

    def _append(self, name: str, body: bytes, total: Appended, on_chunk: Callable[[int], None] | None) -> None:
        headers = {"Content-Type": NDJSON, "Idempotency-Key": uuid.uuid4().hex}
        answer = self._json("POST", f"/models/{name}/update", content=body, headers=headers, retry=True)
        self._appended(total, answer)
        if on_chunk is not None:
            on_chunk(int(answer.get("accepted", 0)))

    def predict(
        self,
        name: str,
        inputs: Any,
        *,
        version: int | None = None,
        alias: str | None = None,
        record: bool = False,
        ids: list[str] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"inputs": _plain(inputs)}
        if version is not None:
            body["version"] = version
        if alias is not None:
            body["alias"] = alias
        if record:
            body["record"] = True
        if ids is not None:
            body["ids"] = ids
        out: dict[str, Any] = self._json("POST", f"/models/{name}/predict", json=body, retry=record)
        return out

    def label(self, name: str, labels: Iterable[Any]) -> dict[str, Any]:
        """The truth for recorded predictions: ``(id, y)`` pairs or ``{"id", "y"}`` dicts.
        Safe to retry: a label given again is a duplicate that adds nothing."""
        items = label_items(labels)
        out: dict[str, Any] = self._json("POST", f"/models/{name}/labels", json={"labels": items}, retry=True)
        return out

    # ---- jobs
    def _job(self, path: str, body: dict[str, Any], wait: bool, progress: Callable[[Job], None] | None) -> Job:
        job: Job = self._json("POST", path, json=_job_body(body))
        return self.wait(job["id"], progress=progress) if wait else job

    def batch_update(
        self, name: str, *, wait: bool = False, progress: Callable[[Job], None] | None = None, **body: Any
    ) -> Job:
        return self._job(f"/models/{name}/batch-update", body, wait, progress)

    def prune(
        self, name: str, *, wait: bool = False, progress: Callable[[Job], None] | None = None, **body: Any
    ) -> Job:
        return self._job(f"/models/{name}/prune", body, wait, progress)

    def quantize(
        self, name: str, *, wait: bool = False, progress: Callable[[Job], None] | None = None, **body: Any
    ) -> Job:
        return self._job(f"/models/{name}/quantize", body, wait, progress)

    def migrate(
        self, name: str, *, wait: bool = False, progress: Callable[[Job], None] | None = None, **body: Any
    ) -> Job:
        return self._job(f"/models/{name}/migrate", body, wait, progress)

    def pipeline(
        self,
        name: str,
        steps: list[dict[str, Any]],
        *,
        promote: dict[str, Any] | None = None,
        wait: bool = False,
        progress: Callable[[Job], None] | None = None,
    ) -> Job:
        return self._job(f"/models/{name}/pipelines", {"steps": steps, "promote": promote}, wait, progress)

    def job(self, job_id: str) -> Job:
        out: Job = self._json("GET", f"/jobs/{job_id}", retry=True)
        return out

    def jobs(self, **filters: Any) -> list[Job]:
        return list(self._pages("/jobs", {k: v for k, v in filters.items() if v is not None}))

    def cancel(self, job_id: str) -> Job:
        out: Job = self._json("POST", f"/jobs/{job_id}/cancel")
        return out

    def wait(
        self,
        job_id: str,
        *,
        progress: Callable[[Job], None] | None = None,
        timeout: float | None = None,
        interval: float = 0.2,
    ) -> Job:
        """Poll the job until it ends (``progress(job)`` whenever its progress or status
        changes); the final job. A failed job is returned, not raised: see ``status``.
        Polls come quickly at first (a short job is seen ending soon after it does), then
        every ``interval`` seconds (:func:`poll_delays`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: tuple[str, float] | None = None
        for delay in poll_delays(interval):
            job = self.job(job_id)
            now = (job["status"], job["progress"])
            if progress is not None and now != seen:
                progress(job)
            seen = now
            if job["status"] in TERMINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job['status']} after {timeout} s")
            time.sleep(delay)
        raise AssertionError("unreachable")

    # ---- events
    def events(
        self,
        *,
        after: int | None = None,
        types: list[str] | None = None,
        model: str | None = None,
        follow: bool = True,
    ) -> Iterator[Event]:
        """The event feed: with ``follow`` an endless stream (Server-Sent Events, resumed
        with ``Last-Event-ID`` after a dropped connection; ``after`` None: from now on);
        without, every event after ``after`` (default 0), page by page, then stop."""
        params: dict[str, Any] = {}
        if types:
            params["type"] = types
        if model:
            params["model"] = model
        if not follow:
            pos = after or 0
            while True:
                page = self._json("GET", "/events", params={**params, "after": pos, "limit": 500}, retry=True)
                yield from page["items"]
                if not page["items"]:
                    return
                pos = page["next_after"]
        last = after
        failures = 0
        while True:
            headers = {"Last-Event-ID": str(last)} if last is not None else {}
            try:
                with self.http.stream(
                    "GET", "/v1/events/stream", params=params, headers=headers, timeout=httpx.Timeout(None, connect=10)
                ) as r:
                    if r.status_code >= 400:
                        r.read()
                        raise_for_problem(r)
                    for ev in parse_sse(r.iter_lines()):
                        failures = 0
                        event: Event = json.loads(ev["data"])
                        last = event["id"]
                        yield event
            except (httpx.TransportError, httpx.RemoteProtocolError):
                failures += 1
                if failures > self.retries:
                    raise
                time.sleep(retry_delay(failures))


def parse_sse(lines: Iterable[str]) -> Iterator[dict[str, str]]:
    """The events (``{"id", "event", "data"}``) of Server-Sent Events lines."""
    parser = SSEParser()
    for line in lines:
        ev = parser.feed(line)
        if ev is not None:
            yield ev


class AsyncClient(_Base):
    """The same service from asyncio: ``async with AsyncClient(url, key) as st: ...``
    (models, update, predict, label, jobs and their wait, the event stream)."""

    def __init__(
        self,
        url: str,
        key: str | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, key, timeout, retries)
        self.http = httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=timeout, transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def request(self, method: str, path: str, *, retry: bool = False, **kw: Any) -> httpx.Response:
        for attempt in range(self.retries + 1 if retry else 1):
            try:
                r = await self.http.request(method, "/v1" + path, **kw)
            except httpx.TransportError as e:
                if not retry or attempt == self.retries:
                    raise TransportError(f"{method} {self.url}/v1{path}: {e}") from e
                await asyncio.sleep(retry_delay(attempt))
                continue
            done = outcome(r, retry, attempt, self.retries)
            if done is not None:
                return done
            await asyncio.sleep(retry_delay(attempt))
        raise AssertionError("unreachable")

    async def _json(self, method: str, path: str, **kw: Any) -> Any:
        return (await self.request(method, path, **kw)).json()

    async def create_model(self, name: str, **spec: Any) -> Model:
        out: Model = await self._json("POST", "/models", json={"name": name, **spec})
        return out

    async def model(self, name: str) -> Model:
        out: Model = await self._json("GET", f"/models/{name}", retry=True)
        return out

    async def update(self, name: str, X: Any, y: Any = None, *, chunk_size: int = 1000) -> Appended:
        total: Appended = {"accepted": 0, "first_offset": None, "last_offset": None, "requests": 0}
        for body in chunks(sample_lines(X, y), chunk_size):
            headers = {"Content-Type": NDJSON, "Idempotency-Key": uuid.uuid4().hex}
            self._appended(
                total, await self._json("POST", f"/models/{name}/update", content=body, headers=headers, retry=True)
            )
        return total

    async def predict(self, name: str, inputs: Any, *, record: bool = False, **kw: Any) -> dict[str, Any]:
        body = {
            "inputs": _plain(inputs),
            **({"record": True} if record else {}),
            **{k: v for k, v in kw.items() if v is not None},
        }
        out: dict[str, Any] = await self._json("POST", f"/models/{name}/predict", json=body, retry=record)
        return out

    async def label(self, name: str, labels: Iterable[Any]) -> dict[str, Any]:
        items = label_items(labels)
        out: dict[str, Any] = await self._json("POST", f"/models/{name}/labels", json={"labels": items}, retry=True)
        return out

    async def job(self, job_id: str) -> Job:
        out: Job = await self._json("GET", f"/jobs/{job_id}", retry=True)
        return out

    async def submit(self, name: str, kind: str, **body: Any) -> Job:
        """A job of ``kind`` (``batch-update``, ``prune``, ``quantize``, ``migrate``, ``pipelines``)."""
        out: Job = await self._json("POST", f"/models/{name}/{kind}", json=_job_body(body))
        return out

    async def wait(self, job_id: str, *, progress: Callable[[Job], None] | None = None, interval: float = 0.2) -> Job:
        seen: tuple[str, float] | None = None
        for delay in poll_delays(interval):
            job = await self.job(job_id)
            now = (job["status"], job["progress"])
            if progress is not None and now != seen:
                progress(job)
            seen = now
            if job["status"] in TERMINAL:
                return job
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def events(self, *, after: int | None = None, types: list[str] | None = None) -> AsyncIterator[Event]:
        """The endless event stream (SSE), resumed with ``Last-Event-ID`` after a drop."""
        params: dict[str, Any] = {"type": types} if types else {}
        last = after
        failures = 0
        while True:
            headers = {"Last-Event-ID": str(last)} if last is not None else {}
            try:
                async with self.http.stream(
                    "GET", "/v1/events/stream", params=params, headers=headers, timeout=httpx.Timeout(None, connect=10)
                ) as r:
                    if r.status_code >= 400:
                        await r.aread()
                        raise_for_problem(r)
                    parser = SSEParser()
                    async for line in r.aiter_lines():
                        ev = parser.feed(line)
                        if ev is not None:
                            failures = 0
                            event: Event = json.loads(ev["data"])
                            last = event["id"]
                            yield event
            except (httpx.TransportError, httpx.RemoteProtocolError):
                failures += 1
                if failures > self.retries:
                    raise
                await asyncio.sleep(retry_delay(failures))


__all__ = ["AsyncClient", "Client", "StewardError", "parse_sse"]
