"""The rules of resumption, zerortt, longrtt, amplificationlimit, ipv6 and goodput.

Where a rule reads encrypted packets, real aioquic connections (sans-IO) make
them, with a key log; the datagrams are recorded into a Trace as the tap would.
"""

from __future__ import annotations

import io
import ssl
from pathlib import Path

from aioquic.buffer import encode_uint_var
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.tls import CipherSuite, SessionTicket
from test_interop_keylog import one_rtt_packet

from interop.cases import (
    CASES_BY_NAME,
    MAX_ONE_RTT_CLIENT_PAYLOAD,
    Findings,
    Measurement,
    Weaker,
    check,
    client_hello_retransmitted,
    goodput,
    only_ipv6,
    resumed_without_certificate,
    sent_zero_rtt,
    within_amplification_limit,
)
from interop.keylog import parse_keylog_connections
from interop.tap import Datagram, Trace
from interop.wire import PacketType
from netsched_edge.tls import generate_self_signed

ADDR = ("127.0.0.1", 4433)
AES_256 = CipherSuite.AES_256_GCM_SHA384  # what aioquic's client offers first


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


def pump(client: QuicConnection, server: QuicConnection, trace: Trace, now: float = 1.0) -> float:
    """Deliver datagrams both ways until none moves; returns the time it got to."""
    for _ in range(50):
        moved = 0
        for src, dst, from_client in ((client, server, True), (server, client, False)):
            for data, _ in src.datagrams_to_send(now=now):
                trace.record(data, from_client=from_client, client=ADDR, at=now)
                dst.receive_datagram(data, ADDR, now=now)
                moved += 1
        now += 0.01
        if not moved:
            break
    return now


def request(client: QuicConnection, name: str) -> None:
    client.send_stream_data(client.get_next_available_stream_id(), f"GET /{name}\r\n".encode())


def two_connections(tmp: Path, *, early: bool, late: int = 0) -> Trace:
    """A first connection that gets a ticket, then a second that resumes with it, and
    sends `late` requests after its handshake (in 1-RTT)."""
    server, trace, keylog = Server(tmp), Trace(), io.StringIO()
    client, peer, tickets = connect(server, trace, keylog)
    pump(client, peer, trace)
    assert tickets, "aioquic's server sends a ticket after the handshake"
    client, peer, _ = connect(server, trace, keylog, tickets[-1])
    if early:  # written before any packet went out: 0-RTT
        for index in range(5):
            request(client, "x" * 250 + str(index))
    now = pump(client, peer, trace)
    for index in range(late):
        request(client, "y" * 250 + str(index))
    pump(client, peer, trace, now)
    trace.keylog = keylog.getvalue()
    return trace


def test_resumption_rule_reads_both_handshakes(tmp_path: Path) -> None:
    trace = two_connections(tmp_path, early=False)
    assert trace.handshakes() == 2
    assert resumed_without_certificate(trace) is None
    assert check(CASES_BY_NAME["resumption"], trace).problems == ()
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


def test_zero_rtt_rule_counts_stream_data_decrypted(tmp_path: Path) -> None:
    trace = two_connections(tmp_path, early=True)
    assert trace.of(PacketType.ZERO_RTT, from_client=True)
    assert sent_zero_rtt(trace) is None  # decrypted: no weaker note
    assert check(CASES_BY_NAME["zerortt"], trace) == Findings()
    # PMTU probes in 1-RTT (qh3, picoquic): padding, which the key log shows is no request.
    secret = parse_keylog_connections(trace.keylog)[1].client_traffic
    assert secret is not None
    dcid = trace.client_one_rtt[-1].data[1:9]  # aioquic's 8-byte CIDs
    for number in range(1000, 1006):
        probe = one_rtt_packet(secret, dcid, number, b"\x01" + bytes(1200), suite=AES_256)
        trace.record(probe, from_client=True, client=ADDR)
    assert trace.one_rtt_bytes[True] > MAX_ONE_RTT_CLIENT_PAYLOAD
    assert sent_zero_rtt(trace) is None
    # Without the key log, sizes are all there is: the padding counts, and the note says so.
    trace.keylog = ""
    found = sent_zero_rtt(trace)
    assert isinstance(found, Weaker) and "0-RTT packets were not decrypted" in found.note
    assert f"of {trace.one_rtt[True]} client 1-RTT packets not decrypted" in found.note
    assert "too much data in 1-RTT packets" in str(found.problem)
    assert "estimated from the size of" in str(found.problem)
    findings = check(CASES_BY_NAME["zerortt"], trace)
    assert findings.problems == (found.problem,) and findings.notes == (found.note,)


def test_zero_rtt_rule_opens_a_new_dcid_whose_first_packet_does_not(tmp_path: Path) -> None:
    trace = two_connections(tmp_path, early=True)
    secret = parse_keylog_connections(trace.keylog)[1].client_traffic
    assert secret is not None
    moved = b"n" * 8  # another of the server's CIDs
    # quiche pads a datagram with zeros after a coalesced 1-RTT packet: it opens for nobody.
    padded = one_rtt_packet(secret, moved, 900, b"\x01" + bytes(60), suite=AES_256) + bytes(24)
    trace.record(padded, from_client=True, client=ADDR)
    stream = b"\x0a\x04" + encode_uint_var(1000) + bytes(1000)  # STREAM with LEN, 1000 bytes
    for number in range(901, 907):
        trace.record(one_rtt_packet(secret, moved, number, stream, suite=AES_256), from_client=True)
    found = sent_zero_rtt(trace)
    assert isinstance(found, Weaker) and found.note.startswith("1 of ")
    assert "6000 of STREAM data decrypted" in str(found.problem)
    assert "from the size of 1 packets not decrypted" in str(found.problem)


def test_zero_rtt_rule_fails_requests_sent_in_1rtt(tmp_path: Path) -> None:
    trace = two_connections(tmp_path, early=True, late=25)
    late = sum(len(f"GET /{'y' * 250}{index}\r\n") for index in range(25))
    assert sent_zero_rtt(trace) == (
        f"client sent too much data in 1-RTT packets ({late} bytes of STREAM data, "
        f"at most {MAX_ONE_RTT_CLIENT_PAYLOAD})"
    )


def test_zero_rtt_rule_without_early_secret(tmp_path: Path) -> None:
    trace = two_connections(tmp_path, early=True)
    lines = trace.keylog.splitlines()
    trace.keylog = "\n".join(line for line in lines if "EARLY" not in line)
    found = sent_zero_rtt(trace)
    assert found == Weaker("the client's 0-RTT packets were not decrypted (key log)")


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
