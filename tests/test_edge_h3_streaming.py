"""HTTP/3 GET and HEAD through the edge are streamed, not collected up to max_body.

aioquic's own HTTP/3 client over real UDP on loopback: a 5 MB file from the
edge's www (interop issue #4: it was a 502), a large reverse-proxied GET, and a
client that stops acknowledging, against which the edge's send buffer stays
bounded.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress
from aioquic.quic.events import QuicEvent
from support import http_backend, service

from netsched_edge.server import EdgeServer, unacked_bytes

FILE_SIZE = 5_000_000  # well above the 1 MiB default max_body
Response = tuple[dict[bytes, bytes], bytes]


class H3Fetcher(QuicConnectionProtocol):
    """aioquic's HTTP/3 client; `stalled` drops what arrives (a client gone silent)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.h3 = H3Connection(self._quic)
        self.stalled = False
        self._responses: dict[int, asyncio.Future[Response]] = {}
        self._partial: dict[int, tuple[dict[bytes, bytes], bytearray]] = {}

    def request(self, method: str, path: str) -> tuple[int, asyncio.Future[Response]]:
        sid = self._quic.get_next_available_stream_id()
        headers = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", b"localhost"),
            (b":path", path.encode()),
        ]
        self.h3.send_headers(sid, headers, end_stream=True)  # bodyless, as browsers send it
        future = self._responses[sid] = asyncio.get_running_loop().create_future()
        self.transmit()
        return sid, future

    async def fetch(self, method: str, path: str) -> Response:
        _, future = self.request(method, path)
        return await asyncio.wait_for(future, 30)

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        if not self.stalled:
            super().datagram_received(data, addr)

    def quic_event_received(self, event: QuicEvent) -> None:
        for h3_event in self.h3.handle_event(event):
            sid = getattr(h3_event, "stream_id", None)
            if isinstance(h3_event, HeadersReceived):
                self._partial[h3_event.stream_id] = (dict(h3_event.headers), bytearray())
            elif isinstance(h3_event, DataReceived):
                self._partial[h3_event.stream_id][1].extend(h3_event.data)
            if getattr(h3_event, "stream_ended", False) and sid in self._partial:
                headers, body = self._partial.pop(sid)
                self._responses[sid].set_result((headers, bytes(body)))


@asynccontextmanager
async def h3_client(edge: EdgeServer) -> AsyncIterator[H3Fetcher]:
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=["h3"], server_name="localhost"
    )
    configuration.load_verify_locations(str(edge.ca_certificate))
    async with connect(
        "127.0.0.1", edge.port, configuration=configuration, create_protocol=H3Fetcher
    ) as client:
        yield client  # type: ignore[misc]


def _large_file(www: Path) -> bytes:
    data = os.urandom(FILE_SIZE)
    (www / "large.bin").write_bytes(data)
    return data


async def test_h3_get_of_a_large_file_streams_whole(start_edge, www: Path) -> None:
    data = _large_file(www)
    edge = await start_edge(www=www)
    async with h3_client(edge) as client:
        headers, body = await client.fetch("GET", "/www/large.bin")
        assert headers[b":status"] == b"200"
        assert len(body) == FILE_SIZE
        assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
        headers, body = await client.fetch("HEAD", "/www/large.bin")
        assert (headers[b":status"], body) == (b"200", b"")
        headers, _ = await client.fetch("GET", "/www/missing.bin")
        assert headers[b":status"] == b"404"


async def test_h3_get_is_proxied_bodyless_and_streamed(start_edge) -> None:
    heads: list[bytes] = []
    payload = os.urandom(3 << 20)

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(payload) + payload)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(backend, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        edge = await start_edge(service("files", http_backend("b1", port)))
        async with h3_client(edge) as client:
            headers, body = await client.fetch("GET", "/files/blob")
    finally:
        server.close()
    assert headers[b":status"] == b"200" and body == payload
    (head,) = [h.lower() for h in heads if h.startswith(b"GET /blob ")]  # not health checks
    # The request ended with its headers: the backend is told there is no body.
    assert b"content-length: 0\r\n" in head and b"transfer-encoding" not in head


async def test_send_buffer_stays_bounded_for_a_silent_client(start_edge, www: Path) -> None:
    data = _large_file(www)
    edge = await start_edge(www=www)
    async with h3_client(edge) as client:
        client.stalled = True  # from here on nothing is acknowledged
        sid, response = client.request("GET", "/www/large.bin")
        (connection,) = edge.connections
        quic = connection._driver.quic
        limit = edge.config.limits.max_stream_buffer

        async def filled() -> None:
            while unacked_bytes(quic, sid) < limit:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(filled(), 20)
        await asyncio.sleep(0.5)  # time enough to read the whole file, were it unbounded
        assert unacked_bytes(quic, sid) <= limit + 65536  # + one static chunk
        client.stalled = False  # the client's retransmission timer resumes the exchange
        headers, body = await asyncio.wait_for(response, 60)
    assert headers[b":status"] == b"200"
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
