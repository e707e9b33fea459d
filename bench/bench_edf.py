"""Deadline misses under a mixed load, EDF vs FIFO at a sender-limited edge; syscalls per datagram.

The edge runs in a process of its own. Its burst planner holds an egress
budget (`--egress-mbps`, every connection together) below what loopback and
the clients take, so the backlog forms at the edge's sender, where the order
applies (through a relay's bottleneck queue instead, the order at the sender
barely matters). Load: `--bulk` connections each downloading a 2 MiB file
over and over (urgency 6, no deadline), and one interactive connection asking
for a 4 KiB file every 20 ms with a `--deadline-ms` deadline (urgency 1). A
request misses when its response is late or the edge gave up on it
(latency percentiles are of the answered requests).

  edf    the planner hands the budget out by deadline, then urgency; streams
         within a connection leave in the same order (the edge's send_order)
  fifo   the planner serves connections in the order they became ready
         (round robin among busy ones); streams round robin (aioquic's order)

Then syscalls per datagram on the edge's QUIC socket, read from its
Prometheus counters (`netsched_edge_send_*`), the same load without a
budget: each connection's flush sent on its own ("per flush": one sendmmsg
per connection flush, the send path before the planner) vs one batch per
tick for every connection ("per tick": the planner).

    python bench/bench_edf.py [--seconds 5] [--bulk 10] [--egress-mbps 20] [--deadline-ms 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import multiprocessing as mp
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

from netsched_client import SLO, NetSchedError, connect
from netsched_client.runtime.planner import BurstPlanner
from netsched_client.runtime.ticker import TickedFlow
from netsched_edge.config import BackendConfig, EdgeConfig, ServiceConfig
from netsched_edge.report import percentile, table
from netsched_edge.server import EdgeServer

BULK_FILE = 2 << 20
SMALL_FILE = 4 << 10
INTERVAL_S = 0.02  # between interactive requests
WARMUP_S = 1.0  # bulk transfers fill the budget before the first interactive request
SERVICE = "files"


@dataclass(frozen=True, slots=True)
class EdgeMode:
    order: str  # "edf" or "fifo"
    egress_mbps: float | None
    coalesce: bool = True  # False: one send per connection flush


# -- the edge process -----------------------------------------------------------------------


def _edge_main(mode: EdgeMode, www: Path, out: mp.Queue[Any]) -> None:
    uvloop.run(_serve_edge(mode, www, out))


async def _serve_edge(mode: EdgeMode, www: Path, out: mp.Queue[Any]) -> None:
    service = ServiceConfig(
        SERVICE, (BackendConfig("disk", "static", root=www),), max_body=BULK_FILE * 2
    )
    config = EdgeConfig(host="127.0.0.1", port=0, services=(service,), send_order=mode.order)
    rate = None if mode.egress_mbps is None else mode.egress_mbps * 1e6 / 8
    planner: BurstPlanner[TickedFlow] = BurstPlanner(
        order=mode.order, egress_rate=rate, coalesce=mode.coalesce
    )
    edge = EdgeServer(config, planner=planner)
    await edge.start()
    out.put((edge.port, str(edge.ca_certificate)))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    out.put(edge.dispatcher.metrics.exposition().decode())
    await edge.close()


def _metrics(text: str) -> dict[str, float]:
    """Unlabelled samples of the edge's exposition, by name."""
    values = {}
    for line in text.splitlines():
        if line.startswith("netsched_edge_") and "{" not in line:
            name, value = line.split()
            values[name] = float(value)
    return values


# -- the clients ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunResult:
    requests: int
    missed: int
    latencies: tuple[float, ...]  # ms, of the answered requests
    edge: dict[str, float]  # the edge's metrics at the end

    @property
    def missed_share(self) -> float:
        return self.missed / max(1, self.requests)


async def _load(port: int, ca: str, bulk: int, seconds: float, deadline_ms: int) -> RunResult:
    stop = asyncio.Event()
    latencies: list[float] = []
    missed = requests = 0

    async def download() -> None:
        async with connect("127.0.0.1", port, ca_file=ca) as session:
            while not stop.is_set():
                with contextlib.suppress(NetSchedError):
                    await session.request(
                        SERVICE, meta={"method": "GET", "path": "/bulk.bin"}, slo=SLO(urgency=6)
                    )

    async def ask(session: Any) -> None:
        nonlocal missed
        try:
            response = await session.request(
                SERVICE,
                meta={"method": "GET", "path": "/small.bin"},
                slo=SLO(deadline_ms=deadline_ms, urgency=1),
            )
        except NetSchedError:
            missed += 1
            return
        latencies.append(response.latency_ms)
        missed += response.latency_ms > deadline_ms

    bulks = [asyncio.create_task(download()) for _ in range(bulk)]
    async with connect("127.0.0.1", port, ca_file=ca) as session:
        await asyncio.sleep(WARMUP_S)
        probes = []
        for _ in range(int(seconds / INTERVAL_S)):
            probes.append(asyncio.create_task(ask(session)))
            requests += 1
            await asyncio.sleep(INTERVAL_S)
        await asyncio.gather(*probes)
    stop.set()
    for task in bulks:
        task.cancel()
    await asyncio.gather(*bulks, return_exceptions=True)
    return RunResult(requests, missed, tuple(latencies), {})


