"""The packet layer in pure Python: the reference `_packet.pyx` is checked against.

Same API, same results, same exceptions as the compiled module (tests run
both); slower. See `packet.py` for the API's description.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence

from netsched_client.core.errors import PacketError

_Buffer = bytes | bytearray | memoryview

__all__ = [
    "ACK_ECN_FRAME",
    "ACK_FRAME",
    "DEFAULT_MAX_RANGES",
    "F_DATAGRAM",
    "F_DCID_LENGTH",
    "F_DCID_OFFSET",
    "F_KIND",
    "F_LENGTH",
    "F_OFFSET",
    "F_PN_OFFSET",
    "F_SCID_LENGTH",
    "F_SCID_OFFSET",
    "F_TOKEN_LENGTH",
    "F_TOKEN_OFFSET",
    "F_VERSION",
    "KIND_HANDSHAKE",
    "KIND_INITIAL",
    "KIND_INVALID",
    "KIND_ONE_RTT",
    "KIND_RETRY",
    "KIND_UNSUPPORTED_VERSION",
    "KIND_VERSION_NEGOTIATION",
    "KIND_ZERO_RTT",
    "MAX_CID_LENGTH",
    "MAX_PACKET_NUMBER",
    "MAX_PATH_ID",
    "MAX_VARINT",
    "PATH_ACK_ECN_FRAME",
    "PATH_ACK_FRAME",
    "RECORD_FIELDS",
    "RETRY_TAG_LENGTH",
    "VERSION_1",
    "VERSION_2",
    "VERSION_NEGOTIATION",
    "CidMap",
    "RangeSet",
    "build_long_header",
    "build_short_header",
    "decode_ack",
    "decode_packet_number",
    "decode_varint",
    "encode_ack",
    "encode_packet_number",
    "encode_varint",
    "parse_buffer",
    "parse_datagrams",
    "parse_packet",
]

VERSION_NEGOTIATION = 0x00000000
VERSION_1 = 0x00000001
VERSION_2 = 0x6B3343CF

KIND_ONE_RTT = 0
KIND_INITIAL = 1
KIND_ZERO_RTT = 2
KIND_HANDSHAKE = 3
KIND_RETRY = 4
KIND_VERSION_NEGOTIATION = 5
KIND_UNSUPPORTED_VERSION = 6
KIND_INVALID = 7

F_DATAGRAM = 0
F_OFFSET = 1
F_LENGTH = 2
F_KIND = 3
F_VERSION = 4
F_DCID_OFFSET = 5
F_DCID_LENGTH = 6
F_SCID_OFFSET = 7
F_SCID_LENGTH = 8
F_TOKEN_OFFSET = 9
F_TOKEN_LENGTH = 10
F_PN_OFFSET = 11
RECORD_FIELDS = 12

MAX_CID_LENGTH = 20
MAX_VARINT = (1 << 62) - 1
MAX_PACKET_NUMBER = (1 << 62) - 1
ACK_FRAME = 0x02
ACK_ECN_FRAME = 0x03
PATH_ACK_FRAME = 0x3E
PATH_ACK_ECN_FRAME = 0x3F
DEFAULT_MAX_RANGES = 256
MAX_PATH_ID = (1 << 32) - 1

RETRY_TAG_LENGTH = 16

# Long header type bits (byte 0, bits 4-5) to kind, per version (RFC 9000 §17.2, RFC 9369 §3.2).
_V1_TYPES = (KIND_INITIAL, KIND_ZERO_RTT, KIND_HANDSHAKE, KIND_RETRY)
_V2_TYPES = (KIND_RETRY, KIND_INITIAL, KIND_ZERO_RTT, KIND_HANDSHAKE)
_V1_BITS = {kind: bits for bits, kind in enumerate(_V1_TYPES)}
_V2_BITS = {kind: bits for bits, kind in enumerate(_V2_TYPES)}


# -- varints and packet numbers -----------------------------------------------------------------


def encode_varint(value: int) -> bytes:
    """`value` as a QUIC variable-length integer of the shortest form (RFC 9000 §16)."""
    if value < 0 or value > MAX_VARINT:
        raise PacketError(f"varint out of range: {value}")
    if value < 0x40:
        return bytes((value,))
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 0x40000000:
        return (value | 0x80000000).to_bytes(4, "big")
    return (value | 0xC000000000000000).to_bytes(8, "big")


def decode_varint(data: _Buffer, offset: int = 0) -> tuple[int, int]:
    """The varint at `offset` and the offset after it."""
    return _varint(data, offset, len(data))


def _varint(data: _Buffer, offset: int, end: int) -> tuple[int, int]:
    if offset < 0 or offset >= end:
        raise PacketError("varint: truncated")
    first = data[offset]
    size = 1 << (first >> 6)
    if offset + size > end:
        raise PacketError("varint: truncated")
    value = first & 0x3F
    for i in range(1, size):
        value = value << 8 | data[offset + i]
    return value, offset + size


def encode_packet_number(packet_number: int, largest_acked: int) -> tuple[int, int]:
    """(truncated value, length in bytes) to send `packet_number` (RFC 9000 A.2).

    `largest_acked` is -1 while nothing of the space has been acknowledged.
    """
    if not 0 <= packet_number <= MAX_PACKET_NUMBER or not -1 <= largest_acked < packet_number:
        raise PacketError(f"packet number {packet_number} after {largest_acked}")
    unacked = packet_number - largest_acked
    # ceil((log2(unacked) + 1) / 8) bytes, in integers: unacked <= 2 ** (8 * length - 1).
    bits = (unacked - 1).bit_length() + 1
    length = (bits + 7) // 8
    if length > 4:
        raise PacketError(f"packet number {packet_number}: {unacked} unacknowledged")
    return packet_number & ((1 << (8 * length)) - 1), length


def decode_packet_number(truncated: int, length: int, largest_pn: int) -> int:
    """The full packet number closest to `largest_pn` + 1 (RFC 9000 A.3); -1: none received."""
    if not 1 <= length <= 4 or not 0 <= truncated < 1 << (8 * length):
        raise PacketError(f"truncated packet number {truncated} of {length} bytes")
    if not -1 <= largest_pn <= MAX_PACKET_NUMBER:
        raise PacketError(f"largest packet number {largest_pn}")
    expected = largest_pn + 1
    window = 1 << (8 * length)
    half = window >> 1
    mask = window - 1
    candidate = (expected & ~mask) | truncated
    if candidate <= expected - half and candidate < (1 << 62) - window:
        return candidate + window
    if candidate > expected + half and candidate >= window:
        return candidate - window
    return candidate


# -- headers -----------------------------------------------------------------------------------


def _record(datagram: int, data: _Buffer, offset: int, end: int, cid_length: int) -> list[int]:
    """The record of the packet at `offset` (ending at `end` at most); PacketError if malformed."""
    if offset >= end:
        raise PacketError("packet: empty")
    first = data[offset]
    if not first & 0x80:
        if not first & 0x40:
            raise PacketError("short header: fixed bit is 0")
        pn_offset = offset + 1 + cid_length
        if pn_offset >= end:
            raise PacketError("short header: truncated")
        return (
            [datagram, offset, end - offset, KIND_ONE_RTT, 0, offset + 1, cid_length]
            + [0] * 4
            + [pn_offset]
        )
    if offset + 6 > end:
        raise PacketError("long header: truncated")
    version = int.from_bytes(data[offset + 1 : offset + 5], "big")
    pos = offset + 5
    dcid_length = data[pos]
    dcid_offset = pos + 1
    pos = dcid_offset + dcid_length
    if pos >= end:
        raise PacketError("long header: truncated connection ID")
    scid_length = data[pos]
    scid_offset = pos + 1
    pos = scid_offset + scid_length
    if pos > end:
        raise PacketError("long header: truncated connection ID")
    record = [datagram, offset, end - offset, 0, version, dcid_offset, dcid_length]
    record += [scid_offset, scid_length, 0, 0, pos]
    if version == VERSION_NEGOTIATION:
        if (end - pos) % 4 or pos == end:
            raise PacketError("version negotiation: version list length")
        record[F_KIND] = KIND_VERSION_NEGOTIATION
        return record
    if version == VERSION_1:
        kind = _V1_TYPES[first >> 4 & 3]
    elif version == VERSION_2:
        kind = _V2_TYPES[first >> 4 & 3]
    else:
        record[F_KIND] = KIND_UNSUPPORTED_VERSION
        return record
    if dcid_length > MAX_CID_LENGTH or scid_length > MAX_CID_LENGTH:
        raise PacketError("long header: connection ID longer than 20 bytes")
    if not first & 0x40:
        raise PacketError("long header: fixed bit is 0")
    record[F_KIND] = kind
    if kind == KIND_RETRY:
        if end - pos < RETRY_TAG_LENGTH + 1:
            raise PacketError("retry: truncated")
        record[F_TOKEN_OFFSET] = pos
        record[F_TOKEN_LENGTH] = end - pos - RETRY_TAG_LENGTH
        record[F_PN_OFFSET] = end - RETRY_TAG_LENGTH
        return record
    if kind == KIND_INITIAL:
        token_length, pos = _varint(data, pos, end)
        if pos + token_length > end:
            raise PacketError("initial: truncated token")
        record[F_TOKEN_OFFSET] = pos
        record[F_TOKEN_LENGTH] = token_length
        pos += token_length
    length, pos = _varint(data, pos, end)
    if pos + length > end:
        raise PacketError("long header: length beyond the datagram")
    if length < 1:
        raise PacketError("long header: no packet number")
    record[F_LENGTH] = pos + length - offset
    record[F_PN_OFFSET] = pos
    return record


def _check_cid_length(cid_length: int) -> None:
    if not 0 <= cid_length <= MAX_CID_LENGTH:
        raise PacketError(f"connection ID length {cid_length}")


def parse_packet(data: _Buffer, offset: int = 0, cid_length: int = 8) -> tuple[int, ...]:
    """The record (RECORD_FIELDS ints, F_* indices) of the packet at `offset` in a datagram.

    `cid_length` is the length of this endpoint's connection IDs (short headers
    carry no length). F_LENGTH is where the next coalesced packet starts.
    """
    _check_cid_length(cid_length)
    if offset < 0 or offset > len(data):
        raise PacketError(f"offset {offset}")
    return tuple(_record(0, data, offset, len(data), cid_length))


def _parse_datagram(
    out: list[int], index: int, data: _Buffer, start: int, end: int, cid: int
) -> None:
    offset = start
    dcid = None
    while offset < end:
        try:
            record = _record(index, data, offset, end, cid)
            found = bytes(
                data[record[F_DCID_OFFSET] : record[F_DCID_OFFSET] + record[F_DCID_LENGTH]]
            )
            if dcid is not None and found != dcid:
                # RFC 9000 §12.2: coalesced packets share the first one's DCID.
                raise PacketError("coalesced packet with another DCID")
            dcid = found
        except PacketError:
            out += [index, offset, end - offset, KIND_INVALID] + [0] * 8
            return
        out += record
        offset += record[F_LENGTH]


def parse_buffer(data: _Buffer, segment_size: int, cid_length: int = 8) -> array[int]:
    """Records of every packet of a GRO buffer: datagrams of `segment_size` (the last shorter).

    One flat array('q') of RECORD_FIELDS ints a packet; offsets are into `data`.
    A packet that does not parse, or whose DCID differs from the first packet's
    of its datagram, yields a KIND_INVALID record over the rest of the datagram
    (which is then discarded, RFC 9000 §12.2); nothing raises.
    """
    _check_cid_length(cid_length)
    if segment_size <= 0:
        raise PacketError(f"segment size {segment_size}")
    out: list[int] = []
    size = len(data)
    for index, start in enumerate(range(0, size, segment_size)):
        _parse_datagram(out, index, data, start, min(start + segment_size, size), cid_length)
    return array("q", out)


def parse_datagrams(datagrams: Sequence[_Buffer], cid_length: int = 8) -> array[int]:
    """Records of every packet of many datagrams; offsets are into each datagram."""
    _check_cid_length(cid_length)
    out: list[int] = []
    for index, data in enumerate(datagrams):
        _parse_datagram(out, index, data, 0, len(data), cid_length)
    return array("q", out)


def build_short_header(
    dcid: _Buffer, truncated_pn: int, pn_length: int, key_phase: bool = False, spin: bool = False
) -> bytes:
    """A 1-RTT header, unprotected, ending with its packet number (RFC 9000 §17.3.1)."""
    if not 1 <= pn_length <= 4 or not 0 <= truncated_pn < 1 << (8 * pn_length):
        raise PacketError(f"packet number {truncated_pn} in {pn_length} bytes")
    _check_cid_length(len(dcid))
    first = 0x40 | spin << 5 | key_phase << 2 | (pn_length - 1)
    return bytes((first,)) + bytes(dcid) + truncated_pn.to_bytes(pn_length, "big")


def build_long_header(
    kind: int,
    version: int,
    dcid: _Buffer,
    scid: _Buffer,
    token: _Buffer,
    payload_length: int,
    truncated_pn: int,
    pn_length: int,
) -> bytes:
    """An Initial, 0-RTT or Handshake header, unprotected, ending with its packet number.

    `payload_length` counts the protected payload after the packet number (the
    AEAD tag included); the Length field adds the packet number's length.
    """
    if version == VERSION_1:
        bits = _V1_BITS.get(kind)
    elif version == VERSION_2:
        bits = _V2_BITS.get(kind)
    else:
        raise PacketError(f"version {version:#x}")
    if bits is None or kind == KIND_RETRY:
        raise PacketError(f"packet kind {kind}")
    if not 1 <= pn_length <= 4 or not 0 <= truncated_pn < 1 << (8 * pn_length):
        raise PacketError(f"packet number {truncated_pn} in {pn_length} bytes")
    _check_cid_length(len(dcid))
    _check_cid_length(len(scid))
    if payload_length < 0:
        raise PacketError(f"payload length {payload_length}")
    if kind != KIND_INITIAL and len(token):
        raise PacketError("only an Initial carries a token")
    parts = [
        bytes((0xC0 | bits << 4 | (pn_length - 1),)),
        version.to_bytes(4, "big"),
        bytes((len(dcid),)),
        bytes(dcid),
        bytes((len(scid),)),
        bytes(scid),
    ]
    if kind == KIND_INITIAL:
        parts += [encode_varint(len(token)), bytes(token)]
    parts += [encode_varint(pn_length + payload_length), truncated_pn.to_bytes(pn_length, "big")]
    return b"".join(parts)


# -- routing by destination CID ------------------------------------------------------------------


class CidMap:
    """Connection IDs of one fixed length -> an int (a path ID, a connection slot).

    `route` looks up the DCID of every record of a batch at once: a short
    header's DCID is `cid_length` bytes (RFC 9000 §17.3), so with fixed-length
    CIDs every packet of a multipath connection finds its path without parsing
    further. Records whose DCID is unknown, or of another length, get -1.
    """

    __slots__ = ("_length", "_map")

    def __init__(self, cid_length: int) -> None:
        _check_cid_length(cid_length)
        self._length = cid_length
        self._map: dict[bytes, int] = {}

    @property
    def cid_length(self) -> int:
        return self._length

    def _key(self, cid: _Buffer) -> bytes:
        if len(cid) != self._length:
            raise PacketError(f"connection ID of {len(cid)} bytes, not {self._length}")
        return bytes(cid)

    def add(self, cid: _Buffer, value: int) -> None:
        """Maps `cid` to `value` (>= 0), replacing what it mapped to."""
        if not 0 <= value < 1 << 63:
            raise PacketError(f"value {value}")
        self._map[self._key(cid)] = value

    def remove(self, cid: _Buffer) -> None:
        """Forgets `cid` (a no-op when unknown)."""
        self._map.pop(self._key(cid), None)

    def get(self, cid: _Buffer) -> int:
        """The value of `cid`, -1 when unknown."""
        return self._map.get(self._key(cid), -1)

    def __len__(self) -> int:
        return len(self._map)

    def route(self, data: _Buffer, records: array[int]) -> array[int]:
        """The value of each record's DCID (-1: unknown or another length), offsets into `data`."""
        out = array("q")
        for i in range(0, len(records) - RECORD_FIELDS + 1, RECORD_FIELDS):
            offset, length = records[i + F_DCID_OFFSET], records[i + F_DCID_LENGTH]
            found = -1
            if records[i + F_KIND] != KIND_INVALID and length == self._length:
                if offset + length > len(data):
                    raise PacketError("record beyond the buffer")
                found = self._map.get(bytes(data[offset : offset + length]), -1)
            out.append(found)
        return out


