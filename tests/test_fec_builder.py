"""FecPacketBuilder: plain aioquic bytes without a sink, SOURCE_SYMBOL_ID surgery with one."""

from __future__ import annotations

from dataclasses import dataclass, field

from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import QuicFrameType, QuicPacketType
from aioquic.quic.packet_builder import QuicPacketBuilder, QuicSentPacket

from netsched_client.fec.frames import SYMBOL_ACK, SourceSymbolId, SymbolAck
from netsched_client.proto.fec_builder import SOURCE_SYMBOL_ID_ROOM, FecPacketBuilder, active_sink

CID = bytes(8)
STREAM = QuicFrameType.STREAM_BASE | 2  # with a length
LIMIT = 300


@dataclass
class Sink:
    payload_limit: int = LIMIT
    protect_all: bool = False
    taken: list[tuple[bytes, float]] = field(default_factory=list)
    packets: list[int] = field(default_factory=list)

    def note_packet(self, size: int) -> None:
        self.packets.append(size)

    def take_symbol(self, packet: QuicSentPacket, symbol: bytes, ratio: float) -> int:
        self.taken.append((symbol, ratio))
        return 1000


def crypto() -> CryptoPair:
    pair = CryptoPair()
    pair.setup_initial(cid=CID, is_client=True, version=1)
    return pair


def build(builder: QuicPacketBuilder, protect: bool) -> tuple[list[bytes], list[QuicSentPacket]]:
    """One 1-RTT packet: an ACK-like SYMBOL_ACK, then a STREAM frame."""
    builder.start_packet(QuicPacketType.ONE_RTT, crypto())
    builder.start_frame(SYMBOL_ACK).push_bytes(SymbolAck((range(3, 4),)).encode_body())
    buf = builder.start_frame(STREAM, capacity=8)
    buf.push_uint_var(4)
    buf.push_uint16(3 | 0x4000)
    buf.push_bytes(b"abc")
    if protect and isinstance(builder, FecPacketBuilder):
        builder.mark_protected(0.5)
    return builder.flush()


def new(cls: type[QuicPacketBuilder]) -> QuicPacketBuilder:
    return cls(host_cid=CID, peer_cid=CID, version=1, is_client=True, max_datagram_size=1200)


def plaintext(datagram: bytes) -> bytes:
    _, payload, _ = crypto_peer().decrypt_packet(datagram, 1 + len(CID), 0)
    return payload


def crypto_peer() -> CryptoPair:
    pair = CryptoPair()
    pair.setup_initial(cid=CID, is_client=False, version=1)
    return pair


def test_without_a_sink_the_bytes_are_aioquics() -> None:
    plain = build(new(QuicPacketBuilder), protect=False)[0]
    ours = build(new(FecPacketBuilder), protect=True)[0]  # marked, but no sink: plain
    assert ours == plain


def test_protected_packet_gets_its_symbol_id_after_the_acknowledgments() -> None:
    sink = Sink()
    with active_sink(sink):
        builder = new(FecPacketBuilder)
    datagrams, _ = build(builder, protect=True)
    stream_frame = bytes([STREAM]) + b"\x04\x40\x03abc"
    assert sink.taken == [(stream_frame, 0.5)]
    ack = SymbolAck((range(3, 4),)).encode()
    assert plaintext(datagrams[0]) == ack + SourceSymbolId(1000).encode() + stream_frame


def test_unmarked_packet_stays_plain_with_a_sink() -> None:
    sink = Sink()
    with active_sink(sink):
        builder = new(FecPacketBuilder)
    datagrams, _ = build(builder, protect=False)
    assert sink.taken == []
    assert SourceSymbolId(1000).encode() not in plaintext(datagrams[0])


def test_space_is_bounded_by_the_symbol_while_armed() -> None:
    sink = Sink()
    with active_sink(sink):
        builder = new(FecPacketBuilder)
    assert isinstance(builder, FecPacketBuilder)
    builder.start_packet(QuicPacketType.ONE_RTT, crypto())
    assert builder.remaining_flight_space == LIMIT
    builder.protectable = False  # a REPAIR packet: the whole datagram
    plain = new(QuicPacketBuilder)
    plain.start_packet(QuicPacketType.ONE_RTT, crypto())
    assert builder.remaining_flight_space == plain.remaining_flight_space
    assert plain.remaining_flight_space > LIMIT + SOURCE_SYMBOL_ID_ROOM
