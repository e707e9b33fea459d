"""Datagram PMTU discovery: the per-path search alone, then in the in-memory multipath network."""

from __future__ import annotations

from pathlib import Path

import pytest
from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted
from aioquic.quic.packet import QuicPacketType
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.quic.rangeset import RangeSet
from aioquic.quic.recovery import QuicPacketSpace
from aioquic.tls import Epoch
from hypothesis import given
from hypothesis import strategies as st
from mp_harness import C1, C2, C3, SERVER, Link, Net, make_net

from netsched_client.proto.connection import NetSchedConnection
from netsched_client.proto.multipath import events as mpe
from netsched_client.proto.multipath.pmtu import (
    BASE_SIZE,
    BLACK_HOLE_LOSSES,
    DEFAULT_MAX_SIZE,
    FULL_BEFORE_PROBING,
    MAX_PROBES,
    MAX_SIZE,
    MAX_UDP_PAYLOAD,
    SEARCH_GRANULARITY,
    PmtuConfig,
    PmtuSearch,
    PmtuState,
    is_loopback,
)
from netsched_client.proto.multipath.recovery import CountingRecovery
from netsched_client.proto.transport_parameters import encode_transport_parameter

# -- the search alone -------------------------------------------------------------------------


def _wanted(search: PmtuSearch) -> PmtuSearch:
    search.on_full_datagrams(FULL_BEFORE_PROBING)
    return search


def _converge(search: PmtuSearch, mtu: int, now: float = 0.0) -> list[int]:
    """Probe until the search rests; a probe passes when it fits `mtu`. Returns the sizes."""
    probed: list[int] = []
    while (size := search.probe_due(now)) is not None:
        assert len(probed) < 100, probed
        probed.append(size)
        search.on_probe_sent(size)
        if size <= mtu:
            search.on_probe_acked(size, now)
        else:
            search.on_probe_lost(size, now)
    return probed


@given(
    mtu=st.integers(BASE_SIZE, MAX_UDP_PAYLOAD),
    cap=st.integers(BASE_SIZE, MAX_SIZE),
    peer=st.integers(BASE_SIZE, MAX_UDP_PAYLOAD),
)
def test_search_converges_below_the_path_mtu_and_the_limits(mtu: int, cap: int, peer: int) -> None:
    search = _wanted(PmtuSearch(PmtuConfig(max_size=cap)))
    search.set_limit(peer, 0.0)
    probed = _converge(search, mtu)
    ceiling = min(mtu, cap, peer)
    assert ceiling - SEARCH_GRANULARITY <= search.size <= ceiling
    assert all(size <= min(cap, peer) for size in probed)
    assert search.state is PmtuState.SEARCH_COMPLETE


def test_first_probe_tries_the_limit_and_one_suffices_when_it_fits() -> None:
    search = _wanted(PmtuSearch(PmtuConfig()))
    assert _converge(search, mtu=1500) == [DEFAULT_MAX_SIZE]
    assert search.size == DEFAULT_MAX_SIZE


def test_a_size_fails_only_after_max_probes_losses() -> None:
    search = _wanted(PmtuSearch(PmtuConfig()))
    for _ in range(MAX_PROBES):
        assert search.probe_due(0.0) == DEFAULT_MAX_SIZE  # a single loss may be chance
        search.on_probe_sent(DEFAULT_MAX_SIZE)
        search.on_probe_lost(DEFAULT_MAX_SIZE, 0.0)
    assert search.probe_due(0.0) == (BASE_SIZE + DEFAULT_MAX_SIZE) // 2


def test_no_probe_before_bulk_data_nor_while_one_is_in_flight() -> None:
    search = PmtuSearch(PmtuConfig())
    search.on_full_datagrams(FULL_BEFORE_PROBING - 1)
    assert search.probe_due(0.0) is None
    search.on_full_datagrams(1)
    size = search.probe_due(0.0)
    assert size is not None
    search.on_probe_sent(size)
    assert search.probe_due(0.0) is None


