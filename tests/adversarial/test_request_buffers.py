"""What one peer can make the edge hold is bounded (issue #12, fault 4: the request path).

Rejected requests leave no per-stream state behind; a request body the backend does
not read is cut at `[limits] max_stream_buffer`; over `[limits] memory_budget_mb`
of buffered request/response bytes the edge sheds new requests with 503 and
recovers once the bytes are gone. Real edge, real backends, real QUIC clients.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from request_support import (
    RawBackend,
    by_path,
    eventually,
    finished,
    h3_client,
    raw_client,
    stall,
    stream_forever,
)
from support import http_backend, service

from netsched_client import ConnectionLost, NoBackend
from netsched_client.errors import Status
from netsched_edge.config import LimitsConfig
from netsched_edge.server import EdgeServer

MALFORMED_HEAD = b"\x01\xc0"  # a 1-byte head holding msgpack nil: not a map, a 400


async def _edge(start_server, start_edge, **limits: int) -> EdgeServer:
    routes = {b"/forever": stream_forever(), b"/stall": stall}
    port = await start_server(RawBackend(by_path(routes)))
    edge: EdgeServer = await start_edge(
        service("api", http_backend("b1", port)), limits=replace(LimitsConfig(), **limits)
    )
    return edge


@pytest.mark.parametrize("with_fin", [True, False], ids=["with-fin", "without-fin"])
async def test_500_rejected_requests_leave_no_state(
    start_server, start_edge, with_fin: bool
) -> None:
    edge = await _edge(start_server, start_edge)
    async with raw_client(edge) as client:
        for _ in range(10):
            sids = [client.open(MALFORMED_HEAD, end_stream=with_fin) for _ in range(50)]
            for sid in sids:
                await finished(client.exchanges[sid], timeout=3)
                head = client.exchanges[sid].head()
                assert head is not None and head.status == Status.BAD_REQUEST
        (connection,) = edge.connections
        # Without FIN the client's stack answers our STOP_SENDING with a reset.
        await eventually(lambda: connection.tracked_streams == 0, what="per-stream state freed")
    rejected = edge.dispatcher.metrics.registry.get_sample_value(
        "netsched_edge_rejected_requests_total", {"status": "400"}
    )
    assert rejected == 500


async def test_a_request_body_nobody_reads_is_cut_at_the_stream_buffer(
    start_server, start_edge, open_client
) -> None:
    limit = 64 << 10
    edge = await _edge(start_server, start_edge, max_stream_buffer=limit)
    session = await open_client(edge)
    stream = await session.open_stream("api", meta={"method": "POST", "path": "/stall"})
    budget = edge.dispatcher.budget
    peak = 0
    with pytest.raises(ConnectionLost):
        for _ in range(256):  # 16 MiB at most: far more than any socket buffer takes
            await stream.write(b"u" * (64 << 10))
            peak = max(peak, budget.used)
            await asyncio.sleep(0.001)
        await asyncio.wait_for(stream.read(), 3)
    assert peak <= limit + (64 << 10)
    await eventually(lambda: budget.used == 0, what="the queued body no longer counts")


async def test_over_the_memory_budget_new_requests_are_shed_with_503(
    start_server, start_edge, open_client
) -> None:
    edge = await _edge(start_server, start_edge, memory_budget_mb=1, max_stream_buffer=2 << 20)
    session = await open_client(edge)
    async with h3_client(edge) as hog:
        hog.stalled = True  # acknowledges nothing: the edge holds up to 2 MiB for it
        hog.request("GET", "/api/forever")
        await eventually(lambda: edge.dispatcher.budget.over(), what="the budget filled")
        with pytest.raises(NoBackend) as caught:
            await session.request("api", meta={"method": "GET", "path": "/ok"})
        assert "memory budget" in str(caught.value)
        hog.close()
    await eventually(lambda: not edge.dispatcher.budget.over(), what="the bytes were let go")
    response = await session.request("api", meta={"method": "GET", "path": "/ok"})
    assert response.body == b"ok"
    assert edge.dispatcher.budget.used == 0


async def test_streams_reset_before_their_head_leave_no_state(start_server, start_edge) -> None:
    edge = await _edge(start_server, start_edge)
    async with raw_client(edge) as client:
        sids = [client.open(b"\x40") for _ in range(20)]  # the first byte of a 2-byte varint
        await asyncio.sleep(0.1)
        (connection,) = edge.connections
        assert connection.tracked_streams >= 20
        for sid in sids:
            client.reset(sid)
        await eventually(lambda: connection.tracked_streams == 0, what="per-stream state freed")
