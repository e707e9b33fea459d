"""Soak: many concurrent QUIC connections with mixed requests against a real edge, bounded in time.

    .venv/bin/python bench/bench_soak.py                                   # 1000 conns, 60 s
    .venv/bin/python bench/bench_soak.py --connections 300 --duration 30 --clients 3

The edge runs in a process of its own (its RSS and descriptors are its own),
the backends in another (HTTP echo, a slow HTTP backend, a TCP echo; static
files are served by the edge), the clients in `--clients` processes. Each
connection repeats one request at a time with a pause between them, from the
moment it is open (so that none sits idle into the edge's idle timeout); the
measured `--duration` starts once every connection is open:

- netsched/1 (SDK sessions): unary echo, full-duplex stream to the TCP echo,
  a stream aborted mid-way, a request whose 150 ms deadline a 400 ms backend
  misses, a static file, a static file read slowly;
- h3 (aioquic's client, `--h3-share` of the connections): GET proxied to the
  HTTP echo, GET of a static file, a GET cancelled after its head (RESET_STREAM
  and STOP_SENDING), a slow reader that goes silent (reads and acknowledges
  nothing) twice for 400 ms during a download.

A request has an expected outcome (a cancelled one is cancelled, a missed
deadline is DeadlineExceeded); anything else is `failed`, by reason, and a
request without an outcome within `--request-timeout` is `lost`. Reported:
the edge's RSS at start, once every connection is open, after warm-up, at
its peak, at the end of the load and after the clients left; its open file
descriptors; its backend slots still taken and requests still under way at
the end (read in the edge process; /metrics has no gauge of them yet, its
response counters are checked against the clients' counts).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aioquic.asyncio.client import connect as quic_connect  # noqa: E402
from aioquic.asyncio.protocol import QuicConnectionProtocol  # noqa: E402
from aioquic.h3.connection import ErrorCode, H3Connection  # noqa: E402
from aioquic.h3.events import DataReceived, HeadersReceived  # noqa: E402
from aioquic.quic.configuration import QuicConfiguration  # noqa: E402
from aioquic.quic.connection import NetworkAddress  # noqa: E402
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamReset  # noqa: E402

from netsched_client import SLO, DeadlineExceeded, NetSchedError, Session, open_session  # noqa: E402
from netsched_lab.process import process_cpu, spawned  # noqa: E402

SMALL = 16 * 1024
BIG = 256 * 1024
FILES = {"small.bin": SMALL, "big.bin": BIG}
SLOW_BACKEND_MS = 400.0
MISSED_DEADLINE_MS = 150
START_TIMEOUT_S = 60.0
CLOSE_TIMEOUT_S = 60.0  # a client process closing all its connections
BACKEND_NAMES = ("echo", "slow", "pipe")  # in the order of the backends process's ports


@dataclass(frozen=True)
class Options:
    connections: int = 1000
    duration_s: float = 60.0
    clients: int = 4  # client processes
    h3_share: float = 0.3
    think_ms: float = 2000.0  # pause between two requests of a connection (x 0.5..1.5)
    warmup_s: float | None = None  # None: min(10 s, duration / 4)
    request_timeout_s: float = 20.0
    # Handshakes under way at once, over all client processes: 96 (24 a process) made
    # 1000 SDK handshakes cost 23.6 s of CPU (client + edge) against 13.3 s with 24 under
    # way (handshakes queued for CPU time out and send their flights again), and their
    # connections' requests meet an edge that is still busy opening the others.
    open_concurrency: int = 24
    seed: int = 1
    client_nice: int = 5  # the client processes' niceness, added to this process's
    settle_s: float = 3.0  # after the clients left, before the end sample
    quiet: bool = False

    @property
    def warmup(self) -> float:
        return self.warmup_s if self.warmup_s is not None else min(10.0, self.duration_s / 4)


@dataclass
class ClientStats:
    connections: int = 0
    connect_failed: int = 0
    connections_died: int = 0
    sent: int = 0
    succeeded: int = 0
    lost: int = 0
    lost_by_kind: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)  # requests sent, by kind
    latency_ms: list[float] = field(default_factory=list)

    def add(self, other: ClientStats) -> None:
        for name in ("connections", "connect_failed", "connections_died", "sent", "succeeded"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.lost += other.lost
        self.lost_by_kind.update(other.lost_by_kind)
        self.failed.update(other.failed)
        self.by_kind.update(other.by_kind)
        self.latency_ms.extend(other.latency_ms)


@dataclass(frozen=True)
class Sample:
    at_s: float
    rss_mb: float
    fds: int


@dataclass
class Results:
    options: Options
    stats: ClientStats
    ramp_s: float = 0.0
    rss_start_mb: float = 0.0
    rss_connected_mb: float = 0.0
    rss_warm_mb: float = 0.0
    rss_peak_mb: float = 0.0
    rss_load_end_mb: float = 0.0
    rss_end_mb: float = 0.0
    fds_start: int = 0
    fds_peak: int = 0
    fds_end: int = 0
    backend_sockets_end: dict[str, int] = field(default_factory=dict)
    edge_cpu_share: float = 0.0  # the edge's CPU time / wall time while the clients ran
    clients_cpu_share: float = 0.0  # the same, per client process on average
    unreported_clients: int = 0  # client processes whose counts did not come in time
    clients_closed_cleanly: int = 0  # client processes that closed all their connections
    edge_end: dict[str, Any] = field(default_factory=dict)  # slots, requests, connections
    metrics_responses: int | None = None  # netsched_edge_responses_total, summed
    samples: list[Sample] = field(default_factory=list)

    @property
    def leaked_slots(self) -> int:
        slots: dict[str, int] = self.edge_end.get("slots", {})
        return sum(slots.values())


# ------------------------------------------------------------------ processes


def _run(main: Awaitable[None]) -> None:
    try:
        import uvloop

        uvloop.run(main)  # type: ignore[arg-type]
    except ImportError:
        asyncio.run(main)  # type: ignore[arg-type]


def backends_process(conn: Connection) -> None:
    _run(_serve_backends(conn))


async def _serve_backends(conn: Connection) -> None:
    from netsched_edge.demo_backends import DemoHTTPServer, TCPEchoServer

    servers = [
        DemoHTTPServer("echo", base_ms=1.0, cold_ms=0.0, cache_size=1),
        DemoHTTPServer("slow", base_ms=SLOW_BACKEND_MS, cold_ms=0.0, cache_size=1),
        TCPEchoServer(),
    ]
    conn.send([await server.start() for server in servers])
    try:
        await asyncio.get_running_loop().run_in_executor(None, _wait_for_exit, conn)
    finally:
        for server in servers:
            await server.stop()


def _wait_for_exit(conn: Connection) -> None:
    with contextlib.suppress(EOFError, OSError):
        while conn.recv() != ("exit",):
            pass


def edge_process(state: str, ports: list[int], conn: Connection) -> None:
    _run(_serve_edge(Path(state), ports, conn))


def _edge_config(state: Path, ports: list[int]) -> Any:
    from netsched_edge.config import BackendConfig, EdgeConfig, ServiceConfig
    from netsched_edge.tls import CERTIFICATE_FILE, PRIVATE_KEY_FILE

    echo, slow, pipe = ports

    def http(name: str, port: int) -> BackendConfig:
        return BackendConfig(name=name, kind="http", host="127.0.0.1", port=port)

    services = (
        ServiceConfig(name="echo", backends=(http("echo", echo),)),
        ServiceConfig(name="slow", backends=(http("slow", slow),), retries=0),
        ServiceConfig(
            name="pipe",
            backends=(BackendConfig(name="pipe", kind="tcp", host="127.0.0.1", port=pipe),),
        ),
        ServiceConfig(
            name="files", backends=(BackendConfig(name="files", kind="static", root=state / "www"),)
        ),
    )
    return EdgeConfig(
        host="127.0.0.1",
        port=0,
        certificate=state / CERTIFICATE_FILE,
        private_key=state / PRIVATE_KEY_FILE,
        admin_host="127.0.0.1",
        admin_port=0,
        services=services,
        source="<soak>",
    )


async def _serve_edge(state: Path, ports: list[int], conn: Connection) -> None:
    from netsched_edge.server import EdgeServer

    edge = EdgeServer(_edge_config(state, ports))
    await edge.start()
    conn.send((edge.port, edge.admin_port))
    loop = asyncio.get_running_loop()
    try:
        while True:
            try:
                (command,) = await loop.run_in_executor(None, conn.recv)
            except (EOFError, OSError):
                return
            if command == "stats":
                conn.send(_edge_state(edge))
            elif command == "exit":
                return
    finally:
        await edge.close()


def _edge_state(edge: Any) -> dict[str, Any]:
    """What the edge still holds: backend slots taken, requests, connections."""
    slots = {
        f"{name}/{slot.name}": slot.in_flight
        for name, pool in edge.dispatcher.pools.items()
        for slot in pool.slots
    }
    queued = {name: pool.queued for name, pool in edge.dispatcher.pools.items()}
    rejections = {
        name: dict(getattr(pool, "queue_rejections", {}))
        for name, pool in edge.dispatcher.pools.items()
    }
    health = {
        f"{name}/{backend}": getattr(getattr(tracker, "state", None), "name", "?")
        for name, pool in edge.dispatcher.pools.items()
        for backend, tracker in getattr(pool, "health", {}).items()
    }
    return {
        "queue_rejections": rejections,
        "health": health,
        "slots": slots,
        "queued": queued,
        "requests": edge.in_flight() if callable(edge.in_flight) else edge.in_flight,
        "connections": len(edge.connections),
        "quic_connections": len(edge.quic_connections()),
    }


def client_process(
    index: int, count: int, port: int, ca: str, options: Options, conn: Connection
) -> None:
    # The load generators yield the CPU to the edge they measure (on a host of 2 cores,
    # 4 client processes at the edge's priority held it to a fifth of a core).
    os.nice(options.client_nice)
    _run(_client_main(index, count, port, ca, options, conn))


# ------------------------------------------------------------------ clients


class H3Client(QuicConnectionProtocol):
    """aioquic's HTTP/3 client: GETs, a cancel after the head, a reader that stalls."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.stalled = False
        self.closed = False
        self._heads: dict[int, asyncio.Future[int]] = {}
        self._done: dict[int, asyncio.Future[int]] = {}
        self._received: dict[int, int] = {}

    def get(self, path: str) -> tuple[int, asyncio.Future[int], asyncio.Future[int]]:
        """(stream ID, status future, body length future)."""
        sid = self._quic.get_next_available_stream_id()
        headers = [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":authority", b"localhost"),
            (b":path", path.encode()),
        ]
        self.h3.send_headers(sid, headers, end_stream=True)
        loop = asyncio.get_running_loop()
        head = self._heads[sid] = loop.create_future()
        done = self._done[sid] = loop.create_future()
        self._received[sid] = 0
        self.transmit()
        return sid, head, done

    def cancel(self, sid: int) -> None:
        self._quic.reset_stream(sid, ErrorCode.H3_REQUEST_CANCELLED)
        with contextlib.suppress(ValueError):
            self._quic.stop_stream(sid, ErrorCode.H3_REQUEST_CANCELLED)
        self._forget(sid)
        self.transmit()

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        if not self.stalled:
            super().datagram_received(data, addr)

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated):
            self.closed = True
            for sid in list(self._done):
                self._fail(sid, ConnectionError(f"connection closed: {event.reason_phrase}"))
            return
        if isinstance(event, StreamReset) and event.stream_id in self._done:
            self._fail(event.stream_id, ConnectionError(f"reset 0x{event.error_code:x}"))
        for h3_event in self.h3.handle_event(event):
            sid = getattr(h3_event, "stream_id", -1)
            if sid not in self._done:
                continue
            if isinstance(h3_event, HeadersReceived):
                status = int(dict(h3_event.headers).get(b":status", b"0"))
                if not self._heads[sid].done():  # trailers, or a reader that gave up
                    self._heads[sid].set_result(status)
            elif isinstance(h3_event, DataReceived):
                self._received[sid] += len(h3_event.data)
            if getattr(h3_event, "stream_ended", False):
                if not self._done[sid].done():  # else its reader gave up (cancelled it)
                    self._done[sid].set_result(self._received[sid])
                self._forget(sid)

    def _fail(self, sid: int, exc: Exception) -> None:
        for future in (self._heads.get(sid), self._done.get(sid)):
            if future is not None and not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: a cancelled reader may never await it
        self._forget(sid)

    def _forget(self, sid: int) -> None:
        self._heads.pop(sid, None)
        self._done.pop(sid, None)
        self._received.pop(sid, None)


