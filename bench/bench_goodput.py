"""Single-stream QUIC goodput and CPU per GB on loopback: ours vs plain aioquic, asyncio vs uvloop.

One download of `--size-mib` MiB (64 by default) per variant, server and client
in separate processes, all variants in the same run:

  aioquic/asyncio  plain aioquic 1.7.2 (its asyncio protocol and datagram transport);
                   the server queues the whole file on the request stream at once
  aioquic/uvloop   the same on uvloop
  ours/asyncio     the edge (EdgeServer, dispatcher, static backend serving the
                   file) and the client SDK (open_session, open_stream, read):
                   NetSchedConnection driven by ConnectionDriver over the batched
                   UDP socket
  ours/uvloop      the same on uvloop
  bare/asyncio     (on request) our runtime without the edge: ServerEndpoint,
  bare/uvloop      ConnectionDriver, NetSchedConnection and the netsched/1
                   protocol answering with the whole file at once, as the
                   plain aioquic server does

The static backend does not dominate: its 64 KiB reads (one worker-thread hop
each) run far ahead of the network, so the whole file sits in the stream's
send buffer after the first tenth or so of the transfer; the bare variants
give the same goodput within the noise.

Both sides use aioquic's default flow-control windows and NewReno, so the
stacks differ only in what drives the connection. CPU is user+system seconds
of both processes over the transfer (the server's read from /proc, the
client's from process_time), per GB delivered. Per MB delivered, both ends
summed:

  arms       loop.call_at calls (timers armed)
  fires      timer callbacks that ran
  wakeups    callbacks from the loop into QUIC code: timer fires plus socket
             reads (per datagram for aioquic's transports, per readable
             batch for our socket)
  flushes    datagrams_to_send calls (each builds packets, maybe none)

plus the server's datagrams per flush and the client's datagrams (its ACKs)
per MB. `--profile` adds cProfile's top functions of both ends of one variant.

    python bench/bench_goodput.py [--size-mib 64] [--runs 1] [--variants ...] [--profile VARIANT]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import ctypes
import io
import multiprocessing as mp
import os
import pstats
import signal
import ssl
import statistics
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import uvloop
from aioquic.asyncio.client import connect as aioquic_connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import serve as aioquic_serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import QuicEvent, StreamDataReceived

from netsched_client import open_session
from netsched_client.proto import session as native
from netsched_client.proto.connection import NetSchedConnection
from netsched_client.proto.events import RequestReceived
from netsched_client.proto.framing import ResponseHead
from netsched_client.runtime.driver import ConnectionDriver
from netsched_client.runtime.endpoint import ServerEndpoint, open_server_endpoint
from netsched_edge.config import BackendConfig, EdgeConfig, ServiceConfig
from netsched_edge.report import table
from netsched_edge.server import EdgeServer
from netsched_edge.tls import generate_self_signed

VARIANTS = ("aioquic/asyncio", "aioquic/uvloop", "ours/asyncio", "ours/uvloop")
BARE_VARIANTS = ("bare/asyncio", "bare/uvloop")
ALPN = "bench"
FILE = "blob"
SERVICE = "files"
READ_CHUNK = 1 << 20
TIMEOUT = 300.0  # seconds for one transfer: a stuck variant fails the run, not hangs it


# -- instrumentation (identical in every variant) ------------------------------------


@dataclass(slots=True)
class Counters:
    arms: int = 0
    fires: int = 0
    reads: int = 0
    flushes: int = 0
    datagrams: int = 0

    def reset(self) -> None:
        self.arms = self.fires = self.reads = self.flushes = self.datagrams = 0


COUNTERS = Counters()


def _counting(loop_class: type[asyncio.AbstractEventLoop]) -> type[asyncio.AbstractEventLoop]:
    """`loop_class` with call_at and add_reader counted (uvloop.Loop subclasses in Python too)."""

    class CountingLoop(loop_class):  # type: ignore[valid-type,misc]
        def call_at(
            self, when: float, callback: Callable[..., object], *args: Any, **kw: Any
        ) -> Any:
            COUNTERS.arms += 1

            def fired(*a: Any) -> None:
                COUNTERS.fires += 1
                callback(*a)

            return super().call_at(when, fired, *args, **kw)

        def add_reader(self, fd: Any, callback: Callable[..., object], *args: Any) -> None:
            def readable(*a: Any) -> None:
                COUNTERS.reads += 1
                callback(*a)

            super().add_reader(fd, readable, *args)

    return CountingLoop


def _instrument_quic() -> None:
    """Count flushes and their datagrams, and aioquic's per-datagram reads."""
    flush = QuicConnection.datagrams_to_send
    received = QuicConnectionProtocol.datagram_received

    def datagrams_to_send(self: QuicConnection, now: float) -> list[Any]:
        out = flush(self, now)
        COUNTERS.flushes += 1
        COUNTERS.datagrams += len(out)
        return out

    def datagram_received(self: QuicConnectionProtocol, data: bytes | str, addr: Any) -> None:
        COUNTERS.reads += 1
        received(self, data, addr)

    QuicConnection.datagrams_to_send = datagrams_to_send  # type: ignore[method-assign]
    QuicConnectionProtocol.datagram_received = datagram_received  # type: ignore[method-assign]