# -- ACK ranges --------------------------------------------------------------------------------


class RangeSet:
    """Disjoint half-open [start, stop) ranges of packet numbers, ascending.

    At most `max_ranges` ranges: past that the lowest range is dropped (an ACK
    frame reports the highest ones; the oldest matter least).
    """

    __slots__ = ("_max", "_ranges")

    def __init__(
        self, ranges: Iterable[tuple[int, int]] = (), max_ranges: int = DEFAULT_MAX_RANGES
    ) -> None:
        if max_ranges < 1:
            raise PacketError(f"max_ranges {max_ranges}")
        self._max = max_ranges
        self._ranges: list[list[int]] = []
        for start, stop in ranges:
            self.add(start, stop)

    @property
    def max_ranges(self) -> int:
        return self._max

    def add(self, start: int, stop: int) -> None:
        """Adds [start, stop), merging with the ranges it touches."""
        if not 0 <= start < stop or stop > MAX_PACKET_NUMBER + 1:
            raise PacketError(f"range [{start}, {stop})")
        ranges = self._ranges
        i = len(ranges)
        # The common case appends at the top: scan from the end.
        while i > 0 and ranges[i - 1][0] > stop:
            i -= 1
        # ranges[:i] start at or below stop; merge those that reach start.
        j = i
        while j > 0 and ranges[j - 1][1] >= start:
            j -= 1
        if j == i:
            ranges.insert(i, [start, stop])
        else:
            merged = [min(start, ranges[j][0]), max(stop, ranges[i - 1][1])]
            ranges[j:i] = [merged]
        if len(ranges) > self._max:
            del ranges[0]

    def add_packet(self, packet_number: int) -> None:
        """Adds one packet number."""
        self.add(packet_number, packet_number + 1)

    def subtract(self, start: int, stop: int) -> None:
        """Removes [start, stop)."""
        if not 0 <= start <= stop:
            raise PacketError(f"range [{start}, {stop})")
        kept: list[list[int]] = []
        for lo, hi in self._ranges:
            if hi <= start or lo >= stop:
                kept.append([lo, hi])
                continue
            if lo < start:
                kept.append([lo, start])
            if hi > stop:
                kept.append([stop, hi])
        self._ranges = kept

    def remove_below(self, packet_number: int) -> None:
        """Removes every packet number below `packet_number`."""
        if packet_number > 0:
            self.subtract(0, packet_number)

    def largest(self) -> int:
        """The largest packet number in the set; PacketError when empty."""
        if not self._ranges:
            raise PacketError("empty range set")
        return self._ranges[-1][1] - 1

    def smallest(self) -> int:
        """The smallest packet number in the set; PacketError when empty."""
        if not self._ranges:
            raise PacketError("empty range set")
        return self._ranges[0][0]

    def __contains__(self, packet_number: object) -> bool:
        if not isinstance(packet_number, int):
            return False
        return any(lo <= packet_number < hi for lo, hi in self._ranges)

    def __len__(self) -> int:
        return len(self._ranges)

    def __bool__(self) -> bool:
        return bool(self._ranges)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(lo, hi) for lo, hi in self._ranges])

    def __eq__(self, other: object) -> bool:
        if not hasattr(other, "max_ranges") or not hasattr(other, "__iter__"):
            return NotImplemented
        return list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RangeSet({list(self)!r})"


