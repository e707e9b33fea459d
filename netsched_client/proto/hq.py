"""HTTP/0.9 over QUIC (ALPN `hq-interop`), both roles, sans-IO.

The QUIC interop runner's file-transfer protocol: the client sends
`GET /path\\r\\n` on a bidirectional stream and the server answers with the
file's bytes and FIN. There is no status line, so an error resets the stream.

Server: requests surface as `RequestReceived` with
`meta = {"method": "GET", "path": …}` so the edge serves them like any other
request. Client: `send_request` takes the same head (service `www`, the path in
`meta["path"]`); the answer surfaces as `ResponseReceived` (status 200, since a
reset is the only way to fail) followed by `BodyReceived` until FIN.
"""

from __future__ import annotations

import contextlib

from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import QuicEvent, StopSendingReceived, StreamDataReceived, StreamReset

from ..errors import NegotiationError
from .events import (
    BodyReceived,
    ProtocolEvent,
    RequestReceived,
    ResponseReceived,
    StreamAborted,
)
from .framing import RequestHead, ResponseHead

ALPN = "hq-interop"
SERVICE = "www"  # the edge's built-in file service for HTTP/0.9
MAX_REQUEST_LINE = 2048
ERROR_NOT_FOUND = 0x1  # HTTP/0.9 has no status: a failed request is a reset stream


def _is_path(path: str) -> bool:
    """'/' then printable ASCII without blanks, short enough for a request line."""
    return (
        path.startswith("/")
        and path.isascii()
        and path.isprintable()
        and not any(c.isspace() for c in path)
        and len(path) + 6 <= MAX_REQUEST_LINE
    )


def request_line(path: str) -> bytes:
    """`GET <path>\\r\\n`; ValueError for a path that cannot stand in a request line."""
    if not _is_path(path):
        raise ValueError(f"meta['path'] must be '/' + printable ASCII without spaces, got {path!r}")
    return f"GET {path}\r\n".encode("ascii")


def parse_request_line(line: bytes) -> str | None:
    """The path of `GET /path`, or None when the line is not a valid request.

    A valid path is one `request_line` accepts: control characters (a NUL
    would reach the file system) and over-long lines are refused.
    """
    if len(line) > MAX_REQUEST_LINE:
        return None
    parts = line.strip().split(b" ")
    if len(parts) != 2 or parts[0] != b"GET":
        return None
    path = parts[1].decode("latin-1")
    return path if _is_path(path) else None


