"""RFC 6356 LIA and OLIA (`cc/coupled.py`): alpha, the coupled increases against the
published formulas, and shares in a seeded round-by-round simulation (each round one
RTT: every flow sends its window, each packet is lost with the bottleneck's
probability, ACKs then losses are fed).
"""

from __future__ import annotations

import heapq
import itertools
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aioquic.quic.congestion.base import K_MINIMUM_WINDOW, create_congestion_control
from aioquic.quic.congestion.reno import RenoCongestionControl
from aioquic.quic.packet import QuicPacketType
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.quic.recovery import QuicPacketPacer
from aioquic.tls import Epoch
from mp_harness import C1, C2, SERVER, Link

from netsched_client.proto.cc.coupled import (
    CoupledCongestionControl,
    CoupledGroup,
    LiaCongestionControl,
    OliaCongestionControl,
    coupling,
)
from netsched_edge.tls import generate_self_signed
from netsched_lab import memory

MSS = 1200
KINDS = {"lia": LiaCongestionControl, "olia": OliaCongestionControl}


def lia(group: CoupledGroup, cwnd: int, rtt: float, ssthresh: int = 1) -> LiaCongestionControl:
    cc = LiaCongestionControl(max_datagram_size=MSS, group=group)
    cc.congestion_window, cc.ssthresh, cc.rtt = cwnd, ssthresh, rtt
    return cc


def olia(group: CoupledGroup, packets: int, rtt: float, interval: int) -> OliaCongestionControl:
    """An OLIA path in congestion avoidance: `packets` MSS of window, `interval` bytes
    between its last two loss events."""
    cc = OliaCongestionControl(max_datagram_size=MSS, group=group)
    cc.congestion_window, cc.ssthresh, cc.rtt = packets * MSS, 1, rtt
    cc.loss_interval = interval
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


@pytest.mark.parametrize("name", KINDS)
def test_controllers_made_inside_coupling_share_a_group_and_others_stand_alone(name: str) -> None:
    group = CoupledGroup()
    with coupling(group):
        a = create_congestion_control(name, max_datagram_size=MSS)
        b = create_congestion_control(name, max_datagram_size=MSS)
    alone = create_congestion_control(name, max_datagram_size=MSS)
    assert isinstance(a, KINDS[name]) and isinstance(alone, KINDS[name])
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


# -- OLIA: the paper's increase --------------------------------------------------------------


def _olia_per_ack(packets: list[int], rtts: list[float], alphas: list[float], r: int) -> float:
    """Khalili et al. (CoNEXT 2012), OLIA: the increase of w_r per ACK on path r,
    in packets: (w_r / rtt_r^2) / (sum_p w_p / rtt_p)^2 + alpha_r / w_r."""
    rate = sum(w / rtt for w, rtt in zip(packets, rtts, strict=True))
    return packets[r] / rtts[r] ** 2 / rate**2 + alphas[r] / packets[r]


def test_olia_alone_is_newreno() -> None:
    cc = olia(CoupledGroup(), 20, 0.05, 100 * MSS)
    assert cc.group.olia_alpha(cc) == 0.0
    assert cc.increase(20 * MSS) == pytest.approx(MSS)  # one MSS per window acked


def test_olia_moves_window_from_the_widest_path_to_thebest_one() -> None:
    # l / rtt^2: wide 1e5 / 0.02^2 = 2.5e8, best 1e6 / 0.05^2 = 4e8, far 1e6 / 0.1^2 = 1e8.
    # M (largest window) = {wide}, B (largest l / rtt^2) = {best}: B \ M = {best}, n = 3.
    group = CoupledGroup()
    windows, rtts = [30, 10, 20], [0.02, 0.05, 0.1]
    paths = [
        olia(group, w, rtt, interval)
        for w, rtt, interval in zip(windows, rtts, [100_000, 1_000_000, 1_000_000], strict=True)
    ]
    alphas = [-1 / 3, 1 / 3, 0.0]
    assert [group.olia_alpha(path) for path in paths] == pytest.approx(alphas)
    for r, path in enumerate(paths):
        # One packet acknowledged: the window grows by the formula's packets, times MSS.
        assert path.increase(MSS) / MSS == pytest.approx(_olia_per_ack(windows, rtts, alphas, r))