def _run(loop_name: str, coro: Coroutine[Any, Any, Any]) -> Any:
    _instrument_quic()
    base = uvloop.Loop if loop_name == "uvloop" else asyncio.SelectorEventLoop
    with asyncio.Runner(loop_factory=_counting(base)) as runner:
        return runner.run(coro)


def _die_with_parent() -> None:
    """Have the kernel kill this process when the parent dies (no orphaned servers)."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _cpu_of(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- servers -------------------------------------------------------------------------


class _Upload(QuicConnectionProtocol):
    """Plain aioquic: answer a request stream with the whole file, then FIN."""

    payload = b""

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived) and event.end_stream:
            self._quic.send_stream_data(event.stream_id, self.payload, end_stream=True)
            self.transmit()


async def _aioquic_server(root: Path, ready: mp.Queue[int]) -> None:
    pair = generate_self_signed(root.parent)
    configuration = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
    configuration.load_cert_chain(pair.certificate, pair.private_key)
    _Upload.payload = (root / FILE).read_bytes()
    server = await aioquic_serve(
        "127.0.0.1", 0, configuration=configuration, create_protocol=_Upload
    )
    ready.put(server._transport.get_extra_info("sockname")[1])  # type: ignore[union-attr]
    await _until_sigterm()
    server.close()


async def _bare_server(root: Path, ready: mp.Queue[int]) -> None:
    """Our runtime with the plain server's application: the whole file in one response."""
    pair = generate_self_signed(root.parent)
    configuration = QuicConfiguration(is_client=False, alpn_protocols=[native.ALPN])
    configuration.load_cert_chain(pair.certificate, pair.private_key)
    payload = (root / FILE).read_bytes()

    def on_connection(driver: ConnectionDriver) -> None:
        proto = native.NetSchedProtocol(driver.quic)

        def on_event(event: QuicEvent) -> None:
            for pevent in proto.handle_event(event):
                if isinstance(pevent, RequestReceived):
                    head = ResponseHead(status=200)
                    proto.send_response(pevent.stream_id, head, payload, end_stream=True)
                    driver.schedule_transmit()

        driver.add_event_handler(on_event)

    endpoint = await open_server_endpoint(
        "127.0.0.1",
        0,
        lambda: ServerEndpoint(configuration, on_connection, connection_factory=NetSchedConnection),
    )
    ready.put(endpoint.local_address[1])
    await _until_sigterm()
    endpoint.close()


async def _edge_server(root: Path, ready: mp.Queue[int]) -> None:
    """The edge: EdgeServer, dispatcher and the static backend reading the file."""
    backend = BackendConfig(name="disk", kind="static", root=root)
    config = EdgeConfig(host="127.0.0.1", port=0, services=(ServiceConfig(SERVICE, (backend,)),))
    edge = EdgeServer(config)
    await edge.start()
    ready.put(edge.port)
    await _until_sigterm()
    await edge.close()


SERVERS = {"aioquic": _aioquic_server, "ours": _edge_server, "bare": _bare_server}


async def _until_sigterm() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


def _server_main(
    stack: str, loop_name: str, root: Path, ready: mp.Queue[Any], profile: bool
) -> None:
    _die_with_parent()
    server = SERVERS[stack]
    with _profiled(profile, "server", ready):
        _run(loop_name, server(root, ready))
    ready.put(asdict(COUNTERS))


# -- clients -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientResult:
    received: int
    wall: float  # seconds, request sent to last byte
    cpu: float  # client CPU seconds over the same span


Go = Callable[[], None]


