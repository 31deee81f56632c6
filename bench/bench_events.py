"""The event feed under ingestion load: events/s delivered to 50 Server-Sent-Events clients
while one-sample ``/update`` runs, and ``/update`` against the bare endpoint with and
without the feed (the outbox must not cost ingestion more than 10 %).

One command, from the repository root::

    python bench/bench_events.py            # ~5 minutes
    python bench/bench_events.py --quick    # ~1.5 minutes, fewer and shorter rounds, 100 PUTs/s only

What is measured apart, because it is not the same thing:

- **the outbox's own cost**, held to the 10 % bound: the same alias PUTs at the same rate
  against Steward and against Steward whose outbox writes nothing
  (``bench/steward_no_outbox_app.py``: the same code but ``write_events``), each ÷ its own
  ``/update`` alone in the same round; and, finer, the two servers' CPU per PUT while both
  take the same PUTs at once. A PUT is a change transaction (~4 ms of the server's CPU
  measured here) whatever the outbox does: that cost is the PUTs', shown apart;
- **the feed's delivery cost**, shown with its numbers (no bound): the same PUTs with and
  without 50 SSE clients reading them, and Steward's CPU per delivery. Steward has one core:
  the CPU it spends streaming is, for the most part, CPU ``/update`` does not get;
- **what the feed sustains**: events/s to 50 clients beside ``/update``, PUTs as fast as
  the producer's connections go.

What it does, in one process tree:

1. starts three servers, uvicorn 1 process each, access log off, pinned to CPU 0 with
   ``taskset``: ``uvicorn app.main:app`` (Steward, as ``bench/bench_ingest.py`` does: SQLite
   default configuration — WAL, ``synchronous=FULL`` — in a temporary data directory,
   learner and job worker off), ``uvicorn bench.steward_no_outbox_app:app`` (the same, its
   own data directory, the outbox writing nothing) and ``uvicorn bench.bare_ingest_app:app``
   (orjson + numpy parse only: the ceiling). Everything that loads them runs on CPU 1:
   ``wrk``, the SSE clients' process and the producer's threads (this process);
2. on each Steward, makes the model ``bench`` (32 inputs, loaded by ``/update`` with an
   ordinary ingest key from ``POST /v1/keys``, as ``bench_ingest.py``) and the model
   ``feed``, whose aliases the producer moves: ``PUT /v1/models/feed/aliases/p<k>``
   ``{"version": 1, "reason": "<tag>"}`` is one ``alias.moved`` event (``/update`` writes none);
3. in interleaved rounds (the order reversed every other round) runs ``wrk -t1 -c8`` for
   ``--seconds`` with bench_ingest's one-sample JSON body against, in turn:

   - ``bare``: the bare endpoint;
   - ``clients``: Steward's ``/update`` while ``--clients`` SSE clients are connected and no
     event comes;
   - ``quiet``, ``quiet0``: Steward's ``/update``, nothing else happening; then the same
     against the server without the outbox;
   - ``puts@R``, ``puts0@R``: the same while the producer moves aliases at R PUTs/s (each
     ``--rate``), nobody reading: on Steward, then on the server without the outbox (wrk and
     the producer both on it). Each A/B pair is adjacent, and ``puts@R`` is as far from
     ``quiet`` as ``puts0@R`` from ``quiet0``, so a linear drift of the machine's speed
     cancels from (puts@R ÷ quiet) ÷ (puts0@R ÷ quiet0), the outbox's own cost;
   - ``feed@R``: the PUTs at the highest rate while the SSE clients read
     ``/v1/events/stream``;
   - ``max``: the SSE clients while ``--producers`` connections PUT as fast as they go: the
     event rate the feed sustains beside ``/update``;

   and without wrk, PUTs at the highest rate only: ``cpu:both`` (to the two servers at once,
   half a period apart, so both see the same machine: their CPU per PUT, with and without
   the outbox),
   ``cpu:puts`` (to Steward) and ``cpu:feed`` (the same, read by the SSE clients:
   (cpu:feed − cpu:puts) ÷ deliveries is Steward's CPU per delivery);
4. the SSE clients (one asyncio process, raw sockets, uvloop when installed, so their
   parsing does not share this process's GIL with the producer) connect with
   ``after=<head>`` before the producer starts; after it stops, each must reach the last
   event; every client checks that ids are strictly increasing with no gaps, and the
   feed is read back by ``GET /v1/events`` pages as a cross-check (the server without the
   outbox must have none). Client 0 reads each event's ``reason`` (the PUT's tag), so every
   delivery's latency is the time from the PUT's answer at the producer to the client
   reading it (CLOCK_MONOTONIC, one machine);
5. at the end, with nothing else running, every client replays the whole feed from
   ``after=0`` (catch-up: the events come in batches, not one by one).

Figures are medians over rounds with min–max; every ratio is taken within a round. CPU use
is read from each server's and the SSE process's CPU-time clock (ns) and ``getrusage`` (wrk,
the producer) over each wrk run (over the PUTs and 0.25 s after them, for ``cpu:*``).
``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` are removed from this command's environment
(see BENCH.md).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import itertools
import math
import multiprocessing as mp
import os
import platform
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from _http import Client, drop_blas_overrides, free_port, have_wrk, start_uvicorn, stop, wrk_rate

drop_blas_overrides()  # before numpy is imported

import bench_ingest as ingest  # noqa: E402  (the one-sample body; the load without wrk)
import numpy as np  # noqa: E402
import orjson  # noqa: E402

ADMIN = "bench-admin-key-0123456789abcdef"
DIM = 32
FEED = "feed"  # the model whose aliases the producer moves
UPDATE = "/v1/models/bench/update"
TICK = os.sysconf("SC_CLK_TCK")
#: The servers, by the name phases use: what ``uvicorn`` serves and how the report names it.
SERVERS = {
    "bare": ("bench.bare_ingest_app:app", "bare"),
    "steward": ("app.main:app", "Steward"),
    "no-outbox": ("bench.steward_no_outbox_app:app", "no outbox"),
}


@dataclass(frozen=True)
class Phase:
    """What runs beside (or instead of) ``wrk`` in one phase."""

    name: str
    server: str  # a key of SERVERS: wrk's and the producer's target; "both": the two Stewards at once
    rate: float = 0.0  # alias PUTs per second (math.inf: as fast as they go; 0: none)
    clients: bool = False  # the SSE clients read Steward's feed
    load: bool = True  # wrk on /update; without it, the PUTs alone (CPU per PUT, per delivery)

    @property
    def targets(self) -> tuple[str, ...]:
        return ("steward", "no-outbox") if self.server == "both" else (self.server,)


def make_phases(rates: list[float]) -> list[Phase]:
    """One round, in order (see the module doc). Each A/B pair is adjacent, and ``puts@R`` is
    as far from ``quiet`` as ``puts0@R`` from ``quiet0``."""
    top = max(rates)
    ab = [
        Phase(f"puts{zero}@{r:g}", server, r) for r in rates for zero, server in (("", "steward"), ("0", "no-outbox"))
    ]
    return [
        Phase("bare", "bare"),
        Phase("clients", "steward", clients=True),
        Phase("quiet", "steward"),
        Phase("quiet0", "no-outbox"),
        *ab,
        Phase(f"feed@{top:g}", "steward", top, clients=True),
        Phase("max", "steward", math.inf, clients=True),
        Phase("cpu:both", "both", top, load=False),
        Phase("cpu:puts", "steward", top, load=False),
        Phase("cpu:feed", "steward", top, clients=True, load=False),
    ]


# --------------------------------------------------------------------------- helpers
def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, every thread, ended ones too) process ``pid`` has used so
    far: its CPU-time clock (ns), or /proc's ticks where the clock cannot be read."""
    with contextlib.suppress(OSError):
        return time.clock_gettime((~pid << 3) | 2)  # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rusage_cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def prepare_steward(port: int) -> str:
    """The models ``bench`` and ``feed`` and an ordinary ingest key for ``bench`` (returned)."""
    admin = Client(port, ADMIN)
    admin.json("POST", "/v1/models", {"name": "bench", "task": "binary", "input_dim": DIM})
    admin.json("POST", "/v1/models", {"name": FEED, "task": "binary", "input_dim": 4})
    key: str = admin.json("POST", "/v1/keys", {"name": "bench-app", "scope": "ingest", "models": ["bench"]})["key"]
    admin.conn.close()
    return key


