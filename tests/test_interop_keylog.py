"""Key-log reading: key phases and the server's stream limit, from real aioquic packets.

Two aioquic connections talk in memory; every datagram goes through a `Trace`
as the tap would record it, and the key log is what aioquic wrote.
"""

from __future__ import annotations

import io
import ssl
from pathlib import Path

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.crypto import CryptoContext
from aioquic.tls import CipherSuite

from interop.cases import key_updated, stream_limit_at_most_1000
from interop.keylog import (
    RESERVED_BITS,
    handshake_message_types,
    open_short_header,
    parse_keylog,
    parse_keylog_connections,
)
from interop.tap import Trace
from interop.wire import QUIC_V1
from netsched_edge.tls import generate_self_signed

ADDR = ("127.0.0.1", 4433)


class Pair:
    def __init__(self, tmp: Path, suite: CipherSuite, max_streams: int = 128) -> None:
        certs = generate_self_signed(tmp)
        self.keylog = io.StringIO()
        client_config = QuicConfiguration(
            is_client=True, alpn_protocols=["hq-interop"], secrets_log_file=self.keylog
        )
        client_config.verify_mode = ssl.CERT_NONE
        client_config.cipher_suites = [suite]
        server_config = QuicConfiguration(is_client=False, alpn_protocols=["hq-interop"])
        server_config.load_cert_chain(certs.certificate, certs.private_key)
        self.client = QuicConnection(configuration=client_config)
        self.server = QuicConnection(
            configuration=server_config,
            original_destination_connection_id=self.client.original_destination_connection_id,
        )
        # aioquic has no setting for it; the runner's multiplexing rule reads it.
        self.server._local_max_streams_bidi.value = max_streams
        self.trace = Trace()
        self.now = 1.0
        self.client.connect(ADDR, now=self.now)
        self.pump()

    def pump(self) -> None:
        for _ in range(50):
            moved = 0
            for src, dst, from_client in (
                (self.client, self.server, True),
                (self.server, self.client, False),
            ):
                for data, _ in src.datagrams_to_send(now=self.now):
                    self.trace.record(data, from_client=from_client)
                    dst.receive_datagram(data, ADDR, now=self.now)
                    moved += 1
            self.now += 0.01
            if not moved:
                return

    def exchange(self, rounds: int) -> None:
        for _ in range(rounds):
            stream_id = self.client.get_next_available_stream_id()
            self.client.send_stream_data(stream_id, b"GET /x\r\n", end_stream=True)
            self.pump()
            self.server.send_stream_data(stream_id, b"y" * 3000, end_stream=True)
            self.pump()


def one_rtt_packet(
    secret: bytes,
    dcid: bytes,
    number: int,
    payload: bytes,
    *,
    suite: CipherSuite = CipherSuite.AES_128_GCM_SHA256,
    loss_bits: bool = False,
) -> bytes:
    """A 1-RTT packet (2-byte packet number) with `secret`'s keys.

    `loss_bits`: the Q and L bits set and left out of header protection, as a
    sender of draft-ferrieuxhamchaoui-quic-lossbits does.
    """
    context = CryptoContext()
    context.setup(cipher_suite=suite, secret=secret, version=QUIC_V1)
    first = 0x40 | 0x01 | (RESERVED_BITS if loss_bits else 0)
    header = bytes([first]) + dcid + number.to_bytes(2, "big")
    packet = context.encrypt_packet(header, payload, number)
    if loss_bits:  # undo the mask over the Q and L bits
        packet = bytes([packet[0] ^ ((packet[0] ^ first) & RESERVED_BITS)]) + packet[1:]
    return packet


def test_short_header_of_a_multipath_path_opens(tmp_path: Path) -> None:
    """A packet on path 2 (draft-21 nonce: the path ID above the packet number)."""
    pair = Pair(tmp_path, CipherSuite.AES_128_GCM_SHA256)
    secret = parse_keylog(pair.keylog.getvalue()).client_traffic
    assert secret is not None
    dcid = pair.client._peer_cid.cid
    payload = b"\x01" + bytes(40)
    context = CryptoContext()
    context.setup(cipher_suite=CipherSuite.AES_128_GCM_SHA256, secret=secret, version=QUIC_V1)
    header = bytes([0x40 | 0x01]) + dcid + (5).to_bytes(2, "big")
    packet = context.encrypt_packet(header, payload, 5 | 2 << 64)
    assert open_short_header(packet, len(dcid), secret, 0x1301, QUIC_V1, 0) == payload


