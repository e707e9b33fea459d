"""Delivery-rate estimation (draft-cheng-iccrg-delivery-rate-estimation), per path.

Each packet is stamped at send with the path's delivery count and times; an ACK
turns the newest acknowledged packet's stamp into a rate over the longer of its
send and ACK intervals (the longer one, so that neither an ACK compressed by
aggregation nor a burst sent faster than the bottleneck inflates the rate).
"""

from __future__ import annotations

import math

from .base import RateSample, SentState


class DeliveryRateSampler:
    """The path's delivery counters and the stamp of the newest packet acknowledged in
    the ACK being processed."""

    def __init__(self) -> None:
        self.delivered = 0  # bytes acknowledged over the path's life
        self.delivered_time = 0.0
        self.first_sent_time = 0.0
        self.lost = 0  # bytes declared lost over the path's life
        # Delivery count at which the current app-limited stretch ends (0: not in one).
        self.app_limited_until = 0
        self._newest: SentState | None = None  # of the ACK being processed
        self._acked = 0
        self._lost_since_sample = 0
        self.min_rtt = math.inf  # the shortest send-to-ACK time seen (the interval guard)

    def on_sent(self, size: int, now: float, bytes_in_flight: int) -> SentState:
        """Stamp a packet of `size` bytes sent at `now` with `bytes_in_flight` before it."""
        if bytes_in_flight == 0:
            # Nothing in flight: the sampling interval restarts here, not at the last ACK.
            self.first_sent_time = self.delivered_time = now
        return SentState(
            size=size,
            sent_time=now,
            delivered=self.delivered,
            delivered_time=self.delivered_time,
            first_sent_time=self.first_sent_time,
            app_limited=self.app_limited_until != 0,
            tx_in_flight=bytes_in_flight + size,
            lost=self.lost,
        )

    def mark_app_limited(self, bytes_in_flight: int) -> None:
        """The sender had nothing to send: samples until what is in flight now has been
        delivered measure the application, not the path."""
        self.app_limited_until = max(self.delivered + bytes_in_flight, 1)

    def on_acked(self, state: SentState, now: float) -> None:
        self.delivered += state.size
        self.delivered_time = now
        self._acked += state.size
        if self._newest is None or state.delivered >= self._newest.delivered:
            self._newest = state
            self.first_sent_time = state.sent_time

    def on_lost(self, size: int) -> None:
        self.lost += size
        self._lost_since_sample += size

    def sample(self, now: float, bytes_in_flight: int) -> RateSample | None:
        """The rate sample of the ACK just processed (None if it acknowledged nothing);
        an interval shorter than the path's min RTT gives no rate (draft §3.3: a sample
        over less than a round trip overestimates)."""
        newest, acked = self._newest, self._acked
        self._newest, self._acked = None, 0
        if newest is None:
            return None
        if self.app_limited_until and self.delivered > self.app_limited_until:
            self.app_limited_until = 0
        send_elapsed = newest.sent_time - newest.first_sent_time
        ack_elapsed = self.delivered_time - newest.delivered_time
        interval = max(send_elapsed, ack_elapsed)
        rtt = max(now - newest.sent_time, 0.0)
        self.min_rtt = min(self.min_rtt, rtt)
        if interval < self.min_rtt:
            interval = 0.0
        lost_since, self._lost_since_sample = self._lost_since_sample, 0
        return RateSample(
            delivered=self.delivered - newest.delivered,
            interval=interval,
            rtt=rtt,
            app_limited=newest.app_limited,
            newly_acked=acked,
            newly_lost=lost_since,
            bytes_in_flight=bytes_in_flight,
            tx_in_flight=newest.tx_in_flight,
            lost=self.lost - newest.lost,
            prior_delivered=newest.delivered,
        )
