"""Streams and flow control in pure Python: `_stream.pyx`'s reference (same API, results, errors).

Frame codecs (RFC 9000 §19) for STREAM (all eight type bits), CRYPTO,
RESET_STREAM, STOP_SENDING, MAX_DATA, MAX_STREAM_DATA, MAX_STREAMS,
DATA_BLOCKED, STREAM_DATA_BLOCKED, STREAMS_BLOCKED and DATAGRAM (RFC 9221):
parsers read from a buffer at an offset and return payload offsets and
lengths, not copies; writers write into a writable buffer at an offset and
return the offset after. Send and receive buffers are rings indexed by
stream offset modulo their (power-of-two) capacity; acknowledged, lost and
received bytes are `RangeSet`s of offsets. Flow-control credit (§4) on both
sides, with the receive window's auto-tuning.
"""

from __future__ import annotations

import math

from netsched_client.core._packet_py import RangeSet, decode_varint, encode_varint
from netsched_client.core.errors import (
    FinalSizeError,
    FlowControlError,
    FrameError,
    PacketError,
    StreamStateError,
)

__all__ = [
    "CRYPTO_FRAME",
    "DATAGRAM_FRAME",
    "DATAGRAM_LEN_FRAME",
    "DATA_BLOCKED_FRAME",
    "MAX_DATA_FRAME",
    "MAX_RECEIVE_GAPS",
    "MAX_STREAMS",
    "MAX_STREAMS_BIDI_FRAME",
    "MAX_STREAMS_UNI_FRAME",
    "MAX_STREAM_DATA_FRAME",
    "MAX_STREAM_OFFSET",
    "RESET_STREAM_FRAME",
    "STOP_SENDING_FRAME",
    "STREAMS_BLOCKED_BIDI_FRAME",
    "STREAMS_BLOCKED_UNI_FRAME",
    "STREAM_DATA_BLOCKED_FRAME",
    "STREAM_FRAME",
    "ReceiveCredit",
    "RecvStream",
    "SendCredit",
    "SendStream",
    "parse_crypto",
    "parse_data_blocked",
    "parse_datagram",
    "parse_max_data",
    "parse_max_stream_data",
    "parse_max_streams",
    "parse_reset_stream",
    "parse_stop_sending",
    "parse_stream",
    "parse_stream_data_blocked",
    "parse_streams_blocked",
    "write_crypto",
    "write_data_blocked",
    "write_datagram",
    "write_max_data",
    "write_max_stream_data",
    "write_max_streams",
    "write_reset_stream",
    "write_stop_sending",
    "write_stream",
    "write_stream_data_blocked",
    "write_streams_blocked",
]

_Buffer = bytes | bytearray | memoryview

RESET_STREAM_FRAME = 0x04
STOP_SENDING_FRAME = 0x05
CRYPTO_FRAME = 0x06
STREAM_FRAME = 0x08  # | OFF 0x04 | LEN 0x02 | FIN 0x01
MAX_DATA_FRAME = 0x10
MAX_STREAM_DATA_FRAME = 0x11
MAX_STREAMS_BIDI_FRAME = 0x12
MAX_STREAMS_UNI_FRAME = 0x13
DATA_BLOCKED_FRAME = 0x14
STREAM_DATA_BLOCKED_FRAME = 0x15
STREAMS_BLOCKED_BIDI_FRAME = 0x16
STREAMS_BLOCKED_UNI_FRAME = 0x17
DATAGRAM_FRAME = 0x30
DATAGRAM_LEN_FRAME = 0x31

MAX_STREAM_OFFSET = (1 << 62) - 1  # §19.8: offset + length of stream and crypto data
MAX_STREAMS = 1 << 60  # §19.11: a stream count above cannot be expressed as a stream ID
# Holes a receive buffer tracks at most: each costs a range, and a peer
# sending every other byte would otherwise make as many as it likes.
MAX_RECEIVE_GAPS = 1024
_SEND_RANGES = 1 << 30  # acknowledged and lost ranges of our own frames: bounded by what we sent

_OFF = 0x04
_LEN = 0x02
_FIN = 0x01

