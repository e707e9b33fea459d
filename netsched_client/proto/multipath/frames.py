"""Codecs of the draft-ietf-quic-multipath-21 frames and transport parameter.

Every frame is a frozen dataclass with `encode()` (type included) and a
`decode(frame_type, buf)` that reads the fields after the type. Malformed
input raises `FrameEncodingError`, which the connection turns into a
FRAME_ENCODING_ERROR close; semantic checks (path ID limits) live in the
connection, which knows the limits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from aioquic.buffer import Buffer, BufferReadError, encode_uint_var
from aioquic.quic.packet import pull_ack_frame, push_ack_frame
from aioquic.quic.rangeset import RangeSet

# Codepoints (draft-21, suggested values that picoquic 1.1.46+ uses).
TP_INITIAL_MAX_PATH_ID: Final = 0x3E
PATH_ACK: Final = 0x3E
PATH_ACK_ECN: Final = 0x3F
PATH_ABANDON: Final = 0x3E75
PATH_STATUS_BACKUP: Final = 0x3E76
PATH_STATUS_AVAILABLE: Final = 0x3E77
PATH_NEW_CONNECTION_ID: Final = 0x3E78
PATH_RETIRE_CONNECTION_ID: Final = 0x3E79
MAX_PATH_ID: Final = 0x3E7A
PATHS_BLOCKED: Final = 0x3E7B
PATH_CIDS_BLOCKED: Final = 0x3E7C

# PATH_ABANDON error codes.
APPLICATION_ABANDON_PATH: Final = 0x3E
PATH_RESOURCE_LIMIT_REACHED: Final = 0x3E75
PATH_UNSTABLE_OR_POOR: Final = 0x3E76
NO_CID_AVAILABLE_FOR_PATH: Final = 0x3E77

MAX_PATH_ID_VALUE: Final = 2**32 - 1  # the nonce carries 32 bits of path ID
ACK_RANGES_LIMIT: Final = 64  # ranges we write per PATH_ACK


class FrameEncodingError(ValueError):
    """A multipath frame could not be parsed."""


class PathIdTooLarge(FrameEncodingError):
    """A path ID above 2^32-1: a PROTOCOL_VIOLATION rather than an encoding error."""


def _pull(buf: Buffer) -> int:
    return buf.pull_uint_var()


def _path_id(buf: Buffer) -> int:
    value = _pull(buf)
    if value > MAX_PATH_ID_VALUE:
        raise PathIdTooLarge(f"path ID {value} exceeds 2^32-1")
    return value


def _guard(frame_type: int, buf: Buffer, read: type[_Frame]) -> _Frame:
    try:
        return read.read(frame_type, buf)
    except BufferReadError as exc:
        raise FrameEncodingError(f"truncated frame 0x{frame_type:x}") from exc


class _Frame:
    @classmethod
    def read(cls, frame_type: int, buf: Buffer) -> _Frame:
        raise NotImplementedError

    def encode(self) -> bytes:
        raise NotImplementedError

    def split(self) -> tuple[int, bytes]:
        """(frame type, body): what a packet builder's start_frame() needs."""
        buf = Buffer(data=self.encode())
        frame_type = buf.pull_uint_var()
        return frame_type, self.encode()[buf.tell() :]


@dataclass(frozen=True, slots=True)
class PathAck(_Frame):
    path_id: int
    ranges: RangeSet
    ack_delay: int  # encoded (scaled by the peer's ack_delay_exponent)
    ecn: tuple[int, int, int] | None = None

    def encode(self) -> bytes:
        buf = Buffer(capacity=16 + 16 * ACK_RANGES_LIMIT)
        buf.push_uint_var(PATH_ACK_ECN if self.ecn else PATH_ACK)
        buf.push_uint_var(self.path_id)
        push_ack_frame(buf, self.ranges, self.ack_delay, buf.capacity)
        for count in self.ecn or ():
            buf.push_uint_var(count)
        return buf.data

    @classmethod
    def read(cls, frame_type: int, buf: Buffer) -> PathAck:
        path_id = _path_id(buf)
        try:
            ranges, delay = pull_ack_frame(buf)
        except ValueError as exc:
            raise FrameEncodingError(f"PATH_ACK: {exc}") from exc
        ecn = (_pull(buf), _pull(buf), _pull(buf)) if frame_type == PATH_ACK_ECN else None
        return cls(path_id, ranges, delay, ecn)


@dataclass(frozen=True, slots=True)
class PathAbandon(_Frame):
    path_id: int
    error_code: int

    def encode(self) -> bytes:
        return b"".join(map(encode_uint_var, (PATH_ABANDON, self.path_id, self.error_code)))

    @classmethod
    def read(cls, frame_type: int, buf: Buffer) -> PathAbandon:
        return cls(_path_id(buf), _pull(buf))


