"""The observer's packet parsing: long headers, Retry tokens, ClientHello cipher suites."""

from __future__ import annotations

import itertools
import ssl

import pytest
from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicProtocolVersion, encode_quic_retry
from aioquic.tls import CipherSuite
from hypothesis import given
from hypothesis import strategies as st

from interop.wire import (
    PATH_CHALLENGE,
    PATH_RESPONSE,
    QUIC_V1,
    QUIC_V2,
    Packet,
    PacketType,
    WireError,
    client_hello_cipher_suites,
    frame_types,
    frames,
    offered_cipher_suites,
    packet_type,
    parse_datagram,
    path_frames,
    read_varint,
    reassemble,
    stream_data_bytes,
)

SERVER = ("127.0.0.1", 4433)


def client_first_flight(**config: object) -> list[bytes]:
    configuration = QuicConfiguration(is_client=True, alpn_protocols=["hq-interop"], **config)  # type: ignore[arg-type]
    configuration.verify_mode = ssl.CERT_NONE
    client = QuicConnection(configuration=configuration)
    client.connect(SERVER, now=0.0)
    return [data for data, _ in client.datagrams_to_send(now=0.0)]


def test_client_initial_parsed_from_a_real_client() -> None:
    (packet,) = parse_datagram(client_first_flight()[0])[:1]
    assert packet.kind is PacketType.INITIAL
    assert packet.version == QUIC_V1
    assert len(packet.dcid) == 8 and len(packet.scid) == 8
    assert packet.token == b""


def test_offered_cipher_suites_read_from_encrypted_initial() -> None:
    packets = [p for d in client_first_flight() for p in parse_datagram(d)]
    assert offered_cipher_suites(packets) == (
        CipherSuite.AES_256_GCM_SHA384,
        CipherSuite.AES_128_GCM_SHA256,
        CipherSuite.CHACHA20_POLY1305_SHA256,
    )
    only = [
        p
        for d in client_first_flight(cipher_suites=[CipherSuite.CHACHA20_POLY1305_SHA256])
        for p in parse_datagram(d)
    ]
    assert offered_cipher_suites(only) == (0x1303,)


def test_offered_cipher_suites_unreadable_with_wrong_keys() -> None:
    (packet,) = parse_datagram(client_first_flight()[0])[:1]
    # Another DCID derives other keys: decryption fails, nothing is read.
    forged = Packet(
        packet.kind, packet.size, packet.version, b"\x00" * 8, packet.scid, b"", packet.data
    )
    assert offered_cipher_suites([forged]) is None
    assert offered_cipher_suites([]) is None


def test_retry_token_and_version() -> None:
    data = encode_quic_retry(
        version=QuicProtocolVersion.VERSION_2,
        source_cid=b"S" * 8,
        destination_cid=b"C" * 8,
        original_destination_cid=b"O" * 8,
        retry_token=b"token-bytes",
    )
    (packet,) = parse_datagram(data)
    assert (packet.kind, packet.version, packet.token) == (
        PacketType.RETRY,
        QUIC_V2,
        b"token-bytes",
    )
    assert (packet.dcid, packet.scid) == (b"C" * 8, b"S" * 8)


def test_v2_renumbers_long_packet_types() -> None:
    assert packet_type(0xC0, QUIC_V1) is PacketType.INITIAL
    assert packet_type(0xD0, QUIC_V2) is PacketType.INITIAL
    assert packet_type(0xC0, QUIC_V2) is PacketType.RETRY
    assert packet_type(0xF0, QUIC_V1) is PacketType.RETRY
    assert packet_type(0xC0, 0) is PacketType.VERSION_NEGOTIATION


def test_short_header_ends_the_datagram() -> None:
    (packet,) = parse_datagram(b"\x40" + b"\x00" * 30)
    assert (packet.kind, packet.size) == (PacketType.ONE_RTT, 31)


def test_coalesced_packets_and_truncation() -> None:
    handshake = _long_header(0xE0, QUIC_V1, payload=b"\x00" * 20)
    one_rtt = b"\x41" + b"\x00" * 20
    kinds = [p.kind for p in parse_datagram(handshake + one_rtt)]
    assert kinds == [PacketType.HANDSHAKE, PacketType.ONE_RTT]
    with pytest.raises(WireError, match="runs past"):
        parse_datagram(handshake[:-5])
    # A broken second packet ends the datagram but keeps the first.
    assert [p.kind for p in parse_datagram(handshake + handshake[:-5])] == [PacketType.HANDSHAKE]


def test_read_varint_vectors() -> None:
    # RFC 9000 §A.1 examples.
    assert read_varint(bytes.fromhex("c2197c5eff14e88c"), 0) == (151288809941952652, 8)
    assert read_varint(bytes.fromhex("9d7f3e7d"), 0) == (494878333, 4)
    assert read_varint(bytes.fromhex("7bbd"), 0) == (15293, 2)
    assert read_varint(bytes.fromhex("25"), 0) == (37, 1)
    with pytest.raises(WireError):
        read_varint(bytes.fromhex("7b"), 0)