# Per frame family: (lowest type, highest type, name).
_STREAM = (0x08, 0x0F, "STREAM")
_CRYPTO = (0x06, 0x06, "CRYPTO")
_RESET_STREAM = (0x04, 0x04, "RESET_STREAM")
_STOP_SENDING = (0x05, 0x05, "STOP_SENDING")
_MAX_DATA = (0x10, 0x10, "MAX_DATA")
_MAX_STREAM_DATA = (0x11, 0x11, "MAX_STREAM_DATA")
_MAX_STREAMS = (0x12, 0x13, "MAX_STREAMS")
_DATA_BLOCKED = (0x14, 0x14, "DATA_BLOCKED")
_STREAM_DATA_BLOCKED = (0x15, 0x15, "STREAM_DATA_BLOCKED")
_STREAMS_BLOCKED = (0x16, 0x17, "STREAMS_BLOCKED")
_DATAGRAM = (0x30, 0x31, "DATAGRAM")

# A parsed frame: (type, stream ID, offset, value, data offset, data length, fin, offset after).
# `offset` is the stream or crypto offset, or RESET_STREAM's final size; `value` an error
# code, a maximum or a limit.
_Fields = tuple[int, int, int, int, int, int, bool, int]


# -- parsing ---------------------------------------------------------------------------------------


def _varint(data: _Buffer, pos: int, end: int) -> tuple[int, int]:
    if pos >= end:
        raise FrameError("varint: truncated")
    try:
        value, after = decode_varint(data, pos)
    except PacketError:
        raise FrameError("varint: truncated") from None
    if after > end:
        raise FrameError("varint: truncated")
    return value, after


def _parse(data: _Buffer, offset: int, end: int, family: tuple[int, int, str]) -> _Fields:
    """Reads one frame of `family` starting at its type; the body as in §19."""
    if end < 0 or end > len(data):
        end = len(data)
    if offset < 0:
        raise FrameError("varint: truncated")
    frame_type, pos = _varint(data, offset, end)
    low, high, name = family
    if not low <= frame_type <= high:
        raise FrameError(f"not a {name} frame: {frame_type:#x}")
    stream_id = stream_offset = value = data_offset = length = 0
    fin = False
    if low == 0x08:
        stream_id, pos = _varint(data, pos, end)
        if frame_type & _OFF:
            stream_offset, pos = _varint(data, pos, end)
        if frame_type & _LEN:
            length, pos = _varint(data, pos, end)
        else:
            length = end - pos
        fin = bool(frame_type & _FIN)
    elif low == CRYPTO_FRAME:
        stream_offset, pos = _varint(data, pos, end)
        length, pos = _varint(data, pos, end)
    elif low == DATAGRAM_FRAME:
        if frame_type == DATAGRAM_LEN_FRAME:
            length, pos = _varint(data, pos, end)
        else:
            length = end - pos
    elif low == RESET_STREAM_FRAME:
        stream_id, pos = _varint(data, pos, end)
        value, pos = _varint(data, pos, end)
        stream_offset, pos = _varint(data, pos, end)
    elif low in (STOP_SENDING_FRAME, MAX_STREAM_DATA_FRAME, STREAM_DATA_BLOCKED_FRAME):
        stream_id, pos = _varint(data, pos, end)
        value, pos = _varint(data, pos, end)
    else:
        value, pos = _varint(data, pos, end)
        if low in (MAX_STREAMS_BIDI_FRAME, STREAMS_BLOCKED_BIDI_FRAME) and value > MAX_STREAMS:
            raise FrameError(f"{name}: {value} streams")
    if low in (0x08, CRYPTO_FRAME, DATAGRAM_FRAME):
        if length > end - pos:
            raise FrameError(f"{name}: data truncated")
        if stream_offset + length > MAX_STREAM_OFFSET:
            raise FrameError(f"{name}: data beyond 2^62-1")
        data_offset = pos
        pos += length
    return frame_type, stream_id, stream_offset, value, data_offset, length, fin, pos


def parse_stream(
    data: _Buffer, offset: int = 0, end: int = -1
) -> tuple[int, int, int, int, bool, int]:
    """(stream ID, stream offset, data offset, data length, fin, offset after) of a STREAM frame.

    `end` is where the packet's payload ends (-1: the buffer's end), which is
    where the data of a frame without the LEN bit ends.
    """
    _, stream_id, stream_offset, _, data_offset, length, fin, after = _parse(
        data, offset, end, _STREAM
    )
    return stream_id, stream_offset, data_offset, length, fin, after


def parse_crypto(data: _Buffer, offset: int = 0, end: int = -1) -> tuple[int, int, int, int]:
    """(crypto offset, data offset, data length, offset after) of a CRYPTO frame."""
    _, _, crypto_offset, _, data_offset, length, _, after = _parse(data, offset, end, _CRYPTO)
    return crypto_offset, data_offset, length, after


