"""The rules of resumption, zerortt, longrtt, amplificationlimit, ipv6 and goodput.

Where a rule reads encrypted packets, real aioquic connections (sans-IO) make
them, with a key log; the datagrams are recorded into a Trace as the tap would.
"""

from __future__ import annotations

import io
import ssl
from pathlib import Path

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.tls import SessionTicket

from interop.cases import (
    CASES_BY_NAME,
    MAX_ONE_RTT_CLIENT_PAYLOAD,
    Measurement,
    check,
    client_hello_retransmitted,
    goodput,
    only_ipv6,
    resumed_without_certificate,
    sent_zero_rtt,
    within_amplification_limit,
)
from interop.tap import Datagram, Trace
from interop.wire import PacketType
from netsched_edge.tls import generate_self_signed

ADDR = ("127.0.0.1", 4433)


class Server:
    """One aioquic server configuration that issues and takes back session tickets."""

    def __init__(self, tmp: Path) -> None:
        certs = generate_self_signed(tmp)
        self.configuration = QuicConfiguration(is_client=False, alpn_protocols=["hq-interop"])
        self.configuration.load_cert_chain(certs.certificate, certs.private_key)
        self.tickets: dict[bytes, SessionTicket] = {}

    def accept(self, client: QuicConnection) -> QuicConnection:
        return QuicConnection(
            configuration=self.configuration,
            original_destination_connection_id=client.original_destination_connection_id,
            session_ticket_fetcher=self.tickets.pop,
            session_ticket_handler=lambda t: self.tickets.__setitem__(t.ticket, t),
        )


def connect(
    server: Server, trace: Trace, keylog: io.StringIO, ticket: SessionTicket | None = None
) -> tuple[QuicConnection, QuicConnection, list[SessionTicket]]:
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=["hq-interop"], secrets_log_file=keylog
    )
    configuration.verify_mode = ssl.CERT_NONE
    configuration.session_ticket = ticket
    received: list[SessionTicket] = []
    client = QuicConnection(configuration=configuration, session_ticket_handler=received.append)
    peer = server.accept(client)
    client.connect(ADDR, now=1.0)
    return client, peer, received


def pump(client: QuicConnection, server: QuicConnection, trace: Trace, now: float = 1.0) -> None:
    for _ in range(50):
        moved = 0
        for src, dst, from_client in ((client, server, True), (server, client, False)):
            for data, _ in src.datagrams_to_send(now=now):
                trace.record(data, from_client=from_client, client=ADDR, at=now)
                dst.receive_datagram(data, ADDR, now=now)
                moved += 1
        now += 0.01
        if not moved:
            return


def request(client: QuicConnection, name: str) -> None:
    client.send_stream_data(client.get_next_available_stream_id(), f"GET /{name}\r\n".encode())


def two_connections(tmp: Path, *, early: bool) -> Trace:
    """A first connection that gets a ticket, then a second that resumes with it."""
    server, trace, keylog = Server(tmp), Trace(), io.StringIO()
    client, peer, tickets = connect(server, trace, keylog)
    pump(client, peer, trace)
    assert tickets, "aioquic's server sends a ticket after the handshake"
    client, peer, _ = connect(server, trace, keylog, tickets[-1])
    if early:  # written before any packet went out: 0-RTT
        for index in range(5):
            request(client, "x" * 250 + str(index))
    pump(client, peer, trace)
    trace.keylog = keylog.getvalue()
    return trace


def test_resumption_rule_reads_both_handshakes(tmp_path: Path) -> None:
    trace = two_connections(tmp_path, early=False)
    assert trace.handshakes() == 2
    assert resumed_without_certificate(trace) is None
    assert check(CASES_BY_NAME["resumption"], trace) == []
    assert sent_zero_rtt(trace) == "client didn't send any 0-RTT data"


