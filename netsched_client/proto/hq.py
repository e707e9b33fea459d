"""HTTP/0.9 over QUIC (ALPN `hq-interop`), server role, sans-IO.

The QUIC interop runner's file-transfer protocol: the client sends
`GET /path\\r\\n` on a bidirectional stream and the server answers with the
file's bytes and FIN. There is no status line, so an error resets the stream.
Requests surface as `RequestReceived` with `meta = {"method": "GET", "path": …}`
so the edge serves them like any other request.
"""

from __future__ import annotations

from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import QuicEvent, StopSendingReceived, StreamDataReceived, StreamReset

from ..errors import NegotiationError
from .events import BodyReceived, ProtocolEvent, RequestReceived, StreamAborted
from .framing import RequestHead, ResponseHead

ALPN = "hq-interop"
SERVICE = "www"  # the edge's built-in file service for HTTP/0.9
MAX_REQUEST_LINE = 2048
ERROR_NOT_FOUND = 0x1  # HTTP/0.9 has no status: a failed request is a reset stream


def parse_request_line(line: bytes) -> str | None:
    """The path of `GET /path`, or None when the line is not a valid request."""
    parts = line.strip().split(b" ")
    if len(parts) != 2 or parts[0] != b"GET" or not parts[1].startswith(b"/"):
        return None
    try:
        return parts[1].decode("ascii")
    except UnicodeDecodeError:
        return None


class HQProtocol:
    def __init__(self, quic: QuicConnection) -> None:
        self._quic = quic
        self._pending: dict[int, bytes] = {}
        self._aborted: set[int] = set()
        self._served: set[int] = set()

    def send_request(self, head: RequestHead, body: bytes = b"", *, end_stream: bool = True) -> int:
        raise NegotiationError("hq-interop is served, not spoken, by this endpoint")

    def send_response(
        self, stream_id: int, head: ResponseHead, body: bytes = b"", *, end_stream: bool = False
    ) -> bool:
        if not 200 <= head.status < 300:
            self.abort(stream_id, ERROR_NOT_FOUND)
            return False
        return self.send_body(stream_id, body, end_stream=end_stream)

    def send_body(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> bool:
        if stream_id in self._aborted:
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
        self._pending.pop(stream_id, None)

    def handle_event(self, event: QuicEvent) -> list[ProtocolEvent]:
        if isinstance(event, StreamReset | StopSendingReceived):
            if event.stream_id in self._aborted:
                return []
            self._aborted.add(event.stream_id)
            return [StreamAborted(event.stream_id, event.error_code, "reset by peer")]
        if not isinstance(event, StreamDataReceived) or event.stream_id in self._aborted:
            return []
        return self._on_data(event.stream_id, event.data, event.end_stream)

    def _on_data(self, stream_id: int, data: bytes, end: bool) -> list[ProtocolEvent]:
        if stream_id in self._served:
            return []
        buffered = self._pending.get(stream_id, b"") + data
        if b"\n" not in buffered and not end:
            if len(buffered) > MAX_REQUEST_LINE:
                self.abort(stream_id)
                return [StreamAborted(stream_id, ERROR_NOT_FOUND, "request line too long")]
            self._pending[stream_id] = buffered
            return []
        self._pending.pop(stream_id, None)
        path = parse_request_line(buffered.split(b"\n", 1)[0])
        if path is None:
            self.abort(stream_id)
            return [StreamAborted(stream_id, ERROR_NOT_FOUND, "malformed HTTP/0.9 request")]
        self._served.add(stream_id)  # later bytes on this stream are not requests
        # Streaming: files go out as they are read, never whole in memory.
        head = RequestHead(service=SERVICE, streaming=True, meta={"method": "GET", "path": path})
        return [RequestReceived(stream_id, head), BodyReceived(stream_id, b"", True)]