def parse_reset_stream(data: _Buffer, offset: int = 0, end: int = -1) -> tuple[int, int, int, int]:
    """(stream ID, application error code, final size, offset after) of a RESET_STREAM frame."""
    _, stream_id, final_size, error_code, _, _, _, after = _parse(data, offset, end, _RESET_STREAM)
    return stream_id, error_code, final_size, after


def parse_stop_sending(data: _Buffer, offset: int = 0, end: int = -1) -> tuple[int, int, int]:
    """(stream ID, application error code, offset after) of a STOP_SENDING frame."""
    _, stream_id, _, error_code, _, _, _, after = _parse(data, offset, end, _STOP_SENDING)
    return stream_id, error_code, after


def parse_max_data(data: _Buffer, offset: int = 0, end: int = -1) -> tuple[int, int]:
    """(maximum data, offset after) of a MAX_DATA frame."""
    _, _, _, maximum, _, _, _, after = _parse(data, offset, end, _MAX_DATA)
    return maximum, after


def parse_max_stream_data(data: _Buffer, offset: int = 0, end: int = -1) -> tuple[int, int, int]:
    """(stream ID, maximum stream data, offset after) of a MAX_STREAM_DATA frame."""
    _, stream_id, _, maximum, _, _, _, after = _parse(data, offset, end, _MAX_STREAM_DATA)
    return stream_id, maximum, after


def parse_max_streams(data: _Buffer, offset: int = 0, end: int = -1) -> tuple[bool, int, int]:
    """(bidirectional, maximum streams, offset after) of a MAX_STREAMS frame; at most 2^60."""
    frame_type, _, _, maximum, _, _, _, after = _parse(data, offset, end, _MAX_STREAMS)
    return frame_type == MAX_STREAMS_BIDI_FRAME, maximum, after


def parse_data_blocked(data: _Buffer, offset: int = 0, end: int = -1) -> tuple[int, int]:
    """(maximum data it is blocked at, offset after) of a DATA_BLOCKED frame."""
    _, _, _, limit, _, _, _, after = _parse(data, offset, end, _DATA_BLOCKED)
    return limit, after


def parse_stream_data_blocked(
    data: _Buffer, offset: int = 0, end: int = -1
) -> tuple[int, int, int]:
    """(stream ID, maximum stream data it is blocked at, offset after) of a STREAM_DATA_BLOCKED."""
    _, stream_id, _, limit, _, _, _, after = _parse(data, offset, end, _STREAM_DATA_BLOCKED)
    return stream_id, limit, after


def parse_streams_blocked(data: _Buffer, offset: int = 0, end: int = -1) -> tuple[bool, int, int]:
    """(bidirectional, maximum streams it is blocked at, offset after) of a STREAMS_BLOCKED."""
    frame_type, _, _, limit, _, _, _, after = _parse(data, offset, end, _STREAMS_BLOCKED)
    return frame_type == STREAMS_BLOCKED_BIDI_FRAME, limit, after


def parse_datagram(data: _Buffer, offset: int = 0, end: int = -1) -> tuple[int, int, int]:
    """(data offset, data length, offset after) of a DATAGRAM frame (RFC 9221 §4)."""
    _, _, _, _, data_offset, length, _, after = _parse(data, offset, end, _DATAGRAM)
    return data_offset, length, after


# -- writing ---------------------------------------------------------------------------------------


def _write(buf: bytearray | memoryview, pos: int, fields: tuple[int, ...], payload: bytes) -> int:
    """Writes the varints `fields` (the type first), then `payload`; the offset after."""
    for value in fields:
        if not 0 <= value <= MAX_STREAM_OFFSET:
            raise FrameError(f"varint out of range: {value}")
    encoded = b"".join(encode_varint(value) for value in fields) + payload
    if pos < 0 or len(encoded) > len(buf) - pos:
        raise FrameError("no room for the frame")
    buf[pos : pos + len(encoded)] = encoded
    return pos + len(encoded)


def _check_data(stream_offset: int, length: int) -> None:
    if not 0 <= stream_offset <= MAX_STREAM_OFFSET - length:
        raise FrameError(f"data beyond 2^62-1: offset {stream_offset}")


def _check_streams(count: int) -> None:
    if not 0 <= count <= MAX_STREAMS:
        raise FrameError(f"stream count out of range: {count}")


