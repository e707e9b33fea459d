"""Coupled congestion control for a multipath connection: RFC 6356's Linked Increases
Algorithm (LIA) over NewReno, registered with aioquic as "lia" (docs/CONGESTION.md).

Each path keeps its own NewReno window, slow start and halving on loss. Only the
congestion-avoidance increase is coupled across the connection's paths: per
`bytes_acked` on path i (RFC 6356 section 3, in bytes),

    increase_i = min(alpha * bytes_acked * mss_i / total_cwnd,
                     bytes_acked * mss_i / cwnd_i)

    alpha = total_cwnd * max_i(cwnd_i / rtt_i^2) / (sum_i cwnd_i / rtt_i)^2

so that the paths together are no more aggressive than one NewReno flow on the best
of them (goal 2) and traffic moves to the least congested path (goal 3), while
each path never grows faster than a NewReno flow of its own (goal 1's bound).

`CoupledGroup` is one connection's set of paths; `coupling(group)` makes the
controllers aioquic creates inside the block (one per path, `_new_recovery`) join
it. A controller made outside any block is alone in its group: plain NewReno.
Members are held weakly: a path's controller leaves with its recovery.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Final

from aioquic.quic.congestion.base import (
    K_MINIMUM_WINDOW,
    QuicCongestionControl,
    QuicRttMonitor,
    register_congestion_control,
)
from aioquic.quic.packet_builder import QuicSentPacket

LOSS_REDUCTION: Final = 0.5  # NewReno's, per path
RTT_GAIN: Final = 0.125  # the smoothed RTT's EWMA gain (RFC 9002's)


class CoupledGroup:
    """The paths of one connection whose increases are linked."""

    def __init__(self) -> None:
        self._members: weakref.WeakSet[LiaCongestionControl] = weakref.WeakSet()

    def join(self, member: LiaCongestionControl) -> None:
        self._members.add(member)

    def leave(self, member: LiaCongestionControl) -> None:
        self._members.discard(member)

    @property
    def members(self) -> list[LiaCongestionControl]:
        return list(self._members)

    def total_window(self) -> int:
        return sum(m.congestion_window for m in self._members)

    def alpha(self) -> float:
        """RFC 6356's alpha over the members with an RTT sample (1.0 for one path)."""
        sampled = [(m.congestion_window, m.rtt) for m in self._members if m.rtt is not None]
        if not sampled:
            return 1.0
        total = sum(cwnd for cwnd, _ in sampled)
        best = max(cwnd / (rtt * rtt) for cwnd, rtt in sampled)
        spread = sum(cwnd / rtt for cwnd, rtt in sampled)
        return total * best / (spread * spread)


_coupling: ContextVar[CoupledGroup | None] = ContextVar("netsched_cc_coupling", default=None)


@contextmanager
def coupling(group: CoupledGroup | None) -> Iterator[None]:
    """Controllers created inside the block join `group` (None: each alone)."""
    token = _coupling.set(group)
    try:
        yield
    finally:
        _coupling.reset(token)


class LiaCongestionControl(QuicCongestionControl):
    """NewReno on one path with RFC 6356's linked increase in congestion avoidance."""

    def __init__(self, *, max_datagram_size: int, group: CoupledGroup | None = None) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self._max_datagram_size = max_datagram_size
        self._recovery_start = 0.0
        self._stash = 0.0  # increase earned in bytes, not yet a whole byte
        self._rtt_monitor = QuicRttMonitor()
        self.rtt: float | None = None  # smoothed, from aioquic's RTT samples
        self.group = group if group is not None else CoupledGroup()
        self.group.join(self)

    def increase(self, acked: int) -> float:
        """Congestion-avoidance increase in bytes for `acked` bytes newly acknowledged."""
        mss, cwnd = self._max_datagram_size, self.congestion_window
        total = max(self.group.total_window(), cwnd)
        coupled = self.group.alpha() * acked * mss / total
        return min(coupled, acked * mss / cwnd)

    def on_packet_acked(self, *, now: float, packet: QuicSentPacket) -> None:
        self.bytes_in_flight -= packet.sent_bytes
        sent = packet.sent_time
        if sent is not None and sent <= self._recovery_start:
            return  # no increase in recovery
        if self.ssthresh is None or self.congestion_window < self.ssthresh:
            self.congestion_window += packet.sent_bytes  # slow start, per path
            return
        self._stash += self.increase(packet.sent_bytes)
        whole = int(self._stash)
        if whole:
            self._stash -= whole
            self.congestion_window += whole

    def on_packet_sent(self, *, packet: QuicSentPacket) -> None:
        self.bytes_in_flight += packet.sent_bytes

    def on_packets_expired(self, *, packets: Iterable[QuicSentPacket]) -> None:
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes

    def on_packets_lost(self, *, now: float, packets: Iterable[QuicSentPacket]) -> None:
        largest_sent = 0.0
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes
            largest_sent = max(largest_sent, packet.sent_time or 0.0)
        if largest_sent > self._recovery_start:  # one reduction per window
            self._recovery_start = now
            self.congestion_window = max(
                int(self.congestion_window * LOSS_REDUCTION),
                K_MINIMUM_WINDOW * self._max_datagram_size,
            )
            self.ssthresh = self.congestion_window

    def on_persistent_congestion(self) -> None:
        self.congestion_window = K_MINIMUM_WINDOW * self._max_datagram_size
        self._recovery_start = 0.0

    def on_rtt_measurement(self, *, now: float, rtt: float) -> None:
        rtt = max(rtt, 1e-4)
        self.rtt = rtt if self.rtt is None else self.rtt + RTT_GAIN * (rtt - self.rtt)
        if self.ssthresh is None and self._rtt_monitor.is_rtt_increasing(now=now, rtt=rtt):
            self.ssthresh = self.congestion_window  # HyStart's exit, as aioquic's NewReno


def _lia_factory(*, max_datagram_size: int) -> QuicCongestionControl:
    return LiaCongestionControl(max_datagram_size=max_datagram_size, group=_coupling.get())


register_congestion_control("lia", _lia_factory)
