"""Hostile peers for the request-path tests: raw backends and a hand-driven HTTP/3 client.

Everything runs over real loopback sockets: `RawBackend` is an asyncio TCP
server whose handler plays a broken backend (stalls, truncates, streams
forever), `H3Client` is aioquic's own HTTP/3 stack over a real UDP socket that
records what each stream saw (headers, body, reset code) and can stop
acknowledging (`stalled`), as a slow or vanished client would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress
from aioquic.quic.events import QuicEvent, StreamDataReceived, StreamReset

from netsched_client.proto.framing import HeadReader, ResponseHead
from netsched_edge.server import EdgeServer

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

# aioquic's H3Connection opens its control stream first: the server's first unidirectional one.
EDGE_CONTROL_STREAM = 3

OK_RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"


class RawBackend:
    """A TCP server on loopback whose `handler` plays the backend, one call per connection.

    Health checks (GET /health) are answered 200 so the backend stays in service.
    """

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.heads: list[bytes] = []  # request heads seen, health checks excluded

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"GET /health "):
                writer.write(OK_RESPONSE)
                await writer.drain()
                return
            self.heads.append(head)
            reader = _Replay(head, reader)  # type: ignore[assignment]
            await self._handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.transport.abort()


class _Replay:
    """A reader that first gives back the head already read, then the socket's bytes."""

    def __init__(self, head: bytes, reader: asyncio.StreamReader) -> None:
        self._head = head
        self._reader = reader

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        if self._head:
            head, self._head = self._head, b""
            return head
        return await self._reader.readuntil(separator)

    async def read(self, n: int = -1) -> bytes:
        if self._head:
            head, self._head = self._head, b""
            return head
        return await self._reader.read(n)


async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Take the request and never answer."""
    await reader.readuntil(b"\r\n\r\n")
    await asyncio.Event().wait()


async def answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(OK_RESPONSE)
    await writer.drain()


def by_path(routes: dict[bytes, Handler], default: Handler = answer_ok) -> Handler:
    """Dispatch on the request target (the second word of the request line)."""

    async def route(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        target = head.split(b" ", 2)[1]
        handler = routes.get(target, default)
        await handler(_Replay(head, reader), writer)  # type: ignore[arg-type]

    return route


def stream_forever(chunk: bytes = b"x" * 65536) -> Handler:
    """A chunked 200 whose body never ends (as long as anyone reads it)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        while True:
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()

    return handler


