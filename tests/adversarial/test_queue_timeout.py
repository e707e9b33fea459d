"""A request without a deadline must not wait in a service queue forever.

A real edge, a real HTTP backend that holds its only slot, and the client SDK
over QUIC on loopback: the queued request gets 503 once the service's queue
timeout (limits.queue_timeout_s; set on the running pool here to keep the
test short) has passed, while the request holding the slot completes.
"""

from __future__ import annotations

import asyncio

from support import http_backend, service

from netsched_client import SLO, NetSchedError
from netsched_edge.demo_backends import DemoHTTPServer

QUEUE_TIMEOUT = 0.3


async def test_a_request_without_deadline_leaves_the_queue_with_503(
    start_server, start_edge, open_client
) -> None:
    port = await start_server(DemoHTTPServer("slow", base_ms=1500, cold_ms=0))
    edge = await start_edge(service("api", http_backend("slow", port, max_in_flight=1)))
    pool = edge.dispatcher.pools["api"]
    assert pool.queue_timeout_s == 10.0  # [limits] queue_timeout_s's default
    pool.queue_timeout_s = QUEUE_TIMEOUT
    session = await open_client(edge)

    holder = asyncio.create_task(session.request("api", b"first"))
    async with asyncio.timeout(5):
        while not any(slot.in_flight for slot in pool.slots):
            await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await session.request("api", b"second", slo=SLO(deadline_ms=None))
    except NetSchedError as exc:
        assert getattr(exc, "status", None) == 503
        assert "queue_timeout_s" in str(exc)
    else:
        raise AssertionError("expected 503 from the queue timeout")
    waited = loop.time() - started
    assert QUEUE_TIMEOUT <= waited < 1.2  # not until the slot came free (1.5 s)

    assert (await holder).status == 200
    assert pool.queued == 0
    assert pool.queue_rejections == {"full": 0, "timeout": 1}
    metrics = edge.dispatcher.metrics
    sample = metrics.registry.get_sample_value
    labels = {"service": "api", "reason": "timeout"}
    assert sample("netsched_edge_queue_rejections_total", labels) == 1
    assert sample("netsched_edge_queued_requests", {"service": "api"}) == 0


async def test_a_deadline_earlier_than_the_queue_timeout_still_answers_504(
    start_server, start_edge, open_client
) -> None:
    port = await start_server(DemoHTTPServer("slow", base_ms=1500, cold_ms=0))
    edge = await start_edge(service("api", http_backend("slow", port, max_in_flight=1)))
    session = await open_client(edge)
    holder = asyncio.create_task(session.request("api", b"first"))
    pool = edge.dispatcher.pools["api"]
    async with asyncio.timeout(5):
        while not any(slot.in_flight for slot in pool.slots):
            await asyncio.sleep(0.01)
    try:
        await session.request("api", b"second", slo=SLO(deadline_ms=200))
    except NetSchedError as exc:
        assert getattr(exc, "status", None) == 504
    else:
        raise AssertionError("expected 504")
    assert (await holder).status == 200
