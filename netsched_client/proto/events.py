"""Events of the NetSched application protocol (behaviour-free data).

`NetSchedProtocol.handle_event` turns QUIC events into these; the runtime reacts
to them. Client side sees `ResponseReceived`, server side `RequestReceived`;
both see `BodyReceived`, `StreamAborted` and `DatagramReceived`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .framing import RequestHead, ResponseHead


@dataclass(frozen=True, slots=True)
class ProtocolEvent:
    """Base class of every NetSched protocol event."""


@dataclass(frozen=True, slots=True)
class RequestReceived(ProtocolEvent):
    stream_id: int
    head: RequestHead


@dataclass(frozen=True, slots=True)
class RequestRejected(ProtocolEvent):
    """A request head was malformed; the core already answered with `status`."""

    stream_id: int
    status: int
    message: str


@dataclass(frozen=True, slots=True)
class ResponseReceived(ProtocolEvent):
    stream_id: int
    head: ResponseHead


@dataclass(frozen=True, slots=True)
class BodyReceived(ProtocolEvent):
    stream_id: int
    data: bytes
    end_stream: bool


@dataclass(frozen=True, slots=True)
class StreamAborted(ProtocolEvent):
    """The peer reset the stream, or the core reset it after a protocol error."""

    stream_id: int
    error_code: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DatagramReceived(ProtocolEvent):
    service: str
    payload: bytes