def die_after_head(declared: int, sent: bytes) -> Handler:
    """A 200 announcing `declared` bytes that sends `sent` and drops the connection."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % declared + sent)
        await writer.drain()
        await asyncio.sleep(0.05)  # the edge has relayed the head before the break

    return handler


def in_flight(edge: EdgeServer, service: str) -> int:
    """Backend slots of `service` taken right now, over all its backends."""
    return sum(slot.in_flight for slot in edge.dispatcher.pools[service].slots)


async def eventually(check: Callable[[], bool], timeout: float = 3.0, what: str = "") -> None:
    """Wait until `check()` holds; fail the test after `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what or check}") from None


@dataclass
class H3Exchange:
    """What one request stream saw from the edge."""

    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    reset: int | None = None  # RESET_STREAM error code
    done: asyncio.Event = field(default_factory=asyncio.Event)  # FIN or reset

    @property
    def status(self) -> bytes | None:
        return self.headers.get(b":status")


class H3Client(QuicConnectionProtocol):
    """aioquic's HTTP/3 client; `stalled` drops every datagram (a client gone silent)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.h3 = H3Connection(self._quic)
        self.stalled = False
        self.exchanges: dict[int, H3Exchange] = {}
        self.control_data = bytearray()  # the edge's control stream, raw (GOAWAY lives here)

    def request(self, method: str, path: str, body: bytes | None = None) -> int:
        sid = self._quic.get_next_available_stream_id()
        headers = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", b"localhost"),
            (b":path", path.encode()),
        ]
        self.h3.send_headers(sid, headers, end_stream=body is None)
        if body is not None:
            self.h3.send_data(sid, body, end_stream=True)
        self.exchanges[sid] = H3Exchange()
        self.transmit()
        return sid

    async def fetch(self, method: str, path: str, timeout: float = 5.0) -> H3Exchange:
        sid = self.request(method, path)
        exchange = self.exchanges[sid]
        async with asyncio.timeout(timeout):
            await exchange.done.wait()
        return exchange

    def stop_sending(self, sid: int, error_code: int = 0x10C) -> None:
        self._quic.stop_stream(sid, error_code)
        self.transmit()

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        if not self.stalled:
            super().datagram_received(data, addr)

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamReset) and event.stream_id in self.exchanges:
            exchange = self.exchanges[event.stream_id]
            exchange.reset = event.error_code
            exchange.done.set()
            return
        if isinstance(event, StreamDataReceived) and event.stream_id == EDGE_CONTROL_STREAM:
            self.control_data += event.data
        for h3_event in self.h3.handle_event(event):
            exchange = self.exchanges.get(getattr(h3_event, "stream_id", -1))
            if exchange is None:
                continue
            if isinstance(h3_event, HeadersReceived):
                exchange.headers.update(dict(h3_event.headers))
            elif isinstance(h3_event, DataReceived):
                exchange.body.extend(h3_event.data)
            if getattr(h3_event, "stream_ended", False):
                exchange.done.set()


def h3_configuration(edge: EdgeServer) -> QuicConfiguration:
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=["h3"], server_name="localhost"
    )
    configuration.load_verify_locations(str(edge.ca_certificate))
    return configuration


@asynccontextmanager
async def h3_client(edge: EdgeServer) -> AsyncIterator[H3Client]:
    async with connect(
        "127.0.0.1", edge.port, configuration=h3_configuration(edge), create_protocol=H3Client
    ) as client:
        yield client  # type: ignore[misc]
        with contextlib.suppress(Exception):
            client.stalled = False


@dataclass
class RawExchange:
    """Raw bytes one stream received, and how it ended."""

    data: bytearray = field(default_factory=bytearray)
    reset: int | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)  # FIN or reset

    def head(self) -> ResponseHead | None:
        reader = HeadReader("response")
        head, _ = reader.feed(bytes(self.data))
        return head


class RawClient(QuicConnectionProtocol):
    """A bare QUIC client speaking netsched/1 by hand: it writes whatever bytes a test
    wants (half a head, a body without FIN) and records what each stream got back."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.exchanges: dict[int, RawExchange] = {}

    def open(self, data: bytes, *, end_stream: bool = False) -> int:
        sid = self._quic.get_next_available_stream_id()
        self.exchanges[sid] = RawExchange()
        self.send(sid, data, end_stream=end_stream)
        return sid

    def open_at(self, sid: int, data: bytes, *, end_stream: bool = False) -> int:
        """Write on stream `sid` whatever lower streams are still unused (out of order)."""
        self.exchanges[sid] = RawExchange()
        self.send(sid, data, end_stream=end_stream)
        return sid

    def reset(self, sid: int, error_code: int = 0x0) -> None:
        self._quic.reset_stream(sid, error_code)
        self.transmit()

    def send(self, sid: int, data: bytes, *, end_stream: bool = False) -> None:
        self._quic.send_stream_data(sid, data, end_stream)
        self.transmit()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamReset | StreamDataReceived):
            exchange = self.exchanges.get(event.stream_id)
            if exchange is None:
                return
            if isinstance(event, StreamReset):
                exchange.reset = event.error_code
                exchange.done.set()
                return
            exchange.data += event.data
            if event.end_stream:
                exchange.done.set()


@asynccontextmanager
async def raw_client(edge: EdgeServer, alpn: str = "netsched/1") -> AsyncIterator[RawClient]:
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=[alpn], server_name="localhost"
    )
    configuration.load_verify_locations(str(edge.ca_certificate))
    async with connect(
        "127.0.0.1", edge.port, configuration=configuration, create_protocol=RawClient
    ) as client:
        yield client  # type: ignore[misc]


async def finished(exchange: RawExchange | H3Exchange, timeout: float) -> float:
    """Wait for the stream to end; the seconds it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(timeout):
        await exchange.done.wait()
    return loop.time() - started