def _run(mode: EdgeMode, www: Path, args: argparse.Namespace) -> RunResult:
    ctx = mp.get_context("spawn")
    out: mp.Queue[Any] = ctx.Queue()
    edge = ctx.Process(target=_edge_main, args=(mode, www, out))
    edge.start()
    try:
        port, ca = out.get(timeout=60)
        result = uvloop.run(_load(port, ca, args.bulk, args.seconds, args.deadline_ms))
        edge.terminate()  # SIGTERM: the edge reports its metrics and closes
        metrics = _metrics(out.get(timeout=30))
    finally:
        edge.join(timeout=10)
        if edge.is_alive():
            edge.kill()
    return dataclasses.replace(result, edge=metrics)


# -- report ---------------------------------------------------------------------------------


def _per_syscall(result: RunResult) -> float:
    edge = result.edge
    return edge["netsched_edge_send_datagrams_total"] / max(
        1.0, edge["netsched_edge_send_syscalls_total"]
    )


def _mean_burst(result: RunResult) -> float:
    edge = result.edge
    return edge["netsched_edge_send_datagrams_total"] / max(
        1.0, edge["netsched_edge_send_bursts_total"]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="of interactive requests, per run"
    )
    parser.add_argument("--bulk", type=int, default=10, help="bulk connections")
    parser.add_argument("--egress-mbps", type=float, default=20.0, help="the edge's budget")
    parser.add_argument("--deadline-ms", type=int, default=30)
    parser.add_argument("--syscall-seconds", type=float, default=2.0, help="per syscall run")
    args = parser.parse_args()
    if args.seconds <= 0 or args.bulk < 1 or args.egress_mbps <= 0 or args.deadline_ms < 1:
        parser.error("--seconds, --bulk, --egress-mbps and --deadline-ms must be positive")
    with tempfile.TemporaryDirectory(prefix="bench-edf-") as tmp:
        www = Path(tmp)
        (www / "bulk.bin").write_bytes(bytes(BULK_FILE))
        (www / "small.bin").write_bytes(bytes(SMALL_FILE))
        orders = {
            order: _run(EdgeMode(order, args.egress_mbps), www, args) for order in ("fifo", "edf")
        }
        syscall_args = argparse.Namespace(**{**vars(args), "seconds": args.syscall_seconds})
        sends = {
            name: _run(EdgeMode("edf", None, coalesce), www, syscall_args)
            for name, coalesce in (("per flush", False), ("per tick", True))
        }
    _report(orders, sends, args)


def _report(
    orders: dict[str, RunResult], sends: dict[str, RunResult], args: argparse.Namespace
) -> None:
    print(
        f"interactive requests every {INTERVAL_S * 1000:.0f} ms (deadline {args.deadline_ms} ms, "
        f"{SMALL_FILE >> 10} KiB) beside {args.bulk} bulk connections; the edge's egress budget "
        f"{args.egress_mbps:g} Mbit/s, edge in its own process\n"
    )
    rows = [
        [
            order,
            r.requests,
            len(r.latencies),
            f"{100 * r.missed_share:.1f}%",
            percentile(list(r.latencies), 50),
            percentile(list(r.latencies), 99),
            f"{r.edge['netsched_edge_send_bytes_total'] * 8 / (args.seconds + WARMUP_S) / 1e6:.1f}",
            int(r.edge.get("netsched_edge_deadline_missed_total", 0)),
        ]
        for order, r in orders.items()
    ]
    headers = ["send order", "requests", "answered", "missed", "p50 ms", "p99 ms"]
    headers += ["edge Mbit/s", "edge resets"]
    print(table(headers, rows))
    fifo, edf = orders["fifo"].missed_share, orders["edf"].missed_share
    print(f"\ndeadline misses: FIFO {100 * fifo:.1f}% -> EDF {100 * edf:.1f}%\n")
    rows = [
        [
            name,
            int(r.edge["netsched_edge_send_datagrams_total"]),
            int(r.edge["netsched_edge_send_syscalls_total"]),
            f"{_per_syscall(r):.1f}",
            f"{1 / _per_syscall(r):.3f}",
            f"{_mean_burst(r):.1f}",
        ]
        for name, r in sends.items()
    ]
    print(f"the same load, no budget ({args.syscall_seconds:g} s each): edge send syscalls")
    headers = ["sends", "datagrams", "syscalls", "datagrams/syscall", "syscalls/datagram", "burst"]
    print(table(headers, rows))


if __name__ == "__main__":
    main()