# -- ACK and PATH_ACK frames ---------------------------------------------------------------------


def encode_ack(
    ranges: RangeSet,
    ack_delay: int,
    ecn: tuple[int, int, int] | None = None,
    path_id: int = -1,
    max_ranges: int = DEFAULT_MAX_RANGES,
) -> bytes:
    """An ACK frame (RFC 9000 §19.3), or a PATH_ACK (draft-21 §4.1) when `path_id` >= 0.

    The type is included. `ack_delay` is already scaled by the ack_delay_exponent;
    at most `max_ranges` ranges are written, the highest first.
    """
    if not ranges:
        raise PacketError("ACK of no packets")
    if path_id > MAX_PATH_ID or max_ranges < 1:
        raise PacketError(f"path ID {path_id}, max_ranges {max_ranges}")
    items = list(ranges)[::-1][:max_ranges]
    if path_id >= 0:
        parts = [encode_varint(PATH_ACK_ECN_FRAME if ecn else PATH_ACK_FRAME)]
        parts.append(encode_varint(path_id))
    else:
        parts = [encode_varint(ACK_ECN_FRAME if ecn else ACK_FRAME)]
    start, stop = items[0]
    parts += [encode_varint(stop - 1), encode_varint(ack_delay), encode_varint(len(items) - 1)]
    parts.append(encode_varint(stop - 1 - start))
    previous = start
    for start, stop in items[1:]:
        parts.append(encode_varint(previous - stop - 1))
        parts.append(encode_varint(stop - 1 - start))
        previous = start
    if ecn:
        parts += [encode_varint(count) for count in ecn]
    return b"".join(parts)


