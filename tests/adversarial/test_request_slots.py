"""Backend slots come back on every path a request can end by (issue #12, fault 1).

Real edge, real TCP backends, real QUIC clients (the SDK over netsched/1, aioquic's
HTTP/3 client). Each service has one backend slot (`max_in_flight = 1`), so a
leaked slot shows as `in_flight` stuck at 1 and every later request stuck behind it.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
from request_support import (
    RawBackend,
    by_path,
    eventually,
    h3_client,
    in_flight,
    stall,
    stream_forever,
)
from support import http_backend, service

from netsched_client import SLO, BackendFailed
from netsched_edge.config import BackendConfig


@pytest.fixture
def no_cyclic_gc() -> Iterator[None]:
    """Only reference counting frees objects: nothing may wait for the cyclic collector."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def _api(start_server, start_edge, handler=None):
    backend = RawBackend(handler or by_path({b"/stall": stall, b"/forever": stream_forever()}))
    port = await start_server(backend)
    edge = await start_edge(service("api", http_backend("b1", port, max_in_flight=1)))
    return edge


async def _ok(session) -> None:
    response = await session.request(
        "api", meta={"method": "GET", "path": "/ok"}, slo=SLO(deadline_ms=2000)
    )
    assert response.body == b"ok"


async def test_native_streams_aborted_before_the_head_free_their_slot(
    start_server, start_edge, open_client, no_cyclic_gc
) -> None:
    edge = await _api(start_server, start_edge)
    session = await open_client(edge)
    for _ in range(2):
        stream = await session.open_stream("api", meta={"method": "POST", "path": "/stall"})
        await stream.write(b"hello")
        await eventually(lambda: in_flight(edge, "api") == 1, what="the backend was asked")
        stream.abort()
        await eventually(lambda: in_flight(edge, "api") == 0, what="slot back after the abort")
    await _ok(session)


async def test_h3_stop_sending_frees_the_slot(start_server, start_edge, no_cyclic_gc) -> None:
    edge = await _api(start_server, start_edge)
    async with h3_client(edge) as client:
        for _ in range(2):
            sid = client.request("GET", "/api/stall")
            await eventually(lambda: in_flight(edge, "api") == 1, what="the backend was asked")
            client.stop_sending(sid)
            await eventually(lambda: in_flight(edge, "api") == 0, what="slot back on STOP_SENDING")
        exchange = await client.fetch("GET", "/api/ok")
        assert (exchange.status, bytes(exchange.body)) == (b"200", b"ok")


async def test_a_backend_raising_any_error_frees_the_slot(
    start_server, start_edge, open_client, no_cyclic_gc
) -> None:
    edge = await _api(start_server, start_edge)
    session = await open_client(edge)
    for _ in range(2):
        # A method the backend may not take: the HTTP backend raises ValueError.
        stream = await session.open_stream("api", method="CONNECT")
        stream.write_eof()
        with pytest.raises(BackendFailed):
            await asyncio.wait_for(stream.response(), 3)
        assert in_flight(edge, "api") == 0
    await _ok(session)


async def test_an_overlong_static_name_is_a_404_and_frees_the_slot(
    start_edge, tmp_path: Path, no_cyclic_gc
) -> None:
    edge = await start_edge(
        service("files", BackendConfig(name="f", kind="static", root=tmp_path, max_in_flight=1))
    )
    async with h3_client(edge) as client:
        for _ in range(2):
            exchange = await client.fetch("GET", "/files/" + "a" * 300)
            assert exchange.status == b"404"
        assert in_flight(edge, "files") == 0


async def test_a_slow_client_that_leaves_frees_the_slot(
    start_server, start_edge, no_cyclic_gc
) -> None:
    edge = await _api(start_server, start_edge)
    async with h3_client(edge) as client:
        client.stalled = True  # acknowledges nothing: the edge's writer waits
        client.request("GET", "/api/forever")
        await eventually(lambda: in_flight(edge, "api") == 1, what="the backend streams")
        assert len(edge.connections) == 1
        await asyncio.sleep(0.3)  # the writer is parked waiting for acknowledgements
        client.close()  # the client leaves
        await eventually(lambda: not edge.connections, what="the edge saw the close")
    await eventually(lambda: in_flight(edge, "api") == 0, what="slot back when the client left")
