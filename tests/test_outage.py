"""Outages on real sockets: a session outlives a dark path, whatever piled up meanwhile."""

from __future__ import annotations

import asyncio

from support import http_backend, service

from netsched_client import SLO, DeadlineExceeded
from netsched_edge.demo_backends import DemoHTTPServer
from netsched_lab.impairment import LinkSpec, PathProfile
from netsched_lab.relay import UdpRelay

STREAM_LIMIT = 128  # what the edge (aioquic) lets a client open at first


async def test_requests_beyond_the_stream_limit_during_an_outage_cost_nothing(
    start_edge, start_server, open_client, stack
) -> None:
    """The app keeps asking while the only path is dark; each request ends at its deadline.
    Requests past the edge's stream limit never had a stream on the wire: they must not
    reset one either (RESET_STREAM for a stream the peer never allowed is
    STREAM_LIMIT_ERROR, and the edge closed the connection for it)."""
    port = await start_server(DemoHTTPServer("echo", base_ms=1, cold_ms=0))
    edge = await start_edge(service("echo", http_backend("echo", port)))
    link = LinkSpec(delay_ms=5)
    relay = UdpRelay(("127.0.0.1", edge.port), default=PathProfile(up=link, down=link))
    _, relay_port = await relay.start()
    stack.push_async_callback(relay.stop)
    session = await open_client(edge, port=relay_port)
    assert (await session.request("echo", b"before")).body == b"before"

    relay.blackhole("127.0.0.1")
    short = SLO(deadline_ms=100)
    asks = [session.request("echo", b"x", slo=short) for _ in range(STREAM_LIMIT + 72)]
    results = await asyncio.gather(*asks, return_exceptions=True)
    assert all(isinstance(r, DeadlineExceeded) for r in results), {type(r) for r in results}
    await asyncio.sleep(0.5)
    relay.restore("127.0.0.1")

    response = await session.request("echo", b"after", slo=SLO(deadline_ms=5_000))
    assert response.body == b"after"
    assert not session.closed
