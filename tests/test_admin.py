"""The edge's admin endpoint over real HTTP/1.1: /metrics, /livez, /readyz."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from support import http_backend, service
from udp_support import udp_pool

from netsched_edge.admin import AdminServer
from netsched_edge.config import HealthConfig
from netsched_edge.demo_backends import DemoHTTPServer, UDPEchoServer
from netsched_edge.metrics import EdgeMetrics
from netsched_edge.udp_front import UdpFront


async def _get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_metrics_health_and_readiness(start_server, start_edge, open_client) -> None:
    backend = DemoHTTPServer("b1", base_ms=1, cold_ms=0)
    port = await start_server(backend)
    edge = await start_edge(
        service("api", http_backend("b1", port)), admin_host="127.0.0.1", admin_port=0
    )
    assert edge.admin_port
    session = await open_client(edge, paths=["127.0.0.1", "127.0.0.2"])
    await session.request("api", b"x")
    status, body = await _get(edge.admin_port, "/metrics")
    assert status == 200
    assert b'netsched_edge_responses_total{service="api",status="200"} 1.0' in body
    assert b"netsched_edge_paths_opened_total 1.0" in body
    assert await _get(edge.admin_port, "/livez") == (200, b"ok\n")
    assert (await _get(edge.admin_port, "/readyz"))[0] == 200
    assert (await _get(edge.admin_port, "/nope"))[0] == 404


async def test_forwarder_counters_on_metrics(stack: AsyncExitStack) -> None:
    echo = UDPEchoServer()
    backend_port = await echo.start()
    stack.push_async_callback(echo.stop)
    metrics = EdgeMetrics()
    front = UdpFront(
        udp_pool("dns", {"u0": backend_port}, HealthConfig()), ("127.0.0.1", 0), metrics=metrics
    )
    stack.callback(front.close)
    admin = AdminServer(metrics.exposition, lambda: [])
    port = await admin.start("127.0.0.1", 0)
    stack.push_async_callback(admin.close)
    replies: asyncio.Queue[bytes] = asyncio.Queue()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            replies.put_nowait(data)

    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        Client, remote_addr=front.local_address
    )
    stack.callback(transport.close)
    for i in range(5):
        transport.sendto(b"%03d" % i * 25)  # 75 bytes
    for _ in range(5):
        await asyncio.wait_for(replies.get(), 10)

    status, body = await _get(port, "/metrics")

    assert status == 200
    values = _samples(body, "netsched_edge_forwarder_")
    for direction in ("from_clients", "to_backends", "from_backends", "to_clients"):
        assert values[f'datagrams_total{{direction="{direction}",service="dns"}}'] == 5
        assert values[f'bytes_total{{direction="{direction}",service="dns"}}'] == 5 * 75
    assert values['flows_active{service="dns"}'] == 1
    assert values['flows_opened_total{service="dns"}'] == 1
    assert values['flows_closed_total{reason="idle",service="dns"}'] == 0
    assert values['dropped_datagrams_total{reason="table_full",service="dns"}'] == 0
    assert values['backend_failures_total{backend="u0",reason="silent",service="dns"}'] == 0
    assert values['syscalls_total{op="send",service="dns"}'] >= 2  # batches, not datagrams
    assert 0 < values['syscalls_per_datagram{service="dns"}'] <= 2  # one call each way at most

    front.close()  # a closed front's counters leave the exposition
    assert "dns" not in (await _get(port, "/metrics"))[1].decode()


def _samples(body: bytes, prefix: str) -> dict[str, float]:
    """name{labels} → value of the exposition's samples whose name starts with `prefix`."""
    samples = {}
    for line in body.decode().splitlines():
        if line.startswith(prefix):
            name, _, value = line.rpartition(" ")
            samples[name.removeprefix(prefix)] = float(value)
    return samples
