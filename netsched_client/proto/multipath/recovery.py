"""aioquic's loss recovery, plus what the multipath scheduler needs to know per path.

It counts what it declares lost (per-path statistics) and remembers, for the
last ACKs, the send time of the newest packet each covered and when it
arrived: evidence, across paths, that the network delivers (a path silent
since t is suspect once another path had packets sent after t acknowledged).
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from collections.abc import Iterable
from typing import Any, Final

from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.quic.rangeset import RangeSet
from aioquic.quic.recovery import QuicPacketRecovery, QuicPacketSpace

ACK_HISTORY: Final = 128  # more ACKs than arrive in one RTT at the rates we schedule


class CountingRecovery(QuicPacketRecovery):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.packets_lost = 0
        # (send time of the newest packet acknowledged, arrival of that ACK), both growing.
        self.acks: deque[tuple[float, float]] = deque(maxlen=ACK_HISTORY)

    @property
    def acked_sent_time(self) -> float | None:
        """Send time of the newest packet an ACK covered."""
        return self.acks[-1][0] if self.acks else None

    def first_ack_after(self, sent: float) -> float | None:
        """When the first ACK arrived that covered a packet sent after `sent`."""
        index = bisect_right(self.acks, sent, key=lambda entry: entry[0])
        return self.acks[index][1] if index < len(self.acks) else None

    def on_ack_received(
        self, *, ack_rangeset: RangeSet, ack_delay: float, now: float, space: QuicPacketSpace
    ) -> None:
        newest = space.sent_packets.get(ack_rangeset.bounds().stop - 1)
        sent = newest.sent_time if newest is not None else None
        if sent is not None and (not self.acks or sent > self.acks[-1][0]):
            self.acks.append((sent, now))
        super().on_ack_received(
            ack_rangeset=ack_rangeset, ack_delay=ack_delay, now=now, space=space
        )

    def _on_packets_lost(self, *, packets: Iterable[QuicSentPacket], **kwargs: Any) -> None:
        packets = list(packets)
        if kwargs.get("congestion_event", True):
            # A PTO's non-congestion "loss" may not be a loss: not counted.
            self.packets_lost += len(packets)
        super()._on_packets_lost(packets=packets, **kwargs)
