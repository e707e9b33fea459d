"""Codecs of the FEC frames: draft-michel-quic-fec framing for the RFC 8681 RLC scheme.

Four frames, all documented with hex vectors in docs/FEC.md:

- SOURCE_SYMBOL_ID marks a protected packet: every byte after it, to the end
  of the packet payload, is the source symbol with that connection-wide ID.
- REPAIR carries one repair symbol and the RFC 8681 fields to decode it.
- SYMBOL_ACK lists the source symbol IDs the receiver holds (received or
  recovered), like an ACK frame, so the sender does not retransmit them.
- FEC_WINDOW announces how many source symbols the receiver's decoder holds.

Every frame is a frozen dataclass that checks its fields on construction,
with `encode()` (type included) and `decode_frame(frame_type, buf)` to read the
fields after the type. Malformed input raises `FrameEncodingError`, which the
connection turns into a FRAME_ENCODING_ERROR close; checks against negotiated
values (symbol size, windows) belong to the connection, which knows them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Final, Self

from aioquic.buffer import Buffer, BufferReadError, encode_uint_var

from netsched_client.fec.errors import FecError
from netsched_client.fec.rlc import MAX_SYMBOL_ID, MAX_SYMBOL_SIZE, MAX_WINDOW, MIN_SYMBOL_SIZE

# Private codepoints, one contiguous block (docs/FEC.md §7 says why these).
SOURCE_SYMBOL_ID: Final = 0x0FEC0000
REPAIR: Final = 0x0FEC0001
SYMBOL_ACK: Final = 0x0FEC0002
FEC_WINDOW: Final = 0x0FEC0003

MAX_REPAIR_KEY: Final = 0xFFFF  # RFC 8681's 16-bit Repair_Key
MAX_DT: Final = 15  # RFC 8681's 4-bit density threshold; 15 means dense
MAX_SYMBOL_ACK_RANGES: Final = 64  # per frame, like the ACK ranges we write per PATH_ACK
# A REPAIR frame's bytes besides the symbol, at most: type 4, key 2, DT|NSS 2,
# first ID 8, length 4 (a varint of up to 65535).
REPAIR_MAX_OVERHEAD: Final = 20


class FrameEncodingError(FecError):
    """A FEC frame could not be parsed, or its fields are out of range."""


def _check(frame: str, name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise FrameEncodingError(f"{frame}.{name}: {value} is out of range {low}..{high}")


class _Frame:
    __slots__ = ()
    frame_type: ClassVar[int]

    def encode_body(self) -> bytes:
        """The frame's fields after its type: what a packet builder writes after start_frame()."""
        raise NotImplementedError

    def encode(self) -> bytes:
        return encode_uint_var(self.frame_type) + self.encode_body()

    @classmethod
    def read(cls, buf: Buffer) -> Self:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class SourceSymbolId(_Frame):
    """The packet's remaining bytes are source symbol `symbol_id`."""

    frame_type: ClassVar[int] = SOURCE_SYMBOL_ID
    symbol_id: int

    def __post_init__(self) -> None:
        _check("SOURCE_SYMBOL_ID", "symbol_id", self.symbol_id, 0, MAX_SYMBOL_ID)

    def encode_body(self) -> bytes:
        return encode_uint_var(self.symbol_id)

    @classmethod
    def read(cls, buf: Buffer) -> Self:
        return cls(buf.pull_uint_var())


@dataclass(frozen=True, slots=True)
class Repair(_Frame):
    """A repair symbol over source symbols first_id .. first_id + count - 1 (RFC 8681 §3).

    The fields are those of `FecDecoder.receive_repair`, in the same order.
    """

    frame_type: ClassVar[int] = REPAIR
    repair_key: int
    first_id: int
    count: int  # RFC 8681's NSS
    dt: int
    symbol: bytes

    def __post_init__(self) -> None:
        _check("REPAIR", "repair_key", self.repair_key, 0, MAX_REPAIR_KEY)
        _check("REPAIR", "dt", self.dt, 0, MAX_DT)
        _check("REPAIR", "count", self.count, 1, MAX_WINDOW)
        _check("REPAIR", "first_id", self.first_id, 0, MAX_SYMBOL_ID - self.count + 1)
        _check("REPAIR", "symbol length", len(self.symbol), MIN_SYMBOL_SIZE, MAX_SYMBOL_SIZE)

    def encode_body(self) -> bytes:
        # Repair Key (16) | DT (4) | NSS (12): RFC 8681's Repair FEC Payload ID,
        # with the 32-bit ESI widened to a varint first source symbol ID.
        fixed = ((self.repair_key << 16) | (self.dt << 12) | self.count).to_bytes(4, "big")
        return (
            fixed + encode_uint_var(self.first_id) + encode_uint_var(len(self.symbol)) + self.symbol
        )

    @classmethod
    def read(cls, buf: Buffer) -> Self:
        repair_key = buf.pull_uint16()
        word = buf.pull_uint16()
        first_id = buf.pull_uint_var()
        length = buf.pull_uint_var()
        # Checked before reading so that the error names the field, not the buffer.
        _check("REPAIR", "symbol length", length, MIN_SYMBOL_SIZE, MAX_SYMBOL_SIZE)
        return cls(repair_key, first_id, word & 0xFFF, word >> 12, buf.pull_bytes(length))


