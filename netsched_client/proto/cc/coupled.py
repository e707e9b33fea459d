"""Coupled congestion control for a multipath connection, over NewReno: RFC 6356's
Linked Increases Algorithm (LIA), registered with aioquic as "lia", and OLIA
(Khalili et al., "MPTCP is not Pareto-optimal", CoNEXT 2012;
draft-khalili-mptcp-congestion-control), registered as "olia" (docs/CONGESTION.md).

Each path keeps its own NewReno window, slow start and halving on loss. Only the
congestion-avoidance increase is coupled across the connection's paths; per
`bytes_acked` on path i (windows and `mss` in bytes):

LIA (RFC 6356 section 3)

    increase_i = min(alpha * bytes_acked * mss_i / total_cwnd,
                     bytes_acked * mss_i / cwnd_i)
    alpha = total_cwnd * max_i(cwnd_i / rtt_i^2) / (sum_i cwnd_i / rtt_i)^2

so that the paths together are no more aggressive than one NewReno flow on the best
of them (goal 2) and traffic moves to the least congested path (goal 3), while
each path never grows faster than a NewReno flow of its own (goal 1's bound).

OLIA (the paper's increase per ACK in packets, here scaled to bytes)

    increase_i = bytes_acked * mss_i * ((cwnd_i / rtt_i^2) / (sum_p cwnd_p / rtt_p)^2
                                        + alpha_i / cwnd_i)

where alpha_i moves window from the paths with the largest window (M) to the
presumably best paths that do not have it (B \\ M): B are the paths with the
largest l_p / rtt_p^2, l_p the bytes acknowledged between its last two loss events
or since its last one, whichever is more; with n paths, alpha_i is
1 / (n * |B \\ M|) on a path of B \\ M, -1 / (n * |M|) on a path of M, 0 otherwise
(and 0 everywhere when B \\ M is empty). Its first term alone is Pareto-optimal
in the fluid model; alpha_i is what keeps probing the better paths, where LIA
keeps too much window on a congested one.

`CoupledGroup` is one connection's set of paths; `coupling(group)` makes the
controllers aioquic creates inside the block (one per path, `_new_recovery`) join
it. A controller made outside any block is alone in its group: plain NewReno (both
formulas reduce to NewReno's `bytes_acked * mss / cwnd` for one path). Members are
held weakly: a path's controller leaves with its recovery.
"""

from __future__ import annotations

import weakref
from abc import abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Final

from aioquic.quic.congestion.base import (
    K_MINIMUM_WINDOW,
    QuicCongestionControl,
    QuicCongestionControlFactory,
    QuicRttMonitor,
    register_congestion_control,
)
from aioquic.quic.packet_builder import QuicSentPacket

LOSS_REDUCTION: Final = 0.5  # NewReno's, per path
RTT_GAIN: Final = 0.125  # the smoothed RTT's EWMA gain (RFC 9002's)


class CoupledGroup:
    """The paths of one connection whose increases are linked."""

    def __init__(self) -> None:
        self._members: weakref.WeakSet[CoupledCongestionControl] = weakref.WeakSet()

    def join(self, member: CoupledCongestionControl) -> None:
        self._members.add(member)

    def leave(self, member: CoupledCongestionControl) -> None:
        self._members.discard(member)

    @property
    def members(self) -> list[CoupledCongestionControl]:
        return list(self._members)

    def sampled(self) -> list[tuple[CoupledCongestionControl, float]]:
        """The members with an RTT sample, and that RTT: the paths both formulas weigh."""
        return [(m, m.rtt) for m in self._members if m.rtt is not None]

    def total_window(self) -> int:
        return sum(m.congestion_window for m in self._members)

    def rate(self) -> float:
        """sum_p cwnd_p / rtt_p over the sampled members, in bytes per second."""
        return sum(m.congestion_window / rtt for m, rtt in self.sampled())

    def alpha(self) -> float:
        """RFC 6356's alpha over the members with an RTT sample (1.0 for one path)."""
        sampled = self.sampled()
        if not sampled:
            return 1.0
        total = sum(m.congestion_window for m, _ in sampled)
        best = max(m.congestion_window / (rtt * rtt) for m, rtt in sampled)
        spread = self.rate()
        return total * best / (spread * spread)

    def olia_alpha(self, member: CoupledCongestionControl) -> float:
        """OLIA's alpha_i of `member` (0.0 when it has no RTT sample yet)."""
        sampled = self.sampled()
        if all(m is not member for m, _ in sampled):
            return 0.0
        largest = max(m.congestion_window for m, _ in sampled)
        widest = [m for m, _ in sampled if m.congestion_window == largest]
        quality = {m: m.loss_interval / (rtt * rtt) for m, rtt in sampled}
        best = max(quality.values())
        collected = [m for m, q in quality.items() if q == best and m not in widest]
        if not collected:
            return 0.0
        if member in collected:
            return 1.0 / (len(sampled) * len(collected))
        if member in widest:
            return -1.0 / (len(sampled) * len(widest))
        return 0.0


