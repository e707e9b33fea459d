"""RFC 6356 LIA (`cc/coupled.py`): alpha, the linked increase, and shares in a
seeded round-by-round simulation (each round one RTT: every flow sends its window,
each packet is lost with the bottleneck's probability, ACKs then losses are fed).
"""

from __future__ import annotations

import random
import statistics
from pathlib import Path

import pytest
from aioquic.quic.congestion.base import create_congestion_control
from aioquic.quic.congestion.reno import RenoCongestionControl
from aioquic.quic.packet import QuicPacketType
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.tls import Epoch
from mp_harness import C1, C2, SERVER, Link

from netsched_client.proto.cc.coupled import CoupledGroup, LiaCongestionControl, coupling
from netsched_edge.tls import generate_self_signed
from netsched_lab import memory

MSS = 1200


def lia(group: CoupledGroup, cwnd: int, rtt: float, ssthresh: int = 1) -> LiaCongestionControl:
    cc = LiaCongestionControl(max_datagram_size=MSS, group=group)
    cc.congestion_window, cc.ssthresh, cc.rtt = cwnd, ssthresh, rtt
    return cc


def test_alpha_is_one_for_one_path_and_the_increase_is_newreno() -> None:
    cc = lia(CoupledGroup(), 20 * MSS, 0.05)
    assert cc.group.alpha() == pytest.approx(1.0)
    assert cc.increase(20 * MSS) == pytest.approx(MSS)  # one MSS per window acked


def test_two_equal_paths_each_grow_at_a_quarter() -> None:
    group = CoupledGroup()
    one, two = lia(group, 10 * MSS, 0.05), lia(group, 10 * MSS, 0.05)
    # alpha = 2w * (w/r^2) / (2w/r)^2 = 1/2; per path: alpha * w * mss / 2w = mss / 4
    assert group.alpha() == pytest.approx(0.5)
    assert one.increase(10 * MSS) == pytest.approx(MSS / 4)
    assert two.increase(10 * MSS) == pytest.approx(MSS / 4)


def test_alpha_follows_rfc6356_with_unequal_rtts() -> None:
    group = CoupledGroup()
    fast, slow = lia(group, 30 * MSS, 0.02), lia(group, 10 * MSS, 0.1)
    total = 40 * MSS
    expected = (
        total * max(30 * MSS / 0.02**2, 10 * MSS / 0.1**2) / (30 * MSS / 0.02 + 10 * MSS / 0.1) ** 2
    )
    assert group.alpha() == pytest.approx(expected)
    # Never more than NewReno on its own path: mss per own window.
    assert slow.increase(10 * MSS) <= MSS + 1e-9
    assert fast.increase(30 * MSS) <= MSS + 1e-9


def test_a_path_that_leaves_stops_counting() -> None:
    group = CoupledGroup()
    stay, gone = lia(group, 10 * MSS, 0.05), lia(group, 10 * MSS, 0.05)
    group.leave(gone)
    assert group.members == [stay] and group.alpha() == pytest.approx(1.0)


def test_controllers_made_inside_coupling_share_a_group_and_others_stand_alone() -> None:
    group = CoupledGroup()
    with coupling(group):
        a = create_congestion_control("lia", max_datagram_size=MSS)
        b = create_congestion_control("lia", max_datagram_size=MSS)
    alone = create_congestion_control("lia", max_datagram_size=MSS)
    assert isinstance(a, LiaCongestionControl) and isinstance(alone, LiaCongestionControl)
    assert a.group is group and getattr(b, "group", None) is group
    assert alone.group is not group and alone.group.members == [alone]


def test_loss_halves_only_the_path_that_lost_once_per_window() -> None:
    group = CoupledGroup()
    one, two = lia(group, 20 * MSS, 0.05), lia(group, 20 * MSS, 0.05)
    packets = [_packet(n, 1.0) for n in range(3)]
    for packet in packets:
        one.on_packet_sent(packet=packet)
    one.on_packets_lost(now=1.1, packets=packets[:1])
    one.on_packets_lost(now=1.2, packets=packets[1:])  # same window: no second cut
    assert one.congestion_window == 10 * MSS and two.congestion_window == 20 * MSS


# -- a shared bottleneck, round by round ------------------------------------------------------


def _packet(number: int, sent_at: float) -> QuicSentPacket:
    packet = QuicSentPacket(Epoch.ONE_RTT, True, True, False, number, QuicPacketType.ONE_RTT)
    packet.sent_time, packet.sent_bytes = sent_at, MSS
    return packet


