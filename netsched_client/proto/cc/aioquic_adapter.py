"""Our per-path controllers inside aioquic 1.7.2's recovery: the one module that
touches aioquic's congestion-control and pacer internals for them.

aioquic's `QuicPacketRecovery` drives a `QuicCongestionControl` per packet
(`on_packet_sent`, `on_packet_acked`, `on_packets_lost`, `on_packets_expired`,
`on_persistent_congestion`, `on_rtt_measurement`) and derives its pacer's rate
from the window and the smoothed RTT. `ControllerAdapter` turns those calls into
the sampler's stamps and one rate sample per ACK frame for a
`PathCongestionController`; `ModelPacer` paces at the controller's rate. The
recovery (`CountingRecovery`) calls `ack_processed` after each ACK frame, since
aioquic's per-packet calls do not say where an ACK ends.

Touched aioquic names (listed in tests/test_mp_aioquic_contract.py's spirit):
`QuicCongestionControl` (subclassed, its `bytes_in_flight`, `congestion_window`,
`ssthresh` attributes), `register_congestion_control`, `QuicPacketPacer`
(`packet_time`, `bucket_max`, `bucket_time`, `_max_datagram_size`).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from typing import Final

from aioquic.quic.congestion.base import QuicCongestionControl, register_congestion_control
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.quic.recovery import K_MICRO_SECOND, K_SECOND, QuicPacketPacer
from aioquic.tls import Epoch

from .base import PathCongestionController, SentState
from .bbr import Bbr
from .sampler import DeliveryRateSampler

# The algorithms a connection can name: aioquic's two and ours.
CONGESTION_CONTROLS: Final = ("reno", "cubic", "bbr", "lia", "olia")
DEFAULT_CONGESTION_CONTROL: Final = "reno"
# A send after a pause longer than this and than the pacer's own (see _after_idle), with
# window to spare, follows an idle application: its samples measure the app, not the
# path. The controller cannot be told directly through aioquic (it never says when a
# connection runs out of data), so the gap is the evidence.
IDLE_GAP_S: Final = 0.005


class ControllerAdapter(QuicCongestionControl):
    """A `PathCongestionController` behind aioquic's congestion-control interface."""

    def __init__(self, controller: PathCongestionController) -> None:
        # Not QuicCongestionControl.__init__: the window is the controller's.
        self.controller = controller
        self.sampler = DeliveryRateSampler()
        self.bytes_in_flight = 0
        self.congestion_window = controller.congestion_window
        self.ssthresh = None
        # Stamps of packets in flight: packet numbers repeat across packet spaces.
        self._sent: dict[tuple[Epoch, int], SentState] = {}
        self._last_sent: float | None = None
        self._now = 0.0  # the latest time seen (aioquic's persistent congestion has none)

    @property
    def _max_datagram_size(self) -> int:
        """What `CountingRecovery.set_max_datagram_size` moves with the path's PMTU."""
        return self.controller.max_datagram_size

    @_max_datagram_size.setter
    def _max_datagram_size(self, size: int) -> None:
        self.controller.max_datagram_size = size

    @property
    def pacing_rate(self) -> float | None:
        return self.controller.pacing_rate

    def on_packet_sent(self, *, packet: QuicSentPacket) -> None:
        now = packet.sent_time if packet.sent_time is not None else self._now
        self._now = now
        if self._after_idle(now):
            self.sampler.mark_app_limited(self.bytes_in_flight)
        state = self.sampler.on_sent(packet.sent_bytes, now, self.bytes_in_flight)
        self._sent[_key(packet)] = state
        self.bytes_in_flight += packet.sent_bytes
        self._last_sent = now
        self.controller.on_sent(packet.sent_bytes, now, state)
        self._sync()

    def on_packet_acked(self, *, now: float, packet: QuicSentPacket) -> None:
        self._now = now
        self.bytes_in_flight -= packet.sent_bytes
        state = self._sent.pop(_key(packet), None)
        if state is not None:
            self.sampler.on_acked(state, now)

    def on_packets_expired(self, *, packets: Iterable[QuicSentPacket]) -> None:
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes
            self._sent.pop(_key(packet), None)

    def on_packets_lost(self, *, now: float, packets: Iterable[QuicSentPacket]) -> None:
        self._now = now
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes
            state = self._sent.pop(_key(packet), None)
            if state is None:
                continue
            self.sampler.on_lost(packet.sent_bytes)
            self.controller.on_loss(packet.sent_bytes, now, state, self.bytes_in_flight)
        self._sync()

    def on_persistent_congestion(self) -> None:
        self.controller.on_persistent_congestion(self._now)
        self._sync()

    def on_rtt_measurement(self, *, now: float, rtt: float) -> None:
        """Unused: the rate sample carries its own RTT, without aioquic's ACK-delay
        correction (BBR's min RTT is a path property, not an estimate to smooth)."""

    def ack_processed(self, now: float) -> None:
        """One ACK frame is done (its acknowledgements and losses reported)."""
        self._now = now
        sample = self.sampler.sample(now, self.bytes_in_flight)
        if sample is not None:
            self.controller.on_ack(sample, now)
            self._sync()

    def get_log_data(self) -> dict[str, object]:
        data = super().get_log_data()
        data["pacing_rate"] = self.controller.pacing_rate
        state = getattr(self.controller, "state", None)
        if state is not None:
            data["state"] = str(getattr(state, "value", state))
        return data

    def _after_idle(self, now: float) -> bool:
        """Whether this send follows a stretch where the application, not the window or
        the pacer, held the sender back (aioquic never says so: see the module doc)."""
        if self._last_sent is None:
            return False
        window = self.congestion_window
        if self.bytes_in_flight + self._max_datagram_size >= window:
            return False  # the window held the sender
        gap = now - self._last_sent
        rate = self.controller.pacing_rate
        if not rate:
            return gap > IDLE_GAP_S
        # The pacer lets bursts of up to 16 datagrams out, then waits as long for its
        # bucket: a pause of two such cycles is not the pacer's.
        burst = min(window // 4, 16 * self._max_datagram_size) / rate
        if gap > max(IDLE_GAP_S, 2 * burst):
            return True
        # A trickle: an eighth of the window in flight, and paused for 4 packets' time.
        return self.bytes_in_flight < window / 8 and gap > 4 * self._max_datagram_size / rate

    def _sync(self) -> None:
        self.congestion_window = self.controller.congestion_window


class ModelPacer(QuicPacketPacer):
    """aioquic's token-bucket pacer at the controller's pacing rate (aioquic's own
    rate, the window over the smoothed RTT, until the controller has one)."""

    def __init__(self, *, max_datagram_size: int, adapter: ControllerAdapter) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self._adapter = adapter

    def update_rate(self, congestion_window: int, smoothed_rtt: float) -> None:
        rate = self._adapter.pacing_rate
        if not rate or rate <= 0:
            super().update_rate(congestion_window, smoothed_rtt)
            return
        mss = self._max_datagram_size
        self.packet_time = max(K_MICRO_SECOND, min(mss / rate, K_SECOND))
        # Bursts of at most a quarter window (2 to 16 datagrams), as aioquic's pacer.
        self.bucket_max = max(2 * mss, min(congestion_window // 4, 16 * mss)) / rate
        self.bucket_time = min(self.bucket_time, self.bucket_max)


def model_pacer(cc: QuicCongestionControl, max_datagram_size: int) -> ModelPacer | None:
    """A pacer following `cc`'s model, when `cc` is one of ours."""
    if isinstance(cc, ControllerAdapter):
        return ModelPacer(max_datagram_size=max_datagram_size, adapter=cc)
    return None


def _key(packet: QuicSentPacket) -> tuple[Epoch, int]:
    return packet.epoch, packet.packet_number


def _bbr_factory(*, max_datagram_size: int) -> QuicCongestionControl:
    # Seeded through os.urandom, as the connection's other random draws are, so that a
    # seeded simulation (netsched_lab.seeded) replays; random.Random() reads the OS directly.
    rng = random.Random(int.from_bytes(os.urandom(8)))
    return ControllerAdapter(Bbr(max_datagram_size=max_datagram_size, rng=rng))


register_congestion_control("bbr", _bbr_factory)