class _Download(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self.received += len(event.data)
            if event.end_stream and not self.done.done():
                self.done.set_result(None)


async def _aioquic_client(port: int, go: Go) -> ClientResult:
    configuration = QuicConfiguration(is_client=True, alpn_protocols=[ALPN])
    configuration.verify_mode = ssl.CERT_NONE
    async with aioquic_connect(
        "127.0.0.1", port, configuration=configuration, create_protocol=_Download
    ) as client:
        assert isinstance(client, _Download)
        go()
        cpu, started = time.process_time(), time.perf_counter()
        quic = client._quic
        quic.send_stream_data(quic.get_next_available_stream_id(), b"GET", end_stream=True)
        client.transmit()
        await asyncio.wait_for(client.done, TIMEOUT)
        return ClientResult(
            client.received, time.perf_counter() - started, time.process_time() - cpu
        )


async def _our_client(port: int, go: Go) -> ClientResult:
    session = await open_session("127.0.0.1", port, verify=False)
    try:
        go()
        cpu, started = time.process_time(), time.perf_counter()
        stream = await session.open_stream(SERVICE, meta={"path": FILE})
        stream.write_eof()
        received = 0
        async with asyncio.timeout(TIMEOUT):
            while chunk := await stream.read(READ_CHUNK):
                received += len(chunk)
        return ClientResult(received, time.perf_counter() - started, time.process_time() - cpu)
    finally:
        await session.close()


def _client_main(
    stack: str, loop_name: str, port: int, out: mp.Queue[Any], go: Any, profile: bool
) -> None:
    def signal_ready() -> None:
        # The parent snapshots the server's CPU now; wait for it, so the span is the same.
        out.put("ready")
        go.get(timeout=30)
        COUNTERS.reset()  # the handshake is not the transfer

    _die_with_parent()
    client = _aioquic_client if stack == "aioquic" else _our_client
    with _profiled(profile, "client", out):
        result = _run(loop_name, client(port, signal_ready))
    out.put((asdict(result), asdict(COUNTERS)))


class _profiled:
    """cProfile the block when asked; put the top functions on `out` as text."""

    def __init__(self, enabled: bool, role: str, out: mp.Queue[Any]) -> None:
        self._profile = cProfile.Profile() if enabled else None
        self._role = role
        self._out = out

    def __enter__(self) -> None:
        if self._profile is not None:
            self._profile.enable()

    def __exit__(self, *exc: object) -> None:
        if self._profile is None:
            return
        self._profile.disable()
        text = io.StringIO()
        pstats.Stats(self._profile, stream=text).sort_stats("tottime").print_stats(18)
        self._out.put(("profile", self._role, text.getvalue()))


# -- one variant, orchestrated from the parent --------------------------------------


# Report columns, each the median over the runs of a variant.
COLUMNS = (
    "Mbit/s",
    "CPU s/GB",
    "client s",
    "server s",
    "arms/MB",
    "fires/MB",
    "wakeups/MB",
    "flushes/MB",
    "srv dgram/flush",
    "cli dgram/MB",
)


@dataclass(frozen=True, slots=True)
class Result:
    variant: str
    metrics: dict[str, float]  # by column
    profiles: tuple[str, ...]


def _measure(ctx: Any, variant: str, root: Path, size: int, profile: bool) -> Result:
    stack, _, loop_name = variant.partition("/")
    ready: mp.Queue[Any] = ctx.Queue()
    server = ctx.Process(target=_server_main, args=(stack, loop_name, root, ready, profile))
    server.start()
    try:
        port = ready.get(timeout=60)
        out: mp.Queue[Any] = ctx.Queue()
        go: mp.Queue[None] = ctx.Queue()
        client = ctx.Process(target=_client_main, args=(stack, loop_name, port, out, go, profile))
        client.start()
        if out.get(timeout=60) != "ready":
            raise RuntimeError(f"{variant}: the client did not connect")
        server_cpu = _cpu_of(server.pid)
        go.put(None)
        profiles = []
        item = out.get(timeout=TIMEOUT + 60)
        while isinstance(item, tuple) and item[0] == "profile":
            profiles.append(f"--- {variant} {item[1]} ---\n{item[2]}")
            item = out.get(timeout=60)
        result, client_counts = item
        server_cpu = _cpu_of(server.pid) - server_cpu
        client.join()
        os.kill(server.pid, signal.SIGTERM)
        item = ready.get(timeout=60)
        if isinstance(item, tuple):
            profiles.append(f"--- {variant} server ---\n{item[2]}")
            item = ready.get(timeout=60)
        server_counts = item
    finally:
        server.join(timeout=10)
        if server.is_alive():
            server.kill()
    if result["received"] != size:
        raise RuntimeError(f"{variant}: received {result['received']} bytes of {size}")
    mb = size / 1e6
    both = {key: client_counts[key] + server_counts[key] for key in client_counts}
    cpu = result["cpu"] + server_cpu
    metrics = {
        "Mbit/s": size * 8 / result["wall"] / 1e6,
        "CPU s/GB": cpu / (size / 1e9),
        "client s": result["cpu"],
        "server s": server_cpu,
        "arms/MB": both["arms"] / mb,
        "fires/MB": both["fires"] / mb,
        "wakeups/MB": (both["fires"] + both["reads"]) / mb,
        "flushes/MB": both["flushes"] / mb,
        "srv dgram/flush": server_counts["datagrams"] / max(server_counts["flushes"], 1),
        # what the receiver sends: ACKs and window updates
        "cli dgram/MB": client_counts["datagrams"] / mb,
    }
    return Result(variant, metrics, tuple(profiles))


def _median(results: list[Result]) -> Result:
    """Each column's median over the runs (runs on a shared machine are noisy)."""
    metrics = {key: statistics.median(r.metrics[key] for r in results) for key in COLUMNS}
    return Result(results[0].variant, metrics, ())


def _ratio(results: dict[str, Result], top: str, bottom: str) -> str:
    if top not in results or bottom not in results:
        return "-"
    a, b = results[top].metrics, results[bottom].metrics
    return (
        f"{a['Mbit/s'] / b['Mbit/s']:.2f}x goodput, "
        f"{b['CPU s/GB'] / a['CPU s/GB']:.2f}x less CPU per GB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--runs", type=int, default=1, help="median of this many runs per variant")
    every = VARIANTS + BARE_VARIANTS
    parser.add_argument("--variants", nargs="+", choices=every, default=list(VARIANTS))
    parser.add_argument("--profile", choices=every, help="cProfile both ends of this variant")
    args = parser.parse_args()
    if args.size_mib < 1 or args.runs < 1:
        parser.error("--size-mib and --runs must be >= 1")
    size = args.size_mib << 20
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="bench-goodput-") as tmp:
        root = Path(tmp) / "www"
        root.mkdir()
        (root / FILE).write_bytes(os.urandom(size))
        runs: dict[str, list[Result]] = {variant: [] for variant in args.variants}
        # Round robin: a noisy neighbour then slows every variant, not just one.
        for _ in range(args.runs):
            for variant in args.variants:
                run = _measure(ctx, variant, root, size, False)
                runs[variant].append(run)
                got = run.metrics
                print(
                    f"{variant}: {got['Mbit/s']:.0f} Mbit/s, {got['CPU s/GB']:.0f} CPU s/GB",
                    flush=True,
                )
        results = {variant: _median(rs) for variant, rs in runs.items()}
        profiled = _measure(ctx, args.profile, root, size, True) if args.profile else None
    _report(results, args.size_mib, args.runs)
    if profiled is not None:
        print("\n".join(profiled.profiles))


def _report(results: dict[str, Result], size_mib: int, runs: int) -> None:
    print(
        f"\n{size_mib} MiB single stream, loopback, median of {runs} run(s), {os.cpu_count()} CPUs"
    )
    rows = [[r.variant, *(r.metrics[key] for key in COLUMNS)] for r in results.values()]
    print(table(["variant", *COLUMNS], rows))
    print(f"\nuvloop / asyncio, ours:     {_ratio(results, 'ours/uvloop', 'ours/asyncio')}")
    print(f"uvloop / asyncio, aioquic:  {_ratio(results, 'aioquic/uvloop', 'aioquic/asyncio')}")
    for loop_name in ("asyncio", "uvloop"):
        print(
            f"ours / aioquic, {loop_name}:{' ' * (11 - len(loop_name))}"
            f"{_ratio(results, f'ours/{loop_name}', f'aioquic/{loop_name}')}"
        )
    print(f"ours/uvloop / aioquic/asyncio: {_ratio(results, 'ours/uvloop', 'aioquic/asyncio')}")


if __name__ == "__main__":
    main()
