"""What a core `Connection` reports to its user through `next_event()`: plain data, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """TLS finished on this side; `alpn_protocol` is the protocol negotiated, if any."""

    alpn_protocol: str | None


@dataclass(frozen=True, slots=True)
class StreamDataReceived:
    """Bytes of a stream, in order; `end_stream` when they reach its final size."""

    stream_id: int
    data: bytes
    end_stream: bool


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The peer reset a stream (RESET_STREAM) with an application error code."""

    stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True)
class ConnectionTerminated:
    """The connection closed: by the peer's CONNECTION_CLOSE (`by_peer`), ours, or idle
    timeout (error code 0, reason "idle timeout"). `frame_type` is the offending
    frame's of a transport error, else 0."""

    error_code: int
    frame_type: int
    reason: str
    application: bool
    by_peer: bool


Event = HandshakeCompleted | StreamDataReceived | StreamReset | ConnectionTerminated
