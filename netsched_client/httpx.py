"""NetSched under httpx: an `httpx.AsyncBaseTransport` that sends requests through an edge.

    transport = NetSchedTransport("edge.example:4433", paths="auto", slo=SLO(deadline_ms=200))
    async with httpx.AsyncClient(transport=transport) as client:
        r = await client.get("https://api/users/1", extensions={"netsched": {"urgency": 1}})
        print(r.status_code, r.extensions["netsched"].backend)

A URL's host names the edge's service (`services=` maps hosts to services
instead); its path and query are the target the backend sees; method, headers
and a streamed body go as they are. The response streams back with the
backend's status and headers. One session to the edge serves every request
and reconnects by itself after a GOAWAY or a lost connection (resuming its TLS
session, in 0-RTT where the edge serves safe methods at once); one that gave
up reconnecting is replaced on the next request.

Errors land on httpx's tree: a missed deadline raises `DeadlineMissed` (an
`httpx.TimeoutException`), an edge that cannot be reached `httpx.ConnectError`
or `httpx.ConnectTimeout`, the edge's own refusals `EdgeRefused` (an
`httpx.ProxyError`: the edge stands where a proxy would), a service the edge
does not have `ServiceNotServed` (an `httpx.UnsupportedProtocol`), a broken
response `httpx.ReadError` or `httpx.RemoteProtocolError`. With
`fallback=httpx.AsyncHTTPTransport()`, an unreachable edge and a URL it does
not serve go through that transport instead, and the response says so
(`extensions["netsched"].fallback`); without one, never.

httpx is an optional dependency: `pip install netsched[httpx]`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from .errors import (
    ConnectError,
    ConnectionLost,
    DeadlineExceeded,
    EdgeGoingAway,
    RequestError,
    RequestTimeout,
    ResponseTruncated,
    ServiceNotFound,
)
from .proto.fec_link import FecConfig
from .proto.framing import ResponseHead
from .proto.slo import SLO
from .runtime.session import Session, Stream, TicketStore, open_session

# RFC 9110 §9.2.2: a retry or a replayed 0-RTT flight does no harm for these.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Past the deadline, the edge's own DeadlineExceeded may still be on its way.
DEADLINE_GRACE_S = 0.25
READ_SIZE = 64 * 1024
# The per-request SLO fields `extensions={"netsched": {...}}` may set.
_SLO_FIELDS = frozenset(SLO.__dataclass_fields__)


class DeadlineMissed(httpx.TimeoutException):
    """The request's SLO deadline passed before the whole response arrived."""


class EdgeRefused(httpx.ProxyError):
    """The edge refused or failed the request itself (no backend, queue full, a backend it
    could not reach, a bad SLO, ...). `error` is the SDK's exception, `status` its status."""

    def __init__(self, error: RequestError, *, request: httpx.Request) -> None:
        super().__init__(f"{type(error).__name__}: {error}", request=request)
        self.error = error
        self.status = int(error.status)


class ServiceNotServed(httpx.UnsupportedProtocol):
    """The edge has no service for this URL's host, and there is no fallback transport."""


@dataclass(slots=True)
class NetSchedInfo:
    """`response.extensions["netsched"]`: how the request went.

    `latency_ms` and `deadline_met` are known once the body has been read to its
    end (None before). `fec` counts the connection's recovered packets so far.
    A response from the fallback transport has `fallback` set and nothing else.
    """

    backend: str | None = None
    alpn: str | None = None
    queue_ms: float | None = None  # time the edge held the request before a backend took it
    backend_ms: float | None = None  # from handing it to the backend until its response head
    latency_ms: float | None = None  # request sent → last body byte, measured here
    deadline_ms: int | None = None
    deadline_met: bool | None = None
    paths: int = 0  # paths of the connection in use when the response began
    early_data: str = "off"  # what became of 0-RTT on this request's connection
    fec_recovered: int | None = None  # the connection's packets rebuilt by FEC so far
    fallback: str | None = None  # why the fallback transport answered instead


ServiceMap = Mapping[str, str] | Callable[[httpx.URL], str | None]