def test_resumption_rule_sees_a_full_second_handshake(tmp_path: Path) -> None:
    server, trace, keylog = Server(tmp_path), Trace(), io.StringIO()
    for _ in range(2):  # no ticket offered: two full handshakes
        client, peer, _ = connect(server, trace, keylog)
        pump(client, peer, trace)
    trace.keylog = keylog.getvalue()
    assert resumed_without_certificate(trace) == (
        "server sent a Certificate message in the second handshake"
    )
    trace.keylog = ""
    assert "no key log" in str(resumed_without_certificate(trace))


def test_zero_rtt_rule(tmp_path: Path) -> None:
    trace = two_connections(tmp_path, early=True)
    assert trace.of(PacketType.ZERO_RTT, from_client=True)
    assert sent_zero_rtt(trace) is None
    trace.one_rtt_bytes[True] += MAX_ONE_RTT_CLIENT_PAYLOAD  # as if it all went in 1-RTT
    assert "too much data in 1-RTT packets" in str(sent_zero_rtt(trace))


def test_longrtt_rule_counts_client_hello_retransmissions() -> None:
    configuration = QuicConfiguration(is_client=True, alpn_protocols=["hq-interop"])
    client = QuicConnection(configuration=configuration)
    client.connect(ADDR, now=0.0)
    trace = Trace()
    for data, _ in client.datagrams_to_send(now=0.0):
        trace.record(data, from_client=True)
    assert client_hello_retransmitted(trace) == "expected at least 2 ClientHellos, got 1"
    timer = client.get_timer()
    assert timer is not None
    client.handle_timer(now=timer)  # the PTO fires: no answer yet
    for data, _ in client.datagrams_to_send(now=timer):
        trace.record(data, from_client=True)
    assert client_hello_retransmitted(trace) is None


def datagrams(*steps: tuple[bool, int, tuple[PacketType, ...]]) -> Trace:
    trace = Trace()
    trace.datagrams_in_order = [Datagram(*step) for step in steps]
    return trace


def test_amplification_rule() -> None:
    initial, handshake = (PacketType.INITIAL,), (PacketType.HANDSHAKE,)
    # 1200 from the client allows 3600 (4800 tolerated) before the client's Handshake.
    ok = datagrams((True, 1200, initial), (False, 1200, initial), (False, 1200, handshake))
    ok.datagrams_in_order.append(Datagram(True, 100, (PacketType.INITIAL, *handshake)))
    ok.datagrams_in_order.append(Datagram(False, 1200, handshake))  # validated: no limit
    assert within_amplification_limit(ok) is None
    over = datagrams(*[(False, 1200, handshake)] * 3)
    over.datagrams_in_order.insert(0, Datagram(True, 1200, initial))
    over.datagrams_in_order.append(Datagram(False, 1200, handshake))
    assert "violated the amplification limit" in str(within_amplification_limit(over))
    never = datagrams((True, 1200, initial), (False, 1200, initial))
    assert "never sent a Handshake packet" in str(within_amplification_limit(never))
    vn = datagrams((True, 1200, initial), (False, 50, (PacketType.VERSION_NEGOTIATION,)))
    assert within_amplification_limit(vn) == "didn't expect a Version Negotiation packet"


def test_ipv6_rule_reads_the_client_addresses() -> None:
    trace = Trace()
    trace.record(b"\x40" + bytes(30), from_client=True, client=("::1", 5000))
    assert only_ipv6(trace) is None
    trace.record(b"\x40" + bytes(30), from_client=True, client=("127.0.0.1", 5000))
    assert only_ipv6(trace) == "the tap saw IPv4 client addresses: 127.0.0.1"


def test_goodput_times_the_server_one_rtt_datagrams() -> None:
    trace = Trace()
    assert goodput(trace) == "no server 1-RTT packets to time"
    trace.record(b"\x40" + bytes(1000), from_client=False, at=10.0)
    trace.record(b"\x40" + bytes(1000), from_client=True, at=10.5)  # the client's do not count
    trace.record(b"\x40" + bytes(1000), from_client=False, at=12.0)
    measured = goodput(trace)
    assert isinstance(measured, Measurement)
    assert measured.unit == "Mbit/s"
    assert abs(measured.value - 8 * 10 * 2**20 / 2.0 / 1e6) < 1e-6
    assert str(measured) == "41.9 Mbit/s"
