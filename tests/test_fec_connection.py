"""FEC wired into NetSchedConnection: negotiation, protection, recovery, errors (sans-IO).

Two connections exchange datagrams in memory on a fake clock, with a one-way
delay and a drop rule per datagram, so that a test names exactly which packet
is lost. Retransmission needs at least three one-way delays (the loss must be
seen first), so data delivered sooner than that after a loss was recovered.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aioquic.buffer import encode_uint_var
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived
from aioquic.quic.packet import QuicErrorCode, QuicPacketType
from aioquic.quic.packet_builder import QuicDeliveryState, QuicSentPacket
from aioquic.tls import Epoch
from mp_harness import C1, C2, SERVER, Link, Net

from netsched_client.fec.codec import FecEncoder
from netsched_client.fec.control import FecMode, FecOverride
from netsched_client.fec.frames import REPAIR, Repair, SymbolAck
from netsched_client.fec.params import FecParameters, NegotiatedFec
from netsched_client.proto.connection import NetSchedConnection
from netsched_client.proto.fec_builder import FecPacketBuilder
from netsched_client.proto.fec_link import FecConfig, FecReceiver, FecRedundancyCapped, FecSender
from netsched_edge.tls import generate_self_signed

CLIENT = ("10.0.0.1", 1)  # labels only: nothing here touches a socket
SERVER_LABEL = ("10.0.0.2", 2)
DELAY = 0.05  # one way: RTT 100 ms
MESSAGE = 1000
REPAIR_DATAGRAM = 1150  # a 1120-byte repair symbol makes the largest datagrams
Drop = Callable[["Lossy", bool, bytes], bool]  # (harness, upstream, datagram) -> lost
FEC = FecConfig()


def _never(lossy: Lossy, upstream: bool, data: bytes) -> bool:
    return False


@dataclass
class Lossy:
    client: NetSchedConnection
    server: QuicConnection  # a plain aioquic one in one test
    drop: Drop = _never
    now: float = 1.0
    queue: list[tuple[float, int, bool, bytes]] = field(default_factory=list)
    delivered: dict[int, tuple[float | None, bytes]] = field(default_factory=dict)  # at server
    server_events: list[QuicEvent] = field(default_factory=list)
    client_events: list[QuicEvent] = field(default_factory=list)
    extra_delay: Callable[[bool, bytes], float] = lambda upstream, data: 0.0
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _server_started: bool = False

    def _send(self) -> None:
        sides = [(self.client, True)] + ([(self.server, False)] if self._server_started else [])
        for conn, upstream in sides:
            for data, _ in conn.datagrams_to_send(now=self.now):
                if not self.drop(self, upstream, data):
                    at = self.now + DELAY + self.extra_delay(upstream, data)
                    heapq.heappush(self.queue, (at, next(self._seq), upstream, data))

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            self._send()
            self._drain()
            timers = [t for t in (self.client.get_timer(), self.server.get_timer()) if t]
            due = min([*timers, *(q[0] for q in self.queue[:1])], default=None)
            if due is None or due > end:
                self.now = end
                return
            self.now = max(self.now, due)
            while self.queue and self.queue[0][0] <= self.now:
                _, _, upstream, data = heapq.heappop(self.queue)
                if upstream:
                    self._server_started = True
                    self.server.receive_datagram(data, CLIENT, now=self.now)
                else:
                    self.client.receive_datagram(data, SERVER_LABEL, now=self.now)
            for conn in (self.client, self.server):
                timer = conn.get_timer()
                if timer is not None and timer <= self.now:
                    conn.handle_timer(self.now)

    def _drain(self) -> None:
        while (event := self.client.next_event()) is not None:
            self.client_events.append(event)
        while (event := self.server.next_event()) is not None:
            self.server_events.append(event)
            if isinstance(event, StreamDataReceived):
                done, data = self.delivered.get(event.stream_id, (None, b""))
                data += event.data
                self.delivered[event.stream_id] = (self.now if event.end_stream else done, data)

    def send_message(
        self, index: int, slack: float = 0.05, override: FecOverride | None = None
    ) -> tuple[int, float]:
        """One message on a stream of its own, due `slack` after a loss-free delivery."""
        stream_id = self.client.get_next_available_stream_id(is_unidirectional=True)
        self.client.send_stream_data(stream_id, payload(index), end_stream=True)
        self.client.set_stream_fec(
            stream_id,
            deadline_at=self.now + DELAY + slack,
            loss_tolerance=0.01,
            override=override,
        )
        return stream_id, self.now

    @property
    def fec_server(self) -> NetSchedConnection:
        assert isinstance(self.server, NetSchedConnection)
        return self.server


def payload(index: int) -> bytes:
    return random.Random(index).randbytes(MESSAGE)


def configs(tmp: Path) -> tuple[QuicConfiguration, QuicConfiguration]:
    pair = generate_self_signed(tmp)
    client = QuicConfiguration(is_client=True, alpn_protocols=["x"], server_name="localhost")
    client.load_verify_locations(str(pair.ca_certificate))
    server = QuicConfiguration(is_client=False, alpn_protocols=["x"])
    server.load_cert_chain(pair.certificate, pair.private_key)
    return client, server


def lossy(
    tmp: Path,
    client_fec: FecConfig | None = FEC,
    server_fec: FecConfig | None = FEC,
    client_class: type[NetSchedConnection] = NetSchedConnection,
    drop: Drop = _never,
) -> Lossy:
    client_cfg, server_cfg = configs(tmp)
    client = client_class(configuration=client_cfg, fec=client_fec)
    server = NetSchedConnection(
        configuration=server_cfg,
        original_destination_connection_id=client.original_destination_connection_id,
        fec=server_fec,
    )
    client.connect(SERVER_LABEL, now=1.0)
    net = Lossy(client, server, drop)
    net.run(1.0)  # handshake, and the RTT estimate settles
    return net


def stream_messages(
    net: Lossy,
    count: int,
    interval: float = 0.01,
    slack: float = 0.05,
    override: FecOverride | None = None,
) -> dict[int, tuple[int, float]]:
    """`count` messages, one every `interval`; stream ID -> (index, sent at)."""
    sent = {}
    for index in range(count):
        stream_id, at = net.send_message(index, slack, override)
        sent[stream_id] = (index, at)
        net.run(interval)
    net.run(2.0)
    return sent


def latency(net: Lossy, stream_id: int, sent_at: float) -> float:
    done = net.delivered.get(stream_id, (None, b""))[0]
    return float("inf") if done is None else done - sent_at


# -- negotiation --------------------------------------------------------------------------------


def test_fec_is_used_only_when_both_offer(tmp_path: Path) -> None:
    both = lossy(tmp_path)
    assert both.client.fec_enabled and both.fec_server.fec_enabled
    assert both.fec_server.peer_fec == FecParameters()
    for client_fec, server_fec in ((None, FEC), (FEC, None)):
        net = lossy(tmp_path, client_fec, server_fec)
        assert not net.client.fec_enabled and not net.fec_server.fec_enabled


def test_symbol_size_is_the_smaller_offer(tmp_path: Path) -> None:
    """With 600-byte symbols a 1000-byte message takes two protected packets, both recoverable."""
    small = FecConfig(FecParameters(symbol_size=600))
    net = lossy(tmp_path, FEC, small)
    net.drop = drop_sent_in({net.now + 0.01 * 6}, smallest=300)
    sent = stream_messages(net, 20)
    assert {s: net.delivered[s][1] for s in sent} == {s: payload(i) for s, (i, _) in sent.items()}
    client = net.client.fec_stats()
    assert client.symbols_sent >= 2 * 20
    assert net.fec_server.fec_stats().symbols_recovered >= 1


def test_plain_aioquic_peer_sees_plain_quic(tmp_path: Path) -> None:
    """A peer that sent no netsched_fec gets no FEC frame: aioquic would close on one."""
    client_cfg, server_cfg = configs(tmp_path)
    client = NetSchedConnection(configuration=client_cfg, fec=FecConfig(protect_all=True))
    server = QuicConnection(
        configuration=server_cfg,
        original_destination_connection_id=client.original_destination_connection_id,
    )
    client.connect(SERVER_LABEL, now=1.0)
    net = Lossy(client, server)
    net.run(1.0)
    sent = {net.send_message(i)[0]: i for i in range(20)}
    net.run(2.0)
    assert not client.fec_enabled
    assert {s: net.delivered[s][1] for s in sent} == {s: payload(i) for s, i in sent.items()}
    assert not [
        e for e in net.server_events + net.client_events if isinstance(e, ConnectionTerminated)
    ]
    assert client.fec_stats().symbols_sent == 0 and client.fec_stats().repairs_sent == 0


# -- recovery -----------------------------------------------------------------------------------


def run_with_losses(
    tmp: Path,
    lost: list[int],
    count: int = 40,
    interval: float = 0.01,
    override: FecOverride | None = None,
) -> tuple[Lossy, dict[int, tuple[int, float]]]:
    """Messages every `interval`; the packets of messages `lost` (by index) are dropped once."""
    net = lossy(tmp)
    net.drop = drop_sent_in({net.now + interval * i for i in lost})
    return net, stream_messages(net, count, interval, override=override)


def drop_sent_in(starts: set[float], smallest: int = MESSAGE // 2) -> Drop:
    """Lose the first data-sized upstream datagram sent in each 10 ms step from `starts`.

    Pacing may hold a message back a little, so a step, not an instant, names it.
    """
    pending = sorted(starts)

    def drop(net: Lossy, upstream: bool, data: bytes) -> bool:
        if not upstream or not smallest < len(data) <= REPAIR_DATAGRAM:
            return False
        for start in pending:
            if start - 1e-9 <= net.now < start + 0.009:  # within the send step
                pending.remove(start)
                return True
        return False

    return drop


def test_lost_packet_recovered_without_retransmission(tmp_path: Path) -> None:
    net, sent = run_with_losses(tmp_path, [10])
    (lost_stream,) = [s for s, (i, _) in sent.items() if i == 10]
    assert net.delivered[lost_stream][1] == payload(10)
    # Delivered within the slack: a retransmission would need 3 one-way delays.
    assert latency(net, lost_stream, sent[lost_stream][1]) <= DELAY + 0.05
    assert net.fec_server.fec_stats().symbols_recovered >= 1
    # The SYMBOL_ACK settled the lost packet's data as delivered.
    assert net.client.fec_stats().symbols_recovered_by_peer >= 1


def test_every_message_intact_under_random_and_burst_loss(tmp_path: Path) -> None:
    """No false recovery: whatever is recovered or retransmitted arrives byte-exact."""
    lost = {*random.Random(5).sample(range(60), 6), 30, 31, 32}  # a burst too
    net, sent = run_with_losses(tmp_path, sorted(lost), count=60)
    assert {s: net.delivered[s][1] for s in sent} == {s: payload(i) for s, (i, _) in sent.items()}
    stats = net.fec_server.fec_stats()
    assert 1 <= stats.symbols_recovered <= len(lost)


def test_fec_cuts_late_messages(tmp_path: Path) -> None:
    # 50 messages/s: each loss halves the congestion window with or without FEC
    # (RFC 9265); at 100/s over 100 ms RTT a few losses starve Reno's window, late either way.
    lost = sorted(random.Random(9).sample(range(100), 5))
    on, on_sent = run_with_losses(tmp_path, lost, count=100, interval=0.02)
    off, off_sent = run_with_losses(tmp_path, lost, 100, 0.02, override=FecOverride(FecMode.OFF))
    late_on = sum(latency(on, s, t) > DELAY + 0.05 for s, (_, t) in on_sent.items())
    late_off = sum(latency(off, s, t) > DELAY + 0.05 for s, (_, t) in off_sent.items())
    assert late_off >= len(lost)
    assert late_on * 2 < late_off, (late_on, late_off)
    assert off.client.fec_stats().repairs_sent == 0


def test_reordered_repairs_still_recover(tmp_path: Path) -> None:
    """Repairs overtaken by later sources (held back 15 ms) still rebuild the lost packet."""
    net = lossy(tmp_path)
    net.extra_delay = lambda upstream, data: (
        0.015 if upstream and len(data) > REPAIR_DATAGRAM else 0
    )
    net.drop = drop_sent_in({net.now + 0.01 * i for i in (5, 17)})
    sent = stream_messages(net, 30, slack=0.06)
    assert {s: net.delivered[s][1] for s in sent} == {s: payload(i) for s, (i, _) in sent.items()}
    assert net.fec_server.fec_stats().symbols_recovered >= 1


def test_duplicate_repair_is_harmless() -> None:
    receiver = FecReceiver(NegotiatedFec(symbol_size=64, send_window=8, receive_window=8), 8)
    encoder = FecEncoder(64, 8)
    symbols = [bytes([i]) * 20 for i in range(4)]
    for i, s in enumerate(symbols):
        encoder.add_source(i, s)
    for i in (0, 1, 3):
        receiver.on_source(i, symbols[i])
    repair = Repair(1, 0, 4, 15, encoder.repair(1, 0, 4))
    receiver.on_repair(repair)
    receiver.on_repair(repair)
    assert [r.payload for r in receiver.backlog] == [symbols[2]]
    ack = receiver.symbol_ack()
    assert ack == SymbolAck((range(2, 3),))


def test_capped_redundancy_raises_an_event(tmp_path: Path) -> None:
    net = lossy(tmp_path, FecConfig(session=FecOverride(max_overhead=0.1)))
    stream_messages(net, 5)
    capped = [e for e in net.client_events if isinstance(e, FecRedundancyCapped)]
    assert capped and net.client.fec_stats().capped_decisions == len(capped)


# -- errors -------------------------------------------------------------------------------------


class _BadRepairs(NetSchedConnection):
    body: bytes = b""

    def _write_fec_repairs(self, builder: FecPacketBuilder, now: float) -> None:
        if self.body and self._handshake_complete:
            builder.start_packet(QuicPacketType.ONE_RTT, self._cryptos[Epoch.ONE_RTT])
            builder.protectable = False
            builder.start_frame(REPAIR, capacity=len(self.body)).push_bytes(self.body)
            self.body = b""


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        (
            bytes(4) + encode_uint_var(0) + encode_uint_var(1120),
            QuicErrorCode.FRAME_ENCODING_ERROR,
            "truncated",
        ),
        (
            b"\x00\x01\xf0\x00" + encode_uint_var(0) + encode_uint_var(16) + bytes(16),
            QuicErrorCode.FRAME_ENCODING_ERROR,
            "count",
        ),
        (
            b"\x00\x01\xf0\x02" + encode_uint_var(0) + encode_uint_var(16) + bytes(16),
            QuicErrorCode.PROTOCOL_VIOLATION,
            "Symbol Size",
        ),
    ],
)
def test_malformed_repair_closes_with_a_clear_error(
    tmp_path: Path, body: bytes, code: int, words: str
) -> None:
    net = lossy(tmp_path, client_class=_BadRepairs)
    client = net.client
    assert isinstance(client, _BadRepairs)
    client.body = body
    net.send_message(0)
    net.run(1.0)
    (closed,) = [e for e in net.client_events if isinstance(e, ConnectionTerminated)]
    assert closed.error_code == code
    assert words in closed.reason_phrase


# -- multipath ----------------------------------------------------------------------------------


def test_recovery_on_a_multipath_connection(tmp_path: Path) -> None:
    client_cfg, server_cfg = configs(tmp_path)
    # RTT order keeps the sources on the lossy path (the deadline scheduler would move
    # them to the clean one, leaving nothing to recover).
    client = NetSchedConnection(configuration=client_cfg, fec=FecConfig(), scheduler="lowest-rtt")
    server = NetSchedConnection(
        configuration=server_cfg,
        original_destination_connection_id=client.original_destination_connection_id,
        fec=FecConfig(),
        scheduler="lowest-rtt",
    )
    net = Net(client, server, {C1: Link(delay=DELAY, drop_every=9), C2: Link(delay=DELAY)})
    client.connect(SERVER, now=net.now)
    net.run(0.5)
    path_id = client.open_path(C2, SERVER, net.now)
    net.run(0.5)
    assert client.paths[path_id].state.value == "active"
    for index in range(40):
        stream_id = server.get_next_available_stream_id(is_unidirectional=True)
        server.send_stream_data(stream_id, payload(index), end_stream=True)
        server.set_stream_fec(stream_id, deadline_at=net.now + DELAY + 0.05, loss_tolerance=0.01)
        net.run(0.01)
    net.run(2.0)
    stats = server.fec_stats()
    sources, repairs = dict(stats.symbols_by_path), dict(stats.repairs_by_path)
    busiest = max(sources, key=sources.__getitem__)
    # Repairs prefer a path other than their sources': one path's loss spares them.
    assert sum(n for p, n in repairs.items() if p != busiest) > 0, (sources, repairs)
    assert client.fec_stats().symbols_recovered >= 1
    assert sorted(bytes(v) for v in net.received.values()) == sorted(payload(i) for i in range(40))


# -- sender state -------------------------------------------------------------------------------


Calls = list[tuple[QuicDeliveryState, int]]


def sender(window: int = 8) -> FecSender:
    return FecSender(NegotiatedFec(64, window, window), max_coding_window=window, protect_all=False)


def sent_packet(number: int, calls: Calls) -> QuicSentPacket:
    packet = QuicSentPacket(Epoch.ONE_RTT, True, True, False, number, QuicPacketType.ONE_RTT)
    packet.delivery_handlers = [(lambda state, n: calls.append((state, n)), (number,))]
    return packet


def test_symbol_ack_settles_the_data_once_and_the_loss_changes_nothing() -> None:
    fec, calls = sender(), Calls()
    packets = [sent_packet(n, calls) for n in range(3)]
    ids = [fec.take_symbol(p, bytes([n]) * 10, 0.5) for n, p in enumerate(packets)]
    assert ids == [0, 1, 2]
    assert fec.on_symbol_ack([range(1, 2)]) == 1
    assert calls == [(QuicDeliveryState.ACKED, 1)]
    # Recovery declares the packet lost later: its data was delivered, nothing is resent.
    for handler, args in packets[1].delivery_handlers:
        handler(QuicDeliveryState.LOST, *args)
    for handler, args in packets[0].delivery_handlers:
        handler(QuicDeliveryState.LOST, *args)
    assert calls == [(QuicDeliveryState.ACKED, 1), (QuicDeliveryState.LOST, 0)]
    assert fec.on_symbol_ack([range(0, 3)]) == 1  # only symbol 2 was still held


def test_repairs_follow_the_credit_and_the_peer_window() -> None:
    fec, calls = sender(), Calls()
    fec.note_request(4, None)
    for n in range(4):
        fec.note_request(4, None)
        fec.take_symbol(sent_packet(n, calls), bytes([n]) * 10, 0.5)
    assert fec.repair_due()
    repair = fec.next_repair()
    assert (repair.first_id, repair.count) == (0, 4)
    fec.commit_repair(repair, len(repair.encode()))
    assert fec.repair_due()  # 4 x 0.5: two repairs per window
    fec.commit_repair(fec.next_repair(), 0)
    assert not fec.repair_due()
    fec.on_fec_window(1, 0)
    fec.on_fec_window(0, 8)  # reordered: an older epoch is ignored
    fec.take_symbol(sent_packet(9, calls), b"x", 1.0)
    assert fec.peer_window == 0 and not fec.repair_due()


def test_a_flush_timer_sends_the_last_repair_within_the_slack() -> None:
    fec, calls = sender(), Calls()
    fec.now = 10.0
    fec.note_request(4, 0.05)  # a flush after 0.8 of it
    fec.take_symbol(sent_packet(0, calls), b"only", 0.25)
    assert not fec.repair_due() and fec.timer() == pytest.approx(10.04)
    fec.on_timer(10.04)
    assert fec.repair_due() and fec.timer() is None
    repair = fec.next_repair()
    assert (repair.first_id, repair.count) == (0, 1)


class _BadParameter(NetSchedConnection):
    def _serialize_transport_parameters(self) -> bytes:
        truncated = bytes.fromhex("c00000004e464543020144")  # scheme 1, then a cut varint
        return super()._serialize_transport_parameters() + truncated


def test_malformed_fec_parameter_is_a_transport_parameter_error(tmp_path: Path) -> None:
    net = lossy(tmp_path, client_fec=None, client_class=_BadParameter)
    closed = [e for e in net.client_events if isinstance(e, ConnectionTerminated)]
    assert closed and closed[0].error_code == QuicErrorCode.TRANSPORT_PARAMETER_ERROR
    assert "netsched_fec" in closed[0].reason_phrase


def test_both_directions_protect_and_recover_at_once(tmp_path: Path) -> None:
    """Packets carrying SYMBOL_ACK and protected data go both ways; no symbol holds a FEC frame."""
    net = lossy(tmp_path)
    losses = {True: {5, 14}, False: {6, 15}}  # per direction: message indices lost once
    starts = {up: {net.now + 0.01 * i for i in lost} for up, lost in losses.items()}
    drops = {up: drop_sent_in(times) for up, times in starts.items()}

    def drop(n: Lossy, upstream: bool, data: bytes) -> bool:
        return drops[upstream](n, True, data)  # drop_sent_in looks at upstream only

    net.drop = drop
    down: dict[int, int] = {}
    for index in range(25):
        net.send_message(index)
        stream_id = net.fec_server.get_next_available_stream_id(is_unidirectional=True)
        net.fec_server.send_stream_data(stream_id, payload(100 + index), end_stream=True)
        net.fec_server.set_stream_fec(
            stream_id, deadline_at=net.now + DELAY + 0.05, loss_tolerance=0.01
        )
        down[stream_id] = 100 + index
        net.run(0.01)
    net.run(2.0)
    assert not [e for e in net.client_events if isinstance(e, ConnectionTerminated)]
    received = {e.stream_id: e for e in net.client_events if isinstance(e, StreamDataReceived)}
    assert set(received) == set(down)
    assert net.fec_server.fec_stats().symbols_recovered >= 1
    assert net.client.fec_stats().symbols_recovered >= 1


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"loss_tolerance": 1.5}, "StreamFec.loss_tolerance"),
        ({"deadline_at": float("nan")}, "StreamFec.deadline_at"),
        ({"size_hint": -1}, "StreamFec.size_hint"),
        ({"override": "off"}, "StreamFec.override"),
    ],
)
def test_bad_request_options_are_refused_when_given(
    tmp_path: Path, kwargs: dict[str, object], words: str
) -> None:
    net = lossy(tmp_path)
    with pytest.raises(ValueError, match=words):
        net.client.set_stream_fec(0, **kwargs)  # type: ignore[arg-type]
