"""Our controller inside aioquic's recovery: one path's CountingRecovery with "bbr"
fed packets and ACKs in virtual time (no connection, no network)."""

from __future__ import annotations

import pytest
from aioquic.quic.packet import QuicPacketType
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.quic.rangeset import RangeSet
from aioquic.quic.recovery import QuicPacketSpace
from aioquic.tls import Epoch

from netsched_client.proto.cc import Bbr, ControllerAdapter, State
from netsched_client.proto.cc.aioquic_adapter import ModelPacer
from netsched_client.proto.multipath.recovery import CountingRecovery

SIZE = 1200


def _recovery() -> tuple[CountingRecovery, QuicPacketSpace]:
    recovery = CountingRecovery(
        congestion_control_algorithm="bbr",
        initial_rtt=0.1,
        max_datagram_size=SIZE,
        peer_completed_address_validation=True,
        send_probe=lambda: None,
    )
    recovery.handshake_confirmed = True
    space = QuicPacketSpace(is_application_data=True)
    recovery.spaces = [space]
    return recovery, space


def _send(recovery: CountingRecovery, space: QuicPacketSpace, number: int, now: float) -> None:
    packet = QuicSentPacket(
        epoch=Epoch.ONE_RTT,
        in_flight=True,
        is_ack_eliciting=True,
        is_crypto_packet=False,
        packet_number=number,
        packet_type=QuicPacketType.ONE_RTT,
        sent_time=now,
        sent_bytes=SIZE,
    )
    recovery.on_packet_sent(packet=packet, space=space)


def _ack(recovery: CountingRecovery, space: QuicPacketSpace, upto: int, now: float) -> None:
    acked = RangeSet()
    acked.add(0, upto + 1)
    recovery.on_ack_received(ack_rangeset=acked, ack_delay=0.0, now=now, space=space)


def test_the_window_and_pacing_come_from_the_model() -> None:
    recovery, space = _recovery()
    # 2 Mbit/s, 50 ms: a packet every 4.8 ms, each ACKed 50 ms later.
    for n in range(400):
        now = n * 0.0048
        _send(recovery, space, n, now)
        if n >= 11:
            _ack(recovery, space, n - 11, now)
    adapter = recovery._cc  # the adapter module's contract: what aioquic holds
    assert isinstance(adapter, ControllerAdapter) and isinstance(adapter.controller, Bbr)
    bbr = adapter.controller
    assert bbr.state is not State.STARTUP  # a steady 2 Mbit/s: no growth, Startup is over
    assert bbr.max_bw == pytest.approx(SIZE / 0.0048, rel=0.05)
    assert bbr.min_rtt == pytest.approx(0.0528, abs=0.001)
    assert recovery.congestion_window == bbr.congestion_window
    pacer = recovery._pacer
    assert isinstance(pacer, ModelPacer)
    assert pacer.packet_time == pytest.approx(SIZE / bbr.pacing_rate)


def test_datagram_size_reaches_the_controller() -> None:
    recovery, _ = _recovery()
    recovery.set_max_datagram_size(1452)  # the path's PMTU search found more room
    adapter = recovery._cc
    assert isinstance(adapter, ControllerAdapter)
    assert adapter.controller.max_datagram_size == 1452
    adapter.on_persistent_congestion()
    assert recovery.congestion_window == 4 * 1452  # the floor is in datagrams


def test_lost_packets_reach_the_controller_and_leave_flight() -> None:
    recovery, space = _recovery()
    for n in range(10):
        _send(recovery, space, n, 0.001 * n)
    _ack(recovery, space, 0, 0.050)
    acked = RangeSet()
    acked.add(5, 10)  # 1-4 are lost (more than 3 packets below the largest acked)
    recovery.on_ack_received(ack_rangeset=acked, ack_delay=0.0, now=0.060, space=space)
    assert recovery.packets_lost == 4
    assert recovery.bytes_in_flight == 0


def test_the_aioquic_names_the_adapter_relies_on_still_exist() -> None:
    """An aioquic upgrade that renames what aioquic_adapter.py touches fails here."""
    import inspect

    from aioquic.quic.congestion.base import QuicCongestionControl
    from aioquic.quic.recovery import QuicPacketPacer

    pacer = QuicPacketPacer(max_datagram_size=SIZE)
    for name in ("packet_time", "bucket_max", "bucket_time", "_max_datagram_size"):
        assert hasattr(pacer, name), name
    parameters = list(inspect.signature(QuicPacketPacer.update_rate).parameters)
    assert parameters == ["self", "congestion_window", "smoothed_rtt"]
    assert QuicCongestionControl.__abstractmethods__ == {
        "on_packet_acked",
        "on_packet_sent",
        "on_packets_expired",
        "on_packets_lost",
        "on_persistent_congestion",
        "on_rtt_measurement",
    }


def test_per_packet_stamps_leave_with_their_packets() -> None:
    """The adapter's delivery stamps (one per packet in flight, a peer's ACKs decide how
    long they stay) go when a packet is acknowledged, lost, or its space discarded."""
    recovery, space = _recovery()
    adapter = recovery._cc
    assert isinstance(adapter, ControllerAdapter)
    for n in range(10):
        _send(recovery, space, n, 0.001 * n)
    _ack(recovery, space, 3, 0.050)
    assert len(adapter._sent) == 6
    acked = RangeSet()
    acked.add(8, 10)  # 4-6 are lost (3 or more packets below the largest acked)
    recovery.on_ack_received(ack_rangeset=acked, ack_delay=0.0, now=0.060, space=space)
    assert [n for _, n in adapter._sent] == [7]
    recovery.discard_space(space)
    assert adapter._sent == {} and adapter.bytes_in_flight == 0