class Outcome(Exception):
    """A request ended otherwise than expected; the message is the reason counted."""


Op = Callable[[random.Random], Awaitable[None]]


class NativeWorker:
    WEIGHTS = {
        "unary": 40,
        "stream": 15,
        "abort": 10,
        "deadline": 10,
        "static": 15,
        "slow_reader": 10,
    }

    def __init__(self, session: Session) -> None:
        self.session = session

    def alive(self) -> bool:
        return not self.session.closed

    async def unary(self, rng: random.Random) -> None:
        payload = rng.randbytes(rng.randrange(100, 2000))
        response = await self.session.request("echo", payload, slo=SLO(deadline_ms=15_000))
        if response.body != payload:
            raise Outcome("echo mismatch")

    async def stream(self, rng: random.Random) -> None:
        stream = await self.session.open_stream("pipe")
        await stream.response()
        chunks = [rng.randbytes(1024) for _ in range(4)]
        for chunk in chunks:
            await stream.write(chunk)
        stream.write_eof()
        if await stream.read() != b"".join(chunks):
            raise Outcome("pipe mismatch")

    async def abort(self, rng: random.Random) -> None:
        stream = await self.session.open_stream("pipe")
        await stream.response()
        await stream.write(rng.randbytes(2048))
        await stream.read(512)  # data flows; then the client gives up mid-way
        stream.abort()

    async def deadline(self, rng: random.Random) -> None:
        try:
            await self.session.request("slow", b"late", slo=SLO(deadline_ms=MISSED_DEADLINE_MS))
        except DeadlineExceeded:
            return
        raise Outcome("deadline not enforced")

    async def static(self, rng: random.Random) -> None:
        response = await self.session.request("files", meta={"method": "GET", "path": "/small.bin"})
        if len(response.body) != SMALL:
            raise Outcome("static length")

    async def slow_reader(self, rng: random.Random) -> None:
        stream = await self.session.open_stream("files", meta={"method": "GET", "path": "/big.bin"})
        stream.write_eof()
        await stream.response()
        total = 0
        while chunk := await stream.read(32 * 1024):
            total += len(chunk)
            await asyncio.sleep(0.02)
        if total != BIG:
            raise Outcome("slow reader length")


