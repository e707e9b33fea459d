"""NetSched requests over HTTP/3 (sans-IO), for backward compatibility.

`H3Protocol` offers the same methods and events as `NetSchedProtocol`, so the
client and the edge handle a request the same way whichever ALPN was chosen.
Mapping (docs/PROTOCOL.md, "HTTP/3"): `:method` is the method, `:path` is
`/<service>[/rest][?query]`, the other fields are the application's headers
(except `netsched-*`), the SLO travels in the `netsched-slo` header, RFC 9218
`priority` fills urgency and incremental when the SLO leaves them unset. A
response relayed from a backend carries `netsched-from-backend: 1`.

Header sections are bounded by `max_header_bytes` (RFC 9114 §4.2.2): the
bound is advertised as SETTINGS_MAX_FIELD_SECTION_SIZE, a HEADERS or
PUSH_PROMISE frame that declares a longer block is refused from its frame
head, before any of it is buffered; a block of more than `MAX_FIELD_LINES`
field lines is refused before QPACK decodes it (references to the dynamic
table expand it), and a decoded section larger than the bound (as RFC 9114
§4.2.2 counts it) is refused too. Refusal is a stream error
H3_EXCESSIVE_LOAD (RFC 9114 §10.5): the stream is reset and its reading
stopped; the server reports it as a `RequestRejected` with status 431.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from aioquic.buffer import Buffer, encode_uint_var
from aioquic.h3.connection import ErrorCode, FrameType, H3Connection, Setting, encode_frame
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.h3.exceptions import H3Error
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import QuicEvent, StopSendingReceived, StreamDataReceived, StreamReset

from ..errors import FramingError, NegotiationError, SLOError, Status
from .events import (
    BodyReceived,
    ProtocolEvent,
    RequestReceived,
    RequestRejected,
    ResponseReceived,
    StreamAborted,
)
from .framing import RESERVED_HEADER_PREFIX, HeaderFields, RequestHead, ResponseHead
from .slo import SLO, decode_slo_header, encode_slo_header, parse_priority_header

ALPN = "h3"
Headers = list[tuple[bytes, bytes]]

DEFAULT_MAX_HEADER_BYTES = 64 * 1024
STATUS_HEADERS_TOO_LARGE = 431  # RFC 6585 §5
_FRAME_HEADERS = 0x1
_FRAME_PUSH_PROMISE = 0x5
_FIELD_OVERHEAD = 32  # per field line, in RFC 9114 §4.2.2's size of a header section
MAX_FIELD_LINES = 128  # per header section (Envoy's max_headers_count is 100)

FROM_BACKEND = b"netsched-from-backend"  # "1": status, headers and body are the backend's
# RFC 9114 §4.2: connection-specific fields make a message malformed; Host is :authority.
# Content-Length too: DATA frames delimit the body, and aioquic checks a stated length
# against them, which a HEAD or 304 answer (length stated, no body) would fail.
_NOT_IN_H3 = frozenset(
    {
        "connection",
        "content-length",
        "host",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    }
)

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
        (b":path", _path(head).encode()),
    ]
    if head.slo is not None:
        headers.append((b"netsched-slo", encode_slo_header(head.slo).encode()))
    if head.streaming:
        headers.append((b"netsched-streaming", b"1"))
    return headers + _application_fields(head.headers)


def _path(head: RequestHead) -> str:
    """`/<service><target>`; the target `/` (with or without a query) adds no slash:
    the edge reads `/<service>` as `/` for the backend, and a plain HTTP/3 server
    (the interop runner's) finds the file `/<service>` named as the caller wrote it."""
    target = head.meta.get("path", "")
    if target == "/" or target.startswith("/?"):
        target = target[1:]
    return "/" + head.service + target


def _application_fields(fields: HeaderFields) -> Headers:
    """The fields HTTP/3 may carry (RFC 9114 §4.2: no connection-specific ones; the
    authority travels as :authority, not Host)."""
    return [
        (name.encode(), value.encode())
        for name, value in fields
        if name not in _NOT_IN_H3 and not (name == "te" and value.lower() != "trailers")
    ]


def request_head(headers: Headers) -> RequestHead:
    """Build a RequestHead from HTTP/3 request headers (FramingError / SLOError on bad input).

    `:path` is `/<service>[/rest][?query]`: the backend sees `/rest?query` (at least `/`).
    """
    fields = _header_map(headers)
    path = fields.get(":path", "")
    if not path.startswith("/") or len(path) < 2:
        raise FramingError(f":path must be /<service>[/rest] (got {path!r})")
    target, mark, query = path[1:].partition("?")
    service, _, rest = target.partition("/")
    slo = decode_slo_header(fields["netsched-slo"]) if "netsched-slo" in fields else None
    slo = _apply_priority(slo, fields.get("priority"))
    meta = {"method": fields.get(":method", "GET"), "path": "/" + rest + mark + query}
    try:
        return RequestHead(
            service=service,
            slo=slo,
            streaming=fields.get("netsched-streaming") == "1",
            meta=meta,
            headers=_passed_on(headers),
        )
    except (TypeError, ValueError) as exc:
        if isinstance(exc, SLOError | FramingError):
            raise
        raise FramingError(str(exc)) from exc


def _passed_on(headers: Headers) -> HeaderFields:
    """The header fields of an HTTP message that are the application's: no pseudo-header,
    no netsched-* field (those the mapping reads itself)."""
    try:
        pairs = [(name.decode("ascii"), value.decode()) for name, value in headers]
    except UnicodeDecodeError as exc:
        raise FramingError("header is not valid UTF-8") from exc
    return tuple(
        (name, value)
        for name, value in pairs
        if not name.startswith(":") and not name.lower().startswith(RESERVED_HEADER_PREFIX)
    )


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
    if head.from_backend:
        headers.append((FROM_BACKEND, b"1"))
    return headers + _application_fields(head.headers)


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
            headers=_passed_on(headers),
            from_backend=fields.get(FROM_BACKEND.decode()) == "1",
        )
    except ValueError as exc:
        raise FramingError(f"bad HTTP/3 response head: {exc}") from exc