def test_short_header_with_unprotected_loss_bits_opens(tmp_path: Path) -> None:
    pair = Pair(tmp_path, CipherSuite.AES_128_GCM_SHA256)
    secret = parse_keylog(pair.keylog.getvalue()).client_traffic
    assert secret is not None
    dcid = pair.client._peer_cid.cid
    payload = b"\x01" + bytes(40)  # PING, PADDING
    opened = masked = 0
    for number in range(8):
        packet = one_rtt_packet(secret, dcid, number, payload, loss_bits=True)
        plain = one_rtt_packet(secret, dcid, number, payload)
        # Where the mask has bits over Q and L, the two differ on the wire.
        masked += packet[0] != plain[0]
        opened += open_short_header(packet, len(dcid), secret, 0x1301, QUIC_V1, 0) == payload
        assert open_short_header(plain, len(dcid), secret, 0x1301, QUIC_V1, 0) == payload
    assert opened == 8 and masked > 0


@pytest.mark.parametrize(
    "suite", [CipherSuite.AES_128_GCM_SHA256, CipherSuite.CHACHA20_POLY1305_SHA256]
)
def test_key_update_seen_through_header_protection(tmp_path: Path, suite: CipherSuite) -> None:
    pair = Pair(tmp_path, suite)
    pair.exchange(3)
    pair.trace.keylog = pair.keylog.getvalue()
    reason = key_updated(pair.trace)
    assert reason is not None and "/0, server" in reason  # no packet in phase 1 yet
    pair.client.request_key_update()
    pair.exchange(3)
    assert key_updated(pair.trace) is None


def test_stream_limit_read_from_encrypted_extensions(tmp_path: Path) -> None:
    modest = Pair(tmp_path / "a", CipherSuite.AES_128_GCM_SHA256, max_streams=128)
    modest.trace.keylog = modest.keylog.getvalue()
    assert stream_limit_at_most_1000(modest.trace) is None
    generous = Pair(tmp_path / "b", CipherSuite.AES_128_GCM_SHA256, max_streams=5000)
    generous.trace.keylog = generous.keylog.getvalue()
    assert stream_limit_at_most_1000(generous.trace) == "server set a stream limit > 1000 (5000)"


def test_rules_without_a_key_log(tmp_path: Path) -> None:
    pair = Pair(tmp_path, CipherSuite.AES_128_GCM_SHA256)
    assert "no key log" in str(key_updated(pair.trace))
    assert "no key log" in str(stream_limit_at_most_1000(pair.trace))


def test_parse_keylog_takes_the_first_connection() -> None:
    first, second = "aa" * 32, "bb" * 32
    text = "\n".join(
        [
            "# comment",
            f"CLIENT_TRAFFIC_SECRET_0 {first} {'01' * 32}",
            f"SERVER_TRAFFIC_SECRET_0 {second} {'02' * 32}",
            f"SERVER_TRAFFIC_SECRET_0 {first} {'03' * 32}",
            f"SERVER_HANDSHAKE_TRAFFIC_SECRET {first} not-hex",
        ]
    )
    secrets = parse_keylog(text)
    assert secrets.client_traffic == bytes.fromhex("01" * 32)
    assert secrets.server_traffic == bytes.fromhex("03" * 32)
    assert secrets.server_handshake is None


def test_parse_keylog_connections_keeps_each_connection_in_order() -> None:
    first, second = "aa" * 32, "bb" * 32
    text = "\n".join(
        [
            f"SERVER_HANDSHAKE_TRAFFIC_SECRET {second} {'02' * 32}",
            f"SERVER_HANDSHAKE_TRAFFIC_SECRET {first} {'01' * 32}",
            f"CLIENT_TRAFFIC_SECRET_0 {second} {'03' * 32}",
            f"CLIENT_TRAFFIC_SECRET_0 {'cc' * 32} zz",  # malformed: that connection has nothing
        ]
    )
    connections = parse_keylog_connections(text)
    assert [c.server_handshake for c in connections] == [
        bytes.fromhex("02" * 32),
        bytes.fromhex("01" * 32),
    ]
    assert connections[0].client_traffic == bytes.fromhex("03" * 32)
    assert parse_keylog_connections("") == []


def test_handshake_message_types_walks_tls_messages() -> None:
    messages = bytes([8, 0, 0, 2, 0, 0]) + bytes([11, 0, 0, 1, 0]) + bytes([20, 0, 0, 0])
    assert handshake_message_types(messages) == [8, 11, 20]
    assert handshake_message_types(messages[:3]) == []
