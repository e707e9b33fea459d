"""aioquic's loss recovery, plus what the multipath scheduler needs to know per path.

It counts what it declares lost (per-path statistics) and remembers, for the
last ACKs, the send time of the newest packet each covered and when it
arrived: evidence, across paths, that the network delivers (a path silent
since t is suspect once another path had packets sent after t acknowledged).

It keeps the path's recent loss rate (its standing with the scheduler) and,
while the path is stalled and another one works, caps the PTO's backoff so a
path that comes back after an outage is found again within `probe_cap`.

It also serves the path's PMTU search (`pmtu.py`): a lost PMTU probe leaves
flight without a congestion event, and the sizes of acknowledged and lost
packets are the search's black-hole evidence. `set_max_datagram_size` moves
the congestion controller and pacer to the path's new datagram size.

With one of our controllers (`proto/cc`, e.g. "bbr"), the pacer follows the
controller's pacing rate, and each ACK frame ends with a rate sample for it.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import pairwise
from typing import Any, Final

from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.quic.rangeset import RangeSet
from aioquic.quic.recovery import QuicPacketRecovery, QuicPacketSpace

from ..cc.aioquic_adapter import ControllerAdapter, model_pacer
from .pmtu import PmtuSearch

ACK_HISTORY: Final = 128  # more ACKs than arrive in one RTT at the rates we schedule
ACK_GAPS: Final = 8  # the ACK rhythm: the longest of this many recent gaps between ACKs
LOSS_MEMORY: Final = 64  # packets: the loss rate's moving average forgets at this pace
# Packets: the steadier average that decides copies of deadline data (a single loss
# in 64 packets reads as 1.6 %; over 256, a path losing 0.5 % at random stays under 2 %).
STEADY_LOSS_MEMORY: Final = 256
DELIVERY_SAMPLES: Final = 64  # ACKs the delivery rate is measured over
APP_LIMITED_BYTES: Final = 4 * 1200  # less in flight than this: the sender was idle


class CountingRecovery(QuicPacketRecovery):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        pacer = model_pacer(self._cc, kwargs["max_datagram_size"])
        if pacer is not None:  # our controller paces at its model's rate
            self._pacer = pacer
        self.packets_lost = 0
        # (send time of the newest packet acknowledged, arrival of that ACK), both growing.
        self.acks: deque[tuple[float, float]] = deque(maxlen=ACK_HISTORY)
        self.pmtu: PmtuSearch | None = None  # this path's PMTU search, when discovery is on
        self.mtu_probes: set[int] = set()  # packet numbers of PMTU probes in flight
        # Shares of packets lost over the last 64 and 256 (a burst raises them, clean
        # delivery lowers them); the steadier one is the path's standing for the scheduler.
        self._loss = LossAverage(LOSS_MEMORY)
        self._steady_loss = LossAverage(STEADY_LOSS_MEMORY)
        # While set (a stalled path, another one working): PTOs back off no further than
        # this, so that the path is probed and found again soon after an outage ends.
        self.probe_cap: float | None = None
        self._window_limit: int | None = None  # see window_budget
        # Bytes acknowledged so far, sampled per ACK: the path's measured delivery rate
        # (what it carried, not what its window would allow: a window that never
        # fills, as on an unshaped link, says nothing of the path's capacity).
        self.delivered = 0
        self._lost_bytes = 0
        self._deliveries: deque[tuple[float, int]] = deque(maxlen=DELIVERY_SAMPLES)
        # Bumped whenever an ACK, a loss or a timeout changed what is in flight or what
        # the ACKs show: the scheduler's silence deadlines are recomputed only then.
        self.changes = 0

    def delivery_rate(self) -> float | None:
        """Bytes per second acknowledged over the recent ACKs (at least a smoothed RTT of
        them), or None before there are enough."""
        if len(self._deliveries) < 2 or not self._rtt_initialized:
            return None
        (t0, d0), (t1, d1) = self._deliveries[0], self._deliveries[-1]
        if t1 - t0 < self._rtt_smoothed or d1 <= d0:
            return None
        return (d1 - d0) / (t1 - t0)

    @property
    def loss_rate(self) -> float:
        """Recent share of packets lost (LOSS_MEMORY packets): the path's stats."""
        return self._loss.value

    @property
    def steady_loss_rate(self) -> float:
        """The same over STEADY_LOSS_MEMORY packets: the scheduler's standing of the path."""
        return self._steady_loss.value

    @property
    def congestion_window(self) -> int:
        cwnd: int = self._cc.congestion_window
        return cwnd if self._window_limit is None else min(cwnd, self._window_limit)

    @contextmanager
    def window_budget(self, budget: int | None) -> Iterator[None]:
        """For one flush, let at most `budget` more bytes into flight (None: the window
        decides): the scheduler's share for this path this round."""
        if budget is None:
            yield
            return
        self._window_limit = self.bytes_in_flight + budget
        try:
            yield
        finally:
            self._window_limit = None

    @property
    def acked_sent_time(self) -> float | None:
        """Send time of the newest packet an ACK covered."""
        return self.acks[-1][0] if self.acks else None

    @property
    def last_ack_at(self) -> float | None:
        """When the last ACK that covered a newer packet arrived."""
        return self.acks[-1][1] if self.acks else None

    @property
    def ack_gap(self) -> float | None:
        """The longest recent gap between ACKs that covered newer packets (the path's ACK
        rhythm), or None before there were two."""
        if len(self.acks) < 2:
            return None
        start = max(0, len(self.acks) - ACK_GAPS - 1)
        arrivals = [self.acks[i][1] for i in range(start, len(self.acks))]
        return max(b - a for a, b in pairwise(arrivals))

    def first_ack_after(self, sent: float) -> float | None:
        """When the first ACK arrived that covered a packet sent after `sent`."""
        index = bisect_right(self.acks, sent, key=lambda entry: entry[0])
        return self.acks[index][1] if index < len(self.acks) else None

    def on_ack_received(
        self, *, ack_rangeset: RangeSet, ack_delay: float, now: float, space: QuicPacketSpace
    ) -> None:
        self.changes += 1
        newest = space.sent_packets.get(ack_rangeset.bounds().stop - 1)
        sent = newest.sent_time if newest is not None else None
        if newest is not None and sent is not None:
            if not self.acks or sent > self.acks[-1][0]:
                self.acks.append((sent, now))
            if self.pmtu is not None:
                self.pmtu.on_acked(newest.packet_number, newest.sent_bytes, sent, now)
        count, lost = len(space.sent_packets), self.packets_lost
        in_flight, lost_bytes = self.bytes_in_flight, self._lost_bytes
        super().on_ack_received(
            ack_rangeset=ack_rangeset, ack_delay=ack_delay, now=now, space=space
        )
        acked = count - len(space.sent_packets) - (self.packets_lost - lost)
        if acked > 0:
            self._loss.add(acked, lost=False)
            self._steady_loss.add(acked, lost=False)
            gone = in_flight - self.bytes_in_flight - (self._lost_bytes - lost_bytes)
            self.delivered += max(0, gone)
            if in_flight < APP_LIMITED_BYTES:
                # Little was in flight: the sender, not the path, set the pace. A rate
                # over such a stretch (keep-alive PINGs, say) would say the path is slow.
                self._deliveries.clear()
            self._deliveries.append((now, self.delivered))
        if self.mtu_probes:  # acknowledged probes are settled
            self.mtu_probes = {n for n in self.mtu_probes if n in space.sent_packets}
        if isinstance(self._cc, ControllerAdapter):
            self._end_ack_for_model(now)

    def _end_ack_for_model(self, now: float) -> None:
        """The ACK frame's rate sample goes to the controller, and its new pacing rate to
        the pacer (aioquic updates the pacer only on RTT samples and congestion events)."""
        assert isinstance(self._cc, ControllerAdapter)
        self._cc.ack_processed(now)
        self._pacer.update_rate(
            congestion_window=self._cc.congestion_window, smoothed_rtt=self._rtt_smoothed
        )

    def get_loss_detection_time(self, *, amplification_limited: bool) -> float | None:
        at = super().get_loss_detection_time(amplification_limited=amplification_limited)
        if at is None or self.probe_cap is None or self._get_loss_space() is not None:
            return at
        return min(at, self._time_of_last_sent_ack_eliciting_packet + self.probe_cap)

    def on_loss_detection_timeout(self, *, now: float) -> None:
        self.changes += 1
        super().on_loss_detection_timeout(now=now)
        if self.pmtu is not None and self._pto_count:
            self.pmtu.on_pto(self._pto_count, now)

    def _on_packets_lost(self, *, packets: Iterable[QuicSentPacket], **kwargs: Any) -> None:
        packets = list(packets)
        if self.mtu_probes:
            probes = [p for p in packets if p.packet_number in self.mtu_probes]
            if probes:
                # Too big for the path is not congestion (RFC 8899 §4.3): out of flight only.
                numbers = {p.packet_number for p in probes}
                self.mtu_probes -= numbers
                packets = [p for p in packets if p.packet_number not in numbers]
                super()._on_packets_lost(
                    packets=probes, now=kwargs["now"], space=kwargs["space"], congestion_event=False
                )
        if kwargs.get("congestion_event", True):
            # A PTO's non-congestion "loss" may not be a loss: not counted.
            self.packets_lost += len(packets)
            self._lost_bytes += sum(p.sent_bytes for p in packets if p.in_flight)
            self._loss.add(len(packets), lost=True)
            self._steady_loss.add(len(packets), lost=True)
            if self.pmtu is not None:
                for packet in packets:
                    self.pmtu.on_lost(packet.packet_number, packet.sent_bytes, kwargs["now"])
        super()._on_packets_lost(packets=packets, **kwargs)

    def discard_space(self, space: QuicPacketSpace) -> None:
        self.changes += 1
        super().discard_space(space)

    def set_max_datagram_size(self, size: int) -> None:
        """The path's datagram size changed: the window stays in bytes (RFC 8899 §3), but
        its floor, additive increase and the pacer's burst are counted in datagrams."""
        for owner in (self._cc, self._pacer):
            if hasattr(owner, "_max_datagram_size"):
                owner._max_datagram_size = size
        if hasattr(self._cc, "additive_increase_factor"):  # CUBIC: one datagram per RTT
            self._cc.additive_increase_factor = size


class LossAverage:
    """The share of packets lost, averaged per packet: plainly over the first `memory`
    outcomes (a young path's estimate is not biased towards zero), then exponentially
    with weight 1/memory."""

    __slots__ = ("_memory", "_outcomes", "value")

    def __init__(self, memory: int) -> None:
        self._memory = memory
        self._outcomes = 0
        self.value = 0.0

    def add(self, count: int, *, lost: bool) -> None:
        """`count` more packets, all lost or all delivered."""
        target = 1.0 if lost else 0.0
        warm = min(count, max(0, self._memory - self._outcomes))
        for _ in range(warm):  # at most `memory` steps over the path's life
            self._outcomes += 1
            self.value += (target - self.value) / self._outcomes
        rest = count - warm
        if rest:
            self._outcomes += rest
            keep = (1 - 1 / self._memory) ** rest
            self.value = target + (self.value - target) * keep
