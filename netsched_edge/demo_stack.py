"""The demo's servers, each in a process of its own: the three built-in backends, the
edge, and the path lab relay that shapes the client's two paths.

A client, an edge, a relay and backends sharing one event loop measure that
loop's queue as much as the network: a second path costs CPU, the loop lags,
and the relay's delays and the backends' latencies stretch with it. Here
only the client runs in the caller's process, as it would on a phone, and
the backends run apart from the edge, as they would on their own hosts.

The backends' and the edge's processes answer ("stats",) (the backends'
cache counts; `EdgeStats`) and end on ("exit",) or when the pipe closes; the
relay is `netsched_lab.process`'s.
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from netsched_lab.impairment import PathProfile
from netsched_lab.process import RelayControl, receive, relay_process, spawned

from .config import BackendConfig, EdgeConfig, ServiceConfig
from .demo_backends import DemoHTTPServer
from .report import percentile
from .server import EdgeServer
from .tls import CERTIFICATE_FILE, PRIVATE_KEY_FILE, generate_self_signed

# name, base latency ms, extra latency on a cache miss ms, cache entries
BACKENDS = (("fast", 2.0, 20.0, 256), ("steady", 6.0, 25.0, 128), ("slow", 15.0, 40.0, 32))
# Besides the demo's "api", for benchmarks that isolate the network: "echo" answers in
# 1 ms whatever the cache, "files" serves FILES (name -> size) from the state folder.
FILES = {"bulk.bin": 256 * 1024}


@dataclass(frozen=True, slots=True)
class EdgeStats:
    """What the edge process saw: its backends' cache, its schedulers' decisions and
    the redundant bytes they sent (urgent copies; packets re-injected after a stall)."""

    cache: Mapping[str, tuple[int, int]]  # backend -> (hits, misses)
    decisions: Mapping[str, int] = field(default_factory=dict)
    bytes_sent: int = 0
    copy_bytes: int = 0
    packets_sent: int = 0
    packets_reinjected: int = 0
    # Stream data the edge sent (responses), by (path ID, RFC 9218 urgency), in bytes.
    stream_bytes: Mapping[tuple[int, int], int] = field(default_factory=dict)
    cpu_s: float = 0.0  # the edge process's CPU time (user + system) so far
    # How late a 1 ms timer fired in the edge's event loop (p50, p99 ms): a busy loop
    # delays every packet, whatever the scheduler decides.
    loop_lag_ms: tuple[float, float] = (0.0, 0.0)


def demo_config(ports: list[int], state: Path, *, scheduler: str = "deadline") -> EdgeConfig:
    """`ports`: the BACKENDS' and then the echo backend's; `state`: the certificate
    (`generate_self_signed`'s) and the files (under www/)."""
    backends = tuple(
        BackendConfig(name=name, kind="http", host="127.0.0.1", port=port, max_in_flight=16)
        for (name, *_), port in zip(BACKENDS, ports, strict=False)
    )
    echo = BackendConfig(name="echo", kind="http", host="127.0.0.1", port=ports[-1])
    files = BackendConfig(name="files", kind="static", root=state / "www")
    services = (
        ServiceConfig(name="api", backends=backends, policy="warm-first", load_cap=6),
        ServiceConfig(name="echo", backends=(echo,)),
        ServiceConfig(name="files", backends=(files,)),
    )
    return EdgeConfig(
        host="127.0.0.1",
        port=0,
        certificate=state / CERTIFICATE_FILE,
        private_key=state / PRIVATE_KEY_FILE,
        scheduler=scheduler,
        services=services,
        source="<demo>",
    )


def backends_process(conn: Connection) -> None:
    """A child process's main: the demo's BACKENDS and the echo backend (their ports
    first) until ("exit",); ("stats",) -> backend name -> (cache hits, misses)."""
    _run(_serve_backends(conn))


def edge_process(scheduler: str, state: str, ports: list[int], conn: Connection) -> None:
    """A child process's main: the edge (its port first), in front of the backends
    listening on `ports`, until ("exit",).

    With NETSCHED_PROFILE=FILE in the environment the process runs under
    cProfile and writes its statistics to FILE (pstats format) at the end.
    """
    profile_to = os.environ.get("NETSCHED_PROFILE")
    profiler = cProfile.Profile() if profile_to else None
    if profiler is not None:
        profiler.enable()
    try:
        _run(_serve_edge(scheduler, Path(state), ports, conn))
    finally:
        if profiler is not None and profile_to:
            profiler.disable()
            profiler.dump_stats(profile_to)


def _run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # only the loop's own import: the servers' errors stay errors
        asyncio.run(main)
    else:
        uvloop.run(main)


async def _serve_backends(conn: Connection) -> None:
    servers = [DemoHTTPServer(n, base_ms=b, cold_ms=c, cache_size=s) for n, b, c, s in BACKENDS]
    servers.append(DemoHTTPServer("echo", base_ms=1.0, cold_ms=0.0, cache_size=1))
    conn.send([await server.start() for server in servers])
    try:
        await _commands(conn, lambda: {s.name: (s.hits, s.misses) for s in servers})
    finally:
        for server in servers:
            await server.stop()


async def _serve_edge(scheduler: str, state: Path, ports: list[int], conn: Connection) -> None:
    edge = EdgeServer(demo_config(ports, state, scheduler=scheduler))
    await edge.start()
    conn.send(edge.port)
    lags: deque[float] = deque(maxlen=100_000)
    watch = asyncio.create_task(_watch_lag(lags))
    try:
        await _commands(conn, lambda: _edge_stats(edge, lags))
    finally:
        watch.cancel()
        await edge.close()


async def _commands(conn: Connection, stats: Callable[[], object]) -> None:
    """Answer ("stats",) with `stats()` until ("exit",) or the parent closes the pipe."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            (command,) = await loop.run_in_executor(None, conn.recv)
        except (EOFError, OSError):  # the parent closed its end
            return
        if command == "stats":
            conn.send(stats())
        elif command == "exit":
            return
        else:
            conn.send(RuntimeError(f"demo server: unexpected command {command!r}"))


async def _watch_lag(lags: deque[float]) -> None:
    while True:
        start = time.monotonic()
        await asyncio.sleep(0.001)
        lags.append((time.monotonic() - start - 0.001) * 1000)


def _edge_stats(edge: EdgeServer, lags: deque[float]) -> EdgeStats:
    sent = copies = packets = reinjected = 0
    by_class: Counter[tuple[int, int]] = Counter()
    for quic in edge.quic_connections():
        paths = [*quic.paths.values()]
        for path in paths:
            by_class.update({(path.path_id, u): n for u, n in path.stats.stream_bytes.items()})
        sent += sum(p.stats.bytes_sent for p in paths)
        packets += sum(p.stats.packets_sent for p in paths)
        reinjected += sum(p.stats.packets_reinjected for p in paths)
        copies += quic.urgent_copies.copy_bytes
    return EdgeStats(
        cache={},  # the backends' process has it
        decisions=dict(Counter(edge.dispatcher.metrics.scheduler_decisions)),
        bytes_sent=sent,
        copy_bytes=copies,
        packets_sent=packets,
        packets_reinjected=reinjected,
        stream_bytes=dict(by_class),
        cpu_s=time.process_time(),
        loop_lag_ms=(percentile(lags, 50), percentile(lags, 99)),
    )


@dataclass(frozen=True, slots=True)
class DemoStack:
    edge_port: int
    relay_port: int
    ca_file: str
    relay: RelayControl
    edge: Connection
    backends: Connection

    def edge_stats(self) -> EdgeStats:
        """The edge's statistics, with its backends' cache counts."""
        self.edge.send(("stats",))
        stats: EdgeStats = receive(self.edge, "the edge process")
        self.backends.send(("stats",))
        cache: dict[str, tuple[int, int]] = receive(self.backends, "the backends' process")
        return replace(stats, cache=cache)


@contextmanager
def demo_stack(
    profiles: Mapping[str, PathProfile], *, scheduler: str = "deadline", seed: int = 1
) -> Iterator[DemoStack]:
    """Start the backends, the edge (with `scheduler`) and the relay (shaping each
    client IP by `profiles`) in their own processes; always stop them all, and remove
    the certificate."""
    with tempfile.TemporaryDirectory(prefix="netsched-demo-") as tmp:
        state = Path(tmp)
        pair = generate_self_signed(state)
        (state / "www").mkdir()
        for name, size in FILES.items():
            (state / "www" / name).write_bytes(bytes(range(256)) * (size // 256))
        with spawned([(backends_process, ())]) as [(_, backends_conn)]:
            ports = receive(backends_conn, "the backends' process")
            targets: list[tuple[Callable[..., None], tuple[object, ...]]] = [
                (edge_process, (scheduler, tmp, ports)),
                (relay_process, ()),
            ]
            with spawned(targets) as [(_, edge_conn), (_, relay_conn)]:
                edge_port = receive(edge_conn, "the edge process")
                relay = RelayControl(relay_conn)
                relay_port = relay.call("start", edge_port, dict(profiles), seed)
                yield DemoStack(
                    edge_port,
                    relay_port,
                    str(pair.ca_certificate),
                    relay,
                    edge_conn,
                    backends_conn,
                )
