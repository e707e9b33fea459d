"""aioquic's loss recovery, counting what it declares lost (per-path statistics)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.quic.recovery import QuicPacketRecovery


class CountingRecovery(QuicPacketRecovery):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.packets_lost = 0

    def _on_packets_lost(self, *, packets: Iterable[QuicSentPacket], **kwargs: Any) -> None:
        packets = list(packets)
        if kwargs.get("congestion_event", True):
            # A PTO's non-congestion "loss" may not be a loss: not counted.
            self.packets_lost += len(packets)
        super()._on_packets_lost(packets=packets, **kwargs)