class H3Worker:
    WEIGHTS = {"get_echo": 35, "get_small": 35, "cancel": 15, "slow_reader": 15}

    def __init__(self, client: H3Client) -> None:
        self.client = client

    def alive(self) -> bool:
        return not self.client.closed

    async def _get(self, path: str, status: int, length: int | None) -> None:
        _, head, done = self.client.get(path)
        if await head != status:
            raise Outcome(f"h3 status {head.result()}")
        received = await done
        if length is not None and received != length:
            raise Outcome("h3 length")

    async def get_echo(self, rng: random.Random) -> None:
        await self._get(f"/echo/item-{rng.randrange(1000)}", 200, None)

    async def get_small(self, rng: random.Random) -> None:
        await self._get("/files/small.bin", 200, SMALL)

    async def cancel(self, rng: random.Random) -> None:
        sid, head, _ = self.client.get("/files/big.bin")
        if await head != 200:
            raise Outcome(f"h3 status {head.result()}")
        self.client.cancel(sid)

    async def slow_reader(self, rng: random.Random) -> None:
        _, head, done = self.client.get("/files/big.bin")
        try:
            for _ in range(2):  # twice silent for 400 ms (nothing read, nothing acknowledged)
                self.client.stalled = True
                await asyncio.sleep(0.4)
                self.client.stalled = False
                await asyncio.wait([done], timeout=0.4)
        finally:
            self.client.stalled = False
        if await head != 200 or await done != BIG:
            raise Outcome("h3 slow reader")


