"""Other clients against the edge: aioquic's own HTTP/3 and raw QUIC clients."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgpack
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent
from support import http_backend, service

from netsched_client.proto.framing import HeadReader, ResponseHead
from netsched_edge.demo_backends import DemoHTTPServer


def _config(edge, alpn: str) -> QuicConfiguration:
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=[alpn], server_name="localhost"
    )
    configuration.load_verify_locations(str(edge.ca_certificate))
    return configuration


class H3Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.responses: dict[int, asyncio.Future[tuple[dict[bytes, bytes], bytes]]] = {}
        self._partial: dict[int, tuple[dict[bytes, bytes], bytearray]] = {}

    async def post(
        self, path: str, body: bytes, headers: list[tuple[bytes, bytes]]
    ) -> tuple[dict[bytes, bytes], bytes]:
        sid = self._quic.get_next_available_stream_id()
        self.h3.send_headers(
            sid,
            [
                (b":method", b"POST"),
                (b":scheme", b"https"),
                (b":authority", b"localhost"),
                (b":path", path.encode()),
                *headers,
            ],
        )
        self.h3.send_data(sid, body, end_stream=True)
        self.responses[sid] = asyncio.get_running_loop().create_future()
        self.transmit()
        return await asyncio.wait_for(self.responses[sid], 10)

    def quic_event_received(self, event: QuicEvent) -> None:
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                self._partial[h3_event.stream_id] = (dict(h3_event.headers), bytearray())
            elif isinstance(h3_event, DataReceived):
                self._partial[h3_event.stream_id][1].extend(h3_event.data)
            if getattr(h3_event, "stream_ended", False):
                headers, body = self._partial.pop(h3_event.stream_id)
                self.responses[h3_event.stream_id].set_result((headers, bytes(body)))


async def test_aioquic_h3_client_through_edge(start_server, start_edge) -> None:
    port = await start_server(DemoHTTPServer("b1", base_ms=1, cold_ms=1))
    edge = await start_edge(service("api", http_backend("b1", port)))
    async with connect(
        "127.0.0.1", edge.port, configuration=_config(edge, "h3"), create_protocol=H3Client
    ) as client:
        headers, body = await client.post("/api", b"plain h3", [(b"priority", b"u=1")])
        assert headers[b":status"] == b"200"
        assert headers[b"netsched-backend"] == b"b1"
        assert body == b"plain h3"
        # A bad SLO header is refused with 422 and a reason; the connection goes on.
        headers, _ = await client.post("/api", b"", [(b"netsched-slo", b"!!not-base64!!")])
        assert headers[b":status"] == b"422"
        assert b"slo" in headers[b"netsched-message"].lower()
        headers, body = await client.post("/api", b"again", [])
        assert (headers[b":status"], body) == (b"200", b"again")


async def test_hq_interop_file_transfer(start_edge, www: Path) -> None:
    edge = await start_edge(www=www)
    async with connect("127.0.0.1", edge.port, configuration=_config(edge, "hq-interop")) as client:
        for name in ("hello.txt", "big.bin"):
            reader, writer = await client.create_stream()
            writer.write(f"GET /{name}\r\n".encode())
            writer.write_eof()
            data = await asyncio.wait_for(reader.read(), 10)
            assert data == (www / name).read_bytes()


def _raw_request(head_map: dict[str, object], body: bytes = b"") -> bytes:
    packed = msgpack.packb(head_map)
    return encode_uint_var(len(packed)) + packed + body


async def _raw_exchange(client: QuicConnectionProtocol, data: bytes) -> tuple[ResponseHead, bytes]:
    reader, writer = await client.create_stream()
    writer.write(data)
    writer.write_eof()
    raw = await asyncio.wait_for(reader.read(), 10)
    head, rest = HeadReader("response").feed(raw)
    assert head is not None
    return head, rest


async def test_bad_slo_metadata_rejected_others_unaffected(start_server, start_edge) -> None:
    port = await start_server(DemoHTTPServer("b1", base_ms=20, cold_ms=0))
    edge = await start_edge(service("api", http_backend("b1", port)))
    async with connect("127.0.0.1", edge.port, configuration=_config(edge, "netsched/1")) as client:
        good = asyncio.create_task(
            _raw_exchange(client, _raw_request({"v": 1, "svc": "api"}, b"fine"))
        )
        bad_slo = await _raw_exchange(
            client, _raw_request({"v": 1, "svc": "api", "slo": {"v": 1, "u": 9}})
        )
        assert bad_slo[0].status == 422 and "urgency" in bad_slo[0].message
        bad_head = await _raw_exchange(client, b"\x05\xff\xff\xff\xff\xff")
        assert bad_head[0].status == 400
        head, body = await good
        assert (head.status, body) == (200, b"fine")
