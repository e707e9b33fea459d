"""NetSched requests over HTTP/3 (sans-IO), for backward compatibility.

`H3Protocol` offers the same methods and events as `NetSchedProtocol`, so the
client and the edge handle a request the same way whichever ALPN was chosen.
Mapping (docs/PROTOCOL.md, "HTTP/3"): `:path` is `/<service>[/rest]`, the SLO
travels in the `netsched-slo` header, RFC 9218 `priority` fills urgency and
incremental when the SLO leaves them unset.
"""

from __future__ import annotations

from collections.abc import Mapping

from aioquic.h3.connection import H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.h3.exceptions import H3Error
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import QuicEvent, StopSendingReceived, StreamReset

from ..errors import FramingError, NegotiationError, SLOError, Status
from .events import (
    BodyReceived,
    ProtocolEvent,
    RequestReceived,
    RequestRejected,
    ResponseReceived,
    StreamAborted,
)
from .framing import RequestHead, ResponseHead
from .slo import SLO, decode_slo_header, encode_slo_header, parse_priority_header

ALPN = "h3"
Headers = list[tuple[bytes, bytes]]

_RESPONSE_FIELDS = {
    b"netsched-backend": "backend",
    b"netsched-queue-ms": "queue_ms",
    b"netsched-backend-ms": "backend_ms",
    b"netsched-message": "message",
}


def request_headers(head: RequestHead, authority: str) -> Headers:
    headers: Headers = [
        (b":method", head.meta.get("method", "POST").encode()),
        (b":scheme", b"https"),
        (b":authority", authority.encode()),
        (b":path", ("/" + head.service + head.meta.get("path", "")).encode()),
    ]
    if head.slo is not None:
        headers.append((b"netsched-slo", encode_slo_header(head.slo).encode()))
    if head.streaming:
        headers.append((b"netsched-streaming", b"1"))
    return headers


def request_head(headers: Headers) -> RequestHead:
    """Build a RequestHead from HTTP/3 request headers (FramingError / SLOError on bad input)."""
    fields = _header_map(headers)
    path = fields.get(":path", "")
    if not path.startswith("/") or len(path) < 2:
        raise FramingError(f":path must be /<service>[/rest] (got {path!r})")
    service, _, rest = path[1:].partition("/")
    service = service.split("?", 1)[0]
    slo = decode_slo_header(fields["netsched-slo"]) if "netsched-slo" in fields else None
    slo = _apply_priority(slo, fields.get("priority"))
    meta = {"method": fields.get(":method", "GET"), "path": "/" + rest}
    try:
        return RequestHead(
            service=service,
            slo=slo,
            streaming=fields.get("netsched-streaming") == "1",
            meta=meta,
        )
    except (TypeError, ValueError) as exc:
        if isinstance(exc, SLOError | FramingError):
            raise
        raise FramingError(str(exc)) from exc


def _apply_priority(slo: SLO | None, priority: str | None) -> SLO | None:
    if priority is None:
        return slo
    urgency, incremental = parse_priority_header(priority)
    hinted = SLO(urgency=urgency, incremental=incremental)
    # The explicit SLO header wins over the generic priority hint.
    return hinted.merged(slo)


def response_headers(head: ResponseHead) -> Headers:
    headers: Headers = [(b":status", str(head.status).encode())]
    for name, attr in _RESPONSE_FIELDS.items():
        value = getattr(head, attr)
        if value not in (None, ""):
            headers.append((name, str(value).encode()))
    return headers


def response_head(headers: Headers) -> ResponseHead:
    fields = _header_map(headers)
    try:
        status = int(fields.get(":status", ""))
        queue_ms = fields.get("netsched-queue-ms")
        backend_ms = fields.get("netsched-backend-ms")
        return ResponseHead(
            status=status,
            message=fields.get("netsched-message", ""),
            backend=fields.get("netsched-backend"),
            queue_ms=float(queue_ms) if queue_ms is not None else None,
            backend_ms=float(backend_ms) if backend_ms is not None else None,
        )
    except ValueError as exc:
        raise FramingError(f"bad HTTP/3 response head: {exc}") from exc