async def _client_main(
    index: int, count: int, port: int, ca: str, options: Options, conn: Connection
) -> None:
    rng = random.Random(f"{options.seed}:{index}")
    stats = ClientStats()
    loop = asyncio.get_running_loop()
    closers: list[Closer] = []  # one a connection, called together at the end
    window = Window()
    tasks: list[asyncio.Task[None]] = []

    def start(worker: NativeWorker | H3Worker) -> None:
        # A connection works from the moment it is open: one left idle while the others
        # open would meet the edge's idle timeout before the measured window.
        work = _work(worker, random.Random(rng.random()), window, options, stats)
        tasks.append(asyncio.create_task(work))

    try:
        await _open_all(closers, count, port, ca, options, rng, stats, start)
        conn.send(("ready", stats.connections, stats.connect_failed))
        await loop.run_in_executor(None, conn.recv)  # "go"
        window.stop_at = loop.time() + options.duration_s
        await asyncio.gather(*tasks)
        # Plain data: this module is __mp_main__ here, a name the parent cannot unpickle.
        conn.send({f.name: getattr(stats, f.name) for f in fields(stats)})
    finally:
        conn.send(("closed", await _close_all(closers)))


@dataclass
class Window:
    """When the connections stop sending requests (None: not known yet, they go on)."""

    stop_at: float | None = None