@dataclass(frozen=True, slots=True)
class PathStatus(_Frame):
    path_id: int
    sequence: int
    available: bool  # False: backup

    def encode(self) -> bytes:
        kind = PATH_STATUS_AVAILABLE if self.available else PATH_STATUS_BACKUP
        return b"".join(map(encode_uint_var, (kind, self.path_id, self.sequence)))

    @classmethod
    def read(cls, frame_type: int, buf: Buffer) -> PathStatus:
        return cls(_path_id(buf), _pull(buf), frame_type == PATH_STATUS_AVAILABLE)


@dataclass(frozen=True, slots=True)
class PathNewConnectionId(_Frame):
    path_id: int
    sequence: int
    retire_prior_to: int
    cid: bytes
    reset_token: bytes

    def encode(self) -> bytes:
        head = b"".join(
            map(
                encode_uint_var,
                (PATH_NEW_CONNECTION_ID, self.path_id, self.sequence, self.retire_prior_to),
            )
        )
        return head + bytes([len(self.cid)]) + self.cid + self.reset_token

    @classmethod
    def read(cls, frame_type: int, buf: Buffer) -> PathNewConnectionId:
        path_id, sequence, retire_prior_to = _path_id(buf), _pull(buf), _pull(buf)
        length = buf.pull_uint8()
        if not 1 <= length <= 20:
            raise FrameEncodingError(f"PATH_NEW_CONNECTION_ID: CID length {length} not in 1..20")
        if retire_prior_to > sequence:
            raise FrameEncodingError("PATH_NEW_CONNECTION_ID: retire_prior_to > sequence")
        return cls(path_id, sequence, retire_prior_to, buf.pull_bytes(length), buf.pull_bytes(16))


@dataclass(frozen=True, slots=True)
class PathRetireConnectionId(_Frame):
    path_id: int
    sequence: int

    def encode(self) -> bytes:
        return b"".join(
            map(encode_uint_var, (PATH_RETIRE_CONNECTION_ID, self.path_id, self.sequence))
        )

    @classmethod
    def read(cls, frame_type: int, buf: Buffer) -> PathRetireConnectionId:
        return cls(_path_id(buf), _pull(buf))


@dataclass(frozen=True, slots=True)
class MaxPathId(_Frame):
    maximum: int

    def encode(self) -> bytes:
        return encode_uint_var(MAX_PATH_ID) + encode_uint_var(self.maximum)

    @classmethod
    def read(cls, frame_type: int, buf: Buffer) -> MaxPathId:
        return cls(_path_id(buf))


@dataclass(frozen=True, slots=True)
class PathsBlocked(_Frame):
    maximum: int

    def encode(self) -> bytes:
        return encode_uint_var(PATHS_BLOCKED) + encode_uint_var(self.maximum)

    @classmethod
    def read(cls, frame_type: int, buf: Buffer) -> PathsBlocked:
        return cls(_path_id(buf))


@dataclass(frozen=True, slots=True)
class PathCidsBlocked(_Frame):
    path_id: int
    next_sequence: int

    def encode(self) -> bytes:
        return b"".join(map(encode_uint_var, (PATH_CIDS_BLOCKED, self.path_id, self.next_sequence)))

    @classmethod
    def read(cls, frame_type: int, buf: Buffer) -> PathCidsBlocked:
        return cls(_path_id(buf), _pull(buf))


MultipathFrame = (
    PathAck
    | PathAbandon
    | PathStatus
    | PathNewConnectionId
    | PathRetireConnectionId
    | MaxPathId
    | PathsBlocked
    | PathCidsBlocked
)

FRAME_CLASSES: Final[dict[int, type[_Frame]]] = {
    PATH_ACK: PathAck,
    PATH_ACK_ECN: PathAck,
    PATH_ABANDON: PathAbandon,
    PATH_STATUS_BACKUP: PathStatus,
    PATH_STATUS_AVAILABLE: PathStatus,
    PATH_NEW_CONNECTION_ID: PathNewConnectionId,
    PATH_RETIRE_CONNECTION_ID: PathRetireConnectionId,
    MAX_PATH_ID: MaxPathId,
    PATHS_BLOCKED: PathsBlocked,
    PATH_CIDS_BLOCKED: PathCidsBlocked,
}


def decode_frame(frame_type: int, buf: Buffer) -> MultipathFrame:
    """Read one multipath frame whose type varint was already consumed."""
    cls = FRAME_CLASSES.get(frame_type)
    if cls is None:
        raise FrameEncodingError(f"not a multipath frame type: 0x{frame_type:x}")
    frame = _guard(frame_type, buf, cls)
    assert isinstance(frame, MultipathFrame)
    return frame


def parse_frame(data: bytes) -> MultipathFrame:
    """Decode a whole encoded frame (type included); trailing bytes are an error."""
    buf = Buffer(data=data)
    try:
        frame_type = buf.pull_uint_var()
    except BufferReadError as exc:
        raise FrameEncodingError("empty frame") from exc
    frame = decode_frame(frame_type, buf)
    if not buf.eof():
        raise FrameEncodingError(f"{len(data) - buf.tell()} trailing bytes after frame")
    return frame
