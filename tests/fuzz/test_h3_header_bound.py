"""A 4 MiB HTTP/3 HEADERS frame against a real edge, over real UDP on loopback (issue #12, fault 4).

The client declares a 4 MiB header block and sends all of it but the last
byte, so an edge that buffers header blocks whole would hold 4 MiB for the
stream for as long as the client likes. The edge must refuse the stream from
the frame head (reset and STOP_SENDING with H3_EXCESSIVE_LOAD), keep almost
nothing for it, and go on serving the same connection and other clients.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import ErrorCode, H3Connection, Setting
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent, StopSendingReceived, StreamReset

from netsched_client.proto.h3 import DEFAULT_MAX_HEADER_BYTES
from netsched_edge.server import EdgeServer

BOMB = 4 << 20
RETAINED_LIMIT = 256 << 10  # what the edge's HTTP/3 layer may hold once the stream is refused


class H3Client(QuicConnectionProtocol):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.h3 = H3Connection(self._quic)
        self.resets: dict[int, int] = {}
        self.stops: dict[int, int] = {}
        self.changed = asyncio.Event()
        self._responses: dict[int, asyncio.Future[tuple[bytes, bytes]]] = {}
        self._bodies: dict[int, tuple[bytes, bytearray]] = {}

    def send_bomb(self) -> int:
        """A HEADERS frame declaring a 4 MiB block, all of which but the last byte is sent."""
        sid = self._quic.get_next_available_stream_id()
        head = encode_uint_var(0x1) + encode_uint_var(BOMB)
        self._quic.send_stream_data(sid, head + b"\x00\x00" + b"a" * (BOMB - 3))
        self.transmit()
        return sid

    async def get(self, path: str) -> tuple[bytes, bytes]:
        sid = self._quic.get_next_available_stream_id()
        headers = [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":authority", b"localhost"),
            (b":path", path.encode()),
        ]
        self.h3.send_headers(sid, headers, end_stream=True)
        future = self._responses[sid] = asyncio.get_running_loop().create_future()
        self.transmit()
        return await asyncio.wait_for(future, 20)

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamReset):
            self.resets[event.stream_id] = event.error_code
        elif isinstance(event, StopSendingReceived):
            self.stops[event.stream_id] = event.error_code
        self.changed.set()
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                status = dict(h3_event.headers)[b":status"]
                self._bodies[h3_event.stream_id] = (status, bytearray())
            elif isinstance(h3_event, DataReceived) and h3_event.stream_id in self._bodies:
                self._bodies[h3_event.stream_id][1].extend(h3_event.data)
            if getattr(h3_event, "stream_ended", False):
                sid = h3_event.stream_id  # type: ignore[union-attr]
                status, body = self._bodies.pop(sid)
                self._responses.pop(sid).set_result((status, bytes(body)))

    async def refused(self, sid: int, timeout: float) -> bool:
        """Wait until the edge both reset the stream and stopped reading it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (sid in self.resets and sid in self.stops):
            self.changed.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                return False
        return True


@asynccontextmanager
async def h3_client(edge: EdgeServer) -> AsyncIterator[H3Client]:
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=["h3"], server_name="localhost"
    )
    configuration.load_verify_locations(str(edge.ca_certificate))
    async with connect(
        "127.0.0.1", edge.port, configuration=configuration, create_protocol=H3Client
    ) as client:
        yield client  # type: ignore[misc]


def _retained_by_h3_layer() -> int:
    """Bytes allocated by aioquic's HTTP/3 module and still alive (its stream buffers)."""
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(True, "*aioquic/h3/connection.py")]
    )
    return sum(stat.size for stat in snapshot.statistics("filename"))


async def test_a_4_mib_headers_frame_is_refused_and_not_buffered(start_edge, www: Path) -> None:
    edge = await start_edge(www=www)
    tracemalloc.start()
    try:
        async with h3_client(edge) as client, h3_client(edge) as other:
            assert await client.get("/www/hello.txt") == (b"200", b"hello from the edge\n")
            settings = client.h3.received_settings or {}
            assert settings.get(Setting.MAX_FIELD_SECTION_SIZE) == DEFAULT_MAX_HEADER_BYTES
            before = _retained_by_h3_layer()
            sid = client.send_bomb()
            # An edge that buffered the block would take the whole 4 MiB in the meantime.
            refused = await client.refused(sid, timeout=8)
            await asyncio.sleep(0.3)  # what was in flight arrives, and is dropped
            retained = _retained_by_h3_layer() - before
            assert retained < RETAINED_LIMIT, f"{retained} bytes kept for the stream"
            assert refused, (client.resets, client.stops)
            assert client.resets[sid] == ErrorCode.H3_EXCESSIVE_LOAD
            assert client.stops[sid] == ErrorCode.H3_EXCESSIVE_LOAD
            # The same connection and another client are served as before.
            assert await client.get("/www/hello.txt") == (b"200", b"hello from the edge\n")
            assert await other.get("/www/hello.txt") == (b"200", b"hello from the edge\n")
    finally:
        tracemalloc.stop()