@dataclass(frozen=True, slots=True)
class SymbolAck(_Frame):
    """Source symbol IDs the receiver holds, as ascending, disjoint, non-adjacent ranges.

    Encoded like an ACK frame's ranges (RFC 9000 §19.3.1) without the delay.
    """

    frame_type: ClassVar[int] = SYMBOL_ACK
    ranges: tuple[range, ...]

    def __post_init__(self) -> None:
        _check("SYMBOL_ACK", "range count", len(self.ranges), 1, MAX_SYMBOL_ACK_RANGES)
        previous_stop = -1  # a range must start past the previous one's end, gap >= 1
        for item in self.ranges:
            if item.step != 1 or item.stop <= item.start:
                raise FrameEncodingError(f"SYMBOL_ACK.ranges: {item!r} is empty or strided")
            if item.start <= previous_stop:
                raise FrameEncodingError(
                    f"SYMBOL_ACK.ranges: {item!r} must start at {previous_stop + 1} or above "
                    f"(ranges ascend, with gaps)"
                )
            _check("SYMBOL_ACK", "largest", item.stop - 1, 0, MAX_SYMBOL_ID)
            previous_stop = item.stop

    @classmethod
    def newest(cls, ranges: Sequence[range]) -> SymbolAck:
        """The frame for the highest `MAX_SYMBOL_ACK_RANGES` of sorted, merged `ranges`.

        A RangeSet of received IDs qualifies: older ranges were acknowledged
        before or no longer matter to the sender's window.
        """
        return cls(tuple(ranges)[-MAX_SYMBOL_ACK_RANGES:])

    def encode_body(self) -> bytes:
        last = self.ranges[-1]
        fields = [last.stop - 1, len(self.ranges) - 1, last.stop - 1 - last.start]
        above = last.start
        for item in reversed(self.ranges[:-1]):
            fields += [above - item.stop - 1, item.stop - 1 - item.start]  # gap, length
            above = item.start
        return b"".join(map(encode_uint_var, fields))

    @classmethod
    def read(cls, buf: Buffer) -> Self:
        largest = buf.pull_uint_var()
        extra = buf.pull_uint_var()
        _check("SYMBOL_ACK", "range count", extra + 1, 1, MAX_SYMBOL_ACK_RANGES)
        smallest = largest - buf.pull_uint_var()
        ranges = [range(smallest, largest + 1)]
        for _ in range(extra):
            largest = smallest - buf.pull_uint_var() - 2
            smallest = largest - buf.pull_uint_var()
            ranges.append(range(smallest, largest + 1))
        if smallest < 0:
            raise FrameEncodingError(f"SYMBOL_ACK: ranges go below symbol ID 0 (to {smallest})")
        return cls(tuple(reversed(ranges)))


@dataclass(frozen=True, slots=True)
class FecWindow(_Frame):
    """From epoch `epoch` on, the receiver's decoder holds `window` source symbols."""

    frame_type: ClassVar[int] = FEC_WINDOW
    epoch: int
    window: int  # 0: send no repair symbols

    def __post_init__(self) -> None:
        _check("FEC_WINDOW", "epoch", self.epoch, 0, MAX_SYMBOL_ID)
        _check("FEC_WINDOW", "window", self.window, 0, MAX_WINDOW)

    def encode_body(self) -> bytes:
        return encode_uint_var(self.epoch) + encode_uint_var(self.window)

    @classmethod
    def read(cls, buf: Buffer) -> Self:
        return cls(buf.pull_uint_var(), buf.pull_uint_var())


FecFrame = SourceSymbolId | Repair | SymbolAck | FecWindow

FRAME_CLASSES: Final[dict[int, type[FecFrame]]] = {
    cls.frame_type: cls for cls in (SourceSymbolId, Repair, SymbolAck, FecWindow)
}


def decode_frame(frame_type: int, buf: Buffer) -> FecFrame:
    """Read one FEC frame whose type varint was already consumed."""
    cls = FRAME_CLASSES.get(frame_type)
    if cls is None:
        raise FrameEncodingError(f"not a FEC frame type: 0x{frame_type:x}")
    try:
        return cls.read(buf)
    except BufferReadError as exc:
        raise FrameEncodingError(f"truncated frame 0x{frame_type:x}") from exc


def parse_frame(data: bytes) -> FecFrame:
    """Decode a whole encoded frame (type included); trailing bytes are an error."""
    buf = Buffer(data=data)
    try:
        frame_type = buf.pull_uint_var()
    except BufferReadError as exc:
        raise FrameEncodingError("no complete frame type") from exc
    frame = decode_frame(frame_type, buf)
    if not buf.eof():
        raise FrameEncodingError(f"{len(data) - buf.tell()} trailing bytes after frame")
    return frame