def test_search_rests_then_raises_again_after_the_interval() -> None:
    search = _wanted(PmtuSearch(PmtuConfig(raise_interval=600.0)))
    _converge(search, mtu=1300, now=10.0)
    assert search.state is PmtuState.SEARCH_COMPLETE
    assert search.probe_due(609.0) is None
    assert search.probe_due(610.0) == DEFAULT_MAX_SIZE  # the path may carry more by now
    assert search.size > 1300 - SEARCH_GRANULARITY  # what was proven still holds meanwhile


def test_black_hole_by_losses_falls_back_then_searches_below_the_failed_size() -> None:
    search = _wanted(PmtuSearch(PmtuConfig()))
    _converge(search, mtu=1500)
    search.on_acked(10, DEFAULT_MAX_SIZE, sent_time=1.0, now=1.1)
    for number in range(11, 11 + BLACK_HOLE_LOSSES):
        search.on_lost(number, DEFAULT_MAX_SIZE, now=2.0)
    assert search.size == BASE_SIZE and search.state is PmtuState.BASE
    assert search.black_holes == 1
    search.on_acked(30, BASE_SIZE, sent_time=1.9, now=2.1)  # sent before: proves nothing
    assert search.state is PmtuState.BASE
    search.on_acked(31, BASE_SIZE, sent_time=2.05, now=2.2)
    assert search.probe_due(2.2) == (BASE_SIZE + DEFAULT_MAX_SIZE) // 2


def test_losses_before_a_later_large_ack_are_congestion_not_a_black_hole() -> None:
    search = _wanted(PmtuSearch(PmtuConfig()))
    _converge(search, mtu=1500)
    search.on_acked(50, DEFAULT_MAX_SIZE, sent_time=1.0, now=1.1)
    for number in range(40, 50):
        search.on_lost(number, DEFAULT_MAX_SIZE, now=1.1)
    search.on_lost(51, BASE_SIZE, now=1.1)  # small packets never tell
    assert search.size == DEFAULT_MAX_SIZE and search.black_holes == 0


def test_black_hole_by_consecutive_ptos() -> None:
    search = _wanted(PmtuSearch(PmtuConfig()))
    _converge(search, mtu=1500)
    search.on_pto(1, now=1.0)
    assert search.size == DEFAULT_MAX_SIZE
    search.on_pto(2, now=1.5)
    assert search.size == BASE_SIZE and search.black_holes == 1


def test_a_new_address_starts_over_at_base() -> None:
    search = _wanted(PmtuSearch(PmtuConfig()))
    search.moved(("10.0.0.1", 443), 0.0)
    _wanted(search)
    _converge(search, mtu=1500)
    search.moved(("10.0.0.2", 443), 5.0)
    assert search.size == BASE_SIZE and search.probe_due(5.0) is None  # until bulk data again


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_size": 1199}, "PmtuConfig.max_size must be an int in 1200..16383, got 1199"),
        (
            {"loopback_max_size": 16384},
            "PmtuConfig.loopback_max_size must be an int in 1200..16383, got 16384",
        ),
        ({"raise_interval": 0.0}, "PmtuConfig.raise_interval must be > 0 seconds, got 0.0"),
    ],
)
def test_config_refuses_bad_values(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PmtuConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("addr", "loopback"),
    [
        (("127.0.0.1", 443), True),
        (("127.9.8.7", 443), True),
        (("::1", 443, 0, 0), True),
        (("::ffff:127.0.0.1", 443, 0, 0), True),
        (("fe80::1%lo", 443, 0, 2), False),
        (("192.0.2.1", 443), False),
        (("2001:db8::1", 443, 0, 0), False),
        (("localhost", 443), False),
        (None, False),
    ],
)
def test_loopback_addresses(addr: tuple[str, int] | None, loopback: bool) -> None:
    assert is_loopback(addr) is loopback


