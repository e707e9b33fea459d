"""The core's loss recovery (#16 stage 2): µs per packet against aioquic's, same run.

One workload for all: `--packets` 1200-byte packets sent 10 µs apart; the
peer acknowledges every second packet, `--window` packets later (what is in
flight), with an ACK frame of its newest 3 ranges; every 100th packet never
arrives, so the packet threshold declares it lost. Per packet the work is
on_sent, and per ACK frame on_ack and loss detection:

- ours, the ledger alone: `Ledger.on_sent`, `Ledger.on_ack` (RTT sample
  included), `Ledger.detect_lost` — Cython, then the pure-Python reference;
- ours, the whole path: `PathRecovery` (ledger, sampler stamps, BBR, pacer);
- aioquic 1.7.2: `QuicPacketRecovery.on_packet_sent` and `on_ack_received`
  (which runs its loss detection), with its own NewReno ("reno") behind it:
  its window update per acknowledged packet is part of its cost, which the
  ledger-alone rows do not pay. Its `QuicSentPacket`s are made before the
  clock starts (its packet builder makes them on the send path).

Each number is the best of `--rounds` rounds; ratios are printed because
absolute numbers drift on a shared machine.

    python bench/bench_core_ledger.py [--packets 20000] [--window 50] [--rounds 7]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from types import ModuleType

from aioquic.quic.packet import QuicPacketType
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.quic.rangeset import RangeSet as AioquicRangeSet
from aioquic.quic.recovery import QuicPacketRecovery, QuicPacketSpace
from aioquic.tls import Epoch

from netsched_client.core import ledger, packet
from netsched_client.core.recovery import PathRecovery
from netsched_client.proto.cc.bbr import Bbr

SIZE = 1200
SPACING = 1e-5
FLAGS = ledger.FLAG_ACK_ELICITING | ledger.FLAG_IN_FLIGHT
ACK_RANGES = 3
LOSS_EVERY = 100

# The workload: for each packet, its send time, then the ACK frame due then, if any.
Ack = tuple[list[tuple[int, int]], float]
Workload = list[tuple[int, float, Ack | None]]


def workload(packets: int, window: int) -> Workload:
    received = packet.RangeSet(max_ranges=ACK_RANGES)
    steps: Workload = []
    for pn in range(packets):
        now = pn * SPACING
        acked = pn - window
        ack = None
        if acked >= 0:
            if acked % LOSS_EVERY != LOSS_EVERY - 1:
                received.add_packet(acked)
            if acked % 2 and received:
                ack = (list(received), now)
        steps.append((pn, now, ack))
    return steps


def ours(backend: ModuleType, steps: Workload) -> Callable[[], object]:
    def run() -> object:
        book = backend.Ledger(backend.RttEstimator())
        for pn, now, ack in steps:
            book.on_sent(pn, now, SIZE, FLAGS, pn)
            if ack is not None:
                book.on_ack(ack[0], 0.0, ack[1])
                book.detect_lost(ack[1])
        return book

    return run


def ours_path(steps: Workload) -> Callable[[], object]:
    def run() -> object:
        path = PathRecovery(
            Bbr(max_datagram_size=SIZE, rng=random.Random(1)),
            ledger.Ledger(ledger.RttEstimator()),
            ledger.Pacer(SIZE),
        )
        for pn, now, ack in steps:
            path.on_sent(pn, SIZE, now)
            if ack is not None:
                path.on_ack(ack[0], 0.0, ack[1])
        return path

    return run


def aioquic(steps: Workload, rounds: int) -> Callable[[], object]:
    """aioquic's recovery over the same steps; each round's packets are made beforehand."""
    acks = {pn: (_aioquic_ranges(ack[0]), ack[1]) for pn, _, ack in steps if ack is not None}
    batches = iter([[_sent_packet(pn, now) for pn, now, _ in steps] for _ in range(rounds)])

    def run() -> object:
        recovery = QuicPacketRecovery(
            congestion_control_algorithm="reno",
            initial_rtt=0.333,
            max_datagram_size=SIZE,
            peer_completed_address_validation=True,
            send_probe=lambda: None,
        )
        space = QuicPacketSpace(is_application_data=True)
        recovery.spaces = [space]
        for sent in next(batches):
            recovery.on_packet_sent(packet=sent, space=space)
            ack = acks.get(sent.packet_number)
            if ack is not None:
                recovery.on_ack_received(
                    ack_rangeset=ack[0], ack_delay=0.0, now=ack[1], space=space
                )
        return recovery

    return run


def _aioquic_ranges(ranges: list[tuple[int, int]]) -> AioquicRangeSet:
    result = AioquicRangeSet()
    for start, stop in ranges:
        result.add(start, stop)
    return result


def _sent_packet(pn: int, now: float) -> QuicSentPacket:
    return QuicSentPacket(
        epoch=Epoch.ONE_RTT,
        in_flight=True,
        is_ack_eliciting=True,
        is_crypto_packet=False,
        packet_number=pn,
        packet_type=QuicPacketType.ONE_RTT,
        sent_time=now,
        sent_bytes=SIZE,
    )


def best_us(run: Callable[[], object], packets: int, rounds: int) -> float:
    """Best µs per packet over `rounds` rounds of `run`, which handles `packets` packets."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best / packets * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packets", type=int, default=20000)
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    steps = workload(args.packets, args.window)
    rows = {
        "ours, ledger (Cython)" if ledger.COMPILED else "ours, ledger (no Cython build)": ours(
            ledger.BACKENDS["cython" if ledger.COMPILED else "python"], steps
        ),
        "ours, ledger (pure-Python reference)": ours(ledger.BACKENDS["python"], steps),
        "ours, PathRecovery + BBR (Python glue)": ours_path(steps),
        "aioquic 1.7.2 QuicPacketRecovery (+ its reno)": aioquic(steps, args.rounds),
    }
    results = {name: best_us(run, args.packets, args.rounds) for name, run in rows.items()}
    print(f"µs per packet (on_sent + on_ack + detect_lost), {args.packets} packets, ", end="")
    print(f"ACK every 2, {args.window} in flight, 1 % lost; best of {args.rounds}")
    for name, us in results.items():
        print(f"  {name:48s} {us:7.3f}")
    fastest = next(iter(results.values()))
    aioquic_us = results["aioquic 1.7.2 QuicPacketRecovery (+ its reno)"]
    print(f"  ratio aioquic / ours (ledger)                    {aioquic_us / fastest:7.1f}x")


if __name__ == "__main__":
    main()
