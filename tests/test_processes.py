"""Several API processes on one database (SQLite and PostgreSQL), started for real.

``steward serve --workers 2``: both processes answer; one-sample ``/update``s from many
threads through both get contiguous offsets, none twice, none lost; each model's learner
is held by one of the two processes and ``?wait=true`` completes; ``/checkpoint`` and a
job are answered whichever process takes the request; one bootstrap admin key; SIGTERM
to the supervisor stops every process gracefully and releases the learner's lease.
Waits are bounded; nothing is timed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import auth
from tests.online_helpers import ROOT, free_port, wait_until
from tests.test_startup import environment, query


def api_process(owner: str, pids: set[int]) -> int:
    """The API process a lease owner belongs to: the owner's pid when it is one of ``pids``,
    else its parent's (the learner runs in a child process of its own by default,
    ``STEWARD_LEARNER_PROCESS``)."""
    pid = int(owner.split(":")[-2])
    if pid in pids:
        return pid
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


DIM = 4


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Served:
    """``python -m app.cli serve --workers N`` in a subprocess, its stderr in a file."""

    def __init__(self, db_url: str, tmp_path: Path, workers: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "serve.log"
        cmd = [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port), "--workers", str(workers)]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env=environment(db_url, tmp_path / "data"), stdout=out, stderr=subprocess.STDOUT
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"exited with {self.proc.returncode}: {self.text()[-3000:]}"
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"not ready after {timeout} s: {self.text()[-3000:]}")

    def pids(self, want: int, tries: int = 400) -> set[int]:
        """The processes answering, from ``/readyz`` on fresh connections, until ``want`` seen."""
        seen: set[int] = set()
        for _ in range(tries):
            seen.add(httpx.get(self.url + "/readyz", timeout=10).json()["pid"])
            if len(seen) >= want:
                break
        return seen

    def terminate(self, timeout: float = 60.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode


@pytest.fixture
def served(db_url, tmp_path):
    s = Served(db_url, tmp_path, workers=2)
    try:
        s.wait_ready()
        yield s
    finally:
        s.terminate()


def test_two_processes_share_the_port_the_log_and_one_learner_per_model(served, db_url):
    text = served.text()
    # one bootstrap admin key, made and shown once by the supervisor before it forked
    secrets = [w for w in text.split() if w.startswith("stw_")]
    assert len(secrets) == 1 and text.count("shown ONCE") == 1, text
    admin = secrets[0]
    assert query(db_url, "SELECT count(*) FROM api_keys WHERE scope = 'admin'") == [(1,)]
    assert "with 2 processes" in text

    pids = served.pids(2)
    assert len(pids) == 2 and os.getpid() not in pids, pids

    with httpx.Client(base_url=served.url, headers=auth(admin), timeout=60) as c:
        spec = {"name": "m", "task": "binary", "input_dim": DIM, "hidden": [8], "checkpoint_every": 1_000_000}
        for name in ("m", "n1", "n2", "n3"):
            assert c.post("/v1/models", json={**spec, "name": name}).status_code == 201
        r = c.post("/v1/keys", json={"name": "app", "scope": "ingest", "models": ["m"]})
        assert r.status_code == 201, r.text
        ingest = r.json()["key"]

    threads, per_thread = 8, 15

    def send(t: int) -> list[tuple[int, int]]:
        got = []
        for i in range(per_thread):
            body = {"samples": [{"x": [t, i, 0.5, -1.0], "y": (t + i) % 2}]}
            # a fresh connection per request: the kernel hands each to either process
            r = httpx.post(f"{served.url}/v1/models/m/update", json=body, headers=auth(ingest), timeout=60)
            assert r.status_code == 202, r.text
            got.append((r.json()["first_offset"], r.json()["last_offset"]))
        return got

    with ThreadPoolExecutor(threads) as pool:
        offsets = sorted(o for got in pool.map(send, range(threads)) for o in got)
    n = threads * per_thread
    assert offsets == [(i, i) for i in range(n)]  # contiguous, no duplicate, none lost

    with httpx.Client(base_url=served.url, headers=auth(admin), timeout=60) as c:
        r = c.post("/v1/models/m/update?wait=true", json={"samples": [{"x": [0.0] * DIM, "y": 1}]})
        assert r.status_code == 202 and r.json()["last_offset"] == n, r.text
        assert r.json()["applied"] is True and r.json()["applied_through"] == n, r.json()
        # exactly one learner: the lease row names one of the two processes
        [(owner,)] = query(db_url, "SELECT owner FROM learners JOIN models ON models.id = model_id WHERE name = 'm'")
        assert owner is not None and api_process(owner, pids) in pids, owner
        # /checkpoint and a job are answered whichever process gets the request
        r = c.post("/v1/models/m/checkpoint")
        assert r.status_code == 201 and r.json()["applied_through"] == n, r.text
        r = c.post("/v1/models/m/prune", json={"from": "latest", "sparsity": 0.5}, headers={"Prefer": "wait=60"})
        assert r.status_code == 201 and r.json()["status"] == "succeeded", r.text
        assert c.get("/v1/models/m").json()["online"]["applied"] == n + 1
        assert query(db_url, "SELECT count(*) FROM versions WHERE operation = 'online'") == [(1,)]
        for name in ("n1", "n2", "n3"):  # each held by either process
            r = c.post(f"/v1/models/{name}/update?wait=true", json={"samples": [{"x": [1.0] * DIM, "y": 0}]})
            assert r.status_code == 202 and r.json()["applied"] is True, r.text
        owners = {o for (o,) in query(db_url, "SELECT owner FROM learners")}
        assert None not in owners and {api_process(o, pids) for o in owners} <= pids, owners

    # SIGTERM to the supervisor: every process shuts down gracefully, the leases are released
    assert served.terminate() == 0, served.text()[-3000:]
    wait_until(lambda: not any(alive(p) for p in pids), 30, "the API processes to exit")
    text = served.text()
    assert text.count("Application shutdown complete") == 2, text[-3000:]
    assert query(db_url, "SELECT owner FROM learners") == [(None,)] * 4  # every lease released
