"""Streams and flow control in use: the compiled `_stream`, else the reference `_stream_py`.

Frame codecs (RFC 9000 §19, RFC 9221): `parse_*(data, offset, end)` read one
frame starting at its type and return its fields, payloads as (data
offset, length) into `data`, then the offset after; `write_*(buf, pos, ...)`
write one into a writable buffer and return the offset after. STREAM frames
of all eight types parse; a frame without the LEN bit runs to `end`.
`SendStream`: a stream's send ring, lost ranges sent first, then new data
within the stream's and the connection's `SendCredit`, then FIN; acked and
lost ranges are `RangeSet`s. `RecvStream`: reassembly into a ring, final
size checks (§4.5), its `ReceiveCredit` (§4.1-4.2, auto-tuned window). Errors
are `PacketError`s: `FrameError` (FRAME_ENCODING_ERROR), `FlowControlError`,
`FinalSizeError`, `StreamStateError`, each with its `error_code`.
`COMPILED` says which backend is in use; `BACKENDS` holds both for the tests.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from netsched_client import _native
from netsched_client.core import _stream_py
from netsched_client.core.errors import (
    FinalSizeError,
    FlowControlError,
    FrameError,
    StreamStateError,
)

if TYPE_CHECKING:
    from netsched_client.core._stream import (
        CRYPTO_FRAME,
        DATA_BLOCKED_FRAME,
        DATAGRAM_FRAME,
        DATAGRAM_LEN_FRAME,
        MAX_DATA_FRAME,
        MAX_RECEIVE_GAPS,
        MAX_STREAM_DATA_FRAME,
        MAX_STREAM_OFFSET,
        MAX_STREAMS,
        MAX_STREAMS_BIDI_FRAME,
        MAX_STREAMS_UNI_FRAME,
        RESET_STREAM_FRAME,
        STOP_SENDING_FRAME,
        STREAM_DATA_BLOCKED_FRAME,
        STREAM_FRAME,
        STREAMS_BLOCKED_BIDI_FRAME,
        STREAMS_BLOCKED_UNI_FRAME,
        ReceiveCredit,
        RecvStream,
        SendCredit,
        SendStream,
        parse_crypto,
        parse_data_blocked,
        parse_datagram,
        parse_max_data,
        parse_max_stream_data,
        parse_max_streams,
        parse_reset_stream,
        parse_stop_sending,
        parse_stream,
        parse_stream_data_blocked,
        parse_streams_blocked,
        write_crypto,
        write_data_blocked,
        write_datagram,
        write_max_data,
        write_max_stream_data,
        write_max_streams,
        write_reset_stream,
        write_stop_sending,
        write_stream,
        write_stream_data_blocked,
        write_streams_blocked,
    )

    COMPILED: bool
    BACKENDS: dict[str, ModuleType]
else:
    _compiled = _native.load("netsched_client.core._stream")
    COMPILED = _compiled is not None
    BACKENDS = {"python": _stream_py} | ({"cython": _compiled} if COMPILED else {})
    _core = _compiled if COMPILED else _stream_py
    globals().update({name: getattr(_core, name) for name in _stream_py.__all__})

__all__ = [
    "BACKENDS",
    "COMPILED",
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
    "FinalSizeError",
    "FlowControlError",
    "FrameError",
    "ReceiveCredit",
    "RecvStream",
    "SendCredit",
    "SendStream",
    "StreamStateError",
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