def _header_map(headers: Headers) -> Mapping[str, str]:
    try:
        return {name.decode("ascii").lower(): value.decode() for name, value in headers}
    except UnicodeDecodeError as exc:
        raise FramingError("header is not valid UTF-8") from exc


def field_section_size(headers: Headers) -> int:
    """The size of a header section as RFC 9114 §4.2.2 counts it (RFC 9110 §5.4 bound)."""
    return sum(len(name) + len(value) + _FIELD_OVERHEAD for name, value in headers)


def _is_request_stream(stream_id: int) -> bool:
    """Bidirectional: a request stream, where header blocks travel (RFC 9114 §6.1)."""
    return not stream_id & 0x2


class HeaderBound:
    """Reads the frame heads of one request stream and spots an oversized header block.

    Fed the stream's bytes in order, in chunks of any size, it skips frame
    payloads without keeping them and holds at most the 16 bytes of an
    incomplete frame head (two varints). `feed` returns the declared length of
    a HEADERS or PUSH_PROMISE frame longer than `limit`, once, as soon as that
    frame's head is complete; otherwise None.
    """

    __slots__ = ("_head", "_limit", "_skip", "exceeded")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._head = bytearray()
        self._skip = 0  # payload bytes of the current frame still to pass over
        self.exceeded = False

    def feed(self, data: bytes) -> int | None:
        if self.exceeded:
            return None
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            needed = self._head_size() - len(self._head)
            if needed > 0:
                self._head += data[pos : pos + needed]
                pos += min(needed, end - pos)
                continue
            declared = self._complete_head()
            if declared is not None:
                return declared
        if self._head and self._head_size() == len(self._head):
            return self._complete_head()
        return None

    def _head_size(self) -> int:
        """Bytes of the frame head, as far as its bytes so far tell."""
        if not self._head:
            return 1
        first = 1 << (self._head[0] >> 6)
        if len(self._head) <= first:
            return first + 1
        return first + (1 << (self._head[first] >> 6))

    def _complete_head(self) -> int | None:
        buf = Buffer(data=bytes(self._head))
        frame_type, length = buf.pull_uint_var(), buf.pull_uint_var()
        self._head.clear()
        if frame_type in (_FRAME_HEADERS, _FRAME_PUSH_PROMISE) and length > self._limit:
            self.exceeded = True
            return length
        self._skip = length
        return None


def _prefix_int(data: bytes, pos: int, bits: int) -> tuple[int, int]:
    """An RFC 7541 §5.1 prefix integer at `pos`: (value, position after it)."""
    mask = (1 << bits) - 1
    value = data[pos] & mask
    pos += 1
    shift = 0
    while value >= mask and shift <= 62:
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos
    if shift > 62:
        raise ValueError("QPACK integer too long")
    return value, pos


def _after_string(data: bytes, pos: int, bits: int) -> int:
    length, pos = _prefix_int(data, pos, bits)
    if pos + length > len(data):
        raise ValueError("QPACK string runs past the block")
    return pos + length


