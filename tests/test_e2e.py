"""Client → edge → each backend kind, over real QUIC on loopback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support import http_backend, service

from netsched_client import (
    SLO,
    DeadlineExceeded,
    NegotiationError,
    NoBackend,
    ServiceNotFound,
    Status,
)
from netsched_edge.config import BackendConfig
from netsched_edge.demo_backends import DemoHTTPServer, TCPEchoServer, UDPEchoServer


async def test_http_backend_round_trip(start_server, start_edge, open_client) -> None:
    port = await start_server(DemoHTTPServer("b1", base_ms=1, cold_ms=1))
    edge = await start_edge(service("api", http_backend("b1", port)))
    session = await open_client(edge, slo=SLO(deadline_ms=2000))
    assert session.alpn == "netsched/1"
    response = await session.request("api", b"ping", slo=SLO(urgency=1, affinity="u1"))
    assert response.status == Status.OK
    assert response.body == b"ping"
    assert response.backend == "b1"
    assert response.backend_ms is not None and response.backend_ms > 0
    assert response.latency_ms >= response.backend_ms


async def test_tcp_udp_and_static_backends(
    start_server, start_edge, open_client, www: Path
) -> None:
    tcp_port = await start_server(TCPEchoServer())
    udp_port = await start_server(UDPEchoServer())
    edge = await start_edge(
        service("tcp", BackendConfig(name="t", kind="tcp", host="127.0.0.1", port=tcp_port)),
        service("udp", BackendConfig(name="u", kind="udp", host="127.0.0.1", port=udp_port)),
        service("files", BackendConfig(name="f", kind="static", root=www), max_body=4 << 20),
    )
    session = await open_client(edge)
    assert (await session.request("tcp", b"over tcp")).body == b"over tcp"
    assert (await session.request("udp", b"over udp")).body == b"over udp"
    response = await session.request("files", meta={"method": "GET", "path": "/hello.txt"})
    assert response.body == b"hello from the edge\n"
    big = await session.request("files", meta={"method": "GET", "path": "/big.bin"})
    assert big.body == (www / "big.bin").read_bytes()


async def test_streaming_request_through_tcp(start_server, start_edge, open_client) -> None:
    port = await start_server(TCPEchoServer())
    edge = await start_edge(
        service("pipe", BackendConfig(name="t", kind="tcp", host="127.0.0.1", port=port))
    )
    session = await open_client(edge)
    stream = await session.open_stream("pipe")
    head = await stream.response()
    assert head.status == Status.OK and head.backend == "t"
    chunks = [bytes([i]) * 1000 for i in range(50)]
    for chunk in chunks:
        await stream.write(chunk)
    echoed = await stream.read(1000)
    assert echoed and chunks[0].startswith(echoed)  # data flows before the request ends
    stream.write_eof()
    rest = await stream.read()
    assert echoed + rest == b"".join(chunks)


async def test_datagrams_relay_to_udp_service(start_server, start_edge, open_client) -> None:
    port = await start_server(UDPEchoServer())
    edge = await start_edge(
        service("dg", BackendConfig(name="u", kind="udp", host="127.0.0.1", port=port))
    )
    session = await open_client(edge)
    received: set[bytes] = set()
    for attempt in range(20):  # datagrams are unreliable: resend until echoed
        session.send_datagram("dg", b"tick-%d" % attempt)
        try:
            async with asyncio.timeout(0.5):
                service_name, payload = await session.receive_datagram()
        except TimeoutError:
            continue
        assert service_name == "dg"
        received.add(payload)
        if len(received) >= 3:
            break
    assert len(received) >= 3 and all(p.startswith(b"tick-") for p in received)


async def test_deadline_exceeded_gets_504(start_server, start_edge, open_client) -> None:
    port = await start_server(DemoHTTPServer("slow", base_ms=400, cold_ms=0))
    edge = await start_edge(service("api", http_backend("slow", port)))
    session = await open_client(edge)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(DeadlineExceeded) as info:
        await session.request("api", b"x", slo=SLO(deadline_ms=60))
    assert info.value.status == Status.DEADLINE_EXCEEDED
    assert loop.time() - started < 0.35  # answered at the deadline, not after the backend
    # The connection's other requests are unaffected.
    assert (await session.request("api", b"ok")).body == b"ok"


async def test_connection_default_slo_from_transport_parameter(
    start_server, start_edge, open_client
) -> None:
    port = await start_server(DemoHTTPServer("slow", base_ms=400, cold_ms=0))
    edge = await start_edge(service("api", http_backend("slow", port)))
    session = await open_client(edge, slo=SLO(deadline_ms=50))
    with pytest.raises(DeadlineExceeded):
        await session.request("api", b"x")  # no per-request SLO: the connection default applies
    # A per-request objective overrides the connection default.
    assert (await session.request("api", b"y", slo=SLO(deadline_ms=5000))).body == b"y"


async def test_unknown_service_and_no_backend(start_edge, open_client, unused_udp_port) -> None:
    dead = BackendConfig(name="dead", kind="tcp", host="127.0.0.1", port=unused_udp_port)
    edge = await start_edge(service("gone", dead, retries=0))
    session = await open_client(edge)
    with pytest.raises(ServiceNotFound):
        await session.request("nope", b"")
    with pytest.raises((NoBackend, Exception)) as info:
        await session.request("gone", b"", slo=SLO(idempotent=True))
    assert getattr(info.value, "status", None) in (Status.NO_BACKEND, Status.BACKEND_ERROR)


async def test_server_without_common_alpn(start_edge, open_client) -> None:
    edge = await start_edge(alpn=("hq-interop",))
    with pytest.raises(NegotiationError):
        await open_client(edge)


async def test_fallback_to_h3(start_server, start_edge, open_client) -> None:
    port = await start_server(DemoHTTPServer("b1", base_ms=1, cold_ms=1))
    edge = await start_edge(service("api", http_backend("b1", port)), alpn=("h3",))
    session = await open_client(edge)
    assert session.alpn == "h3"
    response = await session.request("api", b"via h3", slo=SLO(deadline_ms=2000, urgency=2))
    assert (response.status, response.body, response.backend) == (200, b"via h3", "b1")
    # Later requests need the QPACK state the server set up during the handshake.
    for i in range(3):
        assert (await session.request("api", b"again %d" % i)).body == b"again %d" % i
    bodies = await asyncio.gather(*(session.request("api", b"c%d" % i) for i in range(3)))
    assert [r.body for r in bodies] == [b"c0", b"c1", b"c2"]


async def test_retry_validates_address_then_serves(start_server, start_edge, open_client) -> None:
    port = await start_server(DemoHTTPServer("b1", base_ms=1, cold_ms=1))
    edge = await start_edge(service("api", http_backend("b1", port)), retry=True)
    session = await open_client(edge)
    assert (await session.request("api", b"after retry")).body == b"after retry"


async def test_plain_udp_service_through_the_forwarder(start_server, start_edge) -> None:
    ports = [await start_server(UDPEchoServer()) for _ in range(2)]
    backends = [
        BackendConfig(name=f"u{i}", kind="udp", host="127.0.0.1", port=p)
        for i, p in enumerate(ports)
    ]
    edge = await start_edge(service("dns", *backends, udp_listen=("127.0.0.1", 0)))
    front = edge.udp_fronts["dns"].local_address
    loop = asyncio.get_running_loop()
    received: asyncio.Queue[bytes] = asyncio.Queue()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            received.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=front)
    try:
        for i in range(20):
            transport.sendto(b"q%d" % i)
        answers = {await asyncio.wait_for(received.get(), 5) for _ in range(20)}
        assert answers == {b"q%d" % i for i in range(20)}
    finally:
        transport.close()