def feed_head(port: int, after: int) -> tuple[int, int, list[str]]:
    """Read the feed past ``after`` by pages: (last id, events read, problems seen)."""
    pos, n = after, 0
    problems: list[str] = []
    admin = Client(port, ADMIN)  # a fresh connection: uvicorn closes idle ones after 5 s
    while True:
        items = admin.json("GET", f"/v1/events?after={pos}&limit=500")["items"]
        if not items:
            admin.conn.close()
            return pos, n, problems
        for e in items:
            if e["id"] != pos + 1 and len(problems) < 5:
                problems.append(f"GET /v1/events: id {e['id']} follows {pos}")
            pos, n = e["id"], n + 1


# --------------------------------------------------------------------------- producer
class Producer:
    """Alias PUTs on the model ``feed`` from ``threads`` keep-alive connections, ``rate``
    per second in all (None: as fast as they go). A PUT's reason is its tag; the time its
    answer arrived is kept by tag (NaN: not answered 2xx)."""

    def __init__(self, port: int, threads: int, rate: float | None, capacity: int) -> None:
        self.port, self.rate = port, rate
        self.answered = np.full(capacity, np.nan)
        self._tags = itertools.count()
        self._stop = threading.Event()
        self.ok = [0] * threads
        self.bad = [0] * threads
        self.errors: list[str] = []
        self._threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(threads)]
        self.t0 = self.t1 = 0.0

    def start(self) -> None:
        self.t0 = time.monotonic()
        for t in self._threads:
            t.start()

    def _run(self, k: int) -> None:
        c = Client(self.port, ADMIN)
        c.conn.timeout = 30
        path = f"/v1/models/{FEED}/aliases/p{k}"
        try:
            while not self._stop.is_set():
                tag = next(self._tags)  # atomic under the GIL
                if tag >= len(self.answered):
                    return
                if self.rate is not None:
                    wait = self.t0 + tag / self.rate - time.monotonic()
                    if wait > 0 and self._stop.wait(wait):
                        return
                status, data = c.call("PUT", path, b'{"version":1,"reason":"%d"}' % tag)
                if status in (200, 201):
                    self.answered[tag] = time.monotonic()
                    self.ok[k] += 1
                else:
                    self.bad[k] += 1
                    if len(self.errors) < 3:
                        self.errors.append(f"PUT {path} → {status}: {data[:200]!r}")
        except Exception as e:  # reported; the phase fails
            self.errors.append(f"producer {k}: {e!r}")
        finally:
            c.conn.close()

    def stop(self) -> int:
        """Stop, and the number of PUTs answered 2xx (= events made)."""
        self._stop.set()
        for t in self._threads:
            t.join(60)
        self.t1 = time.monotonic()
        if any(t.is_alive() for t in self._threads):
            raise SystemExit("the producer's PUTs did not finish within 60 s")
        return sum(self.ok)


