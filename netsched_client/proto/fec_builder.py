"""The packet builder that turns protected 1-RTT packets into FEC source symbols.

aioquic builds every packet with the `QuicPacketBuilder` it names in
`aioquic.quic.connection`; `install()` puts `FecPacketBuilder` there once. A
builder made while no connection has a `SymbolSink` active (`active_sink`)
behaves exactly like aioquic's, so plain connections in the same process are
unaffected. While a sink is active, the builder:

- keeps every 1-RTT packet that may be protected within the sink's symbol
  limit, with room for the SOURCE_SYMBOL_ID frame (`remaining_*_space`);
- on finishing a packet the connection marked protected (`mark_protected`), or
  any ack-eliciting one when the sink protects everything, inserts
  SOURCE_SYMBOL_ID after the leading ACK frames and hands the bytes after it,
  the source symbol, to the sink with the packet (docs/FEC.md §3).

ACK frames stay outside the symbol: a recovered ACK would arrive late and
only distort RTT samples.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Final, Protocol

from aioquic.buffer import Buffer
from aioquic.quic import connection as aioquic_connection
from aioquic.quic import packet_builder as aioquic_packet_builder
from aioquic.quic.packet import QuicFrameType, QuicPacketType
from aioquic.quic.packet_builder import QuicDeliveryHandler, QuicPacketBuilder, QuicSentPacket

from ..fec.frames import SYMBOL_ACK, SourceSymbolId
from .multipath import frames as mp_frames

# SOURCE_SYMBOL_ID at most: a 4-byte type and an 8-byte symbol ID.
SOURCE_SYMBOL_ID_ROOM: Final = 12
# Frames a sender writes ahead of the symbol: acknowledgments (RFC 9000 ACK,
# draft-21 PATH_ACK, our SYMBOL_ACK, which no symbol may hold).
_LEADING_FRAME_TYPES: Final = frozenset(
    {
        QuicFrameType.ACK,
        QuicFrameType.ACK_ECN,
        mp_frames.PATH_ACK,
        mp_frames.PATH_ACK_ECN,
        SYMBOL_ACK,
    }
)


class SymbolSink(Protocol):
    """The sending half of a connection's FEC state, as the builder sees it."""

    @property
    def payload_limit(self) -> int:
        """Protected bytes a packet may hold now; 0 while nothing is to be protected."""

    @property
    def protect_all(self) -> bool:
        """Whether every ack-eliciting 1-RTT packet is protected."""

    def take_symbol(self, packet: QuicSentPacket, symbol: bytes, ratio: float) -> int:
        """Register `symbol` as the next source symbol sent in `packet`; return its ID."""

    def note_packet(self, size: int) -> None:
        """An ack-eliciting 1-RTT packet of `size` payload bytes, not a repair, was built."""


_active: ContextVar[SymbolSink | None] = ContextVar("netsched_fec_sink", default=None)


@contextmanager
def active_sink(sink: SymbolSink | None) -> Iterator[None]:
    """Builders created inside the block feed `sink` (None: plain aioquic builders)."""
    token = _active.set(sink)
    try:
        yield
    finally:
        _active.reset(token)