class HQProtocol:
    """HTTP/0.9 on QUIC streams; a request line longer than `max_header_bytes` is refused.

    The bound is also never above `MAX_REQUEST_LINE`, what the interop runner needs.
    """

    def __init__(self, quic: QuicConnection, *, max_header_bytes: int = MAX_REQUEST_LINE) -> None:
        if max_header_bytes < 1:
            raise ValueError(f"max_header_bytes must be positive (got {max_header_bytes})")
        self._quic = quic
        self._max_line = min(max_header_bytes, MAX_REQUEST_LINE)
        self._pending: dict[int, bytes] = {}
        self._aborted: set[int] = set()
        # Server: streams refused before the runtime saw a request, forgotten once the
        # peer has finished sending on them.
        self._answered: set[int] = set()
        self._served: set[int] = set()
        self._requested: set[int] = set()  # client: streams awaiting the first response byte
        self._receiving: set[int] = set()  # client: streams whose response body is arriving

    def send_request(self, head: RequestHead, body: bytes = b"", *, end_stream: bool = True) -> int:
        """Send `GET <meta["path"]>` on a new stream; HTTP/0.9 has no request body.

        The request always ends the stream: `end_stream` is accepted for the
        common interface, and a later `send_body` on the stream returns False.
        """
        if not self._quic.configuration.is_client:
            raise NegotiationError("only a client sends hq-interop requests")
        if head.service != SERVICE:
            raise NegotiationError(
                f"hq-interop reaches only the {SERVICE!r} file service, not {head.service!r}"
            )
        if body:
            raise NegotiationError("an HTTP/0.9 request has no body")
        line = request_line(head.meta.get("path", "/"))
        stream_id = self._quic.get_next_available_stream_id()
        self._quic.send_stream_data(stream_id, line, end_stream=True)
        self._requested.add(stream_id)
        return stream_id

    def send_response(
        self, stream_id: int, head: ResponseHead, body: bytes = b"", *, end_stream: bool = False
    ) -> bool:
        if not 200 <= head.status < 300:
            self.abort(stream_id, ERROR_NOT_FOUND)
            return False
        return self.send_body(stream_id, body, end_stream=end_stream)

    def send_body(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> bool:
        # A client's request already ended its stream: there is no request body to add.
        if stream_id in self._aborted or self._quic.configuration.is_client:
            return False
        try:
            self._quic.send_stream_data(stream_id, data, end_stream)
        except (RuntimeError, ValueError):
            return False
        return True

    def send_datagram(self, service: str, payload: bytes) -> None:
        raise NegotiationError("hq-interop carries no datagrams")

    def abort(self, stream_id: int, error_code: int = ERROR_NOT_FOUND) -> None:
        if stream_id not in self._aborted:
            self._aborted.add(stream_id)
            self._quic.reset_stream(stream_id, error_code)

    def forget(self, stream_id: int) -> None:
        self._aborted.discard(stream_id)
        self._served.discard(stream_id)
        self._requested.discard(stream_id)
        self._receiving.discard(stream_id)
        self._pending.pop(stream_id, None)
        self._answered.discard(stream_id)

    @property
    def open_streams(self) -> int:
        """Streams this object keeps state for (to check that finished ones are freed)."""
        held = self._aborted | self._served | self._requested | self._receiving | self._answered
        return len(held | self._pending.keys())

    def handle_event(self, event: QuicEvent) -> list[ProtocolEvent]:
        if isinstance(event, StopSendingReceived) and self._quic.configuration.is_client:
            # The server stopped reading the request; its response may still come, and a
            # client must not discard it (RFC 9114 §4.1). aioquic reset our sending side.
            return []
        if isinstance(event, StreamReset | StopSendingReceived):
            if isinstance(event, StreamReset) and event.stream_id in self._answered:
                self.forget(event.stream_id)
                return []
            if event.stream_id in self._aborted:
                return []
            self._aborted.add(event.stream_id)
            return [StreamAborted(event.stream_id, event.error_code, "reset by peer")]
        if not isinstance(event, StreamDataReceived):
            return []
        if event.stream_id & 0x2:
            return []  # a unidirectional stream: HTTP/0.9 has no use for one, nothing is read
        if event.stream_id in self._aborted:
            if event.end_stream and event.stream_id in self._answered:
                self.forget(event.stream_id)
            return []
        if self._quic.configuration.is_client:
            return self._on_response_data(event.stream_id, event.data, event.end_stream)
        events = self._on_data(event.stream_id, event.data, event.end_stream)
        if event.end_stream and event.stream_id in self._answered:
            self.forget(event.stream_id)
        return events

    def _on_response_data(self, stream_id: int, data: bytes, end: bool) -> list[ProtocolEvent]:
        """Client: the first bytes (or a bare FIN) on a requested stream are a 200 response."""
        events: list[ProtocolEvent] = []
        if stream_id in self._requested:
            self._requested.discard(stream_id)
            self._receiving.add(stream_id)
            events.append(ResponseReceived(stream_id, ResponseHead(status=200)))
        elif stream_id not in self._receiving:
            return []  # not a stream we asked on (an HTTP/0.9 server opens none): ignore
        if end:
            self._receiving.discard(stream_id)
        if data or end:
            events.append(BodyReceived(stream_id, data, end))
        return events

    def _on_data(self, stream_id: int, data: bytes, end: bool) -> list[ProtocolEvent]:
        if stream_id in self._served:
            return []
        pending = self._pending.get(stream_id, b"")
        # Look for the end of the line only as far as the bound, so nothing longer is kept.
        newline = data.find(b"\n", 0, self._max_line + 1 - len(pending))
        if newline < 0:
            if len(pending) + len(data) > self._max_line:
                return self._refuse(stream_id, "request line too long")
            line = pending + data
            if not end:
                self._pending[stream_id] = line
                return []
        else:
            line = pending + data[:newline]
        self._pending.pop(stream_id, None)
        path = parse_request_line(line)
        if path is None:
            return self._refuse(stream_id, "malformed HTTP/0.9 request")
        self._served.add(stream_id)  # later bytes on this stream are not requests
        # Streaming: files go out as they are read, never whole in memory.
        head = RequestHead(service=SERVICE, streaming=True, meta={"method": "GET", "path": path})
        return [RequestReceived(stream_id, head), BodyReceived(stream_id, b"", True)]

    def _refuse(self, stream_id: int, reason: str) -> list[ProtocolEvent]:
        """Reset the stream and stop reading it; the runtime hears of no request on it."""
        self._pending.pop(stream_id, None)
        self.abort(stream_id)
        with contextlib.suppress(ValueError):  # its receiving side is already done
            self._quic.stop_stream(stream_id, ERROR_NOT_FOUND)
        self._answered.add(stream_id)
        return [StreamAborted(stream_id, ERROR_NOT_FOUND, reason)]
