"""In-process backend servers for `netsched-edge demo` and for tests.

`DemoHTTPServer` models backends of different speed and warmth: each has a
base latency, and a request whose key is not in its small LRU cache pays an
extra cold latency. `TCPEchoServer` and `UDPEchoServer` echo what they get.
All listen on real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import h11

_READ_SIZE = 65536
_MAX_BODY = 16 * 1024 * 1024  # the demo echoes bodies, so it holds them whole


class _StreamServer:
    """A TCP listener that tracks its connections to stop gracefully or be killed.

    Subclasses implement `_serve` and wrap each request in `_in_flight()`:
    a graceful stop closes idle connections at once and lets in-flight
    requests finish.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.connections = 0  # accepted since start
        self._server: asyncio.Server | None = None
        self._handlers: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self._busy: set[asyncio.Task[Any]] = set()
        self._stopping = False

    @property
    def open_connections(self) -> int:
        return len(self._handlers)

    async def start(self) -> int:
        """Start listening; returns the bound port."""
        self._stopping = False
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Stop listening, close idle connections, let in-flight requests finish."""
        self._stopping = True
        self._close_listener()
        for task, writer in self._handlers.items():
            if task not in self._busy:
                writer.close()
        await self._join()

    async def kill(self) -> None:
        """Stop listening and abort every connection, mid-request or not."""
        self._stopping = True
        self._close_listener()
        for task, writer in self._handlers.items():
            writer.transport.abort()
            task.cancel()
        await self._join()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def _in_flight(self) -> Iterator[None]:
        task = asyncio.current_task()
        assert task is not None
        self._busy.add(task)
        try:
            yield
        finally:
            self._busy.discard(task)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections += 1
        self._handlers[task] = writer
        try:
            await self._serve(reader, writer)
        except OSError:
            pass  # the client went away; nothing to answer
        finally:
            del self._handlers[task]
            writer.close()

    def _close_listener(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _join(self) -> None:
        await asyncio.gather(*self._handlers, return_exceptions=True)


class DemoHTTPServer(_StreamServer):
    """An HTTP/1.1 echo server with a base latency and a cold-cache penalty."""

    def __init__(
        self,
        name: str,
        *,
        base_ms: float,
        cold_ms: float,
        cache_size: int = 64,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        for field, value in (
            ("base_ms", base_ms),
            ("cold_ms", cold_ms),
            ("cache_size", cache_size),
        ):
            if value < 0:
                raise ValueError(f"{field} must be >= 0, got {value}")
        super().__init__(host, port)
        self.name = name
        self.base_ms = base_ms
        self.cold_ms = cold_ms
        self.cache_size = cache_size
        self.requests = 0  # served requests other than health checks
        self.hits = 0
        self.misses = 0
        self._cache: OrderedDict[bytes, None] = OrderedDict()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while not self._stopping:
                request = await _next_event(conn, reader)
                if not isinstance(request, h11.Request):
                    return
                with self._in_flight():
                    body = await _read_body(conn, reader)
                    await self._respond(conn, writer, request, body)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                _write_response(conn, writer, exc.error_status_hint, [], str(exc).encode())
                await writer.drain()

    async def _respond(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        request: h11.Request,
        body: bytes,
    ) -> None:
        if request.method == b"GET" and request.target == b"/health":
            _write_response(conn, writer, 200, [], b"ok")
        else:
            hit = self._lookup(_header(request, b"x-netsched-affinity") or request.target)
            await asyncio.sleep((self.base_ms + (0.0 if hit else self.cold_ms)) / 1000)
            headers = [(b"x-backend", self.name.encode()), (b"x-cache", b"hit" if hit else b"miss")]
            _write_response(conn, writer, 200, headers, body)
        await writer.drain()

    def _lookup(self, key: bytes) -> bool:
        """Count a request for `key`; True on a cache hit. Misses warm the cache."""
        self.requests += 1
        if key in self._cache:
            self._cache.move_to_end(key)
            self.hits += 1
            return True
        self.misses += 1
        self._cache[key] = None
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return False


class TCPEchoServer(_StreamServer):
    """Echoes every byte until the client half-closes, then closes."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(_READ_SIZE):
            with self._in_flight():
                writer.write(data)
                await writer.drain()


class UDPEchoServer(asyncio.DatagramProtocol):
    """Echoes every datagram back to its sender."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.datagrams = 0
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self) -> int:
        """Start listening; returns the bound port."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=(self.host, self.port)
        )
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        return self.port

    async def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.datagrams += 1
        if self._transport is not None:
            self._transport.sendto(data, addr)


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Event:
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Event):
            return event
        # PAUSED cannot happen: the next cycle starts only once both sides are done.
        conn.receive_data(await reader.read(_READ_SIZE))


async def _read_body(conn: h11.Connection, reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    size = 0
    while not isinstance(event := await _next_event(conn, reader), h11.EndOfMessage):
        if not isinstance(event, h11.Data):
            raise h11.RemoteProtocolError("connection closed mid-request")
        size += len(event.data)
        if size > _MAX_BODY:
            raise h11.RemoteProtocolError(f"body exceeds {_MAX_BODY} bytes", 413)
        parts.append(bytes(event.data))
    return b"".join(parts)


def _write_response(
    conn: h11.Connection,
    writer: asyncio.StreamWriter,
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    response = h11.Response(status_code=status, headers=headers)
    for event in (response, h11.Data(data=body), h11.EndOfMessage()):
        writer.write(conn.send(event) or b"")


def _header(request: h11.Request, name: bytes) -> bytes | None:
    for key, value in request.headers:
        if key == name:
            return value
    return None