# --------------------------------------------------------------------------- SSE clients (own process)
class Stream:
    """What one SSE client saw."""

    def __init__(self, after: int, tags: bool) -> None:
        self.after = self.last = after
        self.count = self.gaps = self.backwards = self.keepalives = self.mismatched = 0
        self.ids = array.array("q")
        self.times = array.array("d")
        self.tags = array.array("q") if tags else None  # the PUT's tag of each event (client 0)
        self.error: str | None = None
        self.ready = False

    def block(self, b: bytes, t: float) -> None:
        if b.startswith(b":"):
            self.keepalives += 1
            return
        if not b.startswith(b"id:"):
            return  # "retry: …"
        i = int(b[3 : b.index(b"\n")])
        if i <= self.last:
            self.backwards += 1
            return
        self.gaps += i - self.last - 1
        self.last = i
        self.count += 1
        self.ids.append(i)
        self.times.append(t)
        if self.tags is not None:
            doc = orjson.loads(b[b.index(b"\ndata:") + 6 :])
            reason = (doc.get("data") or {}).get("reason")
            self.mismatched += doc.get("id") != i
            self.tags.append(int(reason) if isinstance(reason, str) and reason.isdigit() else -1)


async def read_stream(
    port: int, key: str, s: Stream, on_ready: Callable[[Stream], None], progress: asyncio.Event
) -> None:
    """One client of ``GET /v1/events/stream?after=…`` over a raw socket (HTTP/1.1,
    chunked), feeding each SSE block to ``s`` with the time it was read."""
    writer = None
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"GET /v1/events/stream?after={s.after} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            s.error = f"HTTP {status}: {(await asyncio.wait_for(reader.read(300), 5))!r}"
            return
        chunked = b"transfer-encoding: chunked" in head.lower()
        buf = b""
        while True:
            if chunked:
                size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
                if size == 0:
                    s.error = "the server ended the stream"
                    return
                data = (await reader.readexactly(size + 2))[:-2]
            else:
                data = await reader.read(65536)
                if not data:
                    s.error = "the server closed the stream"
                    return
            t = time.monotonic()
            buf += data
            if b"\n\n" not in buf:
                continue
            *blocks, buf = buf.split(b"\n\n")
            for b in blocks:
                s.block(b, t)
            progress.set()
            if not s.ready:
                on_ready(s)
    except asyncio.IncompleteReadError:
        s.error = "the connection closed mid-stream"
    except (OSError, ValueError) as e:
        s.error = repr(e)
    finally:
        progress.set()
        if not s.ready:
            on_ready(s)
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2)


async def sse_phase(conn: Connection, port: int, key: str, n: int, after: int) -> None:
    """Connect ``n`` streams after ``after``, say so, wait for ``("finish", …)``, wait until
    every stream has the last event (or the timeout), close them all, report."""
    loop = asyncio.get_running_loop()
    streams = [Stream(after, tags=i == 0) for i in range(n)]
    all_ready = loop.create_future()
    pending = [n]

    def on_ready(s: Stream) -> None:
        s.ready = True
        pending[0] -= 1
        if pending[0] == 0 and not all_ready.done():
            all_ready.set_result(None)

    progress = asyncio.Event()  # set when a stream read something (or ended)
    tasks = [asyncio.create_task(read_stream(port, key, s, on_ready, progress)) for s in streams]
    try:
        try:
            await asyncio.wait_for(asyncio.shield(all_ready), 30)
        except TimeoutError:
            conn.send(("error", f"{pending[0]} of {n} streams did not start within 30 s"))
            return
        failed = [s.error for s in streams if s.error]
        if failed:
            conn.send(("error", f"{len(failed)} streams failed: {failed[0]}"))
            return
        conn.send(("connected",))
        try:
            msg = await loop.run_in_executor(None, conn.recv)
        except EOFError:
            return
        if msg[0] != "finish":  # the parent is stopping
            return
        _, last_id, answered, t_start, timeout = msg
        deadline = loop.time() + timeout
        while loop.time() < deadline and any(s.last < last_id and s.error is None for s in streams):
            progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progress.wait(), deadline - loop.time())
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    conn.send(("stats", sse_stats(streams, after, last_id, answered, t_start)))


