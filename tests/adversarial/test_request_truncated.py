"""A backend that dies after the response head: the client must never see a short
success (issue #12, fault 5).

Once the head is out, the edge resets the stream: the SDK raises
`ResponseTruncated` (over netsched/1 and h3), aioquic's HTTP/3 client sees
RESET_STREAM with H3_INTERNAL_ERROR at once, not a stream hanging until the idle timeout.
"""

from __future__ import annotations

import asyncio

import pytest
from request_support import RawBackend, by_path, die_after_head, eventually, h3_client, in_flight
from support import http_backend, service

from netsched_client import BackendFailed
from netsched_client.errors import ResponseTruncated
from netsched_client.runtime.session import client_configuration

H3_INTERNAL_ERROR = 0x102
PART = b"p" * 100


async def _edge(start_server, start_edge):
    backend = RawBackend(by_path({b"/trunc": die_after_head(1000, PART)}))
    port = await start_server(backend)
    return await start_edge(service("api", http_backend("b1", port, max_in_flight=1)))


async def test_native_stream_truncated_after_the_head_raises(
    start_server, start_edge, open_client
) -> None:
    edge = await _edge(start_server, start_edge)
    session = await open_client(edge)
    stream = await session.open_stream("api", meta={"method": "GET", "path": "/trunc"})
    stream.write_eof()
    head = await asyncio.wait_for(stream.response(), 3)
    assert head.status == 200
    with pytest.raises(ResponseTruncated) as caught:
        await asyncio.wait_for(stream.read(), 3)
    assert caught.value.error_code == 0x2  # ERROR_INTERNAL
    assert isinstance(caught.value, BackendFailed)  # callers catching 502s catch it too
    await eventually(lambda: in_flight(edge, "api") == 0, what="slot back")


async def test_unary_request_to_a_dying_backend_is_a_502_not_a_short_body(
    start_server, start_edge, open_client
) -> None:
    edge = await _edge(start_server, start_edge)
    session = await open_client(edge)
    with pytest.raises(BackendFailed) as caught:
        await session.request("api", meta={"method": "GET", "path": "/trunc"})
    assert not isinstance(caught.value, ResponseTruncated)  # collected whole: a clean 502


async def test_h3_get_truncated_after_the_head_is_reset(start_server, start_edge) -> None:
    edge = await _edge(start_server, start_edge)
    async with h3_client(edge) as client:
        exchange = await client.fetch("GET", "/api/trunc", timeout=3)
    assert exchange.status == b"200"
    assert exchange.reset == H3_INTERNAL_ERROR
    assert bytes(exchange.body) in (b"", PART)  # what arrived before the reset, nothing else


async def test_sdk_over_h3_raises_on_a_truncated_response(
    start_server, start_edge, open_client
) -> None:
    edge = await _edge(start_server, start_edge)
    h3_only = client_configuration("127.0.0.1", ("h3",), ca_file=str(edge.ca_certificate))
    session = await open_client(edge, configuration=h3_only)
    assert session.alpn == "h3"
    with pytest.raises(ResponseTruncated) as caught:
        await asyncio.wait_for(session.request("api", meta={"method": "GET", "path": "/trunc"}), 3)
    assert caught.value.error_code == H3_INTERNAL_ERROR
