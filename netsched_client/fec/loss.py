"""Per-path loss estimate for the redundancy controller: loss rate and mean burst length.

The sender learns each packet's fate from ACK frames and loss detection, but not
in send order: a loss is declared after later packets were acknowledged. Bursts
are runs of consecutive losses in *send* order, so outcomes wait here, keyed by
packet number, until the ones before them are known. A packet number that never
gets an outcome (skipped, or a packet the recovery does not track) is given up
once the outcome after it is `reorder_rtts` RTTs old: by then loss detection
(RFC 9002 §6.1: 9/8 RTT or three packets) would have declared it.

Settled outcomes feed two exponentially weighted averages with the same
weights: of "lost" and of "a loss run starts here". Their ratio is the mean
loss-burst length, the Gilbert-Elliott statistic that `control` needs besides
the rate. The first `memory` outcomes are averaged plainly (weight 1/n) so
that the estimate is unbiased from the start, then each weighs 1/memory.

Driving contract (sans-IO, `now` in seconds from any monotonic clock):
`on_acked` / `on_lost` as recovery reports packets, then `settle(now, rtt)`
after each batch (an ACK frame, a loss-detection timer); read `stats`.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Final

DEFAULT_MEMORY: Final = 512  # packets: a few RTTs of a busy path
DEFAULT_REORDER_RTTS: Final = 2.0
DEFAULT_MAX_PENDING: Final = 4096


@dataclass(frozen=True, slots=True)
class LossStats:
    loss_rate: float  # share of packets lost, 0.0..1.0
    mean_burst: float  # mean run of consecutive losses, >= 1.0 (1.0 before any loss)
    samples: int  # outcomes counted so far


def _require(name: str, ok: bool, rule: str, value: object) -> None:
    if not ok:
        raise ValueError(f"LossEstimator.{name}: must be {rule} (got {value!r})")


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


class LossEstimator:
    """Loss rate and mean loss-burst length of one packet-number space (one path)."""

    __slots__ = (
        "_heap",
        "_lost_avg",
        "_max_pending",
        "_memory",
        "_next",
        "_pending",
        "_previous_lost",
        "_reorder_rtts",
        "_samples",
        "_start_avg",
    )

    def __init__(
        self,
        *,
        memory: int = DEFAULT_MEMORY,
        reorder_rtts: float = DEFAULT_REORDER_RTTS,
        max_pending: int = DEFAULT_MAX_PENDING,
        first_packet_number: int = 0,
    ) -> None:
        _require("memory", memory >= 1, "an int >= 1", memory)
        _require("reorder_rtts", _positive(reorder_rtts), "a finite number > 0", reorder_rtts)
        _require("max_pending", max_pending >= 1, "an int >= 1", max_pending)
        _require(
            "first_packet_number", first_packet_number >= 0, "an int >= 0", first_packet_number
        )
        self._memory = memory
        self._reorder_rtts = reorder_rtts
        self._max_pending = max_pending
        self._next = first_packet_number  # lowest packet number not settled yet
        self._pending: dict[int, tuple[bool, float]] = {}  # pn -> (lost, reported at)
        self._heap: list[int] = []  # the keys of _pending, smallest first
        self._samples = 0
        self._lost_avg = 0.0
        self._start_avg = 0.0
        self._previous_lost = False

    @property
    def stats(self) -> LossStats:
        burst = self._lost_avg / self._start_avg if self._start_avg > 0 else 1.0
        return LossStats(self._lost_avg, max(1.0, burst), self._samples)

    def on_acked(self, packet_number: int, now: float) -> None:
        self._report(packet_number, False, now)

    def on_lost(self, packet_number: int, now: float) -> None:
        self._report(packet_number, True, now)

    def settle(self, now: float, rtt: float) -> None:
        """Count every outcome whose predecessors are known or given up, in send order."""
        _require("rtt", _positive(rtt), "a finite number of seconds > 0", rtt)
        patience = self._reorder_rtts * rtt
        while self._heap:
            packet_number = self._heap[0]
            reported_at = self._pending[packet_number][1]
            if packet_number != self._next and now - reported_at < patience:
                return  # a packet before it may still be reported
            self._settle_first()

    def _report(self, packet_number: int, lost: bool, now: float) -> None:
        _require("packet_number", packet_number >= 0, "an int >= 0", packet_number)
        _require("now", math.isfinite(now), "a finite number of seconds", now)
        if packet_number < self._next:
            return  # settled already: a late ACK of a packet declared lost stays a loss
        if packet_number not in self._pending:
            heapq.heappush(self._heap, packet_number)
        self._pending[packet_number] = (lost, now)  # a later report corrects an earlier one
        if len(self._pending) > self._max_pending:
            self._settle_first()

    def _settle_first(self) -> None:
        # Packet numbers skipped on the way leave the loss run as it was: nothing
        # is known about them.
        packet_number = heapq.heappop(self._heap)
        lost, _ = self._pending.pop(packet_number)
        self._next = packet_number + 1
        self._count(lost)

    def _count(self, lost: bool) -> None:
        self._samples += 1
        weight = max(1.0 / self._memory, 1.0 / self._samples)
        starts = lost and not self._previous_lost
        self._lost_avg += weight * (lost - self._lost_avg)
        self._start_avg += weight * (starts - self._start_avg)
        self._previous_lost = lost
