"""Issue #14, item 6: metrics and readiness, scraped from the admin endpoint of a running
edge (real HTTP/1.1, real QUIC clients, real backends): request latency per service,
queue and in-flight gauges, backend health, process metrics, and a /readyz that says why."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import http_backend, service

from netsched_client import SLO
from netsched_client.errors import ServiceNotFound
from netsched_edge.config import HealthConfig
from netsched_edge.demo_backends import DemoHTTPServer

# Checks every 100 ms; one failed check ejects for 30 s (longer than any test).
FAST_CHECKS = HealthConfig(interval_s=0.1, timeout_s=0.1, unhealthy_after=1, ejection_s=30)


async def _get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


async def _scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, labels) → value, from the admin endpoint's /metrics."""
    status, body = await _get(port, "/metrics")
    assert status == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


async def _until(predicate, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.05)


async def test_request_latency_per_service_and_process_metrics(
    start_server, start_edge, open_client
) -> None:
    port = await start_server(DemoHTTPServer("b1", base_ms=30, cold_ms=0))
    edge = await start_edge(
        service("api", http_backend("b1", port)), admin_host="127.0.0.1", admin_port=0
    )
    session = await open_client(edge)
    for _ in range(3):
        await session.request("api", b"x", slo=SLO(deadline_ms=5000))
    with pytest.raises(ServiceNotFound):
        await session.request("nowhere", b"x")

    async def counted() -> bool:  # a request is counted when its task ends, after its answer
        samples = await _scrape(edge.admin_port)
        name = "netsched_edge_request_seconds_count"
        return (name, frozenset({("service", "_unknown")})) in samples

    await _until(counted)
    samples = await _scrape(edge.admin_port)
    assert _value(samples, "netsched_edge_request_seconds_count", service="api") == 3
    total = _value(samples, "netsched_edge_request_seconds_sum", service="api")
    assert 3 * 0.025 <= total < 3 * 5  # each waited for the 30 ms backend
    fast = _value(samples, "netsched_edge_request_seconds_bucket", service="api", le="0.02")
    assert fast == 0
    assert _value(samples, "netsched_edge_request_seconds_count", service="_unknown") == 1
    assert _value(samples, "process_resident_memory_bytes") > 10 << 20
    assert _value(samples, "process_open_fds") > 3
    assert _value(samples, "process_cpu_seconds_total") > 0


async def test_queue_and_in_flight_gauges(start_server, start_edge, open_client) -> None:
    port = await start_server(DemoHTTPServer("slow", base_ms=1500, cold_ms=0))
    edge = await start_edge(
        service("api", http_backend("slow", port, max_in_flight=1)),
        admin_host="127.0.0.1",
        admin_port=0,
    )
    session = await open_client(edge)
    first = asyncio.create_task(session.request("api", b"1"))
    second = asyncio.create_task(session.request("api", b"2"))

    async def both_in() -> bool:
        samples = await _scrape(edge.admin_port)
        return _value(samples, "netsched_edge_queued_requests", service="api") == 1

    await _until(both_in)
    samples = await _scrape(edge.admin_port)
    assert _value(samples, "netsched_edge_backend_in_flight", service="api", backend="slow") == 1
    assert _value(samples, "netsched_edge_requests_in_flight") == 2
    assert [(await first).status, (await second).status] == [200, 200]

    async def all_done() -> bool:  # the tasks end just after their answers
        return _value(await _scrape(edge.admin_port), "netsched_edge_requests_in_flight") == 0

    await _until(all_done)
    samples = await _scrape(edge.admin_port)
    assert _value(samples, "netsched_edge_backend_in_flight", service="api", backend="slow") == 0
    assert _value(samples, "netsched_edge_queued_requests", service="api") == 0


async def test_backend_health_gauges_and_readyz_says_why(start_server, start_edge) -> None:
    good = await start_server(DemoHTTPServer("good", base_ms=1, cold_ms=0))
    dying = DemoHTTPServer("dying", base_ms=1, cold_ms=0)
    dying_port = await start_server(dying)
    lonely = DemoHTTPServer("lonely", base_ms=1, cold_ms=0)
    lonely_port = await start_server(lonely)
    edge = await start_edge(
        service("api", http_backend("good", good), http_backend("dying", dying_port)),
        service("solo", http_backend("lonely", lonely_port), health=FAST_CHECKS),
        admin_host="127.0.0.1",
        admin_port=0,
    )
    assert await _get(edge.admin_port, "/readyz") == (200, "ready\n")
    samples = await _scrape(edge.admin_port)
    assert _value(samples, "netsched_edge_backend_healthy", service="api", backend="dying") == 1

    await lonely.stop()  # its checks fail from now on: "solo" has no backend left

    async def ejected() -> bool:
        samples = await _scrape(edge.admin_port)
        return (
            _value(samples, "netsched_edge_backend_healthy", service="solo", backend="lonely") == 0
        )

    await _until(ejected)
    samples = await _scrape(edge.admin_port)
    assert _value(samples, "netsched_edge_backend_healthy", service="api", backend="good") == 1
    assert (
        _value(samples, "netsched_edge_backend_ejections_total", service="solo", backend="lonely")
        == 1
    )
    status, body = await _get(edge.admin_port, "/readyz")
    assert status == 503
    (line,) = body.splitlines()  # "api" still has backends: only "solo" is named
    assert line.startswith(
        "not ready: service solo: no healthy backend (lonely ejected after failed health checks, "
    ), line
    assert line.endswith(" s left), panic: routing to all of them")

    edge.draining = True  # what a drain sets first
    assert await _get(edge.admin_port, "/readyz") == (503, "not ready: draining\n")