_coupling: ContextVar[CoupledGroup | None] = ContextVar("netsched_cc_coupling", default=None)


@contextmanager
def coupling(group: CoupledGroup | None) -> Iterator[None]:
    """Controllers created inside the block join `group` (None: each alone)."""
    token = _coupling.set(group)
    try:
        yield
    finally:
        _coupling.reset(token)


class CoupledCongestionControl(QuicCongestionControl):
    """NewReno on one path whose congestion-avoidance increase a subclass couples."""

    def __init__(self, *, max_datagram_size: int, group: CoupledGroup | None = None) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self._max_datagram_size = max_datagram_size
        self._recovery_start = 0.0
        self._stash = 0.0  # window change earned in bytes, not yet a whole byte
        self._rtt_monitor = QuicRttMonitor()
        self.rtt: float | None = None  # smoothed, from aioquic's RTT samples
        self.loss_interval = 0  # bytes between the last two loss events or since the last
        self._since_loss = 0  # bytes acknowledged since the last loss event
        self.group = group if group is not None else CoupledGroup()
        self.group.join(self)

    @abstractmethod
    def increase(self, acked: int) -> float:
        """Congestion-avoidance change in bytes for `acked` bytes newly acknowledged."""

    def on_packet_acked(self, *, now: float, packet: QuicSentPacket) -> None:
        self.bytes_in_flight -= packet.sent_bytes
        self._since_loss += packet.sent_bytes
        self.loss_interval = max(self.loss_interval, self._since_loss)
        sent = packet.sent_time
        if sent is not None and sent <= self._recovery_start:
            return  # no increase in recovery
        if self.ssthresh is None or self.congestion_window < self.ssthresh:
            self.congestion_window += packet.sent_bytes  # slow start, per path
            return
        self._stash += self.increase(packet.sent_bytes)
        whole = int(self._stash)  # toward zero: OLIA's change may be negative
        if whole:
            self._stash -= whole
            self.congestion_window = max(self.congestion_window + whole, self._minimum_window)

    @property
    def _minimum_window(self) -> int:
        return K_MINIMUM_WINDOW * self._max_datagram_size

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
        if largest_sent > self._recovery_start:  # one reduction per window: a loss event
            self._recovery_start = now
            self.congestion_window = max(
                int(self.congestion_window * LOSS_REDUCTION), self._minimum_window
            )
            self.ssthresh = self.congestion_window
            self.loss_interval, self._since_loss = self._since_loss, 0

    def on_persistent_congestion(self) -> None:
        self.congestion_window = self._minimum_window
        self._recovery_start = 0.0

    def on_rtt_measurement(self, *, now: float, rtt: float) -> None:
        rtt = max(rtt, 1e-4)
        self.rtt = rtt if self.rtt is None else self.rtt + RTT_GAIN * (rtt - self.rtt)
        if self.ssthresh is None and self._rtt_monitor.is_rtt_increasing(now=now, rtt=rtt):
            self.ssthresh = self.congestion_window  # HyStart's exit, as aioquic's NewReno

    def _newreno(self, acked: int) -> float:
        """NewReno's increase on this path alone: one MSS per window acknowledged."""
        return acked * self._max_datagram_size / self.congestion_window


class LiaCongestionControl(CoupledCongestionControl):
    """NewReno on one path with RFC 6356's linked increase in congestion avoidance."""

    def increase(self, acked: int) -> float:
        total = max(self.group.total_window(), self.congestion_window)
        coupled = self.group.alpha() * acked * self._max_datagram_size / total
        return min(coupled, self._newreno(acked))


class OliaCongestionControl(CoupledCongestionControl):
    """NewReno on one path with OLIA's coupled increase in congestion avoidance."""

    def increase(self, acked: int) -> float:
        rate = self.group.rate()
        if self.rtt is None or rate <= 0.0:
            return self._newreno(acked)  # not weighed yet: as if alone
        cwnd = self.congestion_window
        share = cwnd / (self.rtt * self.rtt) / (rate * rate)
        return acked * self._max_datagram_size * (share + self.group.olia_alpha(self) / cwnd)


def _joining(kind: type[CoupledCongestionControl]) -> QuicCongestionControlFactory:
    """aioquic's factory for `kind`: each controller joins the group `coupling` set."""

    def factory(*, max_datagram_size: int) -> QuicCongestionControl:
        return kind(max_datagram_size=max_datagram_size, group=_coupling.get())

    return factory


# The coupled algorithms a connection can name (on one path each is NewReno).
COUPLED_CONTROLS: Final[Mapping[str, type[CoupledCongestionControl]]] = {
    "lia": LiaCongestionControl,
    "olia": OliaCongestionControl,
}
for _name, _kind in COUPLED_CONTROLS.items():
    register_congestion_control(_name, _joining(_kind))