def count_field_lines(block: bytes, stop_above: int) -> int | None:
    """Field lines in a QPACK-encoded field section (RFC 9204 §4.5), counted to `stop_above` + 1.

    Reads only the representations' lengths, neither table: it says how many
    lines a block would decode to before the decoder allocates them. None for
    a malformed block (the QPACK decoder then reports it).
    """
    try:
        pos = _prefix_int(block, 0, 8)[1]  # Required Insert Count
        pos = _prefix_int(block, pos, 7)[1]  # sign bit and Delta Base
        lines = 0
        while pos < len(block) and lines <= stop_above:
            first = block[pos]
            if first & 0x80:  # indexed field line
                pos = _prefix_int(block, pos, 6)[1]
            elif first & 0x40:  # literal with name reference
                pos = _after_string(block, _prefix_int(block, pos, 4)[1], 7)
            elif first & 0x20:  # literal with literal name
                pos = _after_string(block, _after_string(block, pos, 3), 7)
            elif first & 0x10:  # indexed with post-base index
                pos = _prefix_int(block, pos, 4)[1]
            else:  # literal with post-base name reference
                pos = _after_string(block, _prefix_int(block, pos, 3)[1], 7)
            lines += 1
    except (IndexError, ValueError):
        return None
    return lines


class _SectionRefused(Exception):
    def __init__(self, stream_id: int, what: str) -> None:
        super().__init__(what)
        self.stream_id = stream_id
        self.what = what


class _BoundedH3Connection(H3Connection):
    """aioquic's HTTP/3 connection with our bounds on received header sections.

    It advertises SETTINGS_MAX_FIELD_SECTION_SIZE, and refuses a block of
    more than `MAX_FIELD_LINES` lines before the QPACK decoder expands it: a
    one-byte reference to the dynamic table decodes to up to its capacity
    (4 KiB), so a 64 KiB block could otherwise decode to 256 MiB. The one
    place this module touches private names of aioquic's.
    """

    def __init__(self, quic: QuicConnection, max_field_section_size: int) -> None:
        self._max_field_section_size = max_field_section_size  # read by the constructor below
        super().__init__(quic)

    def _get_local_settings(self) -> dict[int, int]:
        settings = super()._get_local_settings()
        settings[Setting.MAX_FIELD_SECTION_SIZE] = self._max_field_section_size
        return settings

    def send_goaway(self, stream_id: int) -> bool:
        """Write GOAWAY (RFC 9114 §5.2) on our control stream; False before it exists."""
        if self._local_control_stream_id is None:
            return False
        frame = encode_frame(FrameType.GOAWAY, encode_uint_var(stream_id))
        self._quic.send_stream_data(self._local_control_stream_id, frame)
        return True

    def _decode_headers(self, stream_id: int, frame_data: bytes | None) -> Headers:
        if frame_data is not None:
            lines = count_field_lines(frame_data, MAX_FIELD_LINES)
            if lines is not None and lines > MAX_FIELD_LINES:
                raise _SectionRefused(
                    stream_id, f"a header section of more than {MAX_FIELD_LINES} field lines"
                )
        return super()._decode_headers(stream_id, frame_data)


