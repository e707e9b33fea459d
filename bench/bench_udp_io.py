"""Packets/s and CPU µs/packet: the event loop's datagram transport vs our batched UDP socket.

A sender process sends `--count` datagrams to a receiver process over
loopback, one batch of `--batch` per event-loop iteration (as a QUIC
connection flushes), for 200 B and 1200 B datagrams. Variants, all in the
same run, on the same loop (`--loop`):

  transport  the loop's datagram transport: one sendto / one recvfrom per datagram
  mmsg       BatchedUdpSocket(gso=False, gro=False): sendmmsg / recvmmsg
  gso        BatchedUdpSocket(): sendmmsg with UDP GSO runs / recvmmsg with UDP GRO

Sender pps is what the sender achieves; receiver pps and CPU µs/packet are
over what arrived (UDP drops what the receiver cannot keep up with, shown
as "delivered"). Syscalls count only the send/receive calls (epoll not
included); the transport's are one per datagram by construction. Ratios
are printed against `transport`, because absolute numbers drift on shared
machines.

    python bench/bench_udp_io.py [--count 200000] [--batch 64] [--loop asyncio|uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import uvloop

from netsched_client.io import HAVE_NATIVE, BatchedUdpSocket, Datagram, attach
from netsched_edge.report import table

VARIANTS = ("transport", "mmsg", "gso")
SIZES = (200, 1200)
IDLE = 0.3  # the receiver reports after this long without a datagram


@dataclass(frozen=True, slots=True)
class Side:
    packets: int
    wall: float  # seconds, first to last datagram (receiver) or whole send loop (sender)
    cpu: float  # process CPU seconds
    syscalls: int


def _run(loop: str, coro: Coroutine[Any, Any, None]) -> None:
    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(coro)


def _open(variant: str) -> BatchedUdpSocket:
    offload = variant == "gso"
    return BatchedUdpSocket(socket.AF_INET, ("127.0.0.1", 0), gso=offload, gro=offload)


# -- receiver process ------------------------------------------------------------------


class _Arrivals(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.packets = 0
        self.first = self.last = 0.0

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.count(1)

    def batch_received(self, batch: list[Datagram]) -> None:
        self.count(len(batch))

    def count(self, packets: int) -> None:
        now = time.perf_counter()
        if not self.packets:
            self.first = now
        self.packets += packets
        self.last = now


async def _receive(variant: str, ports: mp.Queue[int], results: mp.Queue[Side]) -> None:
    loop = asyncio.get_running_loop()
    arrivals = _Arrivals()
    if variant == "transport":
        transport, _ = await loop.create_datagram_endpoint(
            lambda: arrivals, local_addr=("127.0.0.1", 0)
        )
        transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20
        )  # the same buffer as ours
        ports.put(transport.get_extra_info("sockname")[1])
        syscalls: Callable[[], int] = lambda: arrivals.packets  # noqa: E731
    else:
        sock = _open(variant)
        attach(loop, sock, arrivals.batch_received)
        ports.put(sock.local_address[1])
        syscalls = lambda: sock.stats.syscalls_recv  # noqa: E731
    cpu = time.process_time()
    while not arrivals.packets or time.perf_counter() - arrivals.last < IDLE:
        await asyncio.sleep(0.05)
    results.put(
        Side(
            arrivals.packets,
            arrivals.last - arrivals.first,
            time.process_time() - cpu,
            syscalls(),
        )
    )


def _receiver(variant: str, loop: str, ports: mp.Queue[int], results: mp.Queue[Side]) -> None:
    _run(loop, _receive(variant, ports, results))


# -- sender process --------------------------------------------------------------------


async def _send(
    variant: str, port: int, size: int, count: int, batch: int, results: mp.Queue[Side]
) -> None:
    loop = asyncio.get_running_loop()
    datagrams = [(bytes(size), ("127.0.0.1", port))] * batch
    if variant == "transport":
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
        )

        def send_each(batch: list[Datagram]) -> None:
            for data, addr in batch:
                transport.sendto(data, addr)

        send: Callable[[list[Datagram]], object] = send_each
        syscalls: Callable[[], int] = lambda: count  # noqa: E731
    else:
        sock = _open(variant)
        attach(loop, sock, lambda batch: None)  # for the writer, should EAGAIN happen
        send = sock.send_batch
        syscalls = lambda: sock.stats.syscalls_send  # noqa: E731
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(count // batch):
        send(datagrams)
        await asyncio.sleep(0)  # one flush per loop iteration
    results.put(
        Side(
            count // batch * batch,
            time.perf_counter() - started,
            time.process_time() - cpu,
            syscalls(),
        )
    )


def _sender(
    variant: str, loop: str, port: int, size: int, count: int, batch: int, results: mp.Queue[Side]
) -> None:
    _run(loop, _send(variant, port, size, count, batch, results))


# -- orchestration -----------------------------------------------------------------------


def _measure(ctx: Any, variant: str, size: int, args: argparse.Namespace) -> tuple[Side, Side]:
    ports: mp.Queue[int] = ctx.Queue()
    received: mp.Queue[Side] = ctx.Queue()
    sent: mp.Queue[Side] = ctx.Queue()
    receiver = ctx.Process(target=_receiver, args=(variant, args.loop, ports, received))
    receiver.start()
    port = ports.get(timeout=30)
    sender = ctx.Process(
        target=_sender, args=(variant, args.loop, port, size, args.count, args.batch, sent)
    )
    sender.start()
    try:
        return sent.get(timeout=300), received.get(timeout=300)
    finally:
        for proc in (sender, receiver):
            proc.join(timeout=10)
            proc.kill()


def _cpu_per_packet(side: Side) -> float:
    return side.cpu / max(side.packets, 1)


def _rate(side: Side) -> float:
    return side.packets / max(side.wall, 1e-9)


def _row(variant: str, send: Side, receive: Side) -> list[object]:
    return [
        variant,
        f"{_rate(send):,.0f}",
        f"{_cpu_per_packet(send) * 1e6:.2f}",
        f"{send.syscalls / send.packets:.3f}",
        f"{_rate(receive):,.0f}",
        f"{_cpu_per_packet(receive) * 1e6:.2f}",
        f"{receive.syscalls / max(receive.packets, 1):.3f}",
        f"{receive.packets / send.packets:.0%}",
    ]


def _ratios(variant: str, send: Side, receive: Side, base: tuple[Side, Side]) -> str:
    base_send, base_receive = base
    return (
        f"{variant} / transport: sender {_rate(send) / _rate(base_send):.1f}x pps, "
        f"{_cpu_per_packet(base_send) / _cpu_per_packet(send):.1f}x less CPU per datagram; "
        f"receiver {_rate(receive) / _rate(base_receive):.1f}x pps, "
        f"{_cpu_per_packet(base_receive) / _cpu_per_packet(receive):.1f}x less CPU per datagram"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    if not HAVE_NATIVE:
        raise SystemExit("build the extension first: python setup.py build_ext --inplace")

    ctx = mp.get_context("spawn")
    headers = [
        "variant",
        "send pps",
        "send µs/pkt",
        "send sc/pkt",
        "recv pps",
        "recv µs/pkt",
        "recv sc/pkt",
        "delivered",
    ]
    print(f"{args.count} datagrams per run, batches of {args.batch}, {args.loop} loop")
    for size in SIZES:
        results = {variant: _measure(ctx, variant, size, args) for variant in VARIANTS}
        print(f"\n{size} B datagrams (µs/pkt is CPU time per datagram in that process)\n")
        print(table(headers, [_row(variant, *results[variant]) for variant in VARIANTS]))
        for variant in VARIANTS[1:]:
            print(_ratios(variant, *results[variant], base=results["transport"]))


if __name__ == "__main__":
    main()