class NetSchedTransport(httpx.AsyncBaseTransport):
    """httpx requests through a NetSched edge at `edge` ("host:port").

    `slo` is the default of every request; `extensions={"netsched": {...}}` on a
    request overrides it field by field (`deadline_ms`, `urgency`, `affinity`,
    `idempotent`, ...). `services` maps a URL's host to a service (a mapping, or
    a function returning None for hosts the edge does not serve); by default the
    host is the service. `fallback`: the transport for an unreachable edge or an
    unserved URL. The other arguments are `open_session`'s.
    """

    def __init__(
        self,
        edge: str,
        *,
        slo: SLO | None = None,
        services: ServiceMap | None = None,
        fallback: httpx.AsyncBaseTransport | None = None,
        ca_file: str | None = None,
        verify: bool = True,
        paths: Sequence[str] | Literal["auto"] | None = None,
        fec: FecConfig | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        host, sep, port = edge.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ValueError(f"edge must be 'host:port' (got {edge!r})")
        self._host = host.strip("[]")
        self._port = int(port)
        self._slo = slo
        self._services = services
        self._fallback = fallback
        self._options: dict[str, Any] = {
            "ca_file": ca_file,
            "verify": verify,
            "paths": paths,
            "fec": fec,
        }
        self._connect_timeout = connect_timeout
        self._tickets = TicketStore(capacity=4)
        self._session: Session | None = None
        self._connecting = asyncio.Lock()
        self._closing: set[asyncio.Future[None]] = set()  # replaced sessions, closing

    @property
    def session(self) -> Session | None:
        """The session to the edge in use, if one is open."""
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        service = self._service(request.url)
        if service is None:
            return await self._fall_back(request, f"{request.url.host} is not an edge service")
        try:
            session = await self._connected(request)
        except ConnectError as exc:
            return await self._fall_back(request, f"edge unreachable: {exc}", cause=exc)
        try:
            return await _Exchange(self, session, service, request).run()
        except ServiceNotFound as exc:
            if not isinstance(request.stream, httpx.ByteStream):
                raise ServiceNotServed(str(exc), request=request) from exc  # body spent
            return await self._fall_back(request, f"edge has no service {service!r}", cause=exc)

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        await asyncio.gather(*self._closing)
        if self._fallback is not None:
            await self._fallback.aclose()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _service(self, url: httpx.URL) -> str | None:
        if self._services is None:
            return url.host
        if isinstance(self._services, Mapping):
            return self._services.get(url.host)
        return self._services(url)

    async def _connected(self, request: httpx.Request) -> Session:
        """The open session, or a new one (resuming the last, with 0-RTT)."""
        async with self._connecting:
            current = self._session
            if current is not None and not current.closed:
                return current  # it reconnects by itself: replacing it too would double up
            self._session = None
            if current is not None:  # it gave up reconnecting: its close must not delay us
                self._spawn(current.close())
            timeout = _timeout(request, "connect") or self._connect_timeout
            try:
                self._session = await open_session(
                    self._host,
                    self._port,
                    slo=self._slo,
                    timeout=timeout,
                    ticket_store=self._tickets,
                    early_data=True,
                    **self._options,
                )
            except ConnectError:
                raise
            except ConnectionLost as exc:  # no handshake within the timeout
                raise httpx.ConnectTimeout(str(exc), request=request) from exc
            return self._session

    async def _fall_back(
        self, request: httpx.Request, reason: str, *, cause: Exception | None = None
    ) -> httpx.Response:
        if self._fallback is None:
            if isinstance(cause, ConnectError):
                raise httpx.ConnectError(str(cause), request=request) from cause
            raise ServiceNotServed(f"{reason} (no fallback transport)", request=request) from cause
        response = await self._fallback.handle_async_request(request)
        response.extensions["netsched"] = NetSchedInfo(fallback=reason)
        return response


class _Exchange:
    """One request over one session: body out, head and body back, under the deadline."""

    def __init__(
        self, transport: NetSchedTransport, session: Session, service: str, request: httpx.Request
    ) -> None:
        self._transport = transport
        self._session = session
        self._service = service
        self._request = request
        self._slo = _request_slo(request)
        self._deadline_ms = (session.default_slo or SLO()).merged(self._slo).deadline_ms
        loop = asyncio.get_running_loop()
        self._started = time.monotonic()
        self._give_up_at = (
            None
            if self._deadline_ms is None
            else loop.time() + self._deadline_ms / 1000 + DEADLINE_GRACE_S
        )

    async def run(self) -> httpx.Response:
        request = self._request
        with _as_httpx(request):
            stream, head = await self._answer()
        info = NetSchedInfo(
            backend=head.backend,
            alpn=self._session.alpn,
            queue_ms=head.queue_ms,
            backend_ms=head.backend_ms,
            deadline_ms=self._deadline_ms,
            paths=sum(1 for p in self._session.paths if p.state != "closed"),
            early_data=self._session.early_data,
            fec_recovered=_recovered(self._session),
        )
        return httpx.Response(
            head.status,
            headers=list(head.headers),
            stream=_ResponseBody(self, stream, info),
            extensions={"netsched": info, "http_version": self._session.alpn.encode()},
            request=request,
        )

    async def _answer(self) -> tuple[Stream, ResponseHead]:
        """The stream and its response head; sent once more when the edge refused it
        unprocessed (sent before its GOAWAY arrived) and the body is still in memory."""
        refused = False
        while True:
            stream = await self._send()
            try:
                async with self.limits("read"):
                    return stream, await stream.response()
            except EdgeGoingAway:
                if refused or not isinstance(self._request.stream, httpx.ByteStream):
                    raise
                refused = True
            except BaseException:
                stream.abort()  # the edge may still answer: nobody will read it
                raise

    async def _send(self) -> Stream:
        """Open the stream (the session waits for its new connection if it is replacing
        one) and send the body."""
        request = self._request
        stream = await self._open(self._session)
        if isinstance(request.stream, httpx.ByteStream):
            return stream  # the whole body went with the head
        async with self.limits("write"):
            async for chunk in request.stream:  # type: ignore[union-attr]
                await stream.write(chunk)
            stream.write_eof()
        return stream

    async def _open(self, session: Session) -> Stream:
        """The request's stream; a body in memory leaves with the head and the request's
        end, so the backend learns its length (an HTTP/1.0 server reads no chunked body)."""
        request = self._request
        known = isinstance(request.stream, httpx.ByteStream)
        return await session.open_stream(
            self._service,
            method=request.method,
            path=request.url.raw_path.decode("ascii"),
            headers=request.headers.multi_items(),
            body=await request.aread() if known else None,
            slo=self._slo,
        )

    @asynccontextmanager
    async def limits(self, kind: Literal["read", "write"]) -> AsyncIterator[None]:
        """The request's deadline and httpx's `kind` timeout around one wait."""
        loop = asyncio.get_running_loop()
        ends = [] if self._give_up_at is None else [self._give_up_at]
        if (timeout := _timeout(self._request, kind)) is not None:
            ends.append(loop.time() + timeout)
        try:
            async with asyncio.timeout_at(min(ends) if ends else None):
                yield
        except TimeoutError:
            if self._give_up_at is not None and loop.time() >= self._give_up_at:
                raise DeadlineMissed(
                    f"no complete response within the {self._deadline_ms} ms deadline",
                    request=self._request,
                ) from None
            error = httpx.ReadTimeout if kind == "read" else httpx.WriteTimeout
            raise error(f"{kind} timed out", request=self._request) from None

    def finished(self, info: NetSchedInfo) -> None:
        info.latency_ms = (time.monotonic() - self._started) * 1000
        if self._deadline_ms is not None:
            info.deadline_met = info.latency_ms <= self._deadline_ms


class _ResponseBody(httpx.AsyncByteStream):
    """The response body as it arrives; closing it early resets the stream."""

    def __init__(self, exchange: _Exchange, stream: Stream, info: NetSchedInfo) -> None:
        self._exchange = exchange
        self._stream = stream
        self._info = info
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx(self._exchange._request):
            while True:
                async with self._exchange.limits("read"):
                    chunk = await self._stream.read(READ_SIZE)
                if not chunk:
                    break
                yield chunk
        self._done = True
        self._exchange.finished(self._info)

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            with suppress(ConnectionLost):
                self._stream.abort()


@contextmanager
def _as_httpx(request: httpx.Request) -> Iterator[None]:
    """The SDK's errors as httpx's; ServiceNotFound passes (the transport may fall back)."""
    try:
        yield
    except ServiceNotFound:
        raise
    except DeadlineExceeded as exc:
        raise DeadlineMissed(str(exc), request=request) from exc
    except ResponseTruncated as exc:  # as httpcore reports a body cut short
        raise httpx.RemoteProtocolError(str(exc), request=request) from exc
    except RequestTimeout as exc:  # the edge waited too long for the request body
        raise httpx.WriteTimeout(str(exc), request=request) from exc
    except RequestError as exc:
        raise EdgeRefused(exc, request=request) from exc
    except ConnectError as exc:
        raise httpx.ConnectError(str(exc), request=request) from exc
    except ConnectionLost as exc:
        raise httpx.ReadError(str(exc), request=request) from exc


def _request_slo(request: httpx.Request) -> SLO:
    """The request's own SLO fields (extensions["netsched"]), idempotent by method."""
    fields: Mapping[str, Any] = request.extensions.get("netsched", {})
    unknown = set(fields) - _SLO_FIELDS
    if unknown:
        raise ValueError(f'extensions["netsched"]: unknown SLO fields {sorted(unknown)}')
    values = dict(fields)
    if request.method in IDEMPOTENT_METHODS:
        values.setdefault("idempotent", True)
    return SLO(**values)


def _timeout(request: httpx.Request, kind: str) -> float | None:
    """httpx's per-request timeout of `kind` ("connect", "read", "write"), if set."""
    timeouts: Mapping[str, float | None] = request.extensions.get("timeout", {})
    return timeouts.get(kind)


def _recovered(session: Session) -> int | None:
    stats = session.fec_stats
    return None if stats is None else stats.symbols_recovered


__all__ = [
    "DeadlineMissed",
    "EdgeRefused",
    "NetSchedInfo",
    "NetSchedTransport",
    "ServiceNotServed",
]
