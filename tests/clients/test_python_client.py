"""The Python client (clients/python, package ``steward_client``) against a live service
(uvicorn in a subprocess), on both databases."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import safetensors.numpy as stnp
from steward_client import AsyncClient, Client, StewardError

from tests.conftest import ADMIN
from tests.online_helpers import Server


@pytest.fixture
def server(db_url, tmp_path) -> Iterator[Server]:
    with Server(db_url, tmp_path / "data") as s:
        yield s


def data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    return X, (X[:, 0] - X[:, 1] > 0).astype(np.int64)


class DropFirstAnswers(httpx.BaseTransport):
    """Sends every request, but loses the answer of the first ``n`` /update calls (as a
    timeout or a reset would): the client must retry, and the service must not append
    twice."""

    def __init__(self, n: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.left = n
        self.sent = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        r = self.inner.handle_request(request)
        if request.url.path.endswith("/update"):
            self.sent += 1
            if self.left > 0:
                self.left -= 1
                r.read()
                raise httpx.ReadError("connection reset (test)", request=request)
        return r


def test_models_update_in_chunks_with_retries_predict_label_and_weights(server):
    transport = DropFirstAnswers(2)
    with Client(server.url, ADMIN, transport=transport) as st:
        st.create_model("m", task="binary", input_dim=4, hidden=[8])
        assert [m["name"] for m in st.models()] == ["m"]
        X, y = data(2500)
        chunks: list[int] = []
        total = st.update("m", X, y, chunk_size=1000, on_chunk=chunks.append)
        assert total == {"accepted": 2500, "first_offset": 0, "last_offset": 2499, "requests": 3}
        assert chunks == [1000, 1000, 500] and transport.sent == 5  # two answers lost, retried
        assert st.model("m")["online"]["accepted"] == 2500  # nothing appended twice
        # pairs and dicts are samples too
        more = st.update("m", [(X[0], 1), {"x": X[1], "y": 0}])
        assert more["accepted"] == 2 and more["first_offset"] == 2500
        out = st.predict("m", X[:3], record=True)
        assert len(out["prediction_ids"]) == 3 and out["version"] == 1
        ack = st.label("m", zip(out["prediction_ids"], [1, 0, 1], strict=True))
        assert ack["accepted"] == 3
        again = st.label("m", [{"id": out["prediction_ids"][0], "y": 1}])
        assert again["accepted"] == 0 and again["duplicates"] == 1
        w = st.weights("m", 1)
        ref = stnp.load(st.weights("m", 1, format="bytes"))
        assert set(w) == set(ref) and all(np.array_equal(w[k], ref[k]) for k in ref)
        import torch

        sd = st.weights("m", 1, format="torch")
        assert all(torch.equal(sd[k], torch.from_numpy(ref[k])) for k in ref)


def test_metadata_and_filters(server):
    with Client(server.url, ADMIN) as st:
        st.create_model("a", task="binary", input_dim=2, tags={"team": "growth"}, description="Churn risk")
        st.create_model("b", task="binary", input_dim=2, tags={"team": "risk"})
        m = st.update_model("b", description="fraud", tags={"team": "growth", "env": "prod"})
        assert m["description"] == "fraud" and m["tags"] == {"team": "growth", "env": "prod"}
        assert [x["name"] for x in st.models(tags={"team": "growth"})] == ["a", "b"]
        assert [x["name"] for x in st.models(tags={"team": "growth", "env": "prod"})] == ["b"]
        assert [x["name"] for x in st.models(q="churn")] == ["a"]
        assert st.update_model("b", tags={"env": None})["tags"] == {"team": "growth"}
        v = st.update_version("a", 1, tags={"reviewed": "yes"})
        assert v["tags"] == {"reviewed": "yes"} and v["version"] == 1
        assert [x["version"] for x in st.versions("a", tags={"reviewed": "yes"})] == [1]
        assert st.versions("a", operation="prune") == []
        with pytest.raises(StewardError) as e:
            st.update_model("a", tags={"": "x"})
        assert e.value.status == 422


def test_problems_are_raised_with_status_detail_and_errors(server):
    with Client(server.url, ADMIN) as st:
        st.create_model("m", task="binary", input_dim=4)
        with pytest.raises(StewardError) as e:
            st.create_model("m", task="binary", input_dim=4)
        assert e.value.status == 409 and "already exists" in e.value.detail
        with pytest.raises(StewardError) as e:
            st.update("m", [(np.zeros(3), 1)])
        assert e.value.status == 422 and e.value.errors[0]["loc"][:3] == ["body", "samples", 0]
        with pytest.raises(StewardError) as e:
            st.model("nope")
        assert e.value.status == 404 and e.value.type.endswith("/not-found")
    with Client(server.url, "wrong") as st, pytest.raises(StewardError) as e:
        st.models()
    assert e.value.status == 401


def test_jobs_wait_with_progress_aliases_and_the_event_feed(server):
    with Client(server.url, ADMIN) as st:
        st.create_model("m", task="binary", input_dim=4, hidden=[8])
        X, y = data(600)
        st.update("m", X, y)
        seen: list[dict[str, Any]] = []
        job = st.batch_update("m", log={"last": 500}, epochs=3, wait=True, progress=lambda j: seen.append(j))
        assert job["status"] == "succeeded" and job["result"]["version"] == 2
        assert (seen[-1]["status"], seen[-1]["progress"]) == ("succeeded", 1.0)
        q = st.quantize("m", from_=2, dtype="int8", wait=True)
        assert q["status"] == "succeeded" and q["result"]["version"] == 3
        st.set_alias("m", "production", 2, reason="first")
        with pytest.raises(StewardError) as e:
            st.set_alias("m", "production", 3, if_match=1)
        assert e.value.status == 412
        st.set_alias("m", "production", 3, if_match=2)
        rb = st.rollback("m", "production", reason="back")
        assert (rb["version"], rb["previous"]) == (2, 3)
        assert [h["version"] for h in st.alias_history("m", "production")] == [2, 3, 2]
        events = list(st.events(after=0, follow=False))
        types = [e["type"] for e in events]
        assert types.count("version.created") == 3 and "job.succeeded" in types and "alias.moved" in types
        assert [e["id"] for e in events] == list(range(1, len(events) + 1))
        # the live stream, resumed: read two, then the next call continues after the last
        stream = st.events(after=0, types=["alias.*"])
        first = [next(stream), next(stream)]
        stream.close()
        rest = st.events(after=first[-1]["id"], types=["alias.*"])
        assert next(rest)["data"]["reason"] == "back"
        rest.close()
        assert [e["data"]["version"] for e in first] == [2, 3]


def test_the_async_client(server):
    async def run() -> dict[str, Any]:
        async with AsyncClient(server.url, ADMIN) as st:
            await st.create_model("a", task="binary", input_dim=4, hidden=[4])
            X, y = data(300, seed=1)
            total = await st.update("a", X, y, chunk_size=128)
            out = await st.predict("a", X[:2], record=True)
            await st.label("a", zip(out["prediction_ids"], [0, 1], strict=True))
            job = await st.submit("a", "quantize", dtype="int8")
            done = await st.wait(job["id"])
            got: list[dict[str, Any]] = []
            async for ev in st.events(after=0, types=["job.*"]):
                got.append(ev)
                break
            return {"total": total, "job": done, "event": got[0], "model": await st.model("a")}

    r = asyncio.run(run())
    assert r["total"]["accepted"] == 300 and r["total"]["requests"] == 3
    assert r["job"]["status"] == "succeeded" and r["event"]["type"] == "job.succeeded"
    assert r["model"]["online"]["accepted"] == 302