def decode_ack(
    data: _Buffer, offset: int = 0, max_ranges: int = DEFAULT_MAX_RANGES
) -> tuple[tuple[int, int, RangeSet, int, tuple[int, int, int] | None], int]:
    """((frame type, path ID or -1, ranges, ack delay, ECN counts or None), offset after).

    Reads an ACK, ACK_ECN, PATH_ACK or PATH_ACK_ECN frame starting at its type.
    """
    frame_type, pos = decode_varint(data, offset)
    path_id = -1
    if frame_type in (PATH_ACK_FRAME, PATH_ACK_ECN_FRAME):
        path_id, pos = decode_varint(data, pos)
        if path_id > MAX_PATH_ID:
            raise PacketError(f"PATH_ACK: path ID {path_id}")
    elif frame_type not in (ACK_FRAME, ACK_ECN_FRAME):
        raise PacketError(f"not an ACK frame: {frame_type:#x}")
    largest, pos = decode_varint(data, pos)
    ack_delay, pos = decode_varint(data, pos)
    count, pos = decode_varint(data, pos)
    if count > len(data) - pos:
        raise PacketError("ACK: range count beyond the frame")
    first, pos = decode_varint(data, pos)
    if first > largest:
        raise PacketError("ACK: first range below zero")
    bounds = [(largest - first, largest + 1)]
    smallest = largest - first
    for _ in range(count):
        gap, pos = decode_varint(data, pos)
        length, pos = decode_varint(data, pos)
        stop = smallest - gap - 1
        if stop - length < 1:
            raise PacketError("ACK: range below zero")
        bounds.append((stop - 1 - length, stop))
        smallest = stop - 1 - length
    result = RangeSet(max_ranges=max_ranges)
    for start, stop in reversed(bounds):
        result.add(start, stop)
    ecn: tuple[int, int, int] | None = None
    if frame_type in (ACK_ECN_FRAME, PATH_ACK_ECN_FRAME):
        ect0, pos = decode_varint(data, pos)
        ect1, pos = decode_varint(data, pos)
        ce, pos = decode_varint(data, pos)
        ecn = (ect0, ect1, ce)
    return (frame_type, path_id, result, ack_delay, ecn), pos
