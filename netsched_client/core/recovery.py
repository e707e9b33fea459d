"""One path's loss recovery driving its congestion controller (proto/cc/base.py's contract).

`PathRecovery` joins a path's `Ledger` (its 1-RTT packet-number space), the
`RttEstimator` the ledger shares, a `Pacer`, the delivery-rate sampler and a
`PathCongestionController`: every packet that counts in flight is stamped by
the sampler and reported with `on_sent`; an ACK frame reports its losses
(`on_loss`, then `on_persistent_congestion` if §7.6 says so) and then one
`RateSample` (`on_ack`), in the order the contract asks. The pacer follows
the controller's rate (RFC 9002 §7.7's 1.25 x window / SRTT when it has
none). Time is always passed in.

Driving contract, per path:
    on_sent(pn, size, now, flags, handle)   each packet, as it leaves
    on_ack(ranges, ack_delay, now)          each ACK frame for this space
    timer()                                 when to call on_timeout (pure)
    on_timeout(now) -> bool                 True: the PTO fired, send 1-2 probes
    on_app_limited()                        the sender ran out of data with window left
then `can_send(size)` and `next_send_time(now)` gate the next packet.

The per-packet `SentState` stamps live in a dict here: this module is the
Python-level path a C fast path (controller and sampler in Cython) can replace.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from netsched_client.core.ledger import (
    FLAG_ACK_ELICITING,
    FLAG_IN_FLIGHT,
    FLAG_PMTU_PROBE,
    AckResult,
    Ledger,
    LossResult,
    Pacer,
)
from netsched_client.proto.cc.base import PathCongestionController, SentState
from netsched_client.proto.cc.sampler import DeliveryRateSampler

DEFAULT_FLAGS = FLAG_ACK_ELICITING | FLAG_IN_FLIGHT
# RFC 9002 §7.7: pace at N x window / SRTT, N = 1.25, when the controller sets no rate.
WINDOW_PACING_GAIN = 1.25
# Bursts of a quarter window, from 2 to 16 datagrams (aioquic's pacer, kept for parity).
MIN_BURST_PACKETS = 2
MAX_BURST_PACKETS = 16


class PathRecovery:
    """A path's ledger, pacer and sampler feeding its congestion controller."""

    def __init__(self, controller: PathCongestionController, ledger: Ledger, pacer: Pacer):
        self.controller = controller
        self.ledger = ledger
        self.pacer = pacer
        self.sampler = DeliveryRateSampler()
        self._stamps: dict[int, SentState] = {}  # packets in flight, by packet number
        self._update_pacer()

    @property
    def bytes_in_flight(self) -> int:
        return self.ledger.bytes_in_flight

    def can_send(self, size: int) -> bool:
        """Whether the window has room for `size` more bytes in flight."""
        return self.ledger.bytes_in_flight + size <= self.controller.congestion_window

    def next_send_time(self, now: float) -> float:
        return self.pacer.next_send_time(now)

    def timer(self) -> float:
        """When `on_timeout` is due (inf: never): the loss timer, else the PTO (§6.2.1)."""
        loss_time = self.ledger.loss_time
        return loss_time if loss_time != math.inf else self.ledger.pto_deadline()

    def on_sent(
        self, pn: int, size: int, now: float, flags: int = DEFAULT_FLAGS, handle: int = 0
    ) -> None:
        in_flight = self.ledger.bytes_in_flight
        self.ledger.on_sent(pn, now, size, flags, handle)
        if not flags & FLAG_IN_FLIGHT:
            return  # ACK-only packets are neither paced nor counted by the controller
        self.pacer.on_sent(size, now)
        state = self.sampler.on_sent(size, now, in_flight)
        self._stamps[pn] = state
        self.controller.on_sent(size, now, state)

    def on_ack(
        self, ranges: Iterable[tuple[int, int]], ack_delay: float, now: float
    ) -> tuple[AckResult, LossResult]:
        """One ACK frame: acknowledgements, then losses, then the rate sample."""
        acked = self.ledger.on_ack(ranges, ack_delay, now)
        for pn in acked.pns:
            state = self._stamps.pop(pn, None)
            if state is not None:
                self.sampler.on_acked(state, now)
        lost = self._detect_lost(now)
        sample = self.sampler.sample(now, self.ledger.bytes_in_flight)
        if sample is not None:
            self.controller.on_ack(sample, now)
        self._update_pacer()
        return acked, lost

    def on_timeout(self, now: float) -> bool:
        """The timer `timer()` named: an armed loss timer declares losses (and the PTO
        waits, §6.2.1); else a due PTO backs off and asks for probes."""
        if self.ledger.loss_time != math.inf:
            if self.ledger.loss_time <= now:
                self._detect_lost(now)
                self._update_pacer()
            return False
        if self.ledger.pto_deadline() <= now:
            self.ledger.rtt.pto_count += 1
            return True
        return False

    def on_app_limited(self) -> None:
        self.sampler.mark_app_limited(self.ledger.bytes_in_flight)

    def _detect_lost(self, now: float) -> LossResult:
        lost = self.ledger.detect_lost(now)
        for pn, flags in zip(lost.pns, lost.flags, strict=True):
            state = self._stamps.pop(pn, None)
            # RFC 9000 §14.4: a lost PMTU probe says nothing about congestion.
            if state is None or flags & FLAG_PMTU_PROBE:
                continue
            self.sampler.on_lost(state.size)
            self.controller.on_loss(state.size, now, state, self.ledger.bytes_in_flight)
        if lost.persistent_congestion:
            self.controller.on_persistent_congestion(now)
        return lost

    def _update_pacer(self) -> None:
        window = self.controller.congestion_window
        mss = self.controller.max_datagram_size
        rate = self.controller.pacing_rate
        if not rate:
            rate = WINDOW_PACING_GAIN * window / self.ledger.rtt.smoothed_rtt
        burst = max(MIN_BURST_PACKETS * mss, min(window // 4, MAX_BURST_PACKETS * mss))
        self.pacer.set_rate(rate, burst)