class FecPacketBuilder(QuicPacketBuilder):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._sink = _active.get()
        self._reset_packet_marks()

    def _reset_packet_marks(self) -> None:
        self.protectable = True  # the connection clears it for its REPAIR packets
        self._ratio = 0.0  # repairs per source owed for this packet; > 0: protected
        self._symbol_start: int | None = None  # where the first non-ACK frame begins
        self._ending = False

    def mark_protected(self, ratio: float) -> None:
        """The current packet carries data whose request wants `ratio` repairs per symbol."""
        self._ratio = max(self._ratio, ratio)

    @property
    def frames_end(self) -> int:
        """Where the next frame would start: tells whether a writer wrote anything."""
        return self._buffer.tell()

    def _limited(self) -> bool:
        return (
            self._sink is not None
            and self._sink.payload_limit > 0
            and self.protectable
            and not self._ending
            and self._packet_type == QuicPacketType.ONE_RTT
        )

    def _limit(self, space: int) -> int:
        if not self._limited():
            return space
        assert self._sink is not None
        payload_start = self._packet_start + self._header_size
        symbol_room = payload_start + self._sink.payload_limit - self._buffer.tell()
        return min(space - SOURCE_SYMBOL_ID_ROOM, symbol_room)

    @property
    def remaining_buffer_space(self) -> int:
        return self._limit(super().remaining_buffer_space)

    @property
    def remaining_flight_space(self) -> int:
        return self._limit(super().remaining_flight_space)

    def start_packet(self, packet_type: QuicPacketType, crypto: Any) -> None:
        super().start_packet(packet_type, crypto)  # ends the previous packet first
        self._reset_packet_marks()

    def start_frame(
        self,
        frame_type: int,
        capacity: int = 1,
        handler: QuicDeliveryHandler | None = None,
        handler_args: Sequence[Any] = [],
    ) -> Buffer:
        position = self._buffer.tell()
        buf = super().start_frame(frame_type, capacity, handler, handler_args)
        if self._symbol_start is None and frame_type not in _LEADING_FRAME_TYPES:
            self._symbol_start = position
        return buf

    def _end_packet(self) -> None:
        self._ending = True  # padding decisions see aioquic's own space
        if self._sink is not None and self._is_application_packet():
            self._sink.note_packet(self._buffer.tell() - self._packet_start)
        if self._protects():
            self._insert_symbol_id()
        super()._end_packet()

    def _is_application_packet(self) -> bool:
        """An ack-eliciting 1-RTT packet that is not a repair: the app's sending rate."""
        packet = self._packet
        return (
            packet is not None
            and packet.is_ack_eliciting
            and self.protectable
            and self._packet_type == QuicPacketType.ONE_RTT
        )

    def _protects(self) -> bool:
        sink, packet = self._sink, self._packet
        if sink is None or packet is None or self._symbol_start is None:
            return False
        if not self.protectable or sink.payload_limit == 0:
            return False
        if self._packet_type != QuicPacketType.ONE_RTT or self._datagram_needs_padding:
            return False  # padding would follow the symbol: PATH_CHALLENGE packets stay plain
        wanted = self._ratio > 0 or (sink.protect_all and packet.is_ack_eliciting)
        size = self._buffer.tell() - self._symbol_start
        return wanted and 0 < size <= sink.payload_limit

    def _insert_symbol_id(self) -> None:
        assert self._sink is not None and self._packet is not None
        assert self._symbol_start is not None
        symbol = self._buffer.data_slice(self._symbol_start, self._buffer.tell())
        symbol_id = self._sink.take_symbol(self._packet, symbol, self._ratio)
        self._buffer.seek(self._symbol_start)
        self._buffer.push_bytes(SourceSymbolId(symbol_id).encode())
        self._buffer.push_bytes(symbol)


def install() -> None:
    """Make aioquic's connections build packets with `FecPacketBuilder` (idempotent).

    Also makes SYMBOL_ACK, like ACK, neither ack-eliciting nor in flight, or two
    endpoints would acknowledge each other's SYMBOL_ACKs forever. aioquic reads
    these sets from module globals; to a connection without FEC the type stays
    unknown, so nothing changes for it.
    """
    aioquic_connection.QuicPacketBuilder = FecPacketBuilder  # type: ignore[misc]
    patches = (
        (aioquic_connection, "NON_ACK_ELICITING_FRAME_TYPES"),
        (aioquic_packet_builder, "NON_ACK_ELICITING_FRAME_TYPES"),
        (aioquic_packet_builder, "NON_IN_FLIGHT_FRAME_TYPES"),
    )
    for module, name in patches:
        setattr(module, name, frozenset(getattr(module, name)) | {SYMBOL_ACK})
