"""Deadline misses under a mixed load: EDF send order vs FIFO (aioquic's round robin), same run.

One client, one 20 Mbit/s path (through the path lab), bulk downloads that
keep the path busy plus interactive requests every 20 ms with a 100 ms
deadline. The edge's `send_order` is the only difference between the runs.

    python bench/bench_edf.py [--seconds 8] [--bulk 4] [--rate-mbps 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
from pathlib import Path

from netsched_client import SLO, NetSchedError, connect
from netsched_edge.config import BackendConfig, EdgeConfig, ServiceConfig
from netsched_edge.demo_backends import DemoHTTPServer
from netsched_edge.report import percentile, table
from netsched_edge.server import EdgeServer
from netsched_lab.impairment import LinkSpec, PathProfile
from netsched_lab.relay import UdpRelay

DEADLINE_MS = 100
BULK_FILE = 2 << 20


async def run(
    order: str, args: argparse.Namespace, www: Path, backend_port: int
) -> dict[str, float]:
    services = (
        ServiceConfig(
            "bulk", (BackendConfig("files", "static", root=www),), max_body=BULK_FILE * 2
        ),
        ServiceConfig("api", (BackendConfig("b", "http", host="127.0.0.1", port=backend_port),)),
    )
    edge = EdgeServer(EdgeConfig(host="127.0.0.1", port=0, services=services, send_order=order))
    await edge.start()
    # A shallow bottleneck buffer: the backlog waits at the sender, where the order applies.
    link = LinkSpec(delay_ms=5, rate_mbps=args.rate_mbps, queue_bytes=args.queue_bytes)
    relay = UdpRelay(("127.0.0.1", edge.port), default=PathProfile(up=link, down=link))
    _, port = await relay.start()
    latencies: list[float] = []
    missed = 0
    sent = 0
    try:
        async with connect("127.0.0.1", port, ca_file=str(edge.ca_certificate)) as session:
            stop = asyncio.Event()

            async def bulk() -> None:
                while not stop.is_set():
                    with contextlib.suppress(NetSchedError):
                        await session.request(
                            "bulk", meta={"method": "GET", "path": "/bulk.bin"}, slo=SLO(urgency=6)
                        )

            async def interactive() -> None:
                nonlocal missed, sent
                sent += 1
                try:
                    r = await session.request(
                        "api", b"x" * 200, slo=SLO(deadline_ms=DEADLINE_MS, urgency=1)
                    )
                    latencies.append(r.latency_ms)
                    missed += r.latency_ms > DEADLINE_MS
                except NetSchedError:
                    missed += 1

            bulks = [asyncio.create_task(bulk()) for _ in range(args.bulk)]
            await asyncio.sleep(1.0)  # let the bulk transfers fill the path
            probes = []
            for _ in range(int(args.seconds / 0.02)):
                probes.append(asyncio.create_task(interactive()))
                await asyncio.sleep(0.02)
            await asyncio.gather(*probes)
            stop.set()
            for task in bulks:
                task.cancel()
            await asyncio.gather(*bulks, return_exceptions=True)
    finally:
        await relay.stop()
        await edge.close()
    return {
        "sent": sent,
        "missed %": 100 * missed / max(1, sent),
        "p50 ms": percentile(latencies, 50),
        "p99 ms": percentile(latencies, 99),
    }


async def main_async(args: argparse.Namespace) -> None:
    backend = DemoHTTPServer("b", base_ms=1, cold_ms=0)
    backend_port = await backend.start()
    with tempfile.TemporaryDirectory() as tmp:
        www = Path(tmp)
        (www / "bulk.bin").write_bytes(bytes(BULK_FILE))
        orders = ("edf", "fifo", "edf", "fifo") if args.repeat else ("fifo", "edf")
        runs = [(order, await run(order, args, www, backend_port)) for order in orders]
        results = {order: r for order, r in runs}
        for order, r in runs:
            print(order, r)
    await backend.stop()
    rows = [
        [order, int(r["sent"]), f"{r['missed %']:.1f}%", r["p50 ms"], r["p99 ms"]]
        for order, r in results.items()
    ]
    print(
        f"interactive requests (deadline {DEADLINE_MS} ms) beside {args.bulk} bulk downloads "
        f"on a {args.rate_mbps:g} Mbit/s path\n"
    )
    print(table(["send order", "requests", "missed", "p50 ms", "p99 ms"], rows))
    fifo, edf = results["fifo"]["missed %"], results["edf"]["missed %"]
    print(f"\ndeadline misses: FIFO {fifo:.1f}% -> EDF {edf:.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--bulk", type=int, default=4)
    parser.add_argument("--rate-mbps", type=float, default=20.0)
    parser.add_argument("--repeat", action="store_true")
    parser.add_argument("--queue-bytes", type=int, default=30_000)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