def write_stream(
    buf: bytearray | memoryview,
    pos: int,
    stream_id: int,
    stream_offset: int,
    data: _Buffer,
    fin: bool = False,
) -> int:
    """A STREAM frame with the LEN bit (OFF when the offset is not 0) at `pos`; the offset after."""
    _check_data(stream_offset, len(data))
    frame_type = STREAM_FRAME | _LEN | (_OFF if stream_offset else 0) | (_FIN if fin else 0)
    fields = (frame_type, stream_id) + ((stream_offset,) if stream_offset else ()) + (len(data),)
    return _write(buf, pos, fields, bytes(data))


def write_crypto(buf: bytearray | memoryview, pos: int, crypto_offset: int, data: _Buffer) -> int:
    """A CRYPTO frame at `pos`; the offset after."""
    _check_data(crypto_offset, len(data))
    return _write(buf, pos, (CRYPTO_FRAME, crypto_offset, len(data)), bytes(data))


def write_reset_stream(
    buf: bytearray | memoryview, pos: int, stream_id: int, error_code: int, final_size: int
) -> int:
    """A RESET_STREAM frame at `pos`; the offset after."""
    return _write(buf, pos, (RESET_STREAM_FRAME, stream_id, error_code, final_size), b"")


def write_stop_sending(
    buf: bytearray | memoryview, pos: int, stream_id: int, error_code: int
) -> int:
    """A STOP_SENDING frame at `pos`; the offset after."""
    return _write(buf, pos, (STOP_SENDING_FRAME, stream_id, error_code), b"")


def write_max_data(buf: bytearray | memoryview, pos: int, maximum: int) -> int:
    """A MAX_DATA frame at `pos`; the offset after."""
    return _write(buf, pos, (MAX_DATA_FRAME, maximum), b"")


def write_max_stream_data(
    buf: bytearray | memoryview, pos: int, stream_id: int, maximum: int
) -> int:
    """A MAX_STREAM_DATA frame at `pos`; the offset after."""
    return _write(buf, pos, (MAX_STREAM_DATA_FRAME, stream_id, maximum), b"")


def write_max_streams(
    buf: bytearray | memoryview, pos: int, bidirectional: bool, maximum: int
) -> int:
    """A MAX_STREAMS frame at `pos`; the offset after."""
    _check_streams(maximum)
    frame_type = MAX_STREAMS_BIDI_FRAME if bidirectional else MAX_STREAMS_UNI_FRAME
    return _write(buf, pos, (frame_type, maximum), b"")


def write_data_blocked(buf: bytearray | memoryview, pos: int, limit: int) -> int:
    """A DATA_BLOCKED frame at `pos`; the offset after."""
    return _write(buf, pos, (DATA_BLOCKED_FRAME, limit), b"")


def write_stream_data_blocked(
    buf: bytearray | memoryview, pos: int, stream_id: int, limit: int
) -> int:
    """A STREAM_DATA_BLOCKED frame at `pos`; the offset after."""
    return _write(buf, pos, (STREAM_DATA_BLOCKED_FRAME, stream_id, limit), b"")


def write_streams_blocked(
    buf: bytearray | memoryview, pos: int, bidirectional: bool, limit: int
) -> int:
    """A STREAMS_BLOCKED frame at `pos`; the offset after."""
    _check_streams(limit)
    frame_type = STREAMS_BLOCKED_BIDI_FRAME if bidirectional else STREAMS_BLOCKED_UNI_FRAME
    return _write(buf, pos, (frame_type, limit), b"")


def write_datagram(buf: bytearray | memoryview, pos: int, data: _Buffer) -> int:
    """A DATAGRAM frame with its length (type 0x31) at `pos`; the offset after."""
    return _write(buf, pos, (DATAGRAM_LEN_FRAME, len(data)), bytes(data))


def _varint_size(value: int) -> int:
    return 1 if value < 0x40 else 2 if value < 0x4000 else 4 if value < 0x40000000 else 8


# -- flow-control credit ---------------------------------------------------------------------------