def sse_stats(streams: list[Stream], after: int, last_id: int, answered: np.ndarray, t_start: float) -> dict:
    """Counts, order checks, rates and latencies (seconds, float32) of a phase's streams."""
    tag_of = np.full(max(last_id - after, 0), -1, dtype=np.int64)  # event position → PUT tag
    s0 = streams[0]
    if s0.tags is not None and len(s0.ids):
        pos = np.frombuffer(s0.ids, dtype=np.int64) - after - 1
        ok = (pos >= 0) & (pos < len(tag_of))
        tag_of[pos[ok]] = np.frombuffer(s0.tags, dtype=np.int64)[ok]
    lats = []
    for s in streams:
        if not len(s.ids):
            continue
        pos = np.frombuffer(s.ids, dtype=np.int64) - after - 1
        times = np.frombuffer(s.times, dtype=np.float64)
        ok = (pos >= 0) & (pos < len(tag_of))
        tags, times = tag_of[pos[ok]], times[ok]
        ok = (tags >= 0) & (tags < len(answered))
        lat = times[ok] - answered[tags[ok]]
        lats.append(lat[np.isfinite(lat)].astype(np.float32))
    return {
        "count": [s.count for s in streams],
        "last": [s.last for s in streams],
        "gaps": [s.gaps for s in streams],
        "backwards": [s.backwards for s in streams],
        "keepalives": sum(s.keepalives for s in streams),
        "mismatched": s0.mismatched,
        "untagged": int((tag_of < 0).sum()),
        "errors": [s.error for s in streams if s.error],
        "t_last": [s.times[-1] if len(s.times) else float("nan") for s in streams],
        "rate": [s.count / (s.times[-1] - t_start) if len(s.times) else 0.0 for s in streams],
        "latency": np.concatenate(lats) if lats else np.zeros(0, np.float32),
    }