Closer = Callable[[], Awaitable[object]]


async def _close_all(closers: Sequence[Closer]) -> bool:
    """Close every connection at once (one after another, 250 closes of a few round trips
    each take minutes under load); True when all closed within CLOSE_TIMEOUT_S."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            outcomes = await asyncio.gather(*(close() for close in closers), return_exceptions=True)
    except TimeoutError:
        return False
    return not any(isinstance(outcome, BaseException) for outcome in outcomes)


async def _open_all(
    closers: list[Closer],
    count: int,
    port: int,
    ca: str,
    options: Options,
    rng: random.Random,
    stats: ClientStats,
    start: Callable[[NativeWorker | H3Worker], None],
) -> None:
    gate = asyncio.Semaphore(max(1, options.open_concurrency // options.clients))

    async def open_one(h3: bool) -> None:
        async with gate:
            try:
                if h3:
                    configuration = QuicConfiguration(
                        is_client=True, alpn_protocols=["h3"], server_name="localhost"
                    )
                    configuration.load_verify_locations(ca)
                    connection = contextlib.AsyncExitStack()
                    closers.append(connection.aclose)
                    client = await asyncio.wait_for(
                        connection.enter_async_context(
                            quic_connect(
                                "127.0.0.1",
                                port,
                                configuration=configuration,
                                create_protocol=H3Client,
                            )
                        ),
                        START_TIMEOUT_S,
                    )
                    start(H3Worker(client))  # type: ignore[arg-type]
                else:
                    session = await open_session(
                        "127.0.0.1", port, ca_file=ca, timeout=START_TIMEOUT_S
                    )
                    closers.append(session.close)
                    start(NativeWorker(session))
                stats.connections += 1
            except (OSError, TimeoutError, ConnectionError, NetSchedError):
                stats.connect_failed += 1

    await asyncio.gather(*(open_one(rng.random() < options.h3_share) for _ in range(count)))


async def _work(
    worker: NativeWorker | H3Worker,
    rng: random.Random,
    window: Window,
    options: Options,
    stats: ClientStats,
) -> None:
    loop = asyncio.get_running_loop()
    names = list(worker.WEIGHTS)
    weights = list(worker.WEIGHTS.values())
    await asyncio.sleep(rng.uniform(0, options.think_ms / 1000))  # spread the first requests
    while window.stop_at is None or loop.time() < window.stop_at:
        if not worker.alive():
            stats.connections_died += 1
            return
        name = rng.choices(names, weights)[0]
        kind = f"{type(worker).__name__.removesuffix('Worker').lower()}.{name}"
        op: Op = getattr(worker, name)
        stats.sent += 1
        stats.by_kind[kind] += 1
        started = loop.time()
        try:
            async with asyncio.timeout(options.request_timeout_s):
                await op(rng)
        except TimeoutError:
            stats.lost += 1
            stats.lost_by_kind[kind if worker.alive() else f"{kind} (connection gone)"] += 1
        except Outcome as exc:
            stats.failed[f"{kind}: {exc}"] += 1
        except (NetSchedError, ConnectionError, OSError) as exc:
            reason = re.sub(r"\d+(\.\d+)?", "N", str(exc))[:90]  # one key per kind of failure
            stats.failed[f"{kind}: {type(exc).__name__}: {reason}"] += 1
        else:
            stats.succeeded += 1
            stats.latency_ms.append((loop.time() - started) * 1000)
        await asyncio.sleep(options.think_ms / 1000 * rng.uniform(0.5, 1.5))


# ------------------------------------------------------------------ the run


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _backend_sockets(pid: int, ports: Sequence[int]) -> dict[int, int]:
    """The edge's TCP connections to each backend port (idle keep-alive ones included)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    counts = dict.fromkeys(ports, 0)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                remote_port = int(parts[2].rsplit(":", 1)[1], 16)
                if parts[9] in inodes and remote_port in counts:
                    counts[remote_port] += 1
    return counts


