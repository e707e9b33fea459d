"""Cost of the path lab: the sans-IO link per packet, and the relay per datagram.

The relay numbers include an echo server and a client in the same process and
loop (all on loopback), so they are an upper bound on the relay's own cost; the
ratio between loops and profiles is the useful part.

    python bench/bench_lab.py [--packets 20000] [--window 64]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import time
from collections.abc import Callable

import uvloop

from netsched_lab.impairment import GilbertElliott, Link, LinkSpec, PathProfile
from netsched_lab.relay import UdpRelay

PLAIN = LinkSpec()
EVERYTHING = LinkSpec(
    delay_ms=1.0,
    jitter_ms=0.5,
    loss=0.001,
    bursty=GilbertElliott.from_loss_and_burst(0.001, 2),
    reorder=0.01,
    duplicate=0.001,
    corrupt=0.001,
    rate_mbps=10_000.0,
)
PAYLOAD = bytes(1200)


def bench_link(spec: LinkSpec, packets: int) -> float:
    """Microseconds per `Link.submit`."""
    link = Link(spec, random.Random(0))
    started = time.perf_counter()
    for i in range(packets):
        link.submit(PAYLOAD, i * 1e-5)
    return (time.perf_counter() - started) / packets * 1e6


async def bench_relay(spec: LinkSpec, packets: int, window: int) -> float:
    """Microseconds per echoed datagram through the relay (client → server → client)."""
    loop = asyncio.get_running_loop()
    server = _socket()

    def echo(data: bytes, addr: tuple[str, int]) -> None:
        server.sendto(data, addr)

    loop.add_reader(server.fileno(), _drain, server, echo)
    relay = UdpRelay(server.getsockname(), default=PathProfile(spec, spec))
    address = await relay.start()
    client = _socket()
    done = asyncio.Event()
    counts = {"sent": 0, "received": 0}

    def in_flight() -> int:
        # Sent, plus copies made, minus losses on either link, minus what came back.
        up, down = relay.stats("127.0.0.1")
        made = up.duplicated + down.duplicated - up.dropped - down.dropped - relay.relay_drops
        return counts["sent"] + made - counts["received"]

    def top_up() -> None:
        # Keep `window` datagrams in flight; losses would otherwise shrink it to zero.
        flying = in_flight()
        while flying < window and counts["sent"] < packets:
            client.sendto(PAYLOAD, address)
            counts["sent"] += 1
            flying += 1
        if counts["sent"] == packets and flying <= 0:
            done.set()

    def on_echo(_: bytes, __: tuple[str, int]) -> None:
        counts["received"] += 1
        top_up()

    def watchdog() -> None:  # notices the last datagrams being dropped: no echo to react to
        top_up()
        if not done.is_set():
            loop.call_later(0.01, watchdog)

    loop.add_reader(client.fileno(), _drain, client, on_echo)
    started = time.perf_counter()
    watchdog()
    try:
        await asyncio.wait_for(done.wait(), timeout=120)
        return (time.perf_counter() - started) / counts["received"] * 1e6
    finally:
        loop.remove_reader(client.fileno())
        loop.remove_reader(server.fileno())
        await relay.stop()
        client.close()
        server.close()


def _socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def _drain(sock: socket.socket, handle: Callable[[bytes, tuple[str, int]], None]) -> None:
    while True:
        try:
            data, addr = sock.recvfrom(65_535)
        except BlockingIOError:
            return
        handle(data, addr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=64)
    args = parser.parse_args()
    print(f"{'what':<34} {'µs/packet':>10}")
    for name, spec in (("plain", PLAIN), ("everything", EVERYTHING)):
        print(f"{'Link.submit, ' + name:<34} {bench_link(spec, args.packets * 5):>10.2f}")
    for loop_name, run in (("asyncio", asyncio.run), ("uvloop", uvloop.run)):
        for name, spec in (("plain", PLAIN), ("everything", EVERYTHING)):
            micros = run(bench_relay(spec, args.packets, args.window))
            print(f"{f'relay echo, {loop_name}, {name}':<34} {micros:>10.2f}")


if __name__ == "__main__":
    main()
