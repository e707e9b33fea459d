"""httpx requests/s and latency: through `NetSchedTransport` and the edge vs plain HTTP/1.1.

The same `httpx.AsyncClient` calls, in the same run, to the same backend (the
demo HTTP echo server, in its own process): once with httpx's own HTTP/1.1
transport straight to the backend (keep-alive pool), once with
`NetSchedTransport` through the edge (its own process; QUIC on loopback, then
HTTP/1.1 to the backend). Closed loop with a fixed number of concurrent
requests; the ratio is printed because absolute numbers drift on shared
machines. The edge path adds a hop, so a ratio below 1 is the hop's cost.

    python bench/bench_httpx.py [--duration 5] [--concurrency 16] [--size 100]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import time
from typing import Any

import httpx

from netsched_client.httpx import NetSchedTransport
from netsched_edge.config import BackendConfig, EdgeConfig, ServiceConfig
from netsched_edge.demo_backends import DemoHTTPServer
from netsched_edge.report import percentile, table

# -- servers (each in its own process) ---------------------------------------


async def _backend(ports: mp.Queue[int]) -> None:
    server = DemoHTTPServer("b", base_ms=0, cold_ms=0)
    ports.put(await server.start())
    await asyncio.Event().wait()


async def _edge(ports: mp.Queue[int], backend_port: int) -> None:
    from netsched_edge.server import EdgeServer

    backend = BackendConfig(name="b", kind="http", host="127.0.0.1", port=backend_port)
    config = EdgeConfig(host="127.0.0.1", port=0, services=(ServiceConfig("echo", (backend,)),))
    edge = EdgeServer(config)
    await edge.start()
    ports.put(edge.port)
    await asyncio.Event().wait()


def _run_server(role: str, ports: mp.Queue[int], backend_port: int) -> None:
    asyncio.run(_backend(ports) if role == "backend" else _edge(ports, backend_port))


def _start(ctx: Any, role: str, backend_port: int = 0) -> tuple[Any, int]:
    """Start a server process; return it and its port."""
    ports: mp.Queue[int] = ctx.Queue()
    proc = ctx.Process(target=_run_server, args=(role, ports, backend_port), daemon=True)
    proc.start()
    return proc, ports.get(timeout=30)


# -- the client ----------------------------------------------------------------


async def _load(
    client: httpx.AsyncClient, url: str, payload: bytes, duration: float, concurrency: int
) -> list[float]:
    latencies: list[float] = []
    end = time.monotonic() + duration

    async def worker() -> None:
        while time.monotonic() < end:
            started = time.monotonic()
            response = await client.post(url, content=payload)
            assert response.status_code == 200 and response.content == payload, "echo mismatch"
            latencies.append((time.monotonic() - started) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def _measure(
    transport: httpx.AsyncBaseTransport, url: str, args: argparse.Namespace
) -> list[float]:
    payload = b"x" * args.size
    limits = httpx.Limits(max_connections=args.concurrency)
    async with httpx.AsyncClient(transport=transport, limits=limits) as client:
        await _load(client, url, payload, 0.5, args.concurrency)  # warm-up
        return await _load(client, url, payload, args.duration, args.concurrency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--size", type=int, default=100)
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    backend, backend_port = _start(ctx, "backend")
    edge, edge_port = _start(ctx, "edge", backend_port)
    try:
        direct = httpx.AsyncHTTPTransport()
        plain = asyncio.run(_measure(direct, f"http://127.0.0.1:{backend_port}/echo", args))
        transport = NetSchedTransport(f"127.0.0.1:{edge_port}", verify=False)
        ours = asyncio.run(_measure(transport, "http://echo/echo", args))
    finally:
        for proc in (edge, backend):
            proc.terminate()
            proc.join()
    rows = []
    for name, latencies in (("httpx HTTP/1.1 direct", plain), ("httpx NetSchedTransport", ours)):
        rate = len(latencies) / args.duration
        rows.append([name, f"{rate:.0f}", percentile(latencies, 50), percentile(latencies, 99)])
    print(f"{args.concurrency} concurrent requests of {args.size} B, {args.duration:.0f} s each\n")
    print(table(["client", "req/s", "p50 ms", "p99 ms"], rows))
    rate_ratio = len(ours) / len(plain)
    p99_ratio = percentile(ours, 99) / percentile(plain, 99)
    print(f"\nNetSchedTransport / plain HTTP/1.1: {rate_ratio:.2f}x requests/s", end="")
    print(f", {p99_ratio:.2f}x p99")


if __name__ == "__main__":
    main()