class SendCredit:
    """What the peer lets us send (RFC 9000 §4.1): a connection's MAX_DATA or a stream's
    MAX_STREAM_DATA, and what of it is used."""

    __slots__ = ("blocked_reported", "limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.blocked_reported = -1

    @property
    def available(self) -> int:
        return self.limit - self.used

    def raise_limit(self, limit: int) -> bool:
        """A MAX_DATA or MAX_STREAM_DATA: whether it raised the limit (lower ones are stale)."""
        if limit <= self.limit:
            return False
        self.limit = limit
        return True

    def take_blocked(self) -> int:
        """The limit for a DATA_BLOCKED or STREAM_DATA_BLOCKED when the credit is used up and
        that limit was not reported yet (§4.1: once per limit), else -1."""
        if self.used < self.limit or self.blocked_reported == self.limit:
            return -1
        self.blocked_reported = self.limit
        return self.limit


class ReceiveCredit:
    """What we let the peer send (RFC 9000 §4.1-4.2): the limit advertised, the bytes received
    against it, and the window behind the next limit.

    `update(consumed, now, rtt)` moves the limit to `consumed + window` once
    half the window is consumed; when the previous update was less than two
    RTTs before, the reader keeps up with more than the window allows per
    round trip and the window doubles first, up to `max_window`.
    """

    __slots__ = ("last_update", "limit", "max_window", "received", "window")

    def __init__(self, window: int, max_window: int = 0) -> None:
        if window <= 0:
            raise ValueError(f"window {window}")
        self.window = window
        self.max_window = max(window, max_window)
        self.limit = window
        self.received = 0
        self.last_update = -math.inf

    def on_received(self, count: int) -> None:
        """`count` more bytes count against the limit; FlowControlError past it."""
        self.received += count
        if self.received > self.limit:
            raise FlowControlError(f"{self.received} bytes received, the limit is {self.limit}")

    def update(self, consumed: int, now: float, rtt: float) -> int:
        """The new limit to advertise (MAX_DATA, MAX_STREAM_DATA) once half the window is
        consumed, else -1."""
        if 2 * (self.limit - consumed) > self.window:
            return -1
        if now - self.last_update < 2 * rtt:
            self.window = min(2 * self.window, self.max_window)
        self.limit = consumed + self.window
        self.last_update = now
        return self.limit


# -- rings -----------------------------------------------------------------------------------------


def _capacity_for(size: int) -> int:
    capacity = 1024
    while capacity < size:
        capacity *= 2
    return capacity


def _ring_read(ring: bytearray, offset: int, length: int) -> bytes:
    """`length` bytes at stream offset `offset` (index = offset mod capacity)."""
    start = offset & (len(ring) - 1)
    first = min(length, len(ring) - start)
    return bytes(ring[start : start + first]) + bytes(ring[: length - first])


def _ring_write(ring: bytearray, offset: int, data: _Buffer) -> None:
    start = offset & (len(ring) - 1)
    first = min(len(data), len(ring) - start)
    ring[start : start + first] = data[:first]
    ring[: len(data) - first] = data[first:]


def _regrow(ring: bytearray, low: int, high: int, capacity: int) -> bytearray:
    """A ring of `capacity` holding the bytes at offsets [low, high) of `ring`."""
    grown = bytearray(capacity)
    _ring_write(grown, low, _ring_read(ring, low, high - low))
    return grown


# -- send side -------------------------------------------------------------------------------------


class SendStream:
    """One stream's send side (or a packet-number space's CRYPTO data, stream ID -1).

    The ring holds the bytes from the lowest unacknowledged offset (`acked_offset`)
    to what the application wrote (`write_offset`). `write_frame` sends lost
    ranges first, lowest first, then new data within the stream's and the
    connection's credit, then a FIN alone when nothing else carries it; the
    ledger's handle for the packet keeps (offset, length, fin) to report back
    through `on_acked` / `on_lost`. CRYPTO data has no flow control.
    """

    __slots__ = (
        "_ring",
        "acked",
        "acked_offset",
        "credit",
        "fin_acked",
        "fin_sent",
        "final_size",
        "lost",
        "next_offset",
        "stream_id",
        "was_reset",
        "write_offset",
    )

    def __init__(self, stream_id: int, max_stream_data: int) -> None:
        self.stream_id = stream_id
        self.credit = SendCredit(MAX_STREAM_OFFSET if stream_id < 0 else max_stream_data)
        self._ring = bytearray(_capacity_for(0))
        self.acked_offset = 0
        self.next_offset = 0
        self.write_offset = 0
        self.final_size = -1
        self.fin_sent = False
        self.fin_acked = False
        self.was_reset = False
        self.acked = RangeSet(max_ranges=_SEND_RANGES)
        self.lost = RangeSet(max_ranges=_SEND_RANGES)

    @property
    def is_complete(self) -> bool:
        """Everything, FIN included, is acknowledged."""
        return self.fin_acked and self.acked_offset == self.final_size

    def write(self, data: _Buffer, fin: bool = False) -> None:
        """Queues `data` (copied) and, with `fin`, ends the stream there."""
        if self.final_size >= 0:
            raise StreamStateError(f"stream {self.stream_id}: write after FIN")
        if self.write_offset + len(data) > MAX_STREAM_OFFSET:
            raise FlowControlError(f"stream {self.stream_id}: data beyond 2^62-1")
        need = self.write_offset + len(data) - self.acked_offset
        if need > len(self._ring):
            self._ring = _regrow(
                self._ring, self.acked_offset, self.write_offset, _capacity_for(need)
            )
        _ring_write(self._ring, self.write_offset, data)
        self.write_offset += len(data)
        if fin:
            self.final_size = self.write_offset

    def write_frame(
        self, out: bytearray | memoryview, pos: int, end: int, connection: SendCredit | None
    ) -> tuple[int, int, bool, int] | None:
        """Writes the next STREAM (or CRYPTO) frame into out[pos:end]: (stream offset, length,
        fin, offset after), or None when there is nothing to send or no room.

        New data takes credit from the stream and from `connection` (None: no
        connection-level limit, as for CRYPTO data).
        """
        if end > len(out) or pos < 0:
            raise FrameError("no room for the frame")
        start, stop = self._next_range(connection)
        room = self._room(start, end - pos)
        if room < 0:
            return None
        length = min(stop - start, room)
        fin = self.final_size == start + length and not self.fin_acked
        if length == 0 and (self.fin_sent or not fin):
            return None
        if start + length > self.next_offset:
            grown = start + length - self.next_offset
            self.credit.used += grown
            if connection is not None:
                connection.used += grown
            self.next_offset = start + length
        if self.lost:
            self.lost.subtract(start, start + length)
        self.fin_sent = self.fin_sent or fin
        payload = _ring_read(self._ring, start, length)
        if self.stream_id < 0:
            after = write_crypto(out, pos, start, payload)
        else:
            after = write_stream(out, pos, self.stream_id, start, payload, fin)
        return start, length, fin, after

    def _next_range(self, connection: SendCredit | None) -> tuple[int, int]:
        """The data the next frame carries if it fits: the lowest lost range, else new data
        within the credit, else none (at `next_offset`, where a FIN alone goes)."""
        if self.lost:
            return next(iter(self.lost))
        start = self.next_offset
        if start >= self.write_offset:
            return start, start
        available = connection.available if connection is not None else MAX_STREAM_OFFSET
        return start, start + min(self.write_offset - start, self.credit.available, available)

    def _room(self, start: int, space: int) -> int:
        """The data that fits in `space` bytes after the frame's type, ID, offset and length."""
        if self.stream_id < 0:
            space -= 1 + _varint_size(start)
        else:
            space -= 1 + _varint_size(self.stream_id) + (_varint_size(start) if start else 0)
        return space - _varint_size(max(space, 0))

    def take_blocked(self) -> int:
        """The limit for a STREAM_DATA_BLOCKED when data waits on the stream's credit (once
        per limit), else -1."""
        if self.next_offset >= self.write_offset:
            return -1
        return self.credit.take_blocked()

    def on_acked(self, stream_offset: int, length: int, fin: bool) -> None:
        """A frame sent as (stream_offset, length, fin) is acknowledged."""
        if length:
            self.acked.add(stream_offset, stream_offset + length)
            self.lost.subtract(stream_offset, stream_offset + length)
        self.fin_acked = self.fin_acked or fin
        if self.acked and self.acked.smallest() <= self.acked_offset:
            self.acked_offset = max(self.acked_offset, next(iter(self.acked))[1])
            self.acked.remove_below(self.acked_offset)

    def on_lost(self, stream_offset: int, length: int, fin: bool) -> None:
        """A frame sent as (stream_offset, length, fin) is lost: what of it is not
        acknowledged since is sent again."""
        start = max(stream_offset, self.acked_offset)
        stop = stream_offset + length
        if self.was_reset:
            return  # RESET_STREAM replaces the data: nothing is sent again (§3.1)
        if start < stop:
            self.lost.add(start, stop)
            for low, high in self.acked:
                if low < stop and high > start:
                    self.lost.subtract(low, high)
        if fin and not self.fin_acked:
            self.fin_sent = False

    def reset(self) -> int:
        """Stops sending (RESET_STREAM): drops what waits; the final size to announce."""
        self.lost.subtract(0, MAX_STREAM_OFFSET)
        self.write_offset = self.final_size = self.next_offset
        self.fin_sent = self.was_reset = True
        return self.next_offset


# -- receive side ----------------------------------------------------------------------------------


class RecvStream:
    """One stream's receive side: reassembly into a ring, final size and flow control.

    The ring holds offsets [read_offset, read_offset + capacity); it grows
    (doubling) when data within the credit reaches past it, so a stream
    holds memory for what arrived, not for its window. `received` is the
    set of offsets above `read_offset` that arrived.
    `on_data` and `on_reset` return how far the highest offset received grew:
    what counts against the connection's credit (§4.1).
    """

    __slots__ = (
        "_ring",
        "credit",
        "final_size",
        "highest",
        "read_offset",
        "received",
        "reset_received",
    )

    def __init__(self, window: int, max_window: int = 0) -> None:
        self.credit = ReceiveCredit(window, max_window)
        self._ring = bytearray(_capacity_for(0))
        self.read_offset = 0
        self.highest = 0
        self.final_size = -1
        self.reset_received = False
        self.received = RangeSet(max_ranges=MAX_RECEIVE_GAPS + 1)

    @property
    def readable(self) -> int:
        """Bytes that can be read now, in order."""
        if self.received and self.received.smallest() == self.read_offset:
            return next(iter(self.received))[1] - self.read_offset
        return 0

    @property
    def is_finished(self) -> bool:
        """Everything up to the final size was read."""
        return self.read_offset == self.final_size and not self.reset_received

    def _grow_final(self, end: int, fin: bool) -> int:
        """The §4.5 checks for data reaching `end`; takes the credit; the growth of `highest`."""
        if self.final_size >= 0:
            if end > self.final_size or (fin and end != self.final_size):
                raise FinalSizeError(f"final size {self.final_size}, data up to {end}")
        elif fin and end < self.highest:
            raise FinalSizeError(f"final size {end} below data up to {self.highest}")
        grown = max(end - self.highest, 0)
        self.credit.on_received(grown)
        self.highest += grown
        if fin:
            self.final_size = end
        return grown

    def on_data(
        self, data: _Buffer, data_offset: int, length: int, stream_offset: int, fin: bool
    ) -> int:
        """A STREAM frame's data, data[data_offset:data_offset + length] at `stream_offset`."""
        if min(data_offset, length, stream_offset) < 0 or data_offset + length > len(data):
            raise FrameError(f"{length} bytes at {data_offset} of a {len(data)}-byte buffer")
        before = self.highest
        grown = self._grow_final(stream_offset + length, fin)
        start = max(stream_offset, self.read_offset)
        stop = stream_offset + length
        if self.reset_received or start >= stop:
            return grown
        if stop - self.read_offset > len(self._ring):
            self._ring = _regrow(
                self._ring, self.read_offset, before, _capacity_for(stop - self.read_offset)
            )
        skip = start - stream_offset
        _ring_write(self._ring, start, data[data_offset + skip : data_offset + length])
        self.received.add(start, stop)
        if len(self.received) > MAX_RECEIVE_GAPS:
            raise FlowControlError(f"more than {MAX_RECEIVE_GAPS} gaps in the received data")
        return grown

    def on_reset(self, final_size: int) -> int:
        """A RESET_STREAM with `final_size`: the data is dropped, the credit still counts."""
        grown = self._grow_final(final_size, True)
        self.reset_received = True
        self.received.subtract(0, MAX_STREAM_OFFSET)
        return grown

    def read(self, max_bytes: int = -1) -> bytes:
        """The next bytes in order (at most `max_bytes`, -1: all that are readable)."""
        count = self.readable if max_bytes < 0 else min(self.readable, max_bytes)
        data = _ring_read(self._ring, self.read_offset, count)
        self.read_offset += count
        self.received.remove_below(self.read_offset)
        return data

    def window_update(self, now: float, rtt: float) -> int:
        """The MAX_STREAM_DATA limit to send (see `ReceiveCredit.update`), else -1; none once
        the final size is known (§4.5)."""
        if self.final_size >= 0:
            return -1
        return self.credit.update(self.read_offset, now, rtt)