class H3Protocol:
    """NetSched's request/response API on top of aioquic's HTTP/3 layer.

    `max_header_bytes` bounds each header section received (see the module docstring).
    """

    def __init__(
        self,
        quic: QuicConnection,
        authority: str = "",
        *,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    ) -> None:
        if max_header_bytes < 1:
            raise ValueError(f"max_header_bytes must be positive (got {max_header_bytes})")
        self._quic = quic
        self._h3 = _BoundedH3Connection(quic, max_header_bytes)
        self._is_client = quic.configuration.is_client
        self._authority = authority
        self._max_header_bytes = max_header_bytes
        self._started: set[int] = set()
        self._aborted: set[int] = set()
        self._bounds: dict[int, HeaderBound] = {}  # request streams still receiving
        self._refused: set[int] = set()  # header block too large: their data is dropped
        # Server: streams the core answered itself (rejected, refused); the runtime never
        # saw them, so their state goes when the peer has finished sending.
        self._answered: set[int] = set()

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
        try:  # the peer's STOP_SENDING may be read with the request, before its event
            self._h3.send_headers(stream_id, response_headers(head), end_stream=False)
        except (RuntimeError, ValueError, H3Error):
            return False
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

    def send_goaway(self, stream_id: int) -> bool:
        """HTTP/3 GOAWAY (RFC 9114 §5.2): requests on `stream_id` and above will not be served.

        False when the HTTP/3 control stream is not open yet (nothing was sent).
        """
        return self._h3.send_goaway(stream_id)

    def abort(self, stream_id: int, error_code: int = 0x10C) -> None:  # H3_REQUEST_CANCELLED
        if stream_id in self._aborted:
            return
        self._aborted.add(stream_id)
        self._quic.reset_stream(stream_id, error_code)

    def forget(self, stream_id: int) -> None:
        self._started.discard(stream_id)
        self._aborted.discard(stream_id)
        self._bounds.pop(stream_id, None)
        self._refused.discard(stream_id)
        self._answered.discard(stream_id)

    @property
    def open_streams(self) -> int:
        """Streams this object keeps state for (to check that finished ones are freed)."""
        return len(
            self._started | self._aborted | self._bounds.keys() | self._refused | self._answered
        )

    def handle_event(self, event: QuicEvent) -> list[ProtocolEvent]:
        if isinstance(event, StopSendingReceived) and self._quic.configuration.is_client:
            # The server stopped reading the request; its response may still come, and a
            # client must not discard it (RFC 9114 §4.1). aioquic reset our sending side.
            return []
        if isinstance(event, StreamReset | StopSendingReceived):
            return self._on_reset(event)
        if not isinstance(event, StreamDataReceived) or not _is_request_stream(event.stream_id):
            return self._translate_all(event)
        sid = event.stream_id
        if sid in self._refused:
            out: list[ProtocolEvent] = []  # what was in flight when we refused goes nowhere
        else:
            out = self._check_frame_heads(event) or self._translate_all(event)
        if event.end_stream:
            self._peer_done(sid)
        return out

    def _on_reset(self, event: StreamReset | StopSendingReceived) -> list[ProtocolEvent]:
        sid = event.stream_id
        if sid not in self._refused:
            # aioquic's HTTP/3 layer frees its stream state and cancels the stream's
            # QPACK state (RFC 9204 §4.4.2); for a refused stream that was done already.
            self._h3.handle_event(event)
        if isinstance(event, StreamReset):
            self._bounds.pop(sid, None)
            answered = sid in self._answered
            self._peer_done(sid)
            if answered:
                return []
        if sid in self._aborted:
            return []
        self._aborted.add(sid)
        return [StreamAborted(sid, event.error_code, "reset by peer")]

    @property
    def _over_limit(self) -> str:
        return f"exceeds the limit of {self._max_header_bytes} bytes"

    def _peer_done(self, stream_id: int) -> None:
        """The peer has finished sending on the stream: state kept only for its data goes."""
        self._refused.discard(stream_id)
        if stream_id in self._answered:
            self.forget(stream_id)  # answered by us: the runtime holds nothing for it

    def _translate_all(self, event: QuicEvent) -> list[ProtocolEvent]:
        try:
            h3_events = self._h3.handle_event(event)
        except _SectionRefused as exc:
            return self._refuse(exc.stream_id, exc.what)
        out: list[ProtocolEvent] = []
        for h3_event in h3_events:
            out.extend(self._translate(h3_event))
        return out

    def _check_frame_heads(self, event: StreamDataReceived) -> list[ProtocolEvent]:
        """Refuse the stream, before buffering, once it declares an oversized header block."""
        sid = event.stream_id
        bound = self._bounds.get(sid)
        if bound is None:
            bound = self._bounds[sid] = HeaderBound(self._max_header_bytes)
        declared = bound.feed(event.data)
        if event.end_stream:
            del self._bounds[sid]
        if declared is None:
            return []
        return self._refuse(sid, f"a header block of {declared} bytes {self._over_limit}")

    def _refuse(self, stream_id: int, message: str) -> list[ProtocolEvent]:
        """Stream error H3_EXCESSIVE_LOAD: reset the stream and stop reading it."""
        self._bounds.pop(stream_id, None)
        self._refused.add(stream_id)
        self._quic.reset_stream(stream_id, ErrorCode.H3_EXCESSIVE_LOAD)
        with contextlib.suppress(ValueError):  # its receiving side is already done
            self._quic.stop_stream(stream_id, ErrorCode.H3_EXCESSIVE_LOAD)
        # Let aioquic's HTTP/3 layer drop what it buffered and cancel the QPACK state now.
        self._h3.handle_event(
            StreamReset(error_code=ErrorCode.H3_EXCESSIVE_LOAD, stream_id=stream_id)
        )
        known = self._is_client or stream_id in self._started  # the runtime has its request
        if stream_id in self._aborted:
            return []
        self._aborted.add(stream_id)
        if known:
            return [StreamAborted(stream_id, ErrorCode.H3_EXCESSIVE_LOAD, message)]
        self._answered.add(stream_id)
        return [RequestRejected(stream_id, STATUS_HEADERS_TOO_LARGE, message)]

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
        size = field_section_size(event.headers)
        if size > self._max_header_bytes:
            # QPACK can expand a small block (references to the dynamic table).
            return self._refuse(sid, f"a header section of {size} bytes {self._over_limit}")
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
        self._answered.add(stream_id)
        return [RequestRejected(stream_id, status, message)]