def _simulate(
    flows: list[list[RenoCongestionControl | LiaCongestionControl]],
    loss: list[float],
    rounds: int,
    seed: int,
) -> list[float]:
    """Mean bytes per round of each flow (a flow: its paths); path j of every flow
    crosses bottleneck j, which loses each packet with probability loss[j]."""
    rng = random.Random(seed)
    delivered = [[0.0] * rounds for _ in flows]
    number = 0
    for round_ in range(rounds):
        now = float(round_)
        for index, flow in enumerate(flows):
            for path, cc in enumerate(flow):
                cc.on_rtt_measurement(now=now, rtt=0.05)
                sent = [_packet(number + k, now) for k in range(cc.congestion_window // MSS)]
                number += len(sent)
                for packet in sent:
                    cc.on_packet_sent(packet=packet)
                lost = [p for p in sent if rng.random() < loss[path]]
                for packet in sent:
                    if packet not in lost:
                        cc.on_packet_acked(now=now + 0.5, packet=packet)
                if lost:
                    cc.on_packets_lost(now=now + 0.6, packets=lost)
                delivered[index][round_] += (len(sent) - len(lost)) * MSS
    return [statistics.fmean(d[rounds // 5 :]) for d in delivered]  # past the start


def _reno() -> RenoCongestionControl:
    cc = RenoCongestionControl(max_datagram_size=MSS)
    cc.ssthresh = cc.congestion_window
    return cc


def _pair() -> list[RenoCongestionControl | LiaCongestionControl]:
    group = CoupledGroup()
    paths: list[RenoCongestionControl | LiaCongestionControl] = []
    for _ in range(2):
        cc = LiaCongestionControl(max_datagram_size=MSS, group=group)
        cc.ssthresh = cc.congestion_window
        paths.append(cc)
    return paths


def test_two_coupled_paths_on_one_bottleneck_take_one_flows_share() -> None:
    # Both paths of the coupled flow cross the same bottleneck (1 % loss) as a NewReno flow.
    coupled, single = _simulate([_pair(), [_reno()]], [0.01, 0.01], rounds=4000, seed=7)
    assert 0.7 <= coupled / single <= 1.3, (coupled, single)
    # Uncoupled, the same two paths take about twice a flow's share: the test can tell.
    loose, alone = _simulate([[_reno(), _reno()], [_reno()]], [0.01, 0.01], rounds=4000, seed=7)
    assert loose / alone >= 1.6, (loose, alone)


def test_traffic_moves_to_the_less_lossy_path() -> None:
    (paths,) = [_pair()]
    _simulate([paths], [0.002, 0.03], rounds=3000, seed=3)
    clean, lossy = paths
    assert clean.congestion_window >= 3 * lossy.congestion_window


# -- on a connection --------------------------------------------------------------------------


def test_a_lia_connection_couples_its_paths_and_aggregates_disjoint_links(
    tmp_path: Path,
) -> None:
    pair = generate_self_signed(tmp_path)
    client_cfg, server_cfg = memory.quic_configurations(
        pair.ca_certificate, pair.certificate, pair.private_key
    )
    server_cfg.congestion_control_algorithm = "lia"
    links = {C1: Link(delay=0.02, rate_bps=10e6), C2: Link(delay=0.02, rate_bps=10e6)}
    net = memory.make_net(client_cfg, server_cfg, links=links)  # type: ignore[arg-type]
    net.run(1.0)
    path_id = net.client.open_path(C2, SERVER, net.now)
    net.run(1.0)
    stream_id = net.client.get_next_available_stream_id()
    net.client.send_stream_data(stream_id, b"get", end_stream=True)
    net.run(0.1)
    size = 4_000_000
    started = net.now
    net.server.send_stream_data(stream_id, bytes(size), end_stream=True)
    assert net.run(20.0, until=lambda: len(net.received.get(stream_id, b"")) >= size)
    goodput = size * 8 / (net.now - started)
    members = net.server.congestion_group.members
    assert len(members) == 2 and all(isinstance(m, LiaCongestionControl) for m in members)
    assert net.client.congestion_group.members == []  # the client runs reno
    # Disjoint 10 Mbit/s bottlenecks: the coupled paths still carry more than one link
    # (the handshake's slow start included).
    assert goodput > 12e6, goodput
    # A path that closes leaves the group: its window no longer holds the others back.
    net.client.abandon_path(path_id, now=net.now)
    net.run(5.0)
    assert path_id not in net.server.paths
    assert len(net.server.congestion_group.members) == 1