def test_client_hello_parser_rejects_partial_input() -> None:
    assert client_hello_cipher_suites(b"") is None
    assert client_hello_cipher_suites(b"\x02" + b"\x00" * 60) is None  # ServerHello type


@given(st.binary(max_size=200))
def test_parse_datagram_only_raises_wire_error(data: bytes) -> None:
    try:
        packets = parse_datagram(data)
    except WireError:
        return
    assert sum(p.size for p in packets) <= len(data)


@given(st.binary(min_size=1, max_size=300), st.lists(st.integers(0, 299), max_size=12))
def test_reassemble_recovers_contiguous_prefix(data: bytes, cuts: list[int]) -> None:
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    chunks = [(a, data[a:b]) for a, b in itertools.pairwise(bounds)]
    assert reassemble(reversed(chunks)) == data
    assert reassemble(chunks[1:]) == b""  # nothing from offset 0: nothing usable


def _long_header(first: int, version: int, payload: bytes) -> bytes:
    cid = b"\x08" + b"D" * 8
    return (
        bytes([first])
        + version.to_bytes(4, "big")
        + cid
        + cid
        + bytes([0x40 | (len(payload) >> 8), len(payload) & 0xFF])
        + payload
    )


# ---------------------------------------------------------------- 1-RTT frames


def _varint(value: int) -> bytes:
    buf = Buffer(capacity=8)
    buf.push_uint_var(value)
    return buf.data


_FRAME = st.one_of(
    st.just(b"\x01"),  # PING
    st.binary(min_size=8, max_size=8).map(lambda d: b"\x1a" + d),  # PATH_CHALLENGE
    st.binary(min_size=8, max_size=8).map(lambda d: b"\x1b" + d),  # PATH_RESPONSE
    st.integers(0, 2**30).map(lambda n: b"\x10" + _varint(n)),  # MAX_DATA
    st.tuples(st.integers(0, 2**20), st.integers(0, 2**20), st.integers(0, 100)).map(
        lambda t: b"\x02" + _varint(t[0]) + _varint(t[1]) + b"\x00" + _varint(t[2])
    ),  # ACK with no extra ranges
    st.tuples(st.integers(0, 99), st.binary(max_size=40)).map(
        lambda t: b"\x0b" + _varint(t[0]) + _varint(len(t[1])) + t[1]
    ),  # STREAM with LEN and FIN
    st.tuples(st.integers(0, 99), st.integers(0, 2**40), st.binary(max_size=40)).map(
        lambda t: b"\x0e" + _varint(t[0]) + _varint(t[1]) + _varint(len(t[2])) + t[2]
    ),  # STREAM with OFF and LEN
    st.tuples(st.integers(1, 9), st.binary(min_size=1, max_size=20)).map(
        lambda t: b"\x18" + _varint(t[0]) + b"\x00" + bytes([len(t[1])]) + t[1] + bytes(16)
    ),  # NEW_CONNECTION_ID
)


@given(st.lists(_FRAME, max_size=12))
def test_frames_walk_a_payload_frame_by_frame(encoded: list[bytes]) -> None:
    payload = b"".join(encoded)
    assert frame_types(payload) == [frame[0] for frame in encoded]
    challenges = [f[1:] for f in encoded if f[0] == PATH_CHALLENGE]
    assert path_frames(payload, PATH_CHALLENGE) == challenges


def test_frames_stop_at_an_unknown_type_and_keep_what_came_before() -> None:
    challenge = b"\x1a" + b"12345678"
    assert frame_types(challenge + b"\x40\xaf" + b"junk") == [PATH_CHALLENGE]
    assert path_frames(challenge + b"\x1b\x00", PATH_RESPONSE) == []  # truncated response
    with pytest.raises(WireError, match="runs past"):
        list(frames(b"\x1b\x00"))


def test_stream_data_bytes_counts_only_stream_data() -> None:
    with_len = b"\x0a\x04\x05hello"  # STREAM, LEN: stream 4, 5 bytes
    with_off_len = b"\x0e\x08\x41\x00\x03abc"  # STREAM, OFF, LEN: stream 8 at offset 256
    to_the_end = b"\x0c\x00\x10" + b"x" * 40  # STREAM, OFF, no LEN: the rest of the packet
    ack = b"\x02\x05\x00\x00\x00"
    payload = b"\x01" + ack + with_len + with_off_len + to_the_end
    assert stream_data_bytes(payload) == 5 + 3 + 40
    assert stream_data_bytes(ack + bytes(1200)) == 0  # a padded probe carries no request
    assert stream_data_bytes(with_len + b"\x0a\x04\x09abc") == 5  # a truncated tail: as far as read
