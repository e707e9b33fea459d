"""The edge's admin endpoint over real HTTP/1.1: /metrics, /livez, /readyz."""

from __future__ import annotations

import asyncio

from support import http_backend, service

from netsched_edge.demo_backends import DemoHTTPServer


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
