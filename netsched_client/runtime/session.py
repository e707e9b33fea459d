"""The client SDK: `connect()`, `Session`, `Stream`, `Response`, `TicketStore`.

A thin asyncio layer over the sans-IO protocol objects: `NetSchedProtocol`
when the edge speaks `netsched/1`, `H3Protocol` when it only speaks HTTP/3.

Resumption: every session keeps the latest TLS session ticket the edge sent
(`Session.session_ticket`); `connect(session_ticket=...)` or
`connect(ticket_store=...)` resumes with one, and with `early_data=True`
requests leave in 0-RTT packets before the handshake completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import random
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine, Hashable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Literal, Protocol, TypeVar

from aioquic import tls
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, QuicEvent
from aioquic.quic.packet import QuicErrorCode
from cryptography import x509

from ..errors import (
    BackendStatusError,
    CertificateError,
    ConnectionLost,
    ConnectionRefused,
    DeadlineExceeded,
    EdgeGoingAway,
    HostNotFound,
    NegotiationError,
    NetSchedError,
    ReconnectFailed,
    RequestInterrupted,
    ResponseTruncated,
    error_for_status,
)
from ..fec.control import FecOverride
from ..proto import h3 as h3proto
from ..proto import hq as hqproto
from ..proto import session as native
from ..proto.cc import CONGESTION_CONTROLS
from ..proto.connection import NetSchedConnection
from ..proto.events import (
    BodyReceived,
    DatagramReceived,
    ProtocolEvent,
    ResponseReceived,
    StreamAborted,
)
from ..proto.fec_link import FecConfig, FecStats
from ..proto.framing import HeaderFields, Headers, RequestHead, ResponseHead, header_fields
from ..proto.multipath.pmtu import DEFAULT_PMTUD, PmtuConfig
from ..proto.multipath.scheduler import SCHEDULER_POLICIES
from ..proto.send_order import ERROR_DEADLINE
from ..proto.slo import SLO
from .debug import enable_debug_logs
from .driver import ConnectionDriver, handshake_confirmed
from .endpoint import ClientEndpoint, open_client_endpoint, port_unreachable, resolve
from .interfaces import InterfaceError, discover, resolve_local
from .paths import PathError, PathManager, PathStats
from .reconnect import (
    Outage,
    ReconnectPolicy,
    ReconnectStats,
    may_resend,
    policy_of,
    served_early,
)

log = logging.getLogger("netsched.client")
# aioquic logs a failed handshake (a certificate not trusted) at WARNING. In an app that
# configured no logging, Python's last-resort handler would print that line to stderr
# beside the typed error raised here; configured handlers still receive it.
logging.getLogger("quic").addHandler(logging.NullHandler())

DEFAULT_ALPNS = (native.ALPN, h3proto.ALPN)
MAX_RESPONSE_BYTES = 64 << 20
# Slack on top of a deadline before the client gives up by itself: the edge
# answers 504 at the deadline, so this only fires when the edge is unreachable.
DEADLINE_GRACE_S = 0.5
# CRYPTO_ERROR carries a TLS alert as 0x100 + alert (RFC 9001 §4.8).
CRYPTO_ERROR = 0x100
NO_APPLICATION_PROTOCOL = CRYPTO_ERROR + tls.AlertDescription.no_application_protocol
# Alerts that say the peer's certificate was not accepted (RFC 8446 §6.2).
CERTIFICATE_ALERTS = frozenset(
    {
        tls.AlertDescription.bad_certificate,
        tls.AlertDescription.unsupported_certificate,
        tls.AlertDescription.certificate_revoked,
        tls.AlertDescription.certificate_expired,
        tls.AlertDescription.certificate_unknown,
        tls.AlertDescription.unknown_ca,
        tls.AlertDescription.certificate_required,
    }
)
CLOSE_WAIT_S = 1.0
# While requests wait for answers from a silent edge, PING it after this long (`_Link`);
# each PING the edge answered doubles the wait before the next, up to LIVENESS_MAX_S, and
# one it left unanswered brings it back to LIVENESS_S.
LIVENESS_S = 0.25
LIVENESS_MAX_S = 1.0


class _AppProtocol(Protocol):
    def send_request(
        self, head: RequestHead, body: bytes = ..., *, end_stream: bool = ...
    ) -> int: ...
    def send_body(self, stream_id: int, data: bytes, *, end_stream: bool = ...) -> bool: ...
    def send_datagram(self, service: str, payload: bytes) -> None: ...
    def abort(self, stream_id: int, error_code: int = ...) -> None: ...
    def forget(self, stream_id: int) -> None: ...
    def handle_event(self, event: QuicEvent) -> list[ProtocolEvent]: ...


@dataclass(frozen=True, slots=True)
class Response:
    """A backend's answer, whatever its status (as httpx returns a 404): `status`,
    `headers` and `body` are the backend's. The edge's own refusals raise instead."""

    status: int
    body: bytes
    backend: str | None
    latency_ms: float  # request sent → last body byte, measured by the client
    queue_ms: float | None = None
    backend_ms: float | None = None
    meta: Mapping[str, str] = field(default_factory=dict)
    headers: Headers = field(default_factory=Headers)

    @property
    def header_fields(self) -> HeaderFields:
        """The header fields in order, repeats apart."""
        return self.headers.fields

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300

    def raise_for_status(self) -> Response:
        """This response, or `BackendStatusError` for a 4xx or 5xx status (httpx's idiom)."""
        if 400 <= self.status < 600:
            raise BackendStatusError(
                f"backend {self.backend} answered status {self.status}", response=self
            )
        return self


# What a request may say about itself as an HTTP request (see `Session.request`).
HeadersArg = Mapping[str, str] | Sequence[tuple[str, str]]


class Stream:
    """One request stream: write the request body, read the response."""

    def __init__(
        self, link: _Link, stream_id: int, *, write_closed: bool = False, early: bool = False
    ) -> None:
        self._link = link
        self.stream_id = stream_id
        # The edge may serve it from 0-RTT: a connection that dies before its handshake
        # completed may have processed it (otherwise it cannot have).
        self.early = early
        self._head: asyncio.Future[ResponseHead] = asyncio.get_running_loop().create_future()
        self._chunks: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        self._buffer = b""
        self._eof = False
        self._write_closed = write_closed

    async def response(self) -> ResponseHead:
        """The response head: the backend's answer whatever its status (`from_backend`);
        raises the matching `RequestError` when the edge refused or failed the request."""
        head = await asyncio.shield(self._head)
        if not head.from_backend and not 200 <= head.status < 300:
            raise error_for_status(head.status, head.message or f"status {head.status}")
        return head

    async def write(self, data: bytes) -> None:
        if self._write_closed:
            raise RuntimeError("write after write_eof()")
        self._link.send_body(self.stream_id, data, end_stream=False)
        await asyncio.sleep(0)

    def write_eof(self) -> None:
        if not self._write_closed:
            self._write_closed = True
            self._link.send_body(self.stream_id, b"", end_stream=True)

    async def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes of the response body (all of it for n < 0); b"" at the end."""
        await self.response()
        if n < 0:
            parts = [self._buffer]
            self._buffer = b""
            while (chunk := await self._next_chunk()) is not None:
                parts.append(chunk)
            return b"".join(parts)
        if not self._buffer:
            chunk = await self._next_chunk()
            if chunk is None:
                return b""
            self._buffer = chunk
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    @property
    def head_received(self) -> bool:
        return self._head.done() and not self._head.cancelled() and self._head.exception() is None

    def abort(self) -> None:
        self._link.abort(self.stream_id)
        self._fail(ConnectionLost("stream aborted by the application"))

    async def _next_chunk(self) -> bytes | None:
        if self._eof:
            return None
        item = await self._chunks.get()
        if isinstance(item, BaseException):
            self._eof = True
            raise item
        if item is None:
            self._eof = True
        return item

    # -- fed by the session ------------------------------------------------

    def _on_head(self, head: ResponseHead) -> None:
        if not self._head.done():
            self._head.set_result(head)

    def _on_body(self, data: bytes, end: bool) -> None:
        if data:
            self._chunks.put_nowait(data)
        if end:
            self._chunks.put_nowait(None)

    def _fail(self, exc: BaseException) -> None:
        if not self._head.done():
            self._head.set_exception(exc)
            self._head.exception()  # mark retrieved: the reader may never ask
        self._chunks.put_nowait(exc)


# Reset codes that mean "not processed, the edge is going away": netsched/1's
# ERROR_REFUSED and HTTP/3's H3_REQUEST_REJECTED (RFC 9114 §8.1).
_REFUSED_CODES = frozenset({native.ERROR_REFUSED, 0x10B})


def _abort_error(event: StreamAborted, *, after_head: bool) -> NetSchedError:
    if event.error_code == ERROR_DEADLINE:
        return DeadlineExceeded("the edge dropped the response: its deadline passed in transit")
    if event.error_code in _REFUSED_CODES and not after_head:
        return EdgeGoingAway(f"stream {event.stream_id}: refused, the edge is draining")
    if after_head:
        # The head said success, but the body stopped short: never a short "success".
        return ResponseTruncated(
            f"stream {event.stream_id}: the response broke after its head "
            f"(reset, error code {event.error_code:#x})",
            error_code=event.error_code,
        )
    return ConnectionLost(f"stream {event.stream_id} aborted: {event.reason}")


def _app_protocol(alpn: str, quic: QuicConnection, authority: str) -> _AppProtocol:
    if alpn == native.ALPN:
        return native.NetSchedProtocol(quic)
    if alpn == hqproto.ALPN:
        return hqproto.HQProtocol(quic)
    return h3proto.H3Protocol(quic, authority)


K = TypeVar("K", bound=Hashable)

# What became of 0-RTT: "off" (not attempted), "pending" (requests went in 0-RTT,
# the handshake is under way), "accepted", "rejected" (aioquic resent them in 1-RTT).
EarlyData = Literal["off", "pending", "accepted", "rejected"]


class TicketCache(Generic[K]):
    """At most `capacity` TLS session tickets by key: the oldest go first when full,
    expired ones when looked up.

    A ticket leaves when taken, so each serves one connection: a client that
    reuses one makes its connections linkable (RFC 8446 §C.4), and a server
    that keeps single-use tickets turns a replayed 0-RTT flight into a full
    handshake (§8.1). The edge keeps its issued tickets in one, too.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"ticket cache capacity must be at least 1, got {capacity}")
        self._capacity = capacity
        self._tickets: OrderedDict[K, tls.SessionTicket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tickets)

    def put(self, key: K, ticket: tls.SessionTicket) -> None:
        self._tickets.pop(key, None)
        self._tickets[key] = ticket
        while len(self._tickets) > self._capacity:
            self._tickets.popitem(last=False)

    def take(self, key: K) -> tls.SessionTicket | None:
        ticket = self._tickets.pop(key, None)
        return ticket if ticket is not None and ticket.is_valid else None


