"""HTTP/1.1 backends: h11 over asyncio streams with a keep-alive pool.

The request body is sent in its own task while the response head is awaited,
so a backend that answers before the request ends (a long-lived stream) works.
A connection returns to the pool only after a clean, complete exchange.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import h11

from netsched_client.proto.framing import RESERVED_HEADER_PREFIX, Headers
from netsched_edge.backends.base import (
    Backend,
    BackendRequest,
    BackendResponse,
    BackendUnavailable,
    iter_chunks,
)
from netsched_edge.backends.tcp import (
    READ_SIZE,
    ReleasingBody,
    open_stream,
    pump_body,
    settle,
)

# Connection-specific fields (RFC 9110 §7.6.1) belong to one hop, never passed on.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Request fields the edge sets itself: a client's own would change the framing of the
# backend connection (request smuggling) or claim what only the edge may say.
_EDGE_SET = _HOP_BY_HOP | {
    "content-length",
    "early-data",
    "host",
    "x-netsched-affinity",
    "x-netsched-service",
}


@dataclass(slots=True, eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    protocol: h11.Connection

    def send(self, event: h11.Event) -> None:
        data = self.protocol.send(event)
        if data:
            self.writer.write(data)

    async def next_event(self) -> h11.Event:
        while True:
            event = self.protocol.next_event()
            if isinstance(event, h11.Event):
                return event
            if event is h11.PAUSED:
                # Only after a complete response, which callers never read past.
                raise h11.RemoteProtocolError("data after the end of the response")
            self.protocol.receive_data(await self.reader.read(READ_SIZE))

    def idle_usable(self) -> bool:
        """Whether an idle pooled connection is still open and quiet."""
        return (
            not self.writer.is_closing()
            and not self.reader.at_eof()
            and self.reader.exception() is None
        )

    def reusable(self) -> bool:
        return self.protocol.our_state is h11.DONE and self.protocol.their_state is h11.DONE


class HTTPBackend(Backend):
    """A backend speaking HTTP/1.1 over TCP."""

    kind = "http"

    def __init__(
        self, name: str, host: str, port: int, *, health_path: str = "/health", pool_size: int = 32
    ) -> None:
        if pool_size < 0:
            raise ValueError(f"pool_size must be >= 0, got {pool_size}")
        super().__init__(name)
        self.host = host
        self.port = port
        self.health_path = health_path
        self.pool_size = pool_size
        self._authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._idle: list[_Connection] = []
        self._closed = False

    async def exchange(
        self, request: BackendRequest, body: AsyncIterator[bytes], timeout: float
    ) -> BackendResponse:
        head = self._request_head(request)
        conn: _Connection | None = None
        sender: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(timeout):
                conn = await self._acquire()
                conn.send(head)
                sender = asyncio.create_task(self._send_body(conn, body))
                response = await self._await_head(conn, sender)
        except BaseException:
            if sender is not None:
                settle(sender)
            if conn is not None:
                conn.writer.transport.abort()
            raise
        return self._response(conn, sender, response)

    async def check(self, timeout: float) -> bool:
        request = BackendRequest(
            service="netsched-health", meta={"method": "GET", "path": self.health_path}, length=0
        )
        try:
            async with asyncio.timeout(timeout):
                response = await self.exchange(request, iter_chunks(), timeout)
                async for _ in response.body:
                    pass
        except (BackendUnavailable, TimeoutError, OSError, h11.ProtocolError):
            return False
        return 200 <= response.status < 300

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().writer.close()

    def _request_head(self, request: BackendRequest) -> h11.Request:
        headers = [("host", self._authority), ("x-netsched-service", request.service)]
        if request.affinity is not None:
            headers.append(("x-netsched-affinity", request.affinity))
        if request.early_data:
            headers.append(("early-data", "1"))
        headers += [
            (name, value) for name, value in request.headers if name.lower() not in _EDGE_SET
        ]
        if request.length is None:
            headers.append(("transfer-encoding", "chunked"))
        else:
            headers.append(("content-length", str(request.length)))
        # A client that names neither (an older SDK, a raw stream) gets the historic default.
        method = request.meta.get("method", "POST")
        target = request.meta.get("path", "/" + request.service)
        if method.upper() == "CONNECT":
            # CONNECT turns the connection into a tunnel; use a TCP backend for that.
            raise ValueError(f"http backend {self.name!r}: meta method 'CONNECT' is not supported")
        try:
            return h11.Request(method=method, target=target, headers=headers)
        except (h11.LocalProtocolError, ValueError) as exc:
            raise ValueError(
                f"http backend {self.name!r}: invalid request metadata "
                f"(method {method!r}, path {target!r}, headers): {exc}"
            ) from exc

    async def _acquire(self) -> _Connection:
        while self._idle:
            # Most recently used first: the least likely to have been timed out by the server.
            conn = self._idle.pop()
            if conn.idle_usable():
                return conn
            conn.writer.transport.abort()
        reader, writer = await open_stream(self.kind, self.name, self.host, self.port)
        return _Connection(reader, writer, h11.Connection(h11.CLIENT))

    async def _send_body(self, conn: _Connection, body: AsyncIterator[bytes]) -> None:
        try:
            await pump_body(
                body,
                conn.writer,
                lambda chunk: conn.send(h11.Data(data=chunk)),
                lambda: conn.send(h11.EndOfMessage()),
            )
        except h11.LocalProtocolError as exc:
            # The only framing our side can get wrong: a body that disagrees with request.length.
            raise ValueError(f"http backend {self.name!r}: request body: {exc}") from exc

    async def _await_head(self, conn: _Connection, sender: asyncio.Task[None]) -> h11.Response:
        """Wait for the response head while the body goes out; a failing body source wins."""
        head = asyncio.create_task(self._read_head(conn))
        try:
            await asyncio.wait((head, sender), return_when=asyncio.FIRST_COMPLETED)
            if sender.done():
                # A failed body source aborts the connection: its error is the cause,
                # whatever the head reader saw.
                sender.result()
            return await head
        finally:
            settle(head)

    async def _read_head(self, conn: _Connection) -> h11.Response:
        try:
            while True:
                event = await conn.next_event()
                if isinstance(event, h11.Response):
                    return event
                if not isinstance(event, h11.InformationalResponse):
                    raise BackendUnavailable(
                        f"http backend {self.name!r}: connection closed before the response head"
                    )
        except (OSError, h11.RemoteProtocolError) as exc:
            raise BackendUnavailable(
                f"http backend {self.name!r}: connection broke before the response head: {exc!r}"
            ) from exc

    def _response(
        self, conn: _Connection, sender: asyncio.Task[None], head: h11.Response
    ) -> BackendResponse:
        return BackendResponse(
            status=head.status_code,
            headers=_decode_headers(head.headers),
            body=ReleasingBody(
                lambda: self._read_body(conn),
                lambda complete: self._finish(conn, sender, complete),
            ),
        )

    async def _read_body(self, conn: _Connection) -> bytes | None:
        try:
            while True:
                event = await conn.next_event()
                if isinstance(event, h11.EndOfMessage):
                    return None
                if not isinstance(event, h11.Data):
                    raise h11.RemoteProtocolError("connection closed mid-body")
                if event.data:
                    return bytes(event.data)
        except (OSError, h11.RemoteProtocolError) as exc:
            raise ConnectionError(
                f"http backend {self.name!r}: response body broken: {exc}"
            ) from exc

    def _finish(self, conn: _Connection, sender: asyncio.Task[None], complete: bool) -> None:
        sent = settle(sender)
        if not complete:
            conn.writer.transport.abort()
        elif sent and conn.reusable() and not self._closed and len(self._idle) < self.pool_size:
            conn.protocol.start_next_cycle()
            self._idle.append(conn)
        else:
            conn.writer.close()


def _decode_headers(headers: Sequence[tuple[bytes, bytes]]) -> Headers:
    """The response fields passed on: not this hop's, not the edge's own (netsched-*)."""
    pairs = ((name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in headers)
    return Headers(
        (name, value)
        for name, value in pairs
        if name not in _HOP_BY_HOP and not name.startswith(RESERVED_HEADER_PREFIX)
    )