def _metrics_responses(admin_port: int | None) -> int | None:
    if admin_port is None:
        return None
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("netsched_edge_responses_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def _recv(conn: Connection, timeout: float, who: str) -> Any:
    if not conn.poll(timeout):
        raise RuntimeError(f"{who} did not answer within {timeout:g} s")
    try:
        return conn.recv()
    except EOFError:
        raise RuntimeError(f"{who} exited") from None


def run(options: Options) -> Results:
    from netsched_edge.tls import generate_self_signed

    log = (lambda *a: None) if options.quiet else (lambda *a: print(*a, flush=True))
    with tempfile.TemporaryDirectory(prefix="netsched-soak-") as tmp:
        state = Path(tmp)
        pair = generate_self_signed(state)
        (state / "www").mkdir()
        for name, size in FILES.items():
            (state / "www" / name).write_bytes(bytes(range(256)) * (size // 256))
        with spawned([(backends_process, ())]) as [(_, backends)]:
            ports = _recv(backends, START_TIMEOUT_S, "the backends")
            with spawned([(edge_process, (tmp, ports))]) as [(edge_pid, edge)]:
                port, admin_port = _recv(edge, START_TIMEOUT_S, "the edge")
                time.sleep(0.5)
                results = Results(options, ClientStats())
                results.rss_start_mb, results.fds_start = _rss_mb(edge_pid), _fds(edge_pid)
                log(f"edge pid {edge_pid} on port {port}: RSS {results.rss_start_mb:.1f} MB")
                _load(options, results, port, str(pair.ca_certificate), edge_pid, log)
                time.sleep(options.settle_s)  # the clients' CONNECTION_CLOSEs are processed
                results.rss_end_mb, results.fds_end = _rss_mb(edge_pid), _fds(edge_pid)
                sockets = _backend_sockets(edge_pid, ports)
                results.backend_sockets_end = dict(
                    zip(BACKEND_NAMES, sockets.values(), strict=True)
                )
                edge.send(("stats",))
                results.edge_end = _recv(edge, 30, "the edge")
                results.metrics_responses = _metrics_responses(admin_port)
                edge.send(("exit",))
            backends.send(("exit",))
    return results


def _load(
    options: Options,
    results: Results,
    port: int,
    ca: str,
    edge_pid: int,
    log: Callable[..., None],
) -> None:
    shares = [
        options.connections // options.clients + (i < options.connections % options.clients)
        for i in range(options.clients)
    ]
    targets: list[tuple[Callable[..., None], tuple[object, ...]]] = [
        (client_process, (i, n, port, ca, options)) for i, n in enumerate(shares)
    ]
    ramp_started = time.monotonic()
    with spawned(targets) as clients:
        ramp_limit = START_TIMEOUT_S + options.connections / 10
        for _, conn in clients:
            _recv(conn, ramp_limit, "a client process")  # ("ready", opened, failed)
        results.ramp_s = time.monotonic() - ramp_started
        results.rss_connected_mb = _rss_mb(edge_pid)
        log(
            f"{options.connections} connections opening took {results.ramp_s:.1f} s: "
            f"edge RSS {results.rss_connected_mb:.1f} MB, {_fds(edge_pid)} fds"
        )
        for _, conn in clients:
            conn.send("go")
        go = time.monotonic()
        cpu_at_go = process_cpu(edge_pid)
        clients_cpu_at_go = sum(process_cpu(pid) for pid, _ in clients)
        pending = {conn for _, conn in clients}
        reported: set[Connection] = set()
        end_by = go + options.duration_s + options.request_timeout_s + 60
        next_log = 0.0
        while pending and time.monotonic() < end_by:
            now = time.monotonic() - go
            sample = Sample(now, _rss_mb(edge_pid), _fds(edge_pid))
            results.samples.append(sample)
            if now >= options.warmup and not results.rss_warm_mb:
                results.rss_warm_mb = sample.rss_mb
            if now <= options.duration_s:
                results.rss_load_end_mb = sample.rss_mb
            if now >= next_log:
                next_log += 5.0
                log(f"  t={now:5.1f} s  edge RSS {sample.rss_mb:7.1f} MB  fds {sample.fds}")
            for conn in [c for c in pending if c.poll(1.0 / max(len(pending), 1))]:
                message = _recv(conn, 1, "a client process")
                if isinstance(message, dict):
                    results.stats.add(ClientStats(**message))
                    reported.add(conn)
                pending.discard(conn)  # else it failed and sent ("closed", ...) already
        elapsed = time.monotonic() - go
        results.edge_cpu_share = (process_cpu(edge_pid) - cpu_at_go) / elapsed
        with contextlib.suppress(OSError):  # a client process that exited already
            clients_cpu = sum(process_cpu(pid) for pid, _ in clients) - clients_cpu_at_go
            results.clients_cpu_share = clients_cpu / elapsed / len(clients)
        results.unreported_clients = len(clients) - len(reported)  # not in the totals
        for conn in reported:  # each closes its connections, so that the edge sees them go
            _, closed = _recv(conn, CLOSE_TIMEOUT_S + 30, "a client process closing")
            results.clients_closed_cleanly += bool(closed)
    results.rss_peak_mb = max(s.rss_mb for s in results.samples)
    results.fds_peak = max(s.fds for s in results.samples)


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def report(results: Results) -> str:
    o, s = results.options, results.stats
    lines = [
        f"soak: {o.connections} connections ({o.h3_share:.0%} h3) from {o.clients} processes, "
        f"{o.duration_s:g} s of load, think {o.think_ms:g} ms, warm-up {o.warmup:g} s",
        f"connections: {s.connections} open ({s.connect_failed} failed to open, "
        f"{results.ramp_s:.1f} s to open all), {s.connections_died} died under load",
        f"requests: {s.sent} sent, {s.succeeded} succeeded, "
        f"{sum(s.failed.values())} failed, {s.lost} lost "
        f"(latency p50 {_percentile(s.latency_ms, 50):.0f} ms, "
        f"p99 {_percentile(s.latency_ms, 99):.0f} ms; "
        f"{s.sent / (results.ramp_s + o.duration_s):.0f} req/s over the opening and the window)",
        "  by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(s.by_kind.items())),
    ]
    for reason, count in s.failed.most_common(12):
        lines.append(f"  failed: {reason}: {count}")
    if s.lost:
        lost = ", ".join(f"{k} {n}" for k, n in s.lost_by_kind.most_common())
        lines.append(f"  lost (no outcome in {o.request_timeout_s:g} s): {lost}")
    if results.unreported_clients:
        lines.append(
            f"  MISSING: {results.unreported_clients} client processes did not report "
            f"within {o.duration_s + o.request_timeout_s + 60:g} s (their requests are not counted)"
        )
    lines.append(
        f"  client processes that closed every connection within {CLOSE_TIMEOUT_S:g} s: "
        f"{results.clients_closed_cleanly} of {o.clients}"
    )
    growth = results.rss_load_end_mb - results.rss_warm_mb
    lines += [
        f"edge RSS MB: start {results.rss_start_mb:.1f}, connected {results.rss_connected_mb:.1f}, "
        f"after warm-up {results.rss_warm_mb:.1f}, peak {results.rss_peak_mb:.1f}, "
        f"end of load {results.rss_load_end_mb:.1f} ({growth:+.1f} since warm-up), "
        f"clients gone {results.rss_end_mb:.1f}",
        f"CPU while the clients ran: edge {results.edge_cpu_share:.0%} of one core, "
        f"each client process {results.clients_cpu_share:.0%} on average (load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end)",
        f"edge fds: start {results.fds_start}, peak {results.fds_peak}, end {results.fds_end} "
        f"(TCP to backends at the end: {results.backend_sockets_end})",
        f"edge at the end: backend slots taken {results.leaked_slots} "
        f"{results.edge_end.get('slots')}, queued {results.edge_end.get('queued')}, "
        f"requests under way {results.edge_end.get('requests')}, "
        f"connections {results.edge_end.get('connections')} "
        f"(QUIC {results.edge_end.get('quic_connections')}); health "
        f"{results.edge_end.get('health')}; queue rejections "
        f"{results.edge_end.get('queue_rejections')}",
        f"/metrics responses_total {results.metrics_responses} "
        f"(client requests {s.sent}; native aborts and h3 cancels may end without a response)",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = Options()
    parser.add_argument("--connections", type=int, default=defaults.connections)
    parser.add_argument("--duration", type=float, default=defaults.duration_s, help="seconds")
    parser.add_argument("--clients", type=int, default=defaults.clients, help="processes")
    parser.add_argument("--h3-share", type=float, default=defaults.h3_share)
    parser.add_argument("--think-ms", type=float, default=defaults.think_ms)
    parser.add_argument("--warmup", type=float, default=None, help="seconds")
    parser.add_argument("--request-timeout", type=float, default=defaults.request_timeout_s)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    options = Options(
        connections=args.connections,
        duration_s=args.duration,
        clients=args.clients,
        h3_share=args.h3_share,
        think_ms=args.think_ms,
        warmup_s=args.warmup,
        request_timeout_s=args.request_timeout,
        seed=args.seed,
    )
    results = run(options)
    print(report(results))
    ok = results.stats.lost == 0 and results.leaked_slots == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
