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
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Coroutine, Hashable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Literal, Protocol, TypeVar

from aioquic import tls
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, QuicEvent
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
    ResponseTruncated,
    error_for_status,
)
from ..fec.control import FecOverride
from ..proto import h3 as h3proto
from ..proto import hq as hqproto
from ..proto import session as native
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
from .driver import ConnectionDriver
from .endpoint import ClientEndpoint, open_client_endpoint, port_unreachable, resolve
from .interfaces import InterfaceError, discover, resolve_local
from .paths import PathError, PathManager, PathStats

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

    def __init__(self, session: Session, stream_id: int, *, write_closed: bool = False) -> None:
        self._session = session
        self.stream_id = stream_id
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
        self._session._send_body(self.stream_id, data, end_stream=False)
        await asyncio.sleep(0)

    def write_eof(self) -> None:
        if not self._write_closed:
            self._write_closed = True
            self._session._send_body(self.stream_id, b"", end_stream=True)

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
        self._session._abort(self.stream_id)
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


class Session:
    """A connection to an edge. Use `connect()` to make one."""

    def __init__(
        self,
        driver: ConnectionDriver,
        endpoint: ClientEndpoint,
        alpn: str,
        default_slo: SLO | None,
        authority: str,
        path_manager: PathManager,
        *,
        handshake: asyncio.Future[str | None],
        tickets: _TicketSink,
        early_data: bool = False,
    ) -> None:
        self._driver = driver
        self._endpoint = endpoint
        self._paths = path_manager
        self.alpn = alpn
        self.default_slo = default_slo
        quic = driver.quic
        self._proto = _app_protocol(alpn, quic, authority)
        self._streams: dict[int, Stream] = {}
        self._datagrams: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=1024)
        self._lost: ConnectionLost | None = None
        # The edge drains (GOAWAY): its first refused stream; no new requests here.
        self._goaway: int | None = None
        self._handshake = handshake
        # A 0-RTT session may never see its handshake's outcome asked for.
        handshake.add_done_callback(_retrieve)
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._tickets = tickets
        self._early_data: EarlyData = "pending" if early_data else "off"
        self._resumed = False
        self._background: set[asyncio.Task[None]] = set()
        driver.add_event_handler(self._on_quic_event)

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
        """
        started = time.monotonic()
        http = _http_meta(meta, method, path, default_method="POST" if body else "GET")
        stream = self._open(service, body, slo, http, headers, streaming=False, fec=fec)
        deadline_ms = self._effective(slo).deadline_ms
        try:
            async with asyncio.timeout(
                None if deadline_ms is None else deadline_ms / 1000 + DEADLINE_GRACE_S
            ):
                head = await stream.response()
                body = await self._read_limited(stream)
        except TimeoutError:
            stream.abort()
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
        """
        http = _http_meta(meta, method, path, default_method="POST")
        stream = self._open(
            service,
            body or b"",
            slo,
            http,
            headers,
            streaming=True,
            fec=fec,
            whole=body is not None,
        )
        return stream

    def send_datagram(self, service: str, payload: bytes) -> None:
        self._check_open()
        self._proto.send_datagram(service, payload)
        self._driver.schedule_transmit()

    async def receive_datagram(self) -> tuple[str, bytes]:
        """The next (service, payload) datagram from the edge."""
        self._check_open()
        return await self._datagrams.get()

    # -- paths ----------------------------------------------------------------

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
        """Open a path from a local address or interface name; its ID once validated."""
        self._check_open()
        return await self._paths.add(local)

    def remove_path(self, path_id: int) -> None:
        self._check_open()
        self._paths.remove(path_id)

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
        self._check_open()
        return await self._paths.migrate(local)

    def set_path_backup(self, path_id: int, backup: bool = True) -> None:
        """Use a path only when no other works (and tell the edge so)."""
        self._check_open()
        self._paths.set_backup(path_id, backup)

    # -- handshake, resumption, keys -------------------------------------------

    @property
    def handshake_complete(self) -> bool:
        handshake = self._handshake
        return handshake.done() and not handshake.cancelled() and handshake.exception() is None

    async def wait_handshake(self) -> None:
        """Return once the handshake completed; raise `ConnectionLost` if it failed.

        Only a session opened for 0-RTT (`early_data=True` with a ticket that
        allows it) exists before its handshake completes.
        """
        await asyncio.shield(self._handshake)

    @property
    def early_data(self) -> EarlyData:
        """What became of 0-RTT: "off" (not attempted), "pending" (requests went in
        0-RTT, the handshake is under way), "accepted", or "rejected" (the edge
        dropped the 0-RTT packets; aioquic sent those requests again in 1-RTT,
        so there is nothing for the application to do)."""
        return self._early_data

    @property
    def session_resumed(self) -> bool:
        """The handshake resumed a TLS session from a ticket (a PSK handshake)."""
        return self._resumed

    @property
    def session_ticket(self) -> ResumptionTicket | None:
        """The latest ticket the edge sent on this connection (for `connect(session_ticket=)`)."""
        return self._tickets.latest

    def request_key_update(self) -> None:
        """Move to the next 1-RTT keys (RFC 9001 §6), on every path at once.

        Before the handshake is confirmed the update waits until it is.
        """
        self._check_open()
        self._driver.quic.request_key_update()
        self._driver.schedule_transmit()

    @property
    def key_phase(self) -> int:
        """The 1-RTT key phase bit this end sends (flips with each key update)."""
        # aioquic (pinned 1.7.2) has no public accessor; all paths share this pair.
        return int(self._driver.quic._cryptos[tls.Epoch.ONE_RTT].key_phase)

    async def close(self) -> None:
        self._paths.close()
        for task in self._background:
            task.cancel()
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        if self._lost is None:
            self._driver.close(reason="session closed")
        # The close frame is out; waiting for the drain period is a courtesy, bounded.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_WAIT_S):
                await self._driver.closed.wait()
        self._endpoint.close()

    @property
    def closed(self) -> bool:
        return self._lost is not None

    @property
    def going_away(self) -> bool:
        """The edge sent GOAWAY: requests under way finish, new ones raise `EdgeGoingAway`
        (open a new session for them)."""
        return self._goaway is not None

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
        self._check_open()
        quic = self._driver.quic
        assert isinstance(quic, NetSchedConnection)  # what connect() builds
        return quic

    # -- internals -----------------------------------------------------------

    def _effective(self, slo: SLO | None) -> SLO:
        return (self.default_slo or SLO()).merged(slo)

    def _open(
        self,
        service: str,
        payload: bytes,
        slo: SLO | None,
        meta: Mapping[str, str],
        headers: HeadersArg | None,
        *,
        streaming: bool,
        fec: FecOverride | None = None,
        whole: bool = False,
    ) -> Stream:
        """Send the request head with `payload`; `whole`: and end the request body there."""
        self._check_open()
        if self._goaway is not None:
            raise EdgeGoingAway("the edge is draining this connection; open a new one")
        head = RequestHead(
            service=service,
            slo=slo,
            streaming=streaming,
            meta=meta,
            headers=header_fields(headers or ()),
        )
        stream_id = self._proto.send_request(head, payload, end_stream=whole or not streaming)
        deadline_ms = self._effective(slo).deadline_ms
        quic = self._driver.quic
        if isinstance(quic, NetSchedConnection):
            now = asyncio.get_running_loop().time()
            deadline = None
            if deadline_ms is not None and not streaming:
                deadline = now + deadline_ms / 1000
            quic.set_stream_priority(stream_id, deadline, self._effective(slo).urgency or 3)
            if quic.fec_enabled:
                tolerance = self._effective(slo).loss_tolerance
                quic.set_stream_fec(
                    stream_id, deadline_at=deadline, loss_tolerance=tolerance, override=fec
                )
        stream = self._streams[stream_id] = Stream(
            self, stream_id, write_closed=whole or not streaming
        )
        self._driver.schedule_transmit()
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

    def _send_body(self, stream_id: int, data: bytes, *, end_stream: bool) -> None:
        self._check_open()
        self._proto.send_body(stream_id, data, end_stream=end_stream)
        self._driver.schedule_transmit()

    def _abort(self, stream_id: int) -> None:
        if self._lost is None:
            self._proto.abort(stream_id)
            self._driver.schedule_transmit()
        self._streams.pop(stream_id, None)

    def _check_open(self) -> None:
        if self._lost is not None:
            raise self._lost

    def _expect_handshake(self, timeout: float, name: str) -> None:
        """Give up on a 0-RTT session whose handshake takes longer than `timeout`."""

        def expired() -> None:
            if not self._handshake.done():
                lost = ConnectionLost(f"no handshake with {name} within {timeout} s")
                self._handshake.set_exception(lost)
                self._driver.close(reason="handshake timeout")
                self._fail_all(lost)

        loop = asyncio.get_running_loop()
        self._handshake_timer = loop.call_later(timeout, expired)

    def _run_in_background(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _on_quic_event(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated):
            self._on_terminated(event)
            return
        if isinstance(event, HandshakeCompleted):
            self._on_handshake(event)
        for pevent in self._proto.handle_event(event):
            self._dispatch(pevent)

    def _dispatch(self, event: ProtocolEvent) -> None:
        if isinstance(event, native.GoawayReceived):
            self._on_goaway(event.stream_id)
            return
        if isinstance(event, DatagramReceived):
            if not self._datagrams.full():
                self._datagrams.put_nowait((event.service, event.payload))
            return
        if not isinstance(event, ResponseReceived | BodyReceived | StreamAborted):
            return
        stream = self._streams.get(event.stream_id)
        if stream is None:
            return
        if isinstance(event, ResponseReceived):
            stream._on_head(event.head)
        elif isinstance(event, BodyReceived):
            stream._on_body(event.data, event.end_stream)
            if event.end_stream:
                self._streams.pop(event.stream_id, None)
                self._proto.forget(event.stream_id)
        else:
            stream._fail(_abort_error(event, after_head=stream.head_received))
            self._streams.pop(event.stream_id, None)

    def _on_goaway(self, first_refused: int) -> None:
        """Finish the requests below `first_refused`; fail the others now (the edge resets
        them unprocessed) and every later one, so the caller opens a new connection."""
        self._goaway = first_refused
        for stream_id in [sid for sid in self._streams if sid >= first_refused]:
            self._streams.pop(stream_id)._fail(
                EdgeGoingAway(f"stream {stream_id}: refused, the edge is draining")
            )
            self._proto.forget(stream_id)

    def _on_handshake(self, event: HandshakeCompleted) -> None:
        self._resumed = event.session_resumed
        if self._early_data == "pending":
            self._early_data = "accepted" if event.early_data_accepted else "rejected"
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()

    def _on_terminated(self, event: ConnectionTerminated) -> None:
        if self._lost is None:
            reason = event.reason_phrase or f"error code {event.error_code:#x}"
            self._fail_all(ConnectionLost(f"connection closed: {reason}"))

    def _fail_all(self, lost: ConnectionLost) -> None:
        self._lost = lost
        for stream in self._streams.values():
            stream._fail(lost)
        self._streams.clear()


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


def _retrieve(future: asyncio.Future[str | None]) -> None:
    if not future.cancelled():
        future.exception()


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
    """
    if scheduler not in SCHEDULER_POLICIES:
        choices = ", ".join(SCHEDULER_POLICIES)
        raise ValueError(f"scheduler must be one of {choices}, got {scheduler!r}")
    if configuration is None:
        configuration = client_configuration(host, ca_file=ca_file, verify=verify)
    ticket = _resumption_ticket(configuration, session_ticket, ticket_store)
    early = early_data and ticket is not None and ticket.allows_early_data
    if ticket is not None:
        configuration = _resuming(configuration, ticket, early=early)
    try:
        family, addr = await resolve(host, port)
    except socket.gaierror as exc:
        raise HostNotFound(f"cannot resolve {host!r}: {exc.strerror}") from None
    locals_ = _local_addresses(paths, family, addr)
    endpoint = await open_client_endpoint(family, locals_[0] if locals_ else None)
    tickets = _TicketSink(ticket_store)
    quic: NetSchedConnection = NetSchedConnection(
        configuration=configuration,
        local_slo=slo,
        fec=fec,
        pmtud=pmtud,
        scheduler=scheduler,
        session_ticket_handler=lambda t: tickets.receive(t, quic.tls.alpn_negotiated),
    )
    driver = ConnectionDriver(quic, endpoint.send_batch)
    endpoint.driver = driver
    manager = PathManager(driver, endpoint, family, addr)
    name = f"{host}:{port}"
    # Events that arrive between the handshake and the session (the server's
    # HTTP/3 control and QPACK streams often share the handshake's last flight)
    # are kept and replayed: the application protocol must see every stream byte.
    pending: list[QuicEvent] = []
    driver.add_event_handler(pending.append)
    handshake = _start_handshake(driver, addr, name)
    _fail_fast_when_refused(handshake, family, addr, name, endpoint.heard)
    if early:
        assert ticket is not None
        alpn = ticket.alpn  # the only one offered (_resuming)
    else:
        alpn = await _handshake(handshake, endpoint, driver, configuration, name, timeout)
    driver.remove_event_handler(pending.append)
    session = Session(
        driver,
        endpoint,
        alpn,
        slo,
        name,
        manager,
        handshake=handshake,
        tickets=tickets,
        early_data=early,
    )
    for event in pending:
        session._on_quic_event(event)
    if early:
        session._expect_handshake(timeout, name)
        if locals_[1:]:
            session._run_in_background(_open_paths_after_handshake(session, locals_[1:]))
    else:
        await _open_extra_paths(session, locals_[1:])
    return session


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


async def _open_paths_after_handshake(session: Session, locals_: Sequence[str]) -> None:
    with contextlib.suppress(ConnectionLost):
        await session.wait_handshake()
        await _open_extra_paths(session, locals_)


async def _open_extra_paths(session: Session, locals_: Sequence[str]) -> None:
    if locals_ and not session.multipath:
        log.info("the edge did not negotiate multipath: using one path")
        return
    for local in locals_:
        try:
            await session.add_path(local)
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
    endpoint: ClientEndpoint,
    driver: ConnectionDriver,
    configuration: QuicConfiguration,
    name: str,
    timeout: float,
) -> str:
    """Wait for the handshake; the negotiated ALPN, or a typed error (sockets closed)."""
    try:
        async with asyncio.timeout(timeout):
            alpn = await handshake
    except TimeoutError:
        endpoint.close()
        raise ConnectionLost(f"no handshake with {name} within {timeout} s") from None
    except ConnectionLost as exc:
        endpoint.close()
        if exc.error_code == NO_APPLICATION_PROTOCOL:
            raise NegotiationError(
                f"{name} speaks none of {', '.join(configuration.alpn_protocols or [])}"
            ) from None
        raise
    if alpn is None or alpn not in (configuration.alpn_protocols or []):
        driver.close(reason="no common application protocol")
        endpoint.close()
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
    )
    try:
        yield session
    finally:
        await session.close()
