"""The frame table: each frame type, its name and the packet kinds that may carry it.

Stage 4's connection dispatches a packet's frames through
`bind(handlers)`: `frame type -> (handler, allowed packet kinds)`, one
lookup a frame, no `if` chain; a frame type not in the table, or in a packet
kind that may not carry it, is a PROTOCOL_VIOLATION there (RFC 9000 §12.4).
New frame types (our FEC frames, the multipath draft's) are rows of
`FRAMES`. The kinds are stage 1's `KIND_*` (Table 3 of §12.4: "IH01"); PADDING,
PING and CONNECTION_CLOSE, which need no codec here, join with stage 4.

`check_stream_direction` is the part of §19's STREAM_STATE_ERROR rules that
the frame type and stream ID alone decide: who may send what on a
unidirectional stream.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple, TypeVar

from netsched_client.core import stream
from netsched_client.core.errors import FrameError, StreamStateError
from netsched_client.core.packet import (
    ACK_ECN_FRAME,
    ACK_FRAME,
    KIND_HANDSHAKE,
    KIND_INITIAL,
    KIND_ONE_RTT,
    KIND_ZERO_RTT,
    PATH_ACK_ECN_FRAME,
    PATH_ACK_FRAME,
)

__all__ = ["FRAMES", "FrameRule", "bind", "check_stream_direction"]

Handler = TypeVar("Handler", bound=Callable[..., object])

_NOT_ZERO_RTT = frozenset({KIND_INITIAL, KIND_HANDSHAKE, KIND_ONE_RTT})  # "IH_1"
_APPLICATION = frozenset({KIND_ZERO_RTT, KIND_ONE_RTT})  # "__01"
_ONE_RTT = frozenset({KIND_ONE_RTT})  # "___1"
_STREAM_TYPES = range(stream.STREAM_FRAME, stream.STREAM_FRAME + 8)


class FrameRule(NamedTuple):
    """A frame type's row: the handler's name in `bind`'s mapping, and where it may appear."""

    name: str
    kinds: frozenset[int]


def _rows(types: range | tuple[int, ...], name: str, kinds: frozenset[int]) -> dict[int, FrameRule]:
    return dict.fromkeys(types, FrameRule(name, kinds))


FRAMES: Mapping[int, FrameRule] = {
    **_rows((ACK_FRAME, ACK_ECN_FRAME), "ack", _NOT_ZERO_RTT),
    **_rows((stream.RESET_STREAM_FRAME,), "reset_stream", _APPLICATION),
    **_rows((stream.STOP_SENDING_FRAME,), "stop_sending", _APPLICATION),
    **_rows((stream.CRYPTO_FRAME,), "crypto", _NOT_ZERO_RTT),
    **_rows(_STREAM_TYPES, "stream", _APPLICATION),
    **_rows((stream.MAX_DATA_FRAME,), "max_data", _APPLICATION),
    **_rows((stream.MAX_STREAM_DATA_FRAME,), "max_stream_data", _APPLICATION),
    **_rows(
        (stream.MAX_STREAMS_BIDI_FRAME, stream.MAX_STREAMS_UNI_FRAME), "max_streams", _APPLICATION
    ),
    **_rows((stream.DATA_BLOCKED_FRAME,), "data_blocked", _APPLICATION),
    **_rows((stream.STREAM_DATA_BLOCKED_FRAME,), "stream_data_blocked", _APPLICATION),
    **_rows(
        (stream.STREAMS_BLOCKED_BIDI_FRAME, stream.STREAMS_BLOCKED_UNI_FRAME),
        "streams_blocked",
        _APPLICATION,
    ),
    **_rows((stream.DATAGRAM_FRAME, stream.DATAGRAM_LEN_FRAME), "datagram", _APPLICATION),
    # draft-ietf-quic-multipath-21 §4.1: path-specific ACKs only once 1-RTT keys are up
    **_rows((PATH_ACK_FRAME, PATH_ACK_ECN_FRAME), "path_ack", _ONE_RTT),
}

# Frames a stream's sending side receives (the peer reads) and its receiving side receives.
_TO_SENDER = frozenset({stream.STOP_SENDING_FRAME, stream.MAX_STREAM_DATA_FRAME})
_TO_RECEIVER = frozenset(
    {stream.RESET_STREAM_FRAME, stream.STREAM_DATA_BLOCKED_FRAME, *_STREAM_TYPES}
)


def bind(handlers: Mapping[str, Handler]) -> dict[int, tuple[Handler, frozenset[int]]]:
    """The dispatch table: frame type -> (its handler, the packet kinds allowed to carry it).

    `handlers` maps each rule's name to its handler; a name without one is
    left out of the table (its frames are then unknown to the connection).
    """
    return {
        frame_type: (handlers[rule.name], rule.kinds)
        for frame_type, rule in FRAMES.items()
        if rule.name in handlers
    }


def check_stream_direction(frame_type: int, stream_id: int, is_client: bool) -> None:
    """StreamStateError for a frame the peer may not send on a unidirectional stream:
    data, RESET_STREAM or STREAM_DATA_BLOCKED on one we opened (we only send on it, §19.4,
    §19.8, §19.13), STOP_SENDING or MAX_STREAM_DATA on one it opened (we only receive on
    it, §19.5, §19.10)."""
    if frame_type not in _TO_SENDER and frame_type not in _TO_RECEIVER:
        raise FrameError(f"not a stream frame: {frame_type:#x}")
    if not stream_id & 0x02:
        return
    ours = (stream_id & 0x01) == (0 if is_client else 1)
    if (frame_type in _TO_RECEIVER) == ours:
        side = "send-only" if ours else "receive-only"
        raise StreamStateError(f"frame {frame_type:#x} on {side} stream {stream_id}")