def test_loopback_4_tuple_gets_the_loopback_cap() -> None:
    search = PmtuSearch(PmtuConfig(max_size=1400, loopback_max_size=9000))
    search.moved(("127.0.0.1", 4433), 0.0)
    _wanted(search)
    assert _converge(search, mtu=65535) == [9000]
    search.moved(("192.0.2.1", 4433), 1.0)
    _wanted(search)
    assert _converge(search, mtu=65535, now=1.0) == [1400]


def test_connection_refuses_a_config_of_another_type() -> None:
    with pytest.raises(TypeError, match="pmtud must be a PmtuConfig or None, got 1452"):
        NetSchedConnection(configuration=QuicConfiguration(is_client=True), pmtud=1452)


# -- the recovery: a lost probe is not congestion -----------------------------------------------


def _packet(number: int, size: int, sent_time: float) -> QuicSentPacket:
    return QuicSentPacket(
        epoch=Epoch.ONE_RTT,
        in_flight=True,
        is_ack_eliciting=True,
        is_crypto_packet=False,
        packet_number=number,
        packet_type=QuicPacketType.ONE_RTT,
        sent_bytes=size,
        sent_time=sent_time,
    )


def _lose_packet_zero(probe: bool) -> CountingRecovery:
    """Packet 0 (1452 bytes) then 1..4 (1200) are sent; 1..4 are acknowledged: 0 is lost."""
    recovery = CountingRecovery(
        congestion_control_algorithm="reno",
        initial_rtt=0.1,
        max_datagram_size=BASE_SIZE,
        peer_completed_address_validation=True,
        send_probe=lambda: None,
    )
    space = QuicPacketSpace(is_application_data=True)
    recovery.spaces = [space]
    recovery.pmtu = _wanted(PmtuSearch(PmtuConfig()))
    for number, size in enumerate([DEFAULT_MAX_SIZE] + [BASE_SIZE] * 4):
        recovery.on_packet_sent(packet=_packet(number, size, 1.0), space=space)
    if probe:
        recovery.mtu_probes.add(0)
    recovery.on_ack_received(
        ack_rangeset=RangeSet([range(1, 5)]), ack_delay=0.0, now=1.1, space=space
    )
    assert not space.sent_packets and recovery.bytes_in_flight == 0
    return recovery


def test_lost_probe_leaves_the_window_alone() -> None:
    window = _lose_packet_zero(probe=False).congestion_window  # control: a real loss halves it
    recovery = _lose_packet_zero(probe=True)
    assert recovery.congestion_window > window
    assert recovery.packets_lost == 0 and not recovery.mtu_probes


def test_window_keeps_its_bytes_when_the_datagram_size_changes() -> None:
    recovery = _lose_packet_zero(probe=True)
    window = recovery.congestion_window
    recovery.set_max_datagram_size(9000)
    assert recovery.congestion_window == window  # RFC 8899 §3: no jump in bytes
    recovery.on_packet_sent(packet=_packet(9, 9000, 2.0), space=recovery.spaces[0])
    assert recovery.bytes_in_flight == 9000


# -- in the in-memory network ---------------------------------------------------------------------


def _connected(tmp_path: Path, **kwargs: object) -> Net:
    net = make_net(tmp_path, **kwargs)  # type: ignore[arg-type]
    assert net.run(2.0, until=lambda: bool(net.events("client", HandshakeCompleted)))
    net.run(0.2)
    return net


