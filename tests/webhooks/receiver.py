"""A webhook receiver for the tests: an HTTP server on 127.0.0.1 that records what it is
sent and answers what the test scripts (e.g. 500 for the first attempts)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.online_helpers import free_port


class Receiver:
    def __init__(self, answer: Callable[[int, dict[str, str], bytes], int] | None = None, port: int = 0) -> None:
        self.received: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.answer = answer or (lambda n, headers, body: 200)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with outer.lock:
                    n = len(outer.received)
                    outer.received.append({"headers": headers, "body": body, "path": self.path, "t": time.time()})
                status = outer.answer(n, headers, body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, n: int, timeout: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= n:
                    return list(self.received)
            time.sleep(0.02)
        raise AssertionError(f"received {len(self.received)} of {n} requests in {timeout} s")
