"""The per-path congestion controller's interface, free of any QUIC stack's types.

A controller sees one path: what was sent (size, time, the delivery state the
sampler stamped on it), what was acknowledged (one `RateSample` per ACK frame),
what was lost, and answers with a congestion window and a pacing rate. The
connection core (today aioquic through `aioquic_adapter.py`, later #12's native
core) owns packet bookkeeping and loss detection; the controller owns only its
model. Time is always passed in (seconds, any origin).

Driving contract, per path:
    on_sent(size, now, state)        every packet that counts in flight, after the
                                     sampler stamped it
    on_loss(size, now, state, ...)   every such packet declared lost
    on_ack(sample, now)              once per ACK frame that acknowledged packets,
                                     after its losses were reported
    on_persistent_congestion(now)    RFC 9002 §7.6
    on_app_limited(bytes_in_flight)  the sender ran out of data with window left
then read `congestion_window` and `pacing_rate` (None: no pacing of its own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class SentState:
    """The sampler's snapshot when a packet left (draft-cheng-iccrg-delivery-rate-estimation
    §3.2, plus `lost` and `tx_in_flight` that BBR's loss check needs)."""

    size: int
    sent_time: float
    delivered: int  # bytes delivered on the path when the packet was sent
    delivered_time: float  # when that delivery count was last raised
    first_sent_time: float  # send time of the packet that started this sampling interval
    app_limited: bool  # sent inside an application-limited stretch
    tx_in_flight: int  # bytes in flight just after this packet was sent
    lost: int  # bytes lost on the path when the packet was sent


@dataclass(frozen=True, slots=True)
class RateSample:
    """What one ACK frame says about the path."""

    delivered: int  # bytes delivered over `interval`
    interval: float  # seconds; 0.0 when the sample is not usable for a rate
    rtt: float  # send-to-ACK time of the newest packet acknowledged
    app_limited: bool  # the newest packet acknowledged was sent app-limited
    newly_acked: int  # bytes this ACK acknowledged
    newly_lost: int  # bytes declared lost since the previous sample
    bytes_in_flight: int  # after this ACK and its losses
    tx_in_flight: int  # in flight when the newest acknowledged packet was sent
    lost: int  # bytes lost between that packet's send and now
    prior_delivered: int  # the path's delivered count when that packet was sent

    @property
    def delivery_rate(self) -> float:
        """Bytes per second, 0.0 when the interval was too short to mean anything."""
        return self.delivered / self.interval if self.interval > 0 else 0.0


class PathCongestionController(Protocol):
    """One path's congestion controller (see the module's driving contract)."""

    @property
    def congestion_window(self) -> int: ...

    @property
    def pacing_rate(self) -> float | None:
        """Bytes per second, or None: pace from the window and the RTT."""
        ...

    @property
    def max_datagram_size(self) -> int: ...

    @max_datagram_size.setter
    def max_datagram_size(self, size: int) -> None: ...

    def on_sent(self, size: int, now: float, state: SentState) -> None: ...

    def on_ack(self, sample: RateSample, now: float) -> None: ...

    def on_loss(self, size: int, now: float, state: SentState, bytes_in_flight: int) -> None: ...

    def on_persistent_congestion(self, now: float) -> None: ...