def _header_map(headers: Headers) -> Mapping[str, str]:
    try:
        return {name.decode("ascii").lower(): value.decode() for name, value in headers}
    except UnicodeDecodeError as exc:
        raise FramingError("header is not valid UTF-8") from exc


class H3Protocol:
    """NetSched's request/response API on top of aioquic's HTTP/3 layer."""

    def __init__(self, quic: QuicConnection, authority: str = "") -> None:
        self._quic = quic
        self._h3 = H3Connection(quic)
        self._is_client = quic.configuration.is_client
        self._authority = authority
        self._started: set[int] = set()
        self._aborted: set[int] = set()

    def send_request(self, head: RequestHead, body: bytes = b"", *, end_stream: bool = True) -> int:
        stream_id = self._quic.get_next_available_stream_id()
        self._h3.send_headers(stream_id, request_headers(head, self._authority), end_stream=False)
        self._started.add(stream_id)
        self._h3.send_data(stream_id, body, end_stream)
        return stream_id

    def send_response(
        self, stream_id: int, head: ResponseHead, body: bytes = b"", *, end_stream: bool = False
    ) -> bool:
        if stream_id in self._aborted:
            return False
        self._h3.send_headers(stream_id, response_headers(head), end_stream=False)
        return self.send_body(stream_id, body, end_stream=end_stream)

    def send_body(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> bool:
        if stream_id in self._aborted:
            return False
        try:
            self._h3.send_data(stream_id, data, end_stream)
        except (RuntimeError, ValueError, H3Error):
            return False
        return True

    def send_datagram(self, service: str, payload: bytes) -> None:
        raise NegotiationError("datagrams need ALPN netsched/1; this connection uses h3")

    def abort(self, stream_id: int, error_code: int = 0x10C) -> None:  # H3_REQUEST_CANCELLED
        if stream_id in self._aborted:
            return
        self._aborted.add(stream_id)
        self._quic.reset_stream(stream_id, error_code)

    def forget(self, stream_id: int) -> None:
        self._started.discard(stream_id)
        self._aborted.discard(stream_id)

    def handle_event(self, event: QuicEvent) -> list[ProtocolEvent]:
        if isinstance(event, StopSendingReceived) and self._quic.configuration.is_client:
            # The server stopped reading the request; its response may still come, and a
            # client must not discard it (RFC 9114 §4.1). aioquic reset our sending side.
            return []
        if isinstance(event, StreamReset | StopSendingReceived):
            if event.stream_id in self._aborted:
                return []
            self._aborted.add(event.stream_id)
            return [StreamAborted(event.stream_id, event.error_code, "reset by peer")]
        out: list[ProtocolEvent] = []
        for h3_event in self._h3.handle_event(event):
            out.extend(self._translate(h3_event))
        return out

    def _translate(self, event: H3Event) -> list[ProtocolEvent]:
        if isinstance(event, HeadersReceived):
            return self._on_headers(event)
        if isinstance(event, DataReceived) and event.stream_id not in self._aborted:
            return [BodyReceived(event.stream_id, event.data, event.stream_ended)]
        return []

    def _on_headers(self, event: HeadersReceived) -> list[ProtocolEvent]:
        sid = event.stream_id
        if sid in self._aborted:
            return []
        tail: list[ProtocolEvent] = [BodyReceived(sid, b"", True)] if event.stream_ended else []
        if self._is_client:
            if sid not in self._started:
                return tail  # trailers: nothing NetSched reads
            self._started.discard(sid)
            try:
                return [ResponseReceived(sid, response_head(event.headers)), *tail]
            except FramingError as exc:
                self.abort(sid)
                return [StreamAborted(sid, 0x101, f"malformed response: {exc}")]
        if sid in self._started:
            return tail
        self._started.add(sid)
        try:
            return [RequestReceived(sid, request_head(event.headers)), *tail]
        except SLOError as exc:
            return self._reject(sid, Status.SLO_REFUSED, str(exc))
        except FramingError as exc:
            return self._reject(sid, Status.BAD_REQUEST, str(exc))

    def _reject(self, stream_id: int, status: Status, message: str) -> list[ProtocolEvent]:
        self.send_response(stream_id, ResponseHead(status=status, message=message), end_stream=True)
        self._aborted.add(stream_id)  # ignore the rest of this request's body
        return [RequestRejected(stream_id, status, message)]