@dataclass(frozen=True, slots=True)
class ResumptionTicket:
    """A TLS session ticket from an edge, with the ALPN of the session that got it.

    0-RTT must speak the protocol of that session (RFC 8446 §4.2.10), which
    aioquic's ticket does not record. Picklable, to keep across processes.
    """

    ticket: tls.SessionTicket
    alpn: str

    @property
    def server_name(self) -> str:
        return self.ticket.server_name

    @property
    def allows_early_data(self) -> bool:
        """The edge that issued it accepts 0-RTT with it (max_early_data is set)."""
        return self.ticket.max_early_data_size is not None


class TicketStore:
    """Session tickets by (server name, ALPN), at most `capacity` of them, in memory.

    Pass one to `connect(ticket_store=...)`: each connection takes a ticket to
    resume with (if it has one for the server) and leaves the one the edge
    issues it for the next connection.
    """

    def __init__(self, capacity: int = 64) -> None:
        self._cache: TicketCache[tuple[str, str]] = TicketCache(capacity)

    def __len__(self) -> int:
        return len(self._cache)

    def put(self, ticket: ResumptionTicket) -> None:
        self._cache.put((ticket.server_name, ticket.alpn), ticket.ticket)

    def take(self, server_name: str, alpns: Sequence[str]) -> ResumptionTicket | None:
        """A valid ticket for `server_name` and the first of `alpns` that has one."""
        for alpn in alpns:
            ticket = self._cache.take((server_name, alpn))
            if ticket is not None:
                return ResumptionTicket(ticket, alpn)
        return None


class _TicketSink:
    """Where one connection's NewSessionTickets go: the session's latest, and the store."""

    def __init__(self, store: TicketStore | None) -> None:
        self._store = store
        self.latest: ResumptionTicket | None = None

    def receive(self, ticket: tls.SessionTicket, alpn: str | None) -> None:
        if alpn is None:
            return  # tickets follow a completed handshake, which has an ALPN
        self.latest = ResumptionTicket(ticket, alpn)
        if self._store is not None:
            self._store.put(self.latest)