def test_olia_alpha_is_zero_when_thebest_path_has_the_largest_window() -> None:
    group = CoupledGroup()
    windows, rtts = [30, 10], [0.02, 0.05]
    paths = [olia(group, 30, 0.02, 1_000_000), olia(group, 10, 0.05, 100_000)]
    assert [group.olia_alpha(path) for path in paths] == [0.0, 0.0]
    for r, path in enumerate(paths):
        assert path.increase(MSS) / MSS == pytest.approx(_olia_per_ack(windows, rtts, [0, 0], r))


def test_olia_splits_alpha_over_severalbest_paths() -> None:
    # Two equally good paths without the largest window share the 1/n between them.
    group = CoupledGroup()
    wide = olia(group, 30, 0.05, 10_000)
    best = [olia(group, 10, 0.05, 500_000), olia(group, 12, 0.05, 500_000)]
    assert [group.olia_alpha(path) for path in best] == pytest.approx([1 / 6, 1 / 6])
    assert group.olia_alpha(wide) == pytest.approx(-1 / 3)


def test_olia_shrinks_the_widest_path_down_to_the_minimum_window() -> None:
    # The widest path is far (l / rtt^2 the lower): alpha's -1/(2 * 30) per ACK outweighs
    # its share.
    group = CoupledGroup()
    wide, best = olia(group, 30, 0.2, 100_000), olia(group, 10, 0.01, 100_000)
    per_ack = _olia_per_ack([30, 10], [0.2, 0.01], [-1 / 2, 1 / 2], 0)
    assert per_ack < 0
    for n in range(30):
        wide.on_packet_acked(now=1.0, packet=_packet(n, 0.9))
    assert wide.congestion_window - 30 * MSS == pytest.approx(30 * per_ack * MSS, rel=0.05)
    # Just over the minimum, still the widest: the cut stops at the minimum window.
    wide.congestion_window = K_MINIMUM_WINDOW * MSS + 100
    best.congestion_window = K_MINIMUM_WINDOW * MSS
    wide.on_packet_acked(now=1.0, packet=_packet(30, 0.9))
    assert wide.congestion_window == K_MINIMUM_WINDOW * MSS


def test_olia_loss_interval_is_the_larger_of_the_last_two() -> None:
    cc = olia(CoupledGroup(), 20, 0.05, 0)
    for n in range(10):
        cc.on_packet_acked(now=1.0, packet=_packet(n, 0.9))
    assert cc.loss_interval == 10 * MSS  # no loss yet: all acknowledged so far
    cc.on_packets_lost(now=1.1, packets=[_packet(10, 1.0)])
    for n in range(11, 15):
        cc.on_packet_acked(now=1.3, packet=_packet(n, 1.2))
    assert cc.loss_interval == 10 * MSS  # between the two last losses: 10 > 4 since
    for n in range(15, 23):
        cc.on_packet_acked(now=1.3, packet=_packet(n, 1.2))
    assert cc.loss_interval == 12 * MSS  # since the last loss: 12 > 10
    cc.on_packets_lost(now=2.1, packets=[_packet(23, 2.0)])
    assert cc.loss_interval == 12 * MSS


# -- a shared bottleneck, round by round ------------------------------------------------------


def _packet(number: int, sent_at: float) -> QuicSentPacket:
    packet = QuicSentPacket(Epoch.ONE_RTT, True, True, False, number, QuicPacketType.ONE_RTT)
    packet.sent_time, packet.sent_bytes = sent_at, MSS
    return packet