def sse_worker(conn: Connection, port: int, key: str, n: int) -> None:
    """The SSE clients' process: one phase per ``("connect", after)``; ``("quit",)`` or
    the parent's end of the pipe closing ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent closes the pipe, this ends
    factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        factory = uvloop.new_event_loop
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg[0] != "connect":
            return
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(sse_phase(conn, port, key, n, msg[1]))


class SSEClients:
    """The parent's handle on the SSE clients' process."""

    def __init__(self, port: int, n: int) -> None:
        ctx = mp.get_context("spawn")  # no fork of a process with threads
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=sse_worker, args=(child, port, ADMIN, n), daemon=True, name="sse-clients")
        self.proc.start()
        child.close()
        try:
            import uvloop  # noqa: F401

            self.loop = "uvloop"
        except ImportError:
            self.loop = "asyncio"

    def _recv(self, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise SystemExit(f"the SSE clients did not answer within {timeout:g} s")
        msg = self.conn.recv()
        if msg[0] == "error":
            raise SystemExit(f"SSE clients: {msg[1]}")
        return msg

    def connect(self, after: int) -> None:
        self.conn.send(("connect", after))
        self._recv(60)

    def finish(self, last_id: int, answered: np.ndarray, t_start: float, timeout: float) -> dict:
        self.conn.send(("finish", last_id, answered, t_start, timeout))
        stats: dict = self._recv(timeout + 60)[1]
        return stats

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(("quit",))
        self.conn.close()
        self.proc.join(15)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


# --------------------------------------------------------------------------- report
def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def spread(xs: list[float], fmt: str = ",.0f") -> str:
    return f"{med(xs):{fmt}} ({min(xs):{fmt}}–{max(xs):{fmt}})"


def check_streams(st: dict, after: int, made: int, label: str, failures: list[str], *, tagged: bool = True) -> bool:
    """Every client got ids after+1 … after+made, each once, in order; else failure lines."""
    bad = [
        (i, n, last, gaps, back)
        for i, (n, last, gaps, back) in enumerate(
            zip(st["count"], st["last"], st["gaps"], st["backwards"], strict=True)
        )
        if n != made or last != after + made or gaps or back
    ]
    for i, n, last, gaps, back in bad[:5]:
        failures.append(
            f"{label}: client {i} received {n} of {made} events, up to id {last} (expected {after + made}), "
            f"{gaps} missing, {back} out of order or repeated"
        )
    if len(bad) > 5:
        failures.append(f"{label}: … {len(bad)} clients in all")
    failures += [f"{label}: a stream failed: {e}" for e in st["errors"][:3]]
    if st["mismatched"] or (tagged and st["untagged"]):
        failures.append(
            f"{label}: {st['mismatched']} events whose data.id differs from their SSE id, "
            f"{st['untagged']} not matched to a PUT"
        )
    return not bad and not st["errors"]


def table_head(title: str, head: str) -> None:
    print(f"\n{title}")
    print(head)
    print("-" * len(head))


def rates_arg(text: str) -> list[float]:
    rates = [float(x) for x in text.split(",") if x.strip()]
    if not rates or min(rates) <= 0 or any(math.isinf(r) for r in rates):
        raise argparse.ArgumentTypeError("positive rates, comma-separated")
    return rates


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of every phase")
    p.add_argument("--seconds", type=int, default=4, help="duration of each phase (whole seconds: wrk's unit)")
    p.add_argument("--conns", type=int, default=8, help="wrk's connections for /update")
    p.add_argument("--clients", type=int, default=50, help="SSE clients")
    p.add_argument("--rate", type=rates_arg, default=None,
                   help="alias PUTs (events) per second of the puts phases, comma-separated (default 10,100; "
                   "--quick: 100); feed@ and cpu: use the highest")  # fmt: skip
    p.add_argument("--producers", type=int, default=4, help="PUT connections (threads) of the producer")
    p.add_argument("--quick", action="store_true", help="2 rounds of 3 s, 100 PUTs/s only")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 2, 3
    if args.rate is None:
        args.rate = [100.0] if args.quick else [10.0, 100.0]
    phases = make_phases(args.rate)
    pin = bool(shutil.which("taskset")) and (os.cpu_count() or 1) >= 2
    if pin:
        os.sched_setaffinity(0, {1})  # this process, its threads and children: CPU 1
    wrk = have_wrk()
    load_cpus = "1" if pin else None

    with tempfile.TemporaryDirectory(prefix="steward-bench-events-") as tmpd:
        tmp = Path(tmpd)
        env = {**os.environ, "STEWARD_ADMIN_KEY": ADMIN}
        for k in ("STEWARD_DATABASE_URL", "STEWARD_MAX_BODY_BYTES", "STEWARD_DATA_DIR"):
            env.pop(k, None)
        steward_env = {**env, "STEWARD_RUN_LEARNER": "false", "STEWARD_RUN_WORKER": "false"}
        cpus = "0" if pin else None
        ports = {name: free_port() for name in SERVERS}
        procs: dict[str, Any] = {}
        keys: dict[str, str] = {}
        clients: SSEClients | None = None
        results: dict[str, list[dict[str, Any]]] = {ph.name: [] for ph in phases}
        failures: list[str] = []
        catch_up: dict[str, Any] = {}
        try:
            for name in ("steward", "no-outbox"):
                data = {**steward_env, "STEWARD_DATA_DIR": str(tmp / f"data-{name}")}
                procs[name] = start_uvicorn(SERVERS[name][0], ports[name], data, cpus=cpus, log=tmp / f"{name}.log")
                keys[name] = prepare_steward(ports[name])
            keys["bare"] = keys["steward"]
            procs["bare"] = start_uvicorn(SERVERS["bare"][0], ports["bare"], {**env, "BARE_TOKEN": keys["bare"]},
                                          cpus=cpus, log=tmp / "bare.log")  # fmt: skip
            if feed_head(ports["no-outbox"], 0)[1]:
                raise SystemExit("the server without the outbox wrote events: its outbox was not replaced")
            head, _, _ = feed_head(ports["steward"], 0)
            clients = SSEClients(ports["steward"], args.clients)
            body = tmp / "body-1.json"
            body.write_bytes(ingest.json_body(*ingest.make_samples(1, 1)))  # bench_ingest's one-sample body

            where = "CPU 0: the three servers; CPU 1: everything else (taskset)" if pin else "no pinning"
            gen = f"wrk -t1 -c{args.conns}" if wrk else f"Python http.client x{args.conns} (no wrk: pessimistic)"
            rates = ", ".join(f"{r:g}" for r in args.rate)
            top = max(args.rate)
            print(
                f"Steward event feed beside one-sample /update — python {platform.python_version()}, "
                f"numpy {np.__version__}, {os.cpu_count()} CPUs"
            )
            print(f"uvicorn 1 process each, access log off; {where}:")
            print(f"  {gen}, one 32-float sample per POST, an ordinary ingest key (as bench_ingest.py);")
            print(f"  {args.clients} SSE clients of Steward in one {clients.loop} process (raw sockets, admin key);")
            print(f"  the alias-PUT producer: {args.producers} threads (keep-alive connections) of this process")
            print(
                "Steward and Steward without the outbox (bench/steward_no_outbox_app.py: write_events writes nothing):"
            )
            print("  SQLite default config (WAL, synchronous=FULL), a data directory each, learner and job worker off")
            print(f"{args.rounds} rounds × {len(phases)} phases of {args.seconds} s, interleaved (order reversed every "
                  "other round):")  # fmt: skip
            print("  bare        the bare orjson+numpy endpoint (bench/bare_ingest_app.py)")
            print(f"  clients     Steward /update + {args.clients} SSE clients on /v1/events/stream, no events")
            print("  quiet       Steward /update alone;  quiet0: the same on Steward without the outbox")
            print(f"  puts@R      /update + R alias PUTs/s (1 event each), nobody reading, R = {rates};  puts0@R: the "
                  "same on Steward without the outbox (wrk and the PUTs)")  # fmt: skip
            print(f"  feed@{top:<6g} /update + {top:g} alias PUTs/s + {args.clients} SSE clients")
            print(f"  max         /update + alias PUTs as fast as {args.producers} connections go + {args.clients} SSE "
                  "clients")  # fmt: skip
            print(f"  no wrk, {top:g} alias PUTs/s: cpu:both  to each Steward at once (the outbox's CPU per change); "
                  f"cpu:puts  to Steward;\n    cpu:feed  to Steward, read by the {args.clients} SSE clients (its CPU "
                  "per delivery)")  # fmt: skip
            sys.stdout.flush()

            def load(ph: Phase, seconds: int) -> tuple[float, float]:
                """(requests/s, median latency µs) of /update (or the bare endpoint) on ``ph.server``."""
                port, key = ports[ph.server], keys[ph.server]
                path = "/json" if ph.server == "bare" else UPDATE
                if wrk:
                    rate, bad, p50 = wrk_rate(f"http://127.0.0.1:{port}{path}", body, key, conns=args.conns,
                                              seconds=seconds, cpus=load_cpus, tmp=tmp)  # fmt: skip
                else:
                    ingest.CLIENT_KEY = key  # the key bench_ingest's loop sends
                    (rate, bad), p50 = ingest.loop_rate(port, path, body.read_bytes(), args.conns, seconds), math.nan
                if bad:
                    raise SystemExit(f"{ph.name}: {bad} non-2xx answers to {path}")
                return rate, p50

            def run(ph: Phase, label: str) -> dict[str, Any]:
                """One phase: its figures, its checks (into ``failures``)."""
                nonlocal head
                assert clients is not None
                out: dict[str, Any] = {}
                if ph.clients:
                    clients.connect(head)
                producers: dict[str, Producer] = {}
                if ph.rate:
                    rate = None if math.isinf(ph.rate) else ph.rate
                    n = int((args.seconds + 30) * (rate or 2000))
                    producers = {s: Producer(ports[s], args.producers, rate, n) for s in ph.targets}
                made: dict[str, int] = {}

                def stop_producers() -> None:
                    for s, producer in producers.items():
                        made[s] = producer.stop()
                        if producer.errors:
                            raise SystemExit(f"{label}: {producer.errors[0]}")

                pids = {s: procs[s].pid for s in ph.targets} | {"sse": clients.proc.pid}
                c0 = {k: proc_cpu(v) for k, v in pids.items()}
                self0, kids0 = rusage_cpu(resource.RUSAGE_SELF), rusage_cpu(resource.RUSAGE_CHILDREN)
                t0 = time.monotonic()
                for i, producer in enumerate(producers.values()):
                    if i and producer.rate:
                        time.sleep(0.5 / producer.rate)  # cpu:both: the two servers' PUTs alternate
                    producer.start()
                if ph.load:
                    out["rate"], out["p50"] = load(ph, args.seconds)
                else:  # the PUTs alone: the window holds all their work, the deliveries' too
                    time.sleep(args.seconds)
                    stop_producers()
                    time.sleep(0.25)
                dt = time.monotonic() - t0
                cpu_s = {k: proc_cpu(v) - c0[k] for k, v in pids.items()}
                out["server_cpu_s"] = {s: cpu_s[s] for s in ph.targets}
                out["cpu_s"] = {"server": sum(out["server_cpu_s"].values()), "sse": cpu_s["sse"]}
                out["cpu_s"]["load"] = rusage_cpu(resource.RUSAGE_CHILDREN) - kids0
                out["cpu_s"]["producer"] = rusage_cpu(resource.RUSAGE_SELF) - self0
                out["cpu"] = {k: v / dt for k, v in out["cpu_s"].items()}
                if ph.load:
                    stop_producers()
                answered, t_start, events = np.zeros(0), t0, 0
                if producers:
                    first = producers[ph.targets[0]]
                    out["puts"], out["made"] = made, made[ph.targets[0]] / (first.t1 - first.t0)
                if "steward" in producers:  # what the SSE clients (of Steward) should read
                    answered, t_start, events = producers["steward"].answered, producers["steward"].t0, made["steward"]
                if ph.clients:
                    st = clients.finish(head + events, answered, t_start, timeout=30)
                    out["sse"] = st
                    out["ok"] = check_streams(st, head, events, label, failures)
                    if events:
                        out["drain"] = float(np.nanmax(st["t_last"]) - np.nanmax(answered))
                if events:
                    new_head, n_read, problems = feed_head(ports["steward"], head)
                    failures.extend(f"{label}: {x}" for x in problems)
                    if new_head != head + events or n_read != events:
                        failures.append(
                            f"{label}: {events} PUTs answered 2xx but GET /v1/events has {n_read} new events "
                            f"(head {head} → {new_head})"
                        )
                    head = new_head
                if made.get("no-outbox"):
                    n0 = feed_head(ports["no-outbox"], 0)[1]
                    if n0:
                        failures.append(f"{label}: the server without the outbox has {n0} events (not replaced?)")
                return out

            for ph in phases:  # warm-up, not counted
                if ph.load and ph.rate == 0 and not ph.clients:
                    load(ph, 1)
            t_begin = time.monotonic()
            for r in range(args.rounds):
                for ph in phases if r % 2 == 0 else phases[::-1]:
                    results[ph.name].append(run(ph, f"round {r + 1} {ph.name}"))
                print(f"round {r + 1}/{args.rounds} done ({time.monotonic() - t_begin:.0f} s)", file=sys.stderr,
                      flush=True)  # fmt: skip

            # catch-up: every client replays the whole feed from after=0, nothing else running
            t0 = time.monotonic()
            c0 = proc_cpu(procs["steward"].pid)
            clients.connect(0)
            st = clients.finish(head, np.zeros(0), t0, timeout=60)
            catch_up = {"events": head, "seconds": float(np.nanmax(st["t_last"])) - t0, "sse": st}
            catch_up["cpu"] = proc_cpu(procs["steward"].pid) - c0
            catch_up["ok"] = check_streams(st, 0, head, "catch-up", failures, tagged=False)
        finally:
            if clients is not None:
                clients.close()  # SSE connections closed before the servers stop
            for proc in procs.values():
                stop(proc)

    report(args, phases, results, catch_up, failures)


# --------------------------------------------------------------------------- report
def report(
    args: argparse.Namespace,
    phases: list[Phase],
    results: dict[str, list[dict[str, Any]]],
    catch_up: dict[str, Any],
    failures: list[str],
) -> None:
    top = max(args.rate)
    feed = f"feed@{top:g}"
    quiet_of = {"steward": "quiet", "no-outbox": "quiet0"}

    def rates(name: str) -> list[float]:
        return [o["rate"] for o in results[name]]

    def ratio(a: str, b: str) -> list[float]:
        return [x / y for x, y in zip(rates(a), rates(b), strict=True)]

    def cost(xs: list[float], bound: float | None = None) -> str:
        c = 1 - med(xs)
        s = f"{c * 100:5.1f} % ({med(xs):.3f} ×, {min(xs):.3f}–{max(xs):.3f})"
        return s + (f"; ≤ {bound * 100:g} %: {'meets' if c <= bound else 'MISSES'}" if bound is not None else "")

    table_head(
        f"/update, one sample per request, {args.conns} connections, {args.seconds} s a run "
        f"(median over {args.rounds} rounds, min–max; ratios within a round)",
        f"{'phase':<10} {'server':<9} {'req/s':>22} {'p50 latency':>12} {'÷ bare':>18} {'÷ its quiet':>18}",
    )
    for ph in phases:
        if not ph.load:
            continue
        p50 = f"{med([o['p50'] for o in results[ph.name]]):,.0f} µs"
        line = (
            f"{ph.name:<10} {SERVERS[ph.server][1]:<9} {spread(rates(ph.name)):>22} {p50:>12} "
            f"{spread(ratio(ph.name, 'bare'), '.2f'):>18}"
        )
        if ph.server in quiet_of and ph.name != quiet_of[ph.server]:
            line += f" {spread(ratio(ph.name, quiet_of[ph.server]), '.3f'):>18}"
        print(line)
    print(
        f"  quiet0 ÷ quiet {spread(ratio('quiet0', 'quiet'), '.3f')}: the same /update on the two servers, "
        "no events (the A/B's own noise)"
    )

    readers = [ph.name for ph in phases if ph.clients and ph.rate]
    table_head(
        f"the feed, {args.clients} SSE clients (median over rounds, min–max)",
        f"{'phase':<9} {'events/s made':>14} {'received/s per client (min)':>28} {'deliveries/s, all':>20} "
        f"{'latency p50 / p99':>19} {'drain':>7} {'all events, in order':>21}",
    )
    for name in readers:
        outs = results[name]
        per = [med(o["sse"]["rate"]) for o in outs]
        low = min(min(o["sse"]["rate"]) for o in outs)
        lat = np.concatenate([o["sse"]["latency"] for o in outs]) * 1e3
        lat_s = f"{np.percentile(lat, 50):.1f} / {np.percentile(lat, 99):.1f} ms" if len(lat) else "n/a"
        ok = sum(o["ok"] for o in outs)
        print(
            f"{name:<9} {spread([o['made'] for o in outs]):>14} {f'{med(per):,.0f} ({low:,.0f})':>28} "
            f"{spread([sum(o['sse']['rate']) for o in outs]):>20} {lat_s:>19} "
            f"{max(o['drain'] for o in outs) * 1e3:>4.0f} ms {f'{ok}/{len(outs)} rounds':>21}"
        )
    lat_all = np.concatenate([o["sse"]["latency"] for name in readers for o in results[name]]) * 1e3
    if len(lat_all):
        print(
            f"  latency: from the PUT's answer at the producer to a client reading the event, every client and "
            f"event ({len(lat_all):,}); min {lat_all.min():.1f} ms: the event can outrun the PUT's own answer"
        )
    print("  drain: from the last PUT's answer to the last client reading the last event (worst round)")
    ok_idle = sum(o["ok"] for o in results["clients"])
    keep = sum(o["sse"]["keepalives"] for ph in phases if ph.clients for o in results[ph.name])
    print(f"  'clients' phase: no event received, streams intact: {ok_idle}/{len(results['clients'])} rounds; "
          f"{keep} keep-alive comments in all")  # fmt: skip
    if catch_up:
        n, sec = catch_up["events"], catch_up["seconds"]
        print(
            f"  catch-up: {args.clients} clients each replaying the whole feed ({n:,} events, after=0), nothing "
            f"else running: {sec * 1e3:,.0f} ms, {n * args.clients / sec:,.0f} deliveries/s; Steward used "
            f"{catch_up['cpu'] * 1e3:,.0f} ms of CPU ({catch_up['cpu'] / (n * args.clients) * 1e6:.1f} µs per "
            f"delivery); all in order: {'yes' if catch_up['ok'] else 'NO'}"
        )

    table_head(
        "CPU during each phase, % of one core (median over rounds); the phase's server is on CPU 0",
        f"{'phase':<10} {'server (CPU 0)':>15} {'wrk (CPU 1)':>12} {'SSE clients (CPU 1)':>20} "
        f"{'producer (CPU 1)':>17} {'CPU 1 in all':>13} {'PUTs/s':>8}",
    )
    for ph in phases:
        cpu = {k: med([o["cpu"][k] * 100 for o in results[ph.name]]) for k in ("server", "load", "sse", "producer")}
        sse = f"{cpu['sse']:.0f} %" if ph.clients else "—"
        one = cpu["load"] + cpu["producer"] + (cpu["sse"] if ph.clients else 0)
        made = f"{med([o['made'] for o in results[ph.name]]):,.0f}" if ph.rate else "—"
        print(
            f"{ph.name:<10} {cpu['server']:>13.0f} % {cpu['load']:>10.0f} % {sse:>20} {cpu['producer']:>15.0f} % "
            f"{one:>11.0f} % {made:>8}"
        )

    # CPU per PUT and per delivery: the cpu: phases, PUTs at the same rate, no /update running
    def per_put(name: str, server: str) -> list[float]:
        """µs of ``server``'s CPU per alias PUT in the phase ``name``, per round."""
        return [o["server_cpu_s"][server] / o["puts"][server] * 1e6 for o in results[name]]

    with_ob, without_ob = per_put("cpu:both", "steward"), per_put("cpu:both", "no-outbox")
    outbox_us = [a - b for a, b in zip(with_ob, without_ob, strict=True)]
    alone = per_put("cpu:puts", "steward")
    per_delivery = [
        (f["server_cpu_s"]["steward"] * 1e6 - f["puts"]["steward"] * c) / (f["puts"]["steward"] * args.clients)
        for f, c in zip(results["cpu:feed"], alone, strict=True)
    ]
    left = max(1 - med(alone) * top / 1e6, 1e-9)  # the share of Steward's core the PUTs leave /update
    feed_made = med([o["made"] for o in results[feed]])
    deliveries = feed_made * args.clients

    print(
        "\nthe outbox's own cost to /update — the same PUTs at the same rate, Steward vs Steward without the outbox,"
        "\neach ÷ its own quiet in the same round: (puts@R ÷ quiet) ÷ (puts0@R ÷ quiet0); bound ≤ 10 %:"
    )
    for r in args.rate:
        xs = [a / b for a, b in zip(ratio(f"puts@{r:g}", "quiet"), ratio(f"puts0@{r:g}", "quiet0"), strict=True)]
        noisy = (
            f"; the rounds spread over {(max(xs) - min(xs)) * 100:.0f} %: noise-limited"
            if max(xs) - min(xs) > 0.10
            else ""
        )
        print(f"  at {r:>4g} events/s: {cost(xs, 0.10)}; rounds: {' '.join(f'{x:.3f}' for x in xs)}{noisy}")
    print(
        f"  the finer measure, CPU: the two servers taking {top:g} PUTs/s each at once, no /update (cpu:both): "
        f"{med(with_ob):,.0f} µs of CPU per PUT with the outbox, {med(without_ob):,.0f} µs without; the outbox's own "
        f"{med(outbox_us):+.0f} µs per change (rounds: {' '.join(f'{x:+.0f}' for x in outbox_us)}), "
        f"{med(outbox_us) * top / 1e4:.2f} % of a core at {top:g} events/s: /update would lose ≈ "
        f"{med(outbox_us) * top / 1e4 / left:.1f} % (that share of what the PUTs leave it). A difference between "
        "two processes: two identical Stewards differed by 100–150 µs per PUT on this machine (an A/A check)"
    )
    print("the alias PUTs themselves, outbox or not (a change transaction each; not held to the bound):")
    for r in args.rate:
        print(f"  puts0@{r:g} ÷ quiet0: {cost(ratio(f'puts0@{r:g}', 'quiet0'))}")
    print(
        f"the feed's delivery to {args.clients} SSE clients (not held to the bound; Steward runs on one core, so "
        "what it spends streaming, /update loses):"
    )
    print(
        f"  {feed} ÷ puts@{top:g}: {cost(ratio(feed, f'puts@{top:g}'))} at {feed_made:,.0f} events/s × "
        f"{args.clients} clients = {deliveries:,.0f} deliveries/s"
    )
    expect = med(per_delivery) * deliveries / 1e6 / left
    print(
        f"  Steward's CPU per SSE delivery: {spread(per_delivery, '.1f')} µs ((cpu:feed − cpu:puts) ÷ deliveries, "
        f"no /update running): {deliveries:,.0f} deliveries/s take {med(per_delivery) * deliveries / 1e4:.1f} % "
        f"of its core: /update should lose ≈ {expect * 100:.1f} % (that share of what the PUTs leave it)"
    )
    print(f"  {args.clients} clients connected, no events (clients ÷ quiet): {cost(ratio('clients', 'quiet'))}")
    print(f"  everything together, PUTs + outbox + streams ({feed} ÷ quiet): {cost(ratio(feed, 'quiet'))}")
    mx = results["max"]
    print(
        f"the feed sustained {med([o['made'] for o in mx]):,.0f} events/s to {args.clients} clients beside /update "
        f"({med([sum(o['sse']['rate']) for o in mx]):,.0f} deliveries/s; every client kept up: drain ≤ "
        f"{max(o['drain'] for o in mx) * 1e3:.0f} ms): alias PUTs as fast as {args.producers} connections got them "
        f"committed, Steward's core {med([o['cpu']['server'] * 100 for o in mx]):.0f} % busy; /update meanwhile "
        f"{med(ratio('max', 'quiet')):.2f} × quiet"
    )
    for f in failures:
        print("FAIL:", f)
    if not failures:
        print(
            "every client received every event once, in id order, in every phase; GET /v1/events agrees; "
            "the server without the outbox has no event"
        )


if __name__ == "__main__":
    main()
