"""The NetSched application protocol over one QUIC connection (sans-IO).

Like aioquic's `H3Connection`, this object owns no socket and no clock: the
runtime feeds it QUIC events with `handle_event` and calls the `send_*`
methods; the QUIC connection underneath produces the datagrams.

Driving contract:
1. `handle_event(quic_event)` for every event the QUIC connection yields; act
   on the returned protocol events in order.
2. Client: `send_request()` then `send_body()` (any number, last one with
   `end_stream=True`). Server: `send_response()` then `send_body()`.
3. `send_datagram()` and `abort()` at any time; server: `send_goaway()` to drain.
After any call, the runtime transmits the QUIC connection's datagrams.

Per stream: the first bytes are a HEAD, everything after it up to FIN is body.
A malformed request head is answered here (status 400, or 422 for bad SLO
metadata) and reported as `RequestRejected`: one bad request never disturbs
the connection's other streams.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    DatagramFrameReceived,
    QuicEvent,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)

from ..errors import FramingError, SLOError, Status
from .events import (
    BodyReceived,
    DatagramReceived,
    ProtocolEvent,
    RequestReceived,
    RequestRejected,
    ResponseReceived,
    StreamAborted,
)
from .framing import (
    ControlReader,
    Goaway,
    HeadReader,
    RequestHead,
    ResponseHead,
    decode_datagram,
    encode_datagram,
    encode_goaway,
    encode_request_head,
    encode_response_head,
)

ALPN = "netsched/1"

# Application error codes for RESET_STREAM / STOP_SENDING (docs/PROTOCOL.md).
ERROR_CANCELLED = 0x0
ERROR_MALFORMED = 0x1
ERROR_INTERNAL = 0x2
# 0x3: a missed deadline (send_order.ERROR_DEADLINE)
ERROR_REFUSED = 0x4  # after GOAWAY: not processed, safe to send again elsewhere


@dataclass(frozen=True, slots=True)
class GoawayReceived(ProtocolEvent):
    """Client side: the edge drains this connection (docs/PROTOCOL.md §4.5). Requests
    on streams below `stream_id` are served; later ones are refused (ERROR_REFUSED)."""

    stream_id: int


def _is_server_uni(stream_id: int) -> bool:
    return stream_id & 0x3 == 0x3


def _is_uni(stream_id: int) -> bool:
    return bool(stream_id & 0x2)


@dataclass(slots=True)
class _StreamState:
    reader: HeadReader[RequestHead] | HeadReader[ResponseHead]
    head_done: bool = False
    recv_done: bool = False  # FIN seen: STOP_SENDING no longer applies
    aborted: bool = False
    ignored: bool = False  # rejected request: further input is dropped


class NetSchedProtocol:
    """NetSched request/response and datagram framing over a QUIC connection."""

    def __init__(self, quic: QuicConnection) -> None:
        self._quic = quic
        self._is_client = quic.configuration.is_client
        self._streams: dict[int, _StreamState] = {}
        self._control: ControlReader | None = ControlReader()  # None: malformed, ignored
        self.datagrams_dropped = 0

    # -- sending ---------------------------------------------------------

    def send_request(self, head: RequestHead, body: bytes = b"", *, end_stream: bool = True) -> int:
        """Open a request stream and return its ID."""
        stream_id = self._quic.get_next_available_stream_id()
        self._streams[stream_id] = _StreamState(reader=HeadReader("response"))
        self._quic.send_stream_data(stream_id, encode_request_head(head) + body, end_stream)
        return stream_id

    def send_response(
        self, stream_id: int, head: ResponseHead, body: bytes = b"", *, end_stream: bool = False
    ) -> bool:
        return self.send_body(stream_id, encode_response_head(head) + body, end_stream=end_stream)

    def send_body(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> bool:
        """Queue `data`; False when the stream was reset meanwhile (a normal race)."""
        state = self._streams.get(stream_id)
        if state is not None and state.aborted:
            return False
        try:
            self._quic.send_stream_data(stream_id, data, end_stream)
        except (RuntimeError, ValueError):
            # The peer's STOP_SENDING reset our side, or the stream is gone.
            return False
        return True

    def refuse(self, stream_id: int, head: ResponseHead) -> None:
        """Server: answer a request at once with `head` and read none of its body
        (STOP_SENDING); the stream's state goes when the client's side ends."""
        self.send_response(stream_id, head, end_stream=True)
        state = self._streams.get(stream_id)
        if state is None:
            return
        state.ignored = True
        self._stop(stream_id, state, ERROR_CANCELLED)
        self._drop_if_rejected(stream_id, state)

    def send_datagram(self, service: str, payload: bytes) -> None:
        self._quic.send_datagram_frame(encode_datagram(service, payload))

    def send_goaway(self, stream_id: int) -> None:
        """Server: announce a drain; requests on streams from `stream_id` on will be refused.

        Sent on a unidirectional stream of its own (clients that predate it ignore
        such streams), then FIN: a drain is announced once.
        """
        control = self._quic.get_next_available_stream_id(is_unidirectional=True)
        self._quic.send_stream_data(control, encode_goaway(Goaway(stream_id)), end_stream=True)

    def abort(self, stream_id: int, error_code: int = ERROR_CANCELLED) -> None:
        """Reset our side of the stream and ask the peer to stop sending."""
        state = self._streams.get(stream_id)
        if state is not None and state.aborted:
            return
        if state is not None:
            state.aborted = True
        self._quic.reset_stream(stream_id, error_code)
        self._stop(stream_id, state, error_code)
        self._forget(stream_id)

    def forget(self, stream_id: int) -> None:
        """The runtime is done with a stream whose both directions ended."""
        self._forget(stream_id)

    # -- receiving -------------------------------------------------------

    def handle_event(self, event: QuicEvent) -> list[ProtocolEvent]:
        if isinstance(event, StreamDataReceived):
            return self._on_stream_data(event)
        if isinstance(event, StreamReset | StopSendingReceived):
            return self._on_reset(event.stream_id, event.error_code)
        if isinstance(event, DatagramFrameReceived):
            return self._on_datagram(event.data)
        return []

    def _on_stream_data(self, event: StreamDataReceived) -> list[ProtocolEvent]:
        if self._is_client and _is_server_uni(event.stream_id):
            return self._on_control(event.data)
        if _is_uni(event.stream_id):
            # Requests are bidirectional: a request on a client's unidirectional stream
            # could never be answered. Ignored, keeping no state (as HTTP/3 ignores
            # unknown unidirectional streams).
            return []
        state = self._streams.get(event.stream_id)
        if state is None:
            if self._is_client:
                return []  # data for a stream we already forgot (e.g. after abort)
            state = self._streams[event.stream_id] = _StreamState(reader=HeadReader("request"))
        if event.end_stream:
            state.recv_done = True
        if state.ignored or state.aborted:
            self._drop_if_rejected(event.stream_id, state)
            return []
        if state.head_done:
            return [BodyReceived(event.stream_id, event.data, event.end_stream)]
        events = self._read_head(event.stream_id, state, event.data, event.end_stream)
        self._drop_if_rejected(event.stream_id, state)
        return events

    def _drop_if_rejected(self, stream_id: int, state: _StreamState) -> None:
        """A rejected request's state lives only until its sender is done (FIN): a peer
        sending bad requests must not grow it (the runtime never saw those streams)."""
        if state.ignored and state.recv_done:
            self._forget(stream_id)

    @property
    def open_streams(self) -> int:
        """Streams this object keeps state for (to check that finished ones are freed)."""
        return len(self._streams)

    def _read_head(
        self, stream_id: int, state: _StreamState, data: bytes, end_stream: bool
    ) -> list[ProtocolEvent]:
        try:
            head, rest = state.reader.feed(data)
            if head is None and end_stream:
                state.reader.finish()
        except SLOError as exc:
            return self._reject(stream_id, state, Status.SLO_REFUSED, str(exc))
        except FramingError as exc:
            return self._reject(stream_id, state, Status.BAD_REQUEST, str(exc))
        if head is None:
            return []
        state.head_done = True
        events: list[ProtocolEvent] = []
        if isinstance(head, RequestHead):
            events.append(RequestReceived(stream_id, head))
        else:
            events.append(ResponseReceived(stream_id, head))
        if rest or end_stream:
            events.append(BodyReceived(stream_id, rest, end_stream))
        return events

    def _reject(
        self, stream_id: int, state: _StreamState, status: Status, message: str
    ) -> list[ProtocolEvent]:
        if self._is_client:
            # A server that sends us garbage gets its stream reset; other streams go on.
            self.abort(stream_id, ERROR_MALFORMED)
            return [StreamAborted(stream_id, ERROR_MALFORMED, f"malformed response: {message}")]
        state.ignored = True
        self.send_response(stream_id, ResponseHead(status=status, message=message), end_stream=True)
        self._stop(stream_id, state, ERROR_MALFORMED)
        return [RequestRejected(stream_id, status, message)]

    def _on_reset(self, stream_id: int, error_code: int) -> list[ProtocolEvent]:
        state = self._streams.get(stream_id)
        if state is not None and state.ignored:
            self._forget(stream_id)  # rejected: the runtime has nothing to cancel
            return []
        if state is None or state.aborted:
            return []
        state.aborted = True
        return [StreamAborted(stream_id, error_code, "reset by peer")]

    def _on_control(self, data: bytes) -> list[ProtocolEvent]:
        if self._control is None:
            return []
        try:
            messages = self._control.feed(data)
        except FramingError:
            # A broken control stream costs the drain notice, not the connection:
            # refused requests still come back reset with ERROR_REFUSED.
            self._control = None
            return []
        return [GoawayReceived(message.stream_id) for message in messages]

    def _on_datagram(self, data: bytes) -> list[ProtocolEvent]:
        try:
            service, payload = decode_datagram(data)
        except FramingError:
            # Datagrams are unreliable by contract; a bad one is counted, not fatal.
            self.datagrams_dropped += 1
            return []
        return [DatagramReceived(service, payload)]

    def _stop(self, stream_id: int, state: _StreamState | None, error_code: int) -> None:
        # STOP_SENDING only applies while the peer may still send on the stream.
        if state is None or state.recv_done:
            return
        with contextlib.suppress(ValueError):  # aioquic already discarded the stream
            self._quic.stop_stream(stream_id, error_code)

    def _forget(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)