PathCc = RenoCongestionControl | CoupledCongestionControl


def _simulate(
    flows: list[list[PathCc]], loss: list[float], rounds: int, seed: int
) -> list[list[float]]:
    """Mean bytes per round of each path of each flow; path j of every flow crosses
    bottleneck j, which loses each packet with probability loss[j]."""
    rng = random.Random(seed)
    delivered = [[[0.0] * rounds for _ in flow] for flow in flows]
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
                delivered[index][path][round_] += (len(sent) - len(lost)) * MSS
    # past the start
    return [[statistics.fmean(d[rounds // 5 :]) for d in flow] for flow in delivered]


def _flow_totals(
    flows: list[list[PathCc]], loss: list[float], rounds: int, seed: int
) -> list[float]:
    return [sum(paths) for paths in _simulate(flows, loss, rounds, seed)]


def _reno() -> RenoCongestionControl:
    cc = RenoCongestionControl(max_datagram_size=MSS)
    cc.ssthresh = cc.congestion_window
    return cc


def _pair(kind: type[CoupledCongestionControl]) -> list[PathCc]:
    group = CoupledGroup()
    paths: list[PathCc] = []
    for _ in range(2):
        cc = kind(max_datagram_size=MSS, group=group)
        cc.ssthresh = cc.congestion_window
        paths.append(cc)
    return paths


@pytest.mark.parametrize("kind", KINDS.values())
def test_two_coupled_paths_on_one_bottleneck_take_one_flows_share(
    kind: type[CoupledCongestionControl],
) -> None:
    # Both paths of the coupled flow cross the same bottleneck (1 % loss) as a NewReno flow.
    coupled, single = _flow_totals([_pair(kind), [_reno()]], [0.01, 0.01], rounds=4000, seed=7)
    assert 0.7 <= coupled / single <= 1.3, (coupled, single)


def test_two_uncoupled_paths_on_one_bottleneck_take_two_shares() -> None:
    # The same two paths as plain NewReno: the simulation tells coupled from not.
    loose, alone = _flow_totals([[_reno(), _reno()], [_reno()]], [0.01, 0.01], rounds=4000, seed=7)
    assert loose / alone >= 1.6, (loose, alone)


@pytest.mark.parametrize("kind", KINDS.values())
def test_traffic_moves_to_the_less_lossy_path(kind: type[CoupledCongestionControl]) -> None:
    paths = _pair(kind)
    _simulate([paths], [0.002, 0.03], rounds=3000, seed=3)
    clean, lossy = paths
    assert clean.congestion_window >= 3 * lossy.congestion_window


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_olia_leaves_less_on_the_lossy_path_than_lia(seed: int) -> None:
    # LIA's known flaw (not Pareto-optimal): it keeps more than it should on a congested
    # path; OLIA's alpha keeps moving window to the better one.
    def lossy_share(kind: type[CoupledCongestionControl]) -> float:
        ((clean, lossy),) = _simulate([_pair(kind)], [0.002, 0.03], rounds=3000, seed=seed)
        return lossy / (clean + lossy)

    assert lossy_share(OliaCongestionControl) < lossy_share(LiaCongestionControl)


# -- a drop-tail bottleneck, packet by packet -------------------------------------------------

DROP_TAIL_RATE = 20e6 / 8  # bytes/s: bench_cc's fairness bottleneck
DROP_TAIL_QUEUE = 64_000  # bytes: the path lab relay's tail-drop queue, about half a BDP
DROP_TAIL_RTT = 0.05  # the base RTT, all of it on the way back
ACK_JITTER = 0.001  # seeded, on the ACK path: the flows do not lock in phase


@dataclass
class _Sender:
    """One path of a flow: its controller, aioquic's pacer, its packets in flight."""

    cc: PathCc
    flow: int
    pacer: QuicPacketPacer = field(default_factory=lambda: QuicPacketPacer(max_datagram_size=MSS))
    in_flight: dict[int, QuicSentPacket] = field(default_factory=dict)
    next_number: int = 0
    srtt: float | None = None
    wake_at: float | None = None


class _DropTail:
    """Flows of paths through one FIFO bottleneck with a tail-drop byte queue, in virtual
    time: an ACK per packet, RFC 9002's loss detection (3 packets, or 9/8 RTT), each path
    paced as aioquic paces. Unlike the rounds above, losses are the queue's overflows:
    whoever sends while it is full loses, not each packet with a fixed probability."""

    def __init__(self, flows: list[list[PathCc]], seed: int) -> None:
        self._rng = random.Random(seed)
        self._senders = [_Sender(cc, index) for index, flow in enumerate(flows) for cc in flow]
        self._events: list[tuple[float, int, _Sender, QuicSentPacket | None]] = []
        self._seq = itertools.count()
        self._link_free = 0.0
        self.now = 0.0
        self.delivered = [0] * len(flows)
        # Each flow's loss events (window cuts): the share of its whole window (all its
        # paths) each took.
        self.cuts: list[list[float]] = [[] for _ in flows]

    def run(self, until: float) -> None:
        for sender in self._senders:
            self._send(sender, self.now)
        while self._events and self._events[0][0] <= until:
            self.now, _, sender, packet = heapq.heappop(self._events)
            if packet is None:
                sender.wake_at = None
            elif packet.packet_number in sender.in_flight:
                self._acked(sender, packet, self.now)
            self._send(sender, self.now)

    def _send(self, sender: _Sender, now: float) -> None:
        cc = sender.cc
        while cc.bytes_in_flight + MSS <= cc.congestion_window:
            at = sender.pacer.next_send_time(now)
            if at is not None:
                if sender.wake_at is None:
                    sender.wake_at = at
                    heapq.heappush(self._events, (at, next(self._seq), sender, None))
                return
            packet = _packet(sender.next_number, now)
            sender.next_number += 1
            cc.on_packet_sent(packet=packet)
            sender.pacer.update_after_send(now)
            sender.in_flight[packet.packet_number] = packet
            if (self._link_free - now) * DROP_TAIL_RATE + MSS > DROP_TAIL_QUEUE:
                continue  # tail drop: noticed when later packets are acknowledged
            self._link_free = max(self._link_free, now) + MSS / DROP_TAIL_RATE
            ack_at = self._link_free + DROP_TAIL_RTT + self._rng.random() * ACK_JITTER
            heapq.heappush(self._events, (ack_at, next(self._seq), sender, packet))

    def _acked(self, sender: _Sender, packet: QuicSentPacket, now: float) -> None:
        del sender.in_flight[packet.packet_number]
        rtt = now - packet.sent_time
        sender.srtt = rtt if sender.srtt is None else sender.srtt + (rtt - sender.srtt) / 8
        sender.cc.on_rtt_measurement(now=now, rtt=rtt)
        sender.cc.on_packet_acked(now=now, packet=packet)
        sender.pacer.update_rate(sender.cc.congestion_window, sender.srtt)
        self.delivered[sender.flow] += packet.sent_bytes
        too_old = now - 9 / 8 * max(sender.srtt, rtt)
        lost = [
            sent
            for number, sent in sender.in_flight.items()
            if number < packet.packet_number
            and (number <= packet.packet_number - 3 or sent.sent_time <= too_old)
        ]
        for sent in lost:
            del sender.in_flight[sent.packet_number]
        if lost:
            whole = sum(s.cc.congestion_window for s in self._senders if s.flow == sender.flow)
            before = sender.cc.congestion_window
            sender.cc.on_packets_lost(now=now, packets=lost)
            if sender.cc.congestion_window < before:
                self.cuts[sender.flow].append((before - sender.cc.congestion_window) / whole)


@dataclass(frozen=True, slots=True)
class _Shared:
    """A drop-tail run from 10 s to 60 s: each flow's bytes and window cuts."""

    delivered: tuple[int, int]
    cuts: tuple[list[float], list[float]]

    @property
    def ratio(self) -> float:
        return self.delivered[0] / self.delivered[1]


def _drop_tail(first: list[PathCc], seed: int) -> _Shared:
    """`first` against one NewReno flow through one drop-tail queue, all from slow start
    at once, measured from 10 s to 60 s (the first sawtooth cycles left out)."""
    net = _DropTail([first, [RenoCongestionControl(max_datagram_size=MSS)]], seed)
    net.run(10.0)
    start = list(net.delivered)
    counted = [len(cuts) for cuts in net.cuts]
    net.run(60.0)
    first_bytes, second_bytes = (e - b for e, b in zip(net.delivered, start, strict=True))
    first_cuts, second_cuts = (c[n:] for c, n in zip(net.cuts, counted, strict=True))
    return _Shared((first_bytes, second_bytes), (first_cuts, second_cuts))


def _coupled(kind: type[CoupledCongestionControl]) -> list[PathCc]:
    group = CoupledGroup()
    return [kind(max_datagram_size=MSS, group=group) for _ in range(2)]


@pytest.mark.parametrize("kind", KINDS.values())
def test_a_drop_tail_queue_cuts_a_coupled_flow_once_per_overflow_on_one_path(
    kind: type[CoupledCongestionControl],
) -> None:
    # What bench_cc's fairness rows run into (the relay's 64 kB queue at 20 Mbit/s): each
    # overflow costs each flow about one loss event whatever its window, not events in
    # proportion to its packets. A coupled flow's event halves one of its two paths, about
    # a quarter of its window (NewReno's: a half); the coupled increase makes up for that,
    # and its share stays within the runs' spread of one flow's, where two uncoupled paths
    # take two (docs/CONGESTION.md has the numbers per seed).
    runs = [_drop_tail(_coupled(kind), seed) for seed in (1, 2, 3, 4)]
    coupled_events = sum(len(run.cuts[0]) for run in runs)
    single_events = sum(len(run.cuts[1]) for run in runs)
    assert 0.7 <= coupled_events / single_events <= 1.4, (coupled_events, single_events)
    coupled_cut = statistics.fmean(cut for run in runs for cut in run.cuts[0])
    assert 0.2 <= coupled_cut <= 0.4, coupled_cut
    assert statistics.fmean(runs[0].cuts[1]) == pytest.approx(0.5, abs=0.01)
    assert 0.85 <= statistics.fmean(run.ratio for run in runs) <= 1.25, [r.ratio for r in runs]
    loose = _drop_tail([RenoCongestionControl(max_datagram_size=MSS) for _ in range(2)], 1)
    assert loose.ratio >= 1.6, loose.ratio


# -- on a connection --------------------------------------------------------------------------


@pytest.mark.parametrize("name", KINDS)
def test_a_coupled_connection_couples_its_paths_and_aggregates_disjoint_links(
    tmp_path: Path, name: str
) -> None:
    pair = generate_self_signed(tmp_path)
    client_cfg, server_cfg = memory.quic_configurations(
        pair.ca_certificate, pair.certificate, pair.private_key
    )
    server_cfg.congestion_control_algorithm = name
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
    assert len(members) == 2 and all(isinstance(m, KINDS[name]) for m in members)
    assert net.client.congestion_group.members == []  # the client runs reno
    # Disjoint 10 Mbit/s bottlenecks: the coupled paths still carry more than one link
    # (the handshake's slow start included).
    assert goodput > 12e6, goodput
    # A path that closes leaves the group: its window no longer holds the others back.
    net.client.abandon_path(path_id, now=net.now)
    net.run(5.0)
    assert path_id not in net.server.paths
    assert len(net.server.congestion_group.members) == 1
