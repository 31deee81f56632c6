"""Helpers for the online-learning tests: a real ``uvicorn app.main:app`` server
subprocess, sample bodies, and a few database peeks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from tests.conftest import ADMIN, auth

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``uvicorn app.main:app`` in a subprocess with its own env; ``kill()`` is SIGKILL."""

    def __init__(self, db_url: str, data_dir: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "STEWARD_DATABASE_URL": db_url,
            "STEWARD_DATA_DIR": str(data_dir),
            "STEWARD_ADMIN_KEY": ADMIN,
            "STEWARD_LEARNER_POLL_SECONDS": "0.01",
            "STEWARD_WORKER_POLL_SECONDS": "0.05",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"server-{self.port}.log"

    def start(self, timeout: float = 60.0) -> Server:
        cmd = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--no-access-log", "--log-level", "warning"]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"server not ready in {timeout} s: {self.log.read_text()[-3000:]}")

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=auth(), timeout=kw.pop("timeout", 60), **kw)

    def kill(self) -> None:
        """SIGKILL: no lifespan shutdown, no flush, nothing graceful."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def samples(X: np.ndarray, Y: np.ndarray) -> list[dict[str, Any]]:
    out = []
    for x, y in zip(X, Y, strict=True):
        yy: Any = y.tolist() if isinstance(y, np.ndarray) else (y.item() if hasattr(y, "item") else y)
        out.append({"x": [float(v) for v in x], "y": yy})
    return out


def ndjson(X: np.ndarray, Y: np.ndarray) -> bytes:
    return b"".join(orjson.dumps(s) + b"\n" for s in samples(X, Y))


def chunks(data: bytes, size: int = 4096) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def wait_until(pred: Any, timeout: float, what: str, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)