class _Link:
    """One QUIC connection of a session: its driver, sockets and paths, and the requests
    begun on it. A session has one in service and, after a GOAWAY, draining ones whose
    requests finish where they began (stream IDs belong to their connection).

    `on_change(link, reason)` hears when the link stops taking new requests: the
    edge's GOAWAY, or the connection's end.
    """

    def __init__(
        self,
        driver: ConnectionDriver,
        endpoint: ClientEndpoint,
        paths: PathManager,
        alpn: str,
        authority: str,
        *,
        handshake: asyncio.Future[str | None],
        tickets: _TicketSink,
        early_data: bool,
        on_change: Callable[[_Link, str], None],
        on_datagram: Callable[[str, bytes], None],
    ) -> None:
        self.driver = driver
        self.endpoint = endpoint
        self.paths = paths
        self.alpn = alpn
        self.authority = authority
        self.proto = _app_protocol(alpn, driver.quic, authority)
        self.streams: dict[int, Stream] = {}
        self.lost: ConnectionLost | None = None
        self.goaway: int | None = None  # the edge drains: its first refused stream
        self.handshake = handshake
        handshake.add_done_callback(self._on_handshake_outcome)
        self.handshake_timer: asyncio.TimerHandle | None = None
        self.tickets = tickets
        self.early_data: EarlyData = "pending" if early_data else "off"
        self.resumed = False
        self.on_change = on_change
        self.on_datagram = on_datagram
        self._liveness: asyncio.TimerHandle | None = None
        self._liveness_wait = LIVENESS_S  # until the next look (see _check_liveness)
        self._pinged_at: float | None = None  # the last liveness PING, not yet judged
        self._background: set[asyncio.Task[None]] = set()
        driver.add_event_handler(self._on_quic_event)

    @property
    def usable(self) -> bool:
        """It takes new requests: not lost, no GOAWAY."""
        return self.lost is None and self.goaway is None

    @property
    def handshake_complete(self) -> bool:
        handshake = self.handshake
        return handshake.done() and not handshake.cancelled() and handshake.exception() is None

    @property
    def confirmed(self) -> bool:
        """The edge confirmed the handshake: it may have acted on any request sent here
        (before, only on those it serves from 0-RTT)."""
        return handshake_confirmed(self.driver.quic)

    def refusal(self) -> ConnectionLost:
        """Why it takes no new request."""
        if self.lost is not None:
            return self.lost
        return EdgeGoingAway("the edge is draining this connection; open a new one")

    def open(self, head: RequestHead, payload: bytes, *, end_stream: bool, early: bool) -> Stream:
        """Send `head` with `payload` on a new stream (the caller checked `usable`)."""
        stream_id = self.proto.send_request(head, payload, end_stream=end_stream)
        stream = self.streams[stream_id] = Stream(
            self, stream_id, write_closed=end_stream, early=early
        )
        self._watch_liveness()
        return stream

    def send_body(self, stream_id: int, data: bytes, *, end_stream: bool) -> None:
        if self.lost is not None:
            raise self.lost
        self.proto.send_body(stream_id, data, end_stream=end_stream)
        self.driver.schedule_transmit()

    def abort(self, stream_id: int) -> None:
        if self.lost is None:
            self.proto.abort(stream_id)
            self.driver.schedule_transmit()
        self._drop(stream_id)

    def _drop(self, stream_id: int) -> None:
        """Forget a stream that is over; a draining link with none left is done."""
        if self.streams.pop(stream_id, None) is None:
            return
        if self.goaway is not None and self.lost is None and not self.streams:
            self.on_change(self, "drained")

    def expect_handshake(self, timeout: float) -> None:
        """Give up on a 0-RTT link whose handshake takes longer than `timeout`."""

        def expired() -> None:
            if not self.handshake.done():
                lost = ConnectionLost(f"no handshake with {self.authority} within {timeout} s")
                self.handshake.set_exception(lost)

        self.handshake_timer = asyncio.get_running_loop().call_later(timeout, expired)

    def _on_handshake_outcome(self, handshake: asyncio.Future[str | None]) -> None:
        """A 0-RTT link whose handshake failed (refused, timed out) is over: its requests
        learn it now, not at the idle timeout."""
        if handshake.cancelled() or (error := handshake.exception()) is None:
            return
        if self.lost is None:
            lost = error if isinstance(error, ConnectionLost) else ConnectionLost(str(error))
            self._end(lost, str(lost))
            self.driver.close(reason="handshake failed")

    def run_in_background(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Close the connection and release its sockets, timers and tasks (bounded)."""
        self._stop()
        if self.lost is None:
            self.driver.close(reason="session closed")
        # Wait until the CONNECTION_CLOSE is out (at once, unless the egress budget holds
        # it), not for the closing period: 3 PTO of repeating it to late packets would
        # make each close take 0.1-1 s. The socket closes; the OS drops what comes later.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_WAIT_S):
                await self.driver.close_sent.wait()
        self.driver.ticker.close()  # the closing period's timer (the ticker is this link's)
        self.endpoint.close()

    def _stop(self) -> None:
        self.paths.close()
        for task in self._background:
            task.cancel()
        for timer in (self.handshake_timer, self._liveness):
            if timer is not None:
                timer.cancel()

    # -- liveness ------------------------------------------------------------------

    def _watch_liveness(self) -> None:
        if self._liveness is None:
            loop = asyncio.get_running_loop()
            self._liveness = loop.call_later(self._liveness_wait, self._check_liveness)

    def _check_liveness(self) -> None:
        """While requests wait for answers, PING an edge that went quiet: an edge that
        died sends nothing, and a request that has all its bytes acknowledged leaves
        nothing in flight to notice it. The PING meets the restarted edge's stateless
        reset, or times out the connection, instead of the request waiting out the
        idle timeout.

        An edge that answered the last PING is alive: the next waits twice as long (up
        to LIVENESS_MAX_S), so that requests waiting on a slow backend, or on an edge
        slowed by load, cost a PING a second rather than four, each of which the
        loaded edge must read and acknowledge. An unanswered one brings the wait back
        to LIVENESS_S: a dead edge is found within LIVENESS_MAX_S + LIVENESS_S."""
        self._liveness = None
        if self.lost is not None or not self.streams:
            self._liveness_wait, self._pinged_at = LIVENESS_S, None
            return
        last_received = self.driver.last_received
        if self._pinged_at is not None:
            answered = last_received > self._pinged_at
            self._liveness_wait = (
                min(2 * self._liveness_wait, LIVENESS_MAX_S) if answered else LIVENESS_S
            )
            self._pinged_at = None
        now = self.driver.now()
        if now - last_received >= LIVENESS_S:
            self._pinged_at = now
            self.driver.quic.send_ping(0)
            self.driver.schedule_transmit()
        self._watch_liveness()

    # -- events --------------------------------------------------------------------

    def _on_quic_event(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated):
            if self.lost is None:
                reason = event.reason_phrase or f"error code {event.error_code:#x}"
                lost = ConnectionLost(f"connection closed: {reason}")
                lost.error_code = event.error_code
                self._end(lost, reason)
            return
        if isinstance(event, HandshakeCompleted):
            self._on_handshake(event)
        for pevent in self.proto.handle_event(event):
            self._dispatch(pevent)

    def _dispatch(self, event: ProtocolEvent) -> None:
        if isinstance(event, native.GoawayReceived):
            self._on_goaway(event.stream_id)
            return
        if isinstance(event, DatagramReceived):
            self.on_datagram(event.service, event.payload)
            return
        if not isinstance(event, ResponseReceived | BodyReceived | StreamAborted):
            return
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        if isinstance(event, ResponseReceived):
            stream._on_head(event.head)
        elif isinstance(event, BodyReceived):
            stream._on_body(event.data, event.end_stream)
            if event.end_stream:
                self._drop(event.stream_id)
                self.proto.forget(event.stream_id)
        else:
            error = _abort_error(event, after_head=stream.head_received)
            self._drop(event.stream_id)
            stream._fail(error)
            if isinstance(error, EdgeGoingAway) and self.goaway is None:
                # HTTP/3's GOAWAY frame is not parsed: its refusals say the same.
                self._on_goaway(event.stream_id)

    def _on_goaway(self, first_refused: int) -> None:
        """Finish the requests below `first_refused`; fail the others now (the edge resets
        them unprocessed) and every later one, so that they go to a new connection."""
        self.goaway = first_refused
        for stream_id in [sid for sid in self.streams if sid >= first_refused]:
            self.streams.pop(stream_id)._fail(
                EdgeGoingAway(f"stream {stream_id}: refused, the edge is draining")
            )
            self.proto.forget(stream_id)
        self.on_change(self, "goaway")

    def _on_handshake(self, event: HandshakeCompleted) -> None:
        self.resumed = event.session_resumed
        if self.early_data == "pending":
            self.early_data = "accepted" if event.early_data_accepted else "rejected"
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()

    def _end(self, lost: ConnectionLost, reason: str) -> None:
        """The connection is gone: each request on it learns whether the edge may have
        processed it (RequestInterrupted; the session decides about sending it again)."""
        self.lost = lost
        self._stop()
        confirmed = self.confirmed
        # Refused (CONNECTION_REFUSED from a draining edge, even after the handshake, or
        # nothing listening): the edge took none of its requests.
        refused = (
            isinstance(lost, ConnectionRefused)
            or lost.error_code == QuicErrorCode.CONNECTION_REFUSED
        )
        for stream_id, stream in self.streams.items():
            interrupted = RequestInterrupted(
                f"stream {stream_id}: {lost}",
                may_have_been_processed=not refused and (confirmed or stream.early),
            )
            interrupted.error_code = lost.error_code
            interrupted.__cause__ = lost
            stream._fail(interrupted)
        self.streams.clear()
        self.on_change(self, reason)


@dataclass(frozen=True, slots=True)
class _Request:
    """What a request sends, kept to send it again on a new connection."""

    service: str
    payload: bytes
    slo: SLO | None
    meta: Mapping[str, str]  # with the HTTP method and target (`_http_meta`)
    headers: HeaderFields
    fec: FecOverride | None

    @property
    def method(self) -> str:
        return self.meta["method"]


class Session:
    """A session with an edge, over one connection at a time. Use `connect()` to make one.

    With a `ReconnectPolicy` (the default) the session outlives its connection:
    after the edge's GOAWAY new requests go to a new connection while those
    under way finish on the draining one; after a loss the session connects
    again (resuming the TLS session, in 0-RTT when the ticket allows) and sends
    the requests that may be sent twice once more; see `request`. It connects
    when a request (or a datagram) needs it, never for an idle session.
    """

    _link: _Link  # the connection in service (set by `_start`)

    def __init__(
        self,
        dialer: _Dialer,
        default_slo: SLO | None,
        policy: ReconnectPolicy | None,
    ) -> None:
        self._dialer = dialer
        self.default_slo = default_slo
        self._policy = policy
        self._rng = random.Random()  # the backoff's jitter
        self._draining: set[_Link] = set()  # after a GOAWAY: their requests finish there
        self._closing: set[asyncio.Task[None]] = set()  # links closing (bounded: CLOSE_WAIT_S)
        self._datagrams: asyncio.Queue[tuple[str, bytes] | ConnectionLost] = asyncio.Queue(
            maxsize=1024
        )
        self._receivers = 0  # receive_datagram calls waiting
        self._lost: ConnectionLost | None = None  # closed for good
        self._reconnecting: asyncio.Task[None] | None = None
        self._in_service = asyncio.Event()  # set while `_link` takes requests
        self._waiting = 0  # requests waiting for a connection
        self._added_paths: list[str] = []  # add_path's locals, opened again on reconnect
        self._reconnects = self._attempts = self._retried = self._interrupted = 0
        self._last_reason: str | None = None
        # A session reconnects only once it has had a connection: a first one that
        # fails (a 0-RTT one whose handshake never completes) is a set-up failure.
        self._established = False
        self._outage: Outage | None = None  # the reconnect budget being spent
        self._connected_at = 0.0  # when the connection in service was made
        # The latest ticket of a connection no longer in service (a refused one gets none).
        self._ticket: ResumptionTicket | None = None

    async def _start(self, ticket: ResumptionTicket | None, *, early_data: bool) -> None:
        """The first connection: its failure is the caller's (no reconnect for it)."""
        self._adopt(await self._dial(ticket, early_data=early_data, timeout=self._dialer.timeout))
        self._connected_at = asyncio.get_running_loop().time()

    # -- public API ----------------------------------------------------------

    async def request(
        self,
        service: str,
        body: bytes = b"",
        *,
        method: str | None = None,
        path: str | None = None,
        headers: HeadersArg | None = None,
        slo: SLO | None = None,
        meta: Mapping[str, str] | None = None,
        fec: FecOverride | None = None,
    ) -> Response:
        """Send one request and wait for the whole response.

        An HTTP backend sees `method` (default GET, or POST with a body) on
        `path` (the request target with its query, default "/") with
        `headers` (a map, or (name, value) pairs to repeat a field). The
        backend's answer comes back whatever its status: check
        `Response.status`, or call `raise_for_status()`.

        `fec` turns FEC on or off or bounds its overhead for this request's
        upload, over the session's FecConfig (FEC runs only when the edge
        negotiated it). Raises the `RequestError` subclass for the edge's own
        refusal (unknown service, no backend, queue full, ...), and
        `DeadlineExceeded` when the request's deadline passes without an answer.

        With reconnection on, a request is sent once more on a new connection,
        at most once and only inside its deadline, when that does no harm: the
        edge refused it unprocessed (GOAWAY), it is idempotent (its SLO says so,
        or its method is GET, HEAD, OPTIONS, TRACE, PUT or DELETE), or it
        cannot have been processed. Otherwise a lost connection raises
        `RequestInterrupted`, saying whether the edge may have processed it.
        """
        started = time.monotonic()
        http = _http_meta(meta, method, path, default_method="POST" if body else "GET")
        effective = self._effective(slo)
        deadline_ms = effective.deadline_ms
        loop = asyncio.get_running_loop()
        deadline_at = None if deadline_ms is None else loop.time() + deadline_ms / 1000
        request = _Request(service, body, slo, http, header_fields(headers or ()), fec)
        try:
            async with asyncio.timeout_at(
                None if deadline_at is None else deadline_at + DEADLINE_GRACE_S
            ):
                head, body = await self._exchange(request, effective, deadline_at)
        except TimeoutError:
            raise DeadlineExceeded(f"no response from the edge within {deadline_ms} ms") from None
        return Response(
            status=head.status,
            body=body,
            backend=head.backend,
            latency_ms=(time.monotonic() - started) * 1000,
            queue_ms=head.queue_ms,
            backend_ms=head.backend_ms,
            meta=head.meta,
            headers=Headers(head.headers),
        )

    async def open_stream(
        self,
        service: str,
        *,
        method: str | None = None,
        path: str | None = None,
        headers: HeadersArg | None = None,
        body: bytes | None = None,
        slo: SLO | None = None,
        meta: Mapping[str, str] | None = None,
        fec: FecOverride | None = None,
    ) -> Stream:
        """Open a streaming request: `write()` / `write_eof()`, then `read()`.

        `method` (default POST), `path` and `headers` as for `request`. `body`:
        the whole request body, sent with the head and the end of the request
        (the edge then tells the backend its length); only `read()` remains.
        A stream is never sent again: a lost connection raises
        `RequestInterrupted` from it. While the session reconnects, this waits
        for the new connection (at most the connect timeout).
        """
        http = _http_meta(meta, method, path, default_method="POST")
        request = _Request(service, body or b"", slo, http, header_fields(headers or ()), fec)
        link = await self._link_in_service()
        return self._send(link, request, streaming=True, whole=body is not None)

    def send_datagram(self, service: str, payload: bytes) -> None:
        """Send a QUIC DATAGRAM to a UDP service on the connection in service;
        `RequestInterrupted` (not sent) while the session reconnects."""
        link = self._live_link()
        link.proto.send_datagram(service, payload)
        link.driver.schedule_transmit()

    async def receive_datagram(self) -> tuple[str, bytes]:
        """The next (service, payload) datagram from the edge.

        A flow lives on one connection: when it is lost (or replaced), a call
        waiting here raises `RequestInterrupted`, and the application decides
        what to send on the new one (datagrams are never replayed)."""
        self._check_open()
        self._receivers += 1
        try:
            item = await self._datagrams.get()
        finally:
            self._receivers -= 1
        if isinstance(item, ConnectionLost):
            raise item
        return item

    # -- reconnection ------------------------------------------------------------

    @property
    def reconnect_policy(self) -> ReconnectPolicy | None:
        """How the session reconnects; None: it never does."""
        return self._policy

    @property
    def reconnect_stats(self) -> ReconnectStats:
        """Reconnects so far, attempts, requests sent again or interrupted, the last reason."""
        return ReconnectStats(
            reconnects=self._reconnects,
            attempts=self._attempts,
            retried=self._retried,
            interrupted=self._interrupted,
            last_reason=self._last_reason,
        )

    @property
    def reconnecting(self) -> bool:
        """A new connection is being set up: requests wait for it."""
        return self._reconnecting is not None

    # -- paths ----------------------------------------------------------------

    @property
    def _driver(self) -> ConnectionDriver:
        return self._link.driver

    @property
    def _paths(self) -> PathManager:
        return self._link.paths

    @property
    def alpn(self) -> str:
        """The application protocol of the connection in service."""
        return self._link.alpn

    @property
    def multipath(self) -> bool:
        """Whether the edge negotiated multipath (draft-ietf-quic-multipath-21)."""
        return self._paths.multipath

    @property
    def paths(self) -> list[PathStats]:
        """Live per-path statistics; closed paths keep their totals."""
        return self._paths.stats()

    @property
    def path_events(self) -> list[QuicEvent]:
        """Recent path events (validated, abandoned, status changed), oldest first."""
        return list(self._paths.events)

    async def add_path(self, local: str) -> int:
        """Open a path from a local address or interface name; its ID once validated.
        A new connection after a reconnect opens it again."""
        path_id = await self._live_link().paths.add(local)
        if local not in self._added_paths:
            self._added_paths.append(local)
        return path_id

    def remove_path(self, path_id: int) -> None:
        """Abandon a path; a reconnect no longer opens it if `add_path` had opened it."""
        paths = self._live_link().paths
        local = next((s.local for s in paths.stats() if s.path_id == path_id), None)
        paths.remove(path_id)
        if local is not None:
            family = self._dialer.family
            self._added_paths = [
                added for added in self._added_paths if not _resolves_to(added, local[0], family)
            ]

    @property
    def can_migrate(self) -> bool:
        """`migrate` can move the session now: multipath, or the edge gave us a spare
        connection ID (a move under the old one would link the two addresses)."""
        return self._paths.can_migrate

    async def migrate(self, local: str | None = None) -> int:
        """Move the session to a new local address (address or interface name; default:
        the current one, on a new port), e.g. after a network change; returns the path ID
        in use. Single path: RFC 9000 active migration with a new connection ID.
        Multipath: a path from `local` is opened, then the others are abandoned."""
        return await self._live_link().paths.migrate(local)

    def set_path_backup(self, path_id: int, backup: bool = True) -> None:
        """Use a path only when no other works (and tell the edge so)."""
        self._live_link().paths.set_backup(path_id, backup)

    # -- handshake, resumption, keys -------------------------------------------

    @property
    def handshake_complete(self) -> bool:
        return self._link.handshake_complete

    async def wait_handshake(self) -> None:
        """Return once the handshake completed; raise `ConnectionLost` if it failed.

        Only a session opened for 0-RTT (`early_data=True` with a ticket that
        allows it) exists before its handshake completes.
        """
        await asyncio.shield(self._link.handshake)

    @property
    def early_data(self) -> EarlyData:
        """What became of 0-RTT: "off" (not attempted), "pending" (requests went in
        0-RTT, the handshake is under way), "accepted", or "rejected" (the edge
        dropped the 0-RTT packets; aioquic sent those requests again in 1-RTT,
        so there is nothing for the application to do)."""
        return self._link.early_data

    @property
    def session_resumed(self) -> bool:
        """The handshake resumed a TLS session from a ticket (a PSK handshake)."""
        return self._link.resumed

    @property
    def session_ticket(self) -> ResumptionTicket | None:
        """The latest ticket an edge sent this session (for `connect(session_ticket=)`)."""
        return self._link.tickets.latest or self._ticket

    def request_key_update(self) -> None:
        """Move to the next 1-RTT keys (RFC 9001 §6), on every path at once.

        Before the handshake is confirmed the update waits until it is.
        """
        link = self._live_link()
        link.driver.quic.request_key_update()
        link.driver.schedule_transmit()

    @property
    def key_phase(self) -> int:
        """The 1-RTT key phase bit this end sends (flips with each key update)."""
        # aioquic (pinned 1.7.2) has no public accessor; all paths share this pair.
        return int(self._driver.quic._cryptos[tls.Epoch.ONE_RTT].key_phase)

    async def close(self) -> None:
        """Close every connection of the session (draining ones too) and stop reconnecting."""
        reconnecting = self._reconnecting
        if self._lost is None:
            self._close_for_good(ConnectionLost("the session was closed"))
        if reconnecting is not None:  # cancelled: its attempt closes its sockets first
            await asyncio.wait([reconnecting])
        links = [self._link, *self._draining]
        self._draining.clear()
        await asyncio.gather(*(link.close() for link in links), *self._closing)

    @property
    def closed(self) -> bool:
        """Closed for good: by `close()`, by a loss without reconnection, or by
        `ReconnectFailed`. A session that is reconnecting is not closed."""
        return self._lost is not None

    @property
    def going_away(self) -> bool:
        """The edge sent GOAWAY on the connection in service and the session does not
        reconnect: requests under way finish, new ones raise `EdgeGoingAway`."""
        return self._policy is None and self._link.goaway is not None

    @property
    def fec_enabled(self) -> bool:
        """Whether both ends negotiated FEC (the session was opened with `fec=`)."""
        quic = self._driver.quic
        return isinstance(quic, NetSchedConnection) and quic.fec_enabled

    @property
    def fec_stats(self) -> FecStats | None:
        """FEC counters of this connection, both directions; None without FEC."""
        quic = self._driver.quic
        return quic.fec_stats() if isinstance(quic, NetSchedConnection) else None

    def set_fec(self, override: FecOverride) -> None:
        """Replace the session's FEC override (`FecConfig.session`) from now on; each
        request's `fec=` still refines it.

        Mode off also asks the edge to stop sending repairs (our decoding window
        becomes 0), and turning FEC on again restores the window held before.
        ValueError when the session was opened without `fec=`.
        """
        self._fec_connection().set_session_fec(override)
        self._driver.schedule_transmit()

    def set_fec_decoding_window(self, size: int) -> None:
        """Hold `size` source symbols for recovery (0: the edge sends no repairs), at most
        the edge's Max Coding Window. ValueError when FEC was not negotiated or for
        a size out of range."""
        self._fec_connection().set_fec_decoding_window(size)
        self._driver.schedule_transmit()

    def _fec_connection(self) -> NetSchedConnection:
        quic = self._live_link().driver.quic
        assert isinstance(quic, NetSchedConnection)  # what connect() builds
        return quic

    # -- internals: requests -----------------------------------------------------

    def _effective(self, slo: SLO | None) -> SLO:
        return (self.default_slo or SLO()).merged(slo)

    async def _exchange(
        self, request: _Request, effective: SLO, deadline_at: float | None
    ) -> tuple[ResponseHead, bytes]:
        """Send `request` and read its answer; once more on a new connection when the
        first was refused or lost and `_may_send_again` allows it."""
        # A request the edge may have processed goes again once; one it cannot have
        # processed goes on each new connection (one more than the policy's attempts, so
        # that a session that gives up says so with ReconnectFailed).
        resends = 0 if self._policy is None else self._policy.max_attempts + 1
        sent_again = False
        while True:
            link = await self._link_in_service()
            stream = self._send(link, request, streaming=False, whole=True)
            try:
                head = await stream.response()
                return head, await self._read_limited(stream)
            except (EdgeGoingAway, RequestInterrupted) as exc:
                # What a connection the edge never confirmed may have served is what it
                # serves from 0-RTT: safe to send again, uncounted.
                processed = (
                    isinstance(exc, RequestInterrupted)
                    and exc.may_have_been_processed
                    and link.confirmed
                )
                if (
                    (processed and sent_again)
                    or resends == 0
                    or not self._may_send_again(exc, request, effective, deadline_at)
                ):
                    if not processed and self._lost is not None:
                        raise self._lost from exc  # it never reached an edge: say why
                    if isinstance(exc, RequestInterrupted):
                        self._interrupted += 1
                    raise
                sent_again = sent_again or processed
                resends -= 1
                self._retried += 1
            except asyncio.CancelledError:
                stream.abort()  # the deadline passed, or the caller gave up: nobody reads it
                raise

    def _may_send_again(
        self,
        exc: EdgeGoingAway | RequestInterrupted,
        request: _Request,
        effective: SLO,
        deadline_at: float | None,
    ) -> bool:
        policy = self._policy
        if policy is None or self._lost is not None:
            return False
        if deadline_at is not None and asyncio.get_running_loop().time() >= deadline_at:
            return False
        if isinstance(exc, EdgeGoingAway) or not exc.may_have_been_processed:
            return True  # the edge did not act on it
        return policy.retry_idempotent and may_resend(request.method, effective.idempotent)

    def _send(self, link: _Link, request: _Request, *, streaming: bool, whole: bool) -> Stream:
        """Send the request head with its payload; `whole`: and end the request body there."""
        head = RequestHead(
            service=request.service,
            slo=request.slo,
            streaming=streaming,
            meta=request.meta,
            headers=request.headers,
        )
        effective = self._effective(request.slo)
        stream = link.open(
            head,
            request.payload,
            end_stream=whole,
            early=served_early(request.method, effective.idempotent),
        )
        quic = link.driver.quic
        if isinstance(quic, NetSchedConnection):
            now = asyncio.get_running_loop().time()
            deadline = None
            if effective.deadline_ms is not None and not streaming:
                deadline = now + effective.deadline_ms / 1000
            quic.set_stream_priority(stream.stream_id, deadline, effective.urgency or 3)
            if quic.fec_enabled:
                quic.set_stream_fec(
                    stream.stream_id,
                    deadline_at=deadline,
                    loss_tolerance=effective.loss_tolerance,
                    override=request.fec,
                )
        link.driver.schedule_transmit()
        return stream

    async def _read_limited(self, stream: Stream) -> bytes:
        parts: list[bytes] = []
        size = 0
        while chunk := await stream.read(65536):
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                stream.abort()
                raise ValueError(f"response exceeds {MAX_RESPONSE_BYTES} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def _check_open(self) -> None:
        if self._lost is not None:
            raise self._lost

    def _live_link(self) -> _Link:
        """The connection in service, for calls that act on it at once (no waiting); while
        it is lost, a new one is under way for the next call."""
        self._check_open()
        link = self._link
        if link.lost is not None:
            if self._policy is not None:
                self._reconnect()
            raise RequestInterrupted(
                f"no connection to {link.authority}: reconnecting ({link.lost})",
                may_have_been_processed=False,
            )
        return link

    async def _link_in_service(self) -> _Link:
        """The connection that takes new requests; while the session reconnects, wait
        for the new one (at most the connect timeout, and `max_waiting` requests)."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self._dialer.timeout
        while True:
            self._check_open()
            link = self._link
            if link.usable:
                return link
            if self._policy is None:
                raise link.refusal()
            if self._waiting >= self._policy.max_waiting:
                raise RequestInterrupted(
                    f"{self._waiting} requests already wait for a connection",
                    may_have_been_processed=False,
                )
            self._reconnect()
            self._waiting += 1
            try:
                async with asyncio.timeout_at(give_up_at):
                    await self._in_service.wait()
            except TimeoutError:
                raise RequestInterrupted(
                    f"no connection to {link.authority} within {self._dialer.timeout} s",
                    may_have_been_processed=False,
                ) from None
            finally:
                self._waiting -= 1

    # -- internals: connections -----------------------------------------------------

    async def _dial(
        self, ticket: ResumptionTicket | None, *, early_data: bool, timeout: float
    ) -> _Link:
        return await self._dialer.dial(
            ticket,
            early_data=early_data,
            timeout=timeout,
            added_paths=self._added_paths,
            on_change=self._on_link_change,
            on_datagram=self._on_datagram,
        )

    def _adopt(self, link: _Link) -> None:
        """Put `link` in service (the first one, or a new one after a reconnect)."""
        self._link = link
        if link.usable:
            self._in_service.set()
        link.handshake.add_done_callback(self._on_handshake_done)

    def _on_handshake_done(self, handshake: asyncio.Future[str | None]) -> None:
        if not handshake.cancelled() and handshake.exception() is None:
            self._established = True

    def _on_link_change(self, link: _Link, reason: str) -> None:
        """A link stopped taking requests (GOAWAY), ended, or finished draining."""
        if link in self._draining and (link.lost is not None or not link.streams):
            self._draining.discard(link)
            self._close_in_background(link)
        if link is not self._link or self._lost is not None:
            return
        self._in_service.clear()
        self._last_reason = reason
        if link.lost is not None:
            self._interrupt_flows(link)
        if (self._policy is None or not self._established) and link.lost is not None:
            self._lost = link.lost
        # Reconnecting waits for a request that needs it: an idle session makes no
        # connection (nor churn against an edge that closes idle ones).

    def _interrupt_flows(self, link: _Link) -> None:
        """Tell each datagram receiver that its flow's connection is gone (one error each;
        the queue is empty while anyone waits)."""
        for _ in range(min(self._receivers, self._datagrams.maxsize)):
            self._interrupted += 1
            self._datagrams.put_nowait(
                RequestInterrupted(
                    f"the datagram flow's connection is gone ({link.lost})",
                    may_have_been_processed=True,
                )
            )

    def _on_datagram(self, service: str, payload: bytes) -> None:
        if not self._datagrams.full():
            self._datagrams.put_nowait((service, payload))

    def _reconnect(self) -> None:
        """Replace the connection in service, unless that is already under way."""
        if self._reconnecting is None:
            reason = self._last_reason or "lost"
            task = asyncio.get_running_loop().create_task(self._replace(reason))
            self._reconnecting = task
            task.add_done_callback(self._reconnect_done)

    def _reconnect_done(self, task: asyncio.Task[None]) -> None:
        self._reconnecting = None
        if task.cancelled() or self._lost is not None:
            return
        if (error := task.exception()) is not None:  # a bug: never leave waiters hanging
            failure = ReconnectFailed(f"reconnecting failed: {error!r}", attempts=0)
            failure.__cause__ = error
            self._close_for_good(failure)
        elif not self._link.usable and self._waiting:
            # The new connection went away too, after its handshake: start over.
            self._reconnect()

    async def _replace(self, reason: str) -> None:
        """Connect again under the policy: attempts back off with jitter; success is a
        completed handshake (a 0-RTT connection takes requests before that). Gives up
        with `ReconnectFailed`, which closes the session."""
        policy = self._policy
        assert policy is not None
        old = self._link
        loop = asyncio.get_running_loop()
        if self._outage is None or loop.time() - self._connected_at >= policy.max_delay_s:
            self._outage = Outage(policy, self._rng, loop.time())
        outage = self._outage
        last: Exception | None = None
        log.info("reconnecting to %s: %s", old.authority, reason)
        while (delay := outage.next_delay(loop.time())) is not None:
            await asyncio.sleep(delay)
            self._attempts += 1
            ticket = self.session_ticket
            early = policy.early_data and ticket is not None and ticket.allows_early_data
            timeout = min(self._dialer.timeout, outage.give_up_at - loop.time())
            try:
                link = await self._dial(ticket, early_data=early, timeout=timeout)
            except (NetSchedError, OSError) as exc:
                last = exc
                log.info("reconnect to %s failed: %s", old.authority, exc)
                continue
            self._retire(self._link)
            self._adopt(link)
            try:
                await asyncio.shield(link.handshake)
            except ConnectionLost as exc:
                last = exc
                continue
            self._reconnects += 1
            self._connected_at = loop.time()
            return
        failure = ReconnectFailed(
            f"no connection to {old.authority} after {outage.attempts} attempts "
            f"in {policy.max_time_s} s (last: {last})",
            attempts=outage.attempts,
        )
        failure.__cause__ = last
        self._close_for_good(failure)

    def _retire(self, link: _Link) -> None:
        """`link` leaves service: its requests under way finish there, then it closes."""
        self._ticket = link.tickets.latest or self._ticket
        if link.lost is None and link.streams:
            self._draining.add(link)
        else:
            self._close_in_background(link)

    def _close_in_background(self, link: _Link) -> None:
        task = asyncio.get_running_loop().create_task(link.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _close_for_good(self, lost: ConnectionLost) -> None:
        """No more connections: waiters wake up to `lost`, reconnecting stops."""
        self._lost = lost
        self._in_service.set()
        if self._reconnecting is not None and self._reconnecting is not asyncio.current_task():
            self._reconnecting.cancel()
        for _ in range(min(self._receivers, self._datagrams.maxsize)):
            self._datagrams.put_nowait(lost)


def _resolves_to(local: str, host: str, family: socket.AddressFamily) -> bool:
    """`local` (an address or interface name) is `host` now."""
    try:
        return resolve_local(local, family) == host
    except InterfaceError:
        return False


def _http_meta(
    meta: Mapping[str, str] | None, method: str | None, path: str | None, *, default_method: str
) -> dict[str, str]:
    """The head's `meta` with the request's method and target (arguments win over `meta`)."""
    out = dict(meta or {})
    out["method"] = (method or out.get("method") or default_method).upper()
    out["path"] = path if path is not None else out.get("path", "/")
    if not out["path"].startswith("/"):
        raise ValueError(f"path must start with '/' (got {out['path']!r})")
    return out


def client_configuration(
    server_name: str,
    alpns: tuple[str, ...] = DEFAULT_ALPNS,
    *,
    ca_file: str | None = None,
    verify: bool = True,
    idle_timeout: float = 30.0,
) -> QuicConfiguration:
    configuration = QuicConfiguration(
        is_client=True,
        alpn_protocols=list(alpns),
        server_name=server_name,
        idle_timeout=idle_timeout,
        max_datagram_frame_size=65536,
    )
    if not verify:
        configuration.verify_mode = ssl.CERT_NONE
    elif ca_file is not None:
        configuration.load_verify_locations(cadata=read_ca_file(ca_file))
    enable_debug_logs(configuration)
    return configuration


def read_ca_file(ca_file: str) -> bytes:
    """The PEM certificates of `ca_file`, or CertificateError now (aioquic would read the
    file only at the handshake, fail inside it and leave the caller to its timeout)."""
    try:
        data = Path(ca_file).read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise CertificateError(
            f"cannot read CA file {ca_file!r}: {reason}", reason=reason
        ) from None
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        reason = "no PEM certificate in it"
        raise CertificateError(f"CA file {ca_file!r}: {reason}", reason=reason) from None
    return data


async def open_session(
    host: str,
    port: int,
    *,
    slo: SLO | None = None,
    configuration: QuicConfiguration | None = None,
    ca_file: str | None = None,
    verify: bool = True,
    timeout: float = 10.0,
    paths: Sequence[str] | Literal["auto"] | None = None,
    fec: FecConfig | None = None,
    session_ticket: ResumptionTicket | None = None,
    ticket_store: TicketStore | None = None,
    early_data: bool = False,
    pmtud: PmtuConfig | None = DEFAULT_PMTUD,
    scheduler: str = "deadline",
    reconnect: ReconnectPolicy | bool = True,
    congestion_control: str | None = None,
) -> Session:
    """Connect and complete the handshake; the caller closes the session.

    `fec`: offer FEC (docs/FEC.md) with this configuration: its `session`
    override applies to every request, each request's `fec=` refines it; with
    mode off the edge sends no repairs either. `Session.set_fec` changes it.

    `paths`: local addresses or interface names to use at once, the first one
    for the handshake; "auto" adds every non-loopback local address. When the
    edge does not negotiate multipath, extra paths are skipped silently and
    the session runs on one path.

    Resumption: `session_ticket` (a `Session.session_ticket`), or else a
    ticket from `ticket_store`, resumes the TLS session it came from; the
    store also receives this session's ticket. `early_data`: when that ticket
    allows 0-RTT, return before the handshake completes, so that the first
    requests leave in 0-RTT packets (replayable by an attacker: before the
    handshake completes the edge serves only safe methods, GET, HEAD and OPTIONS,
    and with its `early_data = "idempotent"` also requests whose SLO says
    idempotent; the others wait for the handshake, see `Session.early_data`);
    extra `paths` then open once it completes. Without such a ticket, or
    without `early_data`, the handshake completes first as usual.

    `pmtud`: how each path searches for its largest datagram (RFC 8899); None
    keeps every path at 1200 bytes.

    `scheduler`: how requests and uploads spread over the paths: "deadline" (the
    default: by expected arrival, each request's deadline and urgency, and each
    path's loss) or "lowest-rtt" (the earlier policy: fill the fastest path's window
    first).

    `reconnect`: after the edge's GOAWAY or a lost connection, connect again
    (resuming, in 0-RTT when the ticket allows; the same extra paths) and send
    again the requests that may be sent twice (`Session.request`); True is
    `ReconnectPolicy()`, False turns it off (every loss raises at once). The first
    connection's failure always raises.

    `congestion_control`: each path's controller for what this side sends
    (uploads): "reno" (aioquic's NewReno, the default), "cubic", "bbr" (ours,
    `netsched_client.proto.cc`: loss without a queue is not read as congestion,
    for lossy radio links), or "lia" / "olia" (NewReno coupled across the paths,
    RFC 6356 and OLIA: the paths together take no more of a shared bottleneck than
    one flow); None keeps `configuration`'s. Downloads follow the edge's
    `congestion_control`.
    """
    if scheduler not in SCHEDULER_POLICIES:
        choices = ", ".join(SCHEDULER_POLICIES)
        raise ValueError(f"scheduler must be one of {choices}, got {scheduler!r}")
    if congestion_control is not None and congestion_control not in CONGESTION_CONTROLS:
        choices = ", ".join(CONGESTION_CONTROLS)
        raise ValueError(f"congestion_control must be one of {choices}, got {congestion_control!r}")
    if configuration is None:
        configuration = client_configuration(host, ca_file=ca_file, verify=verify)
    if congestion_control is not None:  # a copy: the caller's configuration stays theirs
        configuration = dataclasses.replace(
            configuration, congestion_control_algorithm=congestion_control
        )
    dialer = _Dialer(
        host, port, configuration, slo, fec, pmtud, scheduler, timeout, paths, ticket_store
    )
    session = Session(dialer, slo, policy_of(reconnect))
    await session._start(session_ticket, early_data=early_data)
    return session


@dataclass(slots=True)
class _Dialer:
    """What it takes to open a connection to the edge again: `open_session`'s arguments."""

    host: str
    port: int
    configuration: QuicConfiguration
    slo: SLO | None
    fec: FecConfig | None
    pmtud: PmtuConfig | None
    scheduler: str
    timeout: float
    paths: Sequence[str] | Literal["auto"] | None
    ticket_store: TicketStore | None
    family: socket.AddressFamily = socket.AF_INET  # of the last connection

    async def dial(
        self,
        ticket: ResumptionTicket | None,
        *,
        early_data: bool,
        timeout: float,
        added_paths: Sequence[str],
        on_change: Callable[[_Link, str], None],
        on_datagram: Callable[[str, bytes], None],
    ) -> _Link:
        """A new connection, its handshake complete (or under way, in 0-RTT), its extra
        paths open; its sockets are closed again on any failure or cancellation."""
        configuration = self.configuration
        ticket = _resumption_ticket(configuration, ticket, self.ticket_store)
        early = early_data and ticket is not None and ticket.allows_early_data
        if ticket is not None:
            configuration = _resuming(configuration, ticket, early=early)
        try:
            family, addr = await resolve(self.host, self.port)
        except socket.gaierror as exc:
            raise HostNotFound(f"cannot resolve {self.host!r}: {exc.strerror}") from None
        self.family = family
        locals_ = _local_addresses(self.paths, family, addr)
        endpoint = await open_client_endpoint(family, locals_[0] if locals_ else None)
        try:
            return await self._connect(
                endpoint,
                configuration,
                addr,
                ticket.alpn if early and ticket is not None else None,
                timeout,
                [*locals_[1:], *added_paths],
                on_change,
                on_datagram,
            )
        except BaseException:
            if endpoint.driver is not None:  # no CONNECTION_CLOSE owed before a handshake
                endpoint.driver.abandon(QuicErrorCode.NO_ERROR, "connection attempt abandoned")
            endpoint.close()
            raise

    async def _connect(
        self,
        endpoint: ClientEndpoint,
        configuration: QuicConfiguration,
        addr: NetworkAddress,
        early_alpn: str | None,
        timeout: float,
        extra: Sequence[str],
        on_change: Callable[[_Link, str], None],
        on_datagram: Callable[[str, bytes], None],
    ) -> _Link:
        """The handshake on `endpoint` (`early_alpn`: 0-RTT in that ALPN, not awaited)."""
        tickets = _TicketSink(self.ticket_store)
        quic: NetSchedConnection = NetSchedConnection(
            configuration=configuration,
            local_slo=self.slo,
            fec=self.fec,
            pmtud=self.pmtud,
            scheduler=self.scheduler,
            session_ticket_handler=lambda t: tickets.receive(t, quic.tls.alpn_negotiated),
        )
        driver = ConnectionDriver(quic, endpoint.send_batch, stateless_resets=True)
        driver.ticker.read_first = endpoint.read_waiting
        endpoint.driver = driver
        manager = PathManager(driver, endpoint, self.family, addr)
        name = f"{self.host}:{self.port}"
        # Events that arrive between the handshake and the link (the server's
        # HTTP/3 control and QPACK streams often share the handshake's last flight)
        # are kept and replayed: the application protocol must see every stream byte.
        pending: list[QuicEvent] = []
        driver.add_event_handler(pending.append)
        handshake = _start_handshake(driver, addr, name)
        _fail_fast_when_refused(handshake, self.family, addr, name, endpoint.heard)
        alpn = early_alpn or await _handshake(handshake, driver, configuration, name, timeout)
        driver.remove_event_handler(pending.append)
        link = _Link(
            driver,
            endpoint,
            manager,
            alpn,
            name,
            handshake=handshake,
            tickets=tickets,
            early_data=early_alpn is not None,
            on_change=on_change,
            on_datagram=on_datagram,
        )
        for event in pending:
            link._on_quic_event(event)
        if early_alpn is not None:
            link.expect_handshake(timeout)
            if extra:
                link.run_in_background(_open_paths_after_handshake(link, extra))
        else:
            await _open_extra_paths(link, extra)
        return link


def _resumption_ticket(
    configuration: QuicConfiguration,
    session_ticket: ResumptionTicket | None,
    store: TicketStore | None,
) -> ResumptionTicket | None:
    """The ticket to resume with: the caller's (checked), or one from the store."""
    server_name = configuration.server_name or ""
    alpns = configuration.alpn_protocols or []
    if session_ticket is None:
        return None if store is None else store.take(server_name, alpns)
    if session_ticket.server_name != server_name:
        raise ValueError(
            f"session_ticket is for server name {session_ticket.server_name!r}, "
            f"this connection's is {server_name!r}"
        )
    if session_ticket.alpn not in alpns:
        raise ValueError(
            f"session_ticket is for ALPN {session_ticket.alpn!r}, not among {', '.join(alpns)}"
        )
    return session_ticket


def _resuming(
    configuration: QuicConfiguration, ticket: ResumptionTicket, *, early: bool
) -> QuicConfiguration:
    """A copy (the caller's configuration may serve other connections) that resumes.

    With 0-RTT it offers the ticket's ALPN alone: the early requests are
    framed for it, and aioquic resends them as they are if the edge rejects 0-RTT.
    """
    alpns = [ticket.alpn] if early else configuration.alpn_protocols
    return dataclasses.replace(configuration, session_ticket=ticket.ticket, alpn_protocols=alpns)


def _local_addresses(
    paths: Sequence[str] | Literal["auto"] | None,
    family: socket.AddressFamily,
    remote: NetworkAddress,
) -> list[str]:
    if paths is None:
        return []
    if paths == "auto":
        if ipaddress.ip_address(remote[0]).is_loopback:
            return []
        return ["::" if family == socket.AF_INET6 else "0.0.0.0", *discover(family)]
    try:
        return [resolve_local(local, family) for local in paths]
    except InterfaceError as exc:
        raise PathError(str(exc)) from None


async def _open_paths_after_handshake(link: _Link, locals_: Sequence[str]) -> None:
    with contextlib.suppress(ConnectionLost):
        await asyncio.shield(link.handshake)
        await _open_extra_paths(link, locals_)


async def _open_extra_paths(link: _Link, locals_: Sequence[str]) -> None:
    if locals_ and not link.paths.multipath:
        log.info("the edge did not negotiate multipath: using one path")
        return
    for local in locals_:
        try:
            await link.paths.add(local)
        except PathError as exc:
            # MPTCP's lesson: a path that cannot be used must not cost the session.
            log.warning("path from %s not used: %s", local, exc)


def _start_handshake(
    driver: ConnectionDriver, addr: NetworkAddress, name: str
) -> asyncio.Future[str | None]:
    """Send the first flight; the future holds the negotiated ALPN or the failure."""
    handshake: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

    def on_handshake(event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted) and not handshake.done():
            handshake.set_result(event.alpn_protocol)
        elif isinstance(event, ConnectionTerminated) and not handshake.done():
            handshake.set_exception(_handshake_failure(event, name))

    driver.add_event_handler(on_handshake)
    driver.quic.connect(addr, now=asyncio.get_running_loop().time())
    driver.transmit()
    return handshake


def _handshake_failure(event: ConnectionTerminated, name: str) -> ConnectionLost:
    """The typed error of a connection closed before its handshake completed."""
    reason = event.reason_phrase or "no reason given"
    alert = event.error_code - CRYPTO_ERROR
    exc: ConnectionLost
    if alert in CERTIFICATE_ALERTS:
        # aioquic's reason is OpenSSL's verdict, e.g. "self-signed certificate in chain".
        exc = CertificateError(f"certificate of {name} not trusted: {reason}", reason=reason)
    elif event.error_code == QuicErrorCode.CONNECTION_REFUSED and event.frame_type is not None:
        # A transport close (an application one carries a code of the application's):
        # the edge is draining or over its connection caps, and processed nothing.
        exc = ConnectionRefused(f"{name} refused the connection: {reason}")
    else:
        exc = ConnectionLost(
            f"handshake with {name} failed: {reason} (error code {event.error_code:#x})"
        )
    exc.error_code = event.error_code
    return exc


def _fail_fast_when_refused(
    handshake: asyncio.Future[str | None],
    family: socket.AddressFamily,
    addr: NetworkAddress,
    name: str,
    heard: asyncio.Event,
) -> None:
    """Fail the handshake with ConnectionRefused as soon as the OS reports that nothing
    listens at `addr`, rather than after the whole timeout; the probe ends with it."""
    probe = asyncio.ensure_future(port_unreachable(family, addr, heard))

    def refused(task: asyncio.Future[bool]) -> None:
        if not task.cancelled() and task.result() and not handshake.done():
            exc = ConnectionRefused(f"nothing listens on {name} (ICMP port unreachable)")
            handshake.set_exception(exc)

    probe.add_done_callback(refused)
    handshake.add_done_callback(lambda _: probe.cancel())


async def _handshake(
    handshake: asyncio.Future[str | None],
    driver: ConnectionDriver,
    configuration: QuicConfiguration,
    name: str,
    timeout: float,
) -> str:
    """Wait for the handshake; the negotiated ALPN, or a typed error."""
    try:
        async with asyncio.timeout(timeout):
            alpn = await handshake
    except TimeoutError:
        raise ConnectionLost(f"no handshake with {name} within {timeout} s") from None
    except ConnectionLost as exc:
        if exc.error_code == NO_APPLICATION_PROTOCOL:
            raise NegotiationError(
                f"{name} speaks none of {', '.join(configuration.alpn_protocols or [])}"
            ) from None
        raise
    if alpn is None or alpn not in (configuration.alpn_protocols or []):
        driver.close(reason="no common application protocol")
        raise NegotiationError(f"{name} negotiated {alpn!r}")
    return alpn


@asynccontextmanager
async def connect(
    host: str,
    port: int,
    *,
    slo: SLO | None = None,
    configuration: QuicConfiguration | None = None,
    ca_file: str | None = None,
    verify: bool = True,
    timeout: float = 10.0,
    paths: Sequence[str] | Literal["auto"] | None = None,
    fec: FecConfig | None = None,
    session_ticket: ResumptionTicket | None = None,
    ticket_store: TicketStore | None = None,
    early_data: bool = False,
    pmtud: PmtuConfig | None = DEFAULT_PMTUD,
    scheduler: str = "deadline",
    reconnect: ReconnectPolicy | bool = True,
    congestion_control: str | None = None,
) -> AsyncIterator[Session]:
    """`async with connect(host, port, slo=..., paths=[...]) as session:`; see open_session."""
    session = await open_session(
        host,
        port,
        slo=slo,
        configuration=configuration,
        ca_file=ca_file,
        verify=verify,
        timeout=timeout,
        paths=paths,
        fec=fec,
        session_ticket=session_ticket,
        ticket_store=ticket_store,
        early_data=early_data,
        pmtud=pmtud,
        scheduler=scheduler,
        reconnect=reconnect,
        congestion_control=congestion_control,
    )
    try:
        yield session
    finally:
        await session.close()
