"""The connection's own frames (RFC 9000 §19): codecs and their rows for the frame table.

PADDING, PING, NEW_TOKEN, NEW_CONNECTION_ID, RETIRE_CONNECTION_ID,
PATH_CHALLENGE, PATH_RESPONSE, CONNECTION_CLOSE (transport 0x1c and
application 0x1d) and HANDSHAKE_DONE. Parsers read one frame starting at its
type, `parse_*(data, offset, end)`, and return its fields then the offset
after; a truncated frame or a value out of range is `FrameError`. Writers
return the frame's bytes (these frames are rare; the hot frames write into
the packet in `stream`). `ROWS` are these types' rows in the shape of
`frames.FRAMES` (Table 3 of §12.4), for the connection to join to that table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from netsched_client.core.errors import FrameError, PacketError
from netsched_client.core.frames import FrameRule
from netsched_client.core.packet import (
    KIND_HANDSHAKE,
    KIND_INITIAL,
    KIND_ONE_RTT,
    KIND_ZERO_RTT,
    MAX_CID_LENGTH,
    decode_varint,
    encode_varint,
)

_Buffer = bytes | bytearray | memoryview

PADDING_FRAME: Final = 0x00
PING_FRAME: Final = 0x01
NEW_TOKEN_FRAME: Final = 0x07
NEW_CONNECTION_ID_FRAME: Final = 0x18
RETIRE_CONNECTION_ID_FRAME: Final = 0x19
PATH_CHALLENGE_FRAME: Final = 0x1A
PATH_RESPONSE_FRAME: Final = 0x1B
TRANSPORT_CLOSE_FRAME: Final = 0x1C
APPLICATION_CLOSE_FRAME: Final = 0x1D
HANDSHAKE_DONE_FRAME: Final = 0x1E

# A reason phrase longer than this is cut when sent (a close must fit one packet).
MAX_REASON_LENGTH: Final = 256

_ALL: Final = frozenset({KIND_INITIAL, KIND_ZERO_RTT, KIND_HANDSHAKE, KIND_ONE_RTT})  # "IH01"
_APPLICATION: Final = frozenset({KIND_ZERO_RTT, KIND_ONE_RTT})  # "__01"
_ONE_RTT: Final = frozenset({KIND_ONE_RTT})  # "___1"
# §12.4 Table 3: CONNECTION_CLOSE 0x1c anywhere ("ih01"), 0x1d only in 0-RTT or 1-RTT.
ROWS: Final[Mapping[int, FrameRule]] = {
    PADDING_FRAME: FrameRule("padding", _ALL),
    PING_FRAME: FrameRule("ping", _ALL),
    NEW_TOKEN_FRAME: FrameRule("new_token", _ONE_RTT),
    NEW_CONNECTION_ID_FRAME: FrameRule("new_connection_id", _APPLICATION),
    RETIRE_CONNECTION_ID_FRAME: FrameRule("retire_connection_id", _APPLICATION),
    PATH_CHALLENGE_FRAME: FrameRule("path_challenge", _APPLICATION),
    PATH_RESPONSE_FRAME: FrameRule("path_response", _ONE_RTT),
    TRANSPORT_CLOSE_FRAME: FrameRule("connection_close", _ALL),
    APPLICATION_CLOSE_FRAME: FrameRule("connection_close", _APPLICATION),
    HANDSHAKE_DONE_FRAME: FrameRule("handshake_done", _ONE_RTT),
}
_PATH_DATA_TYPES: Final = frozenset({PATH_CHALLENGE_FRAME, PATH_RESPONSE_FRAME})
# §13.2.1: the frames that do not make a packet ack-eliciting.
NOT_ACK_ELICITING: Final = frozenset(
    {PADDING_FRAME, 0x02, 0x03, TRANSPORT_CLOSE_FRAME, APPLICATION_CLOSE_FRAME}
)


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


def _bytes(data: _Buffer, pos: int, end: int, length: int) -> tuple[bytes, int]:
    if pos + length > end:
        raise FrameError("frame: truncated")
    return bytes(data[pos : pos + length]), pos + length


def _end(data: _Buffer, end: int) -> int:
    return len(data) if end < 0 or end > len(data) else end


def _type(data: _Buffer, offset: int, end: int, expected: frozenset[int]) -> tuple[int, int]:
    frame_type, pos = _varint(data, offset, end)
    if frame_type not in expected:
        raise FrameError(f"frame type {frame_type:#x}")
    return frame_type, pos


def skip_padding(data: _Buffer, offset: int, end: int = -1) -> int:
    """The offset after a run of PADDING bytes starting at `offset`."""
    end = _end(data, end)
    pos = offset
    while pos < end and data[pos] == PADDING_FRAME:
        pos += 1
    return pos


def parse_new_token(data: _Buffer, offset: int = 0, end: int = -1) -> tuple[bytes, int]:
    """(token, offset after) of a NEW_TOKEN frame; an empty token is FrameError (§19.7)."""
    end = _end(data, end)
    _, pos = _type(data, offset, end, frozenset({NEW_TOKEN_FRAME}))
    length, pos = _varint(data, pos, end)
    if not length:
        raise FrameError("NEW_TOKEN: empty token")
    return _bytes(data, pos, end, length)


def parse_new_connection_id(
    data: _Buffer, offset: int = 0, end: int = -1
) -> tuple[int, int, bytes, bytes, int]:
    """(sequence, retire prior to, connection ID, reset token, offset after) (§19.15)."""
    end = _end(data, end)
    _, pos = _type(data, offset, end, frozenset({NEW_CONNECTION_ID_FRAME}))
    sequence, pos = _varint(data, pos, end)
    retire_prior_to, pos = _varint(data, pos, end)
    length, pos = _bytes(data, pos, end, 1)
    if not 1 <= length[0] <= MAX_CID_LENGTH:
        raise FrameError(f"NEW_CONNECTION_ID: length {length[0]}")
    cid, pos = _bytes(data, pos, end, length[0])
    token, pos = _bytes(data, pos, end, 16)
    return sequence, retire_prior_to, cid, token, pos


def parse_retire_connection_id(data: _Buffer, offset: int = 0, end: int = -1) -> tuple[int, int]:
    """(sequence, offset after) of a RETIRE_CONNECTION_ID frame (§19.16)."""
    end = _end(data, end)
    _, pos = _type(data, offset, end, frozenset({RETIRE_CONNECTION_ID_FRAME}))
    return _varint(data, pos, end)


def parse_path_data(data: _Buffer, offset: int = 0, end: int = -1) -> tuple[int, bytes, int]:
    """(frame type, 8 bytes of data, offset after) of a PATH_CHALLENGE or PATH_RESPONSE."""
    end = _end(data, end)
    frame_type, pos = _type(data, offset, end, _PATH_DATA_TYPES)
    payload, pos = _bytes(data, pos, end, 8)
    return frame_type, payload, pos


def parse_connection_close(
    data: _Buffer, offset: int = 0, end: int = -1
) -> tuple[bool, int, int, str, int]:
    """(application, error code, frame type or 0, reason, offset after) (§19.19). A reason
    that is not UTF-8 is read with replacements: it is for humans only."""
    end = _end(data, end)
    frame_type, pos = _type(
        data, offset, end, frozenset({TRANSPORT_CLOSE_FRAME, APPLICATION_CLOSE_FRAME})
    )
    error_code, pos = _varint(data, pos, end)
    offending = 0
    if frame_type == TRANSPORT_CLOSE_FRAME:
        offending, pos = _varint(data, pos, end)
    length, pos = _varint(data, pos, end)
    reason, pos = _bytes(data, pos, end, length)
    application = frame_type == APPLICATION_CLOSE_FRAME
    return application, error_code, offending, reason.decode("utf-8", "replace"), pos


def write_new_connection_id(
    sequence: int, retire_prior_to: int, cid: bytes, reset_token: bytes
) -> bytes:
    if not 1 <= len(cid) <= MAX_CID_LENGTH or len(reset_token) != 16:
        raise FrameError("NEW_CONNECTION_ID: connection ID or token length")
    return b"".join(
        (
            encode_varint(NEW_CONNECTION_ID_FRAME),
            encode_varint(sequence),
            encode_varint(retire_prior_to),
            bytes((len(cid),)),
            cid,
            reset_token,
        )
    )


def write_retire_connection_id(sequence: int) -> bytes:
    return encode_varint(RETIRE_CONNECTION_ID_FRAME) + encode_varint(sequence)


def write_path_data(frame_type: int, payload: bytes) -> bytes:
    if frame_type not in (PATH_CHALLENGE_FRAME, PATH_RESPONSE_FRAME) or len(payload) != 8:
        raise FrameError("PATH_CHALLENGE / PATH_RESPONSE carry 8 bytes")
    return encode_varint(frame_type) + payload


def write_connection_close(
    application: bool, error_code: int, frame_type: int, reason: str
) -> bytes:
    """A CONNECTION_CLOSE; the reason is cut to MAX_REASON_LENGTH bytes."""
    phrase = reason.encode()[:MAX_REASON_LENGTH]
    if application:
        head = encode_varint(APPLICATION_CLOSE_FRAME) + encode_varint(error_code)
    else:
        head = b"".join(
            (
                encode_varint(TRANSPORT_CLOSE_FRAME),
                encode_varint(error_code),
                encode_varint(frame_type),
            )
        )
    return head + encode_varint(len(phrase)) + phrase