def _download(net: Net, size: int) -> int:
    sid = net.client.get_next_available_stream_id()
    net.client.send_stream_data(sid, b"get", end_stream=True)
    net.run(1.0, until=lambda: any(getattr(e, "stream_id", None) == sid for e in net.server_events))
    net.server.send_stream_data(sid, bytes(range(256)) * (size // 256), end_stream=True)
    return sid


def _complete(net: Net, sid: int, size: int) -> None:
    assert net.run(30.0, until=lambda: len(net.received.get(sid, b"")) >= size)
    assert net.received[sid] == bytes(range(256)) * (size // 256)
    net.run(1.0)  # probes still due go out with the last ACKs
    assert not net.events("client", ConnectionTerminated)


def _sizes(conn: NetSchedConnection) -> dict[int, int]:
    return {p["path_id"]: p["max_datagram_size"] for p in conn.path_info()}


def _links(rate_bps: float | None = None, **mtus: int | None) -> dict[tuple[str, int], Link]:
    return {
        C1: Link(mtu=mtus.get("c1"), rate_bps=rate_bps),
        C2: Link(mtu=mtus.get("c2"), rate_bps=rate_bps),
        C3: Link(),
    }


def test_search_converges_to_the_link_mtu(tmp_path: Path) -> None:
    net = _connected(tmp_path, links=_links(c1=1400))
    sid = _download(net, 393_216)
    _complete(net, sid, 393_216)
    assert 1400 - SEARCH_GRANULARITY <= _sizes(net.server)[0] <= 1400
    assert _sizes(net.client)[0] == BASE_SIZE  # it only sent ACKs: nothing to gain
    search = net.server._recovery().pmtu
    assert search is not None and search.state is PmtuState.SEARCH_COMPLETE
    assert search.probes_lost >= MAX_PROBES  # 1452 did not fit
    assert net.server._recovery().packets_lost == 0  # and no probe counted as a loss


def test_loopback_path_carries_the_largest_datagrams(tmp_path: Path) -> None:
    net = _connected(tmp_path, pmtud=PmtuConfig())  # the default: 127.x is loopback
    sid = _download(net, 1 << 20)
    _complete(net, sid, 1 << 20)
    assert _sizes(net.server)[0] == MAX_SIZE
    stats = net.server.paths[0].stats
    assert stats.bytes_sent / stats.packets_sent > 8000  # most of the transfer rode them


def test_off_keeps_the_base_size(tmp_path: Path) -> None:
    net = _connected(tmp_path, pmtud=None)
    sid = _download(net, 393_216)
    _complete(net, sid, 393_216)
    assert _sizes(net.server) == {0: BASE_SIZE} and net.server._recovery().pmtu is None


def test_black_hole_recovers_without_losing_the_connection(tmp_path: Path) -> None:
    net = _connected(tmp_path, links=_links(rate_bps=20e6))
    size = 3 << 20  # 1.3 s at 20 Mbit/s
    sid = _download(net, size)
    net.run(0.4)
    assert _sizes(net.server)[0] == DEFAULT_MAX_SIZE
    net.links[C1].mtu = 1300  # a route change mid-transfer
    _complete(net, sid, size)
    search = net.server._recovery().pmtu
    assert search is not None and search.black_holes >= 1
    assert 1300 - SEARCH_GRANULARITY <= _sizes(net.server)[0] <= 1300


def test_two_paths_with_different_mtus_get_different_sizes(tmp_path: Path) -> None:
    net = _connected(tmp_path, links=_links(c1=1350))
    path_id = net.client.open_path(C2, SERVER, net.now)
    assert net.run(2.0, until=lambda: bool(net.events("client", mpe.PathValidated)))
    sid = _download(net, 3 << 20)
    _complete(net, sid, 3 << 20)
    sizes = _sizes(net.server)
    assert 1350 - SEARCH_GRANULARITY <= sizes[0] <= 1350
    assert sizes[path_id] == DEFAULT_MAX_SIZE


class _SmallReceiver(NetSchedConnection):
    """Advertises max_udp_payload_size 1300 (aioquic itself sends none: 65527)."""

    def _serialize_transport_parameters(self) -> bytes:
        value = Buffer(capacity=8)
        value.push_uint_var(1300)
        return super()._serialize_transport_parameters() + encode_transport_parameter(
            0x03, value.data
        )


def test_peer_max_udp_payload_size_bounds_the_search(tmp_path: Path) -> None:
    net = _connected(tmp_path, client_class=_SmallReceiver)
    sid = _download(net, 393_216)
    _complete(net, sid, 393_216)
    assert _sizes(net.server)[0] == 1300
