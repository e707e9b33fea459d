"""Requests/s and latency: through the NetSched edge vs a plain aioquic echo server.

Client, server and (for the edge) backend each run in their own process, in
the same run, with the same closed-loop client load; the ratio is
printed because absolute numbers drift on shared machines.

    python bench/bench_requests.py [--duration 5] [--concurrency 16] [--size 100]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aioquic.asyncio.client import connect as aioquic_connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import serve as aioquic_serve
from aioquic.quic.configuration import QuicConfiguration

from netsched_client import open_session
from netsched_edge.config import BackendConfig, EdgeConfig, ServiceConfig
from netsched_edge.demo_backends import DemoHTTPServer, TCPEchoServer
from netsched_edge.report import percentile, table
from netsched_edge.server import EdgeServer
from netsched_edge.tls import generate_self_signed

Request = Callable[[bytes], Awaitable[bytes]]


# -- servers (each in its own process) ---------------------------------------


async def _aioquic_echo(ports: mp.Queue[int]) -> None:
    tmp = Path(tempfile.mkdtemp())
    pair = generate_self_signed(tmp)
    configuration = QuicConfiguration(is_client=False, alpn_protocols=["echo"])
    configuration.load_cert_chain(pair.certificate, pair.private_key)

    tasks: set[asyncio.Task[None]] = set()

    def on_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def echo() -> None:
            writer.write(await reader.read())
            writer.write_eof()

        task = asyncio.ensure_future(echo())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await aioquic_serve(
        "127.0.0.1", 0, configuration=configuration, stream_handler=on_stream
    )
    ports.put(server._transport.get_extra_info("sockname")[1])  # type: ignore[union-attr]
    await asyncio.Event().wait()


async def _backend(ports: mp.Queue[int], kind: str) -> None:
    server = TCPEchoServer() if kind == "tcp" else DemoHTTPServer("b", base_ms=0, cold_ms=0)
    ports.put(await server.start())
    await asyncio.Event().wait()


async def _edge(ports: mp.Queue[int], kind: str, backend_port: int) -> None:
    backend = BackendConfig(name="b", kind=kind, host="127.0.0.1", port=backend_port)
    config = EdgeConfig(host="127.0.0.1", port=0, services=(ServiceConfig("echo", (backend,)),))
    edge = EdgeServer(config)
    await edge.start()
    ports.put(edge.port)
    await asyncio.Event().wait()


def _run_server(name: str, ports: mp.Queue[int], backend_port: int = 0) -> None:
    role, _, kind = name.partition("-")
    if role == "aioquic":
        asyncio.run(_aioquic_echo(ports))
    elif role == "backend":
        asyncio.run(_backend(ports, kind))
    else:
        asyncio.run(_edge(ports, kind, backend_port))


def _start(ctx: Any, name: str, backend_port: int = 0) -> tuple[Any, int]:
    """Start a server process; return it and its port."""
    ports: mp.Queue[int] = ctx.Queue()
    proc = ctx.Process(target=_run_server, args=(name, ports, backend_port), daemon=True)
    proc.start()
    return proc, ports.get(timeout=30)


# -- clients -----------------------------------------------------------------


async def _load(request: Request, payload: bytes, duration: float, concurrency: int) -> list[float]:
    latencies: list[float] = []
    end = time.monotonic() + duration

    async def worker() -> None:
        while time.monotonic() < end:
            started = time.monotonic()
            body = await request(payload)
            assert body == payload, "echo mismatch"
            latencies.append((time.monotonic() - started) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def _bench_aioquic(
    port: int, payload: bytes, duration: float, concurrency: int
) -> list[float]:
    configuration = QuicConfiguration(is_client=True, alpn_protocols=["echo"])
    configuration.verify_mode = ssl.CERT_NONE
    async with aioquic_connect("127.0.0.1", port, configuration=configuration) as client:
        proto: QuicConnectionProtocol = client

        async def request(data: bytes) -> bytes:
            reader, writer = await proto.create_stream()
            writer.write(data)
            writer.write_eof()
            return await reader.read()

        return await _load(request, payload, duration, concurrency)


async def _bench_edge(port: int, payload: bytes, duration: float, concurrency: int) -> list[float]:
    session = await open_session("127.0.0.1", port, verify=False)
    try:

        async def request(data: bytes) -> bytes:
            return (await session.request("echo", data)).body

        return await _load(request, payload, duration, concurrency)
    finally:
        await session.close()


async def _measure(name: str, port: int, args: argparse.Namespace) -> list[float]:
    payload = b"x" * args.size
    bench = _bench_aioquic if name == "aioquic" else _bench_edge
    await bench(port, payload, 0.5, args.concurrency)  # warm-up
    return await bench(port, payload, args.duration, args.concurrency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--size", type=int, default=100)
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    rows = []
    rates: dict[str, float] = {}
    for name in ("aioquic", "edge-tcp", "edge-http"):
        # The edge's backend runs in its own process, as a real backend would.
        procs = []
        backend_port = 0
        if name.startswith("edge"):
            backend, backend_port = _start(ctx, "backend-" + name.split("-")[1])
            procs.append(backend)
        try:
            server, port = _start(ctx, name, backend_port)
            procs.append(server)
            latencies = asyncio.run(_measure(name, port, args))
        finally:
            for proc in procs:
                proc.terminate()
                proc.join()
        rates[name] = len(latencies) / args.duration
        rows.append(
            [name, f"{rates[name]:.0f}", percentile(latencies, 50), percentile(latencies, 99)]
        )
    print(f"{args.concurrency} concurrent requests of {args.size} B, {args.duration:.0f} s each\n")
    print(table(["server", "req/s", "p50 ms", "p99 ms"], rows))
    for name in ("edge-tcp", "edge-http"):
        print(f"{name} / aioquic echo: {rates[name] / rates['aioquic']:.2f}x requests/s")


if __name__ == "__main__":
    main()
