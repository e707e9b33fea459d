"""Slow peers on either side are timed, and time out by the request's deadline at the
latest (issue #12, fault 2).

Client side: a hand-driven QUIC client (netsched/1 bytes written by hand) that
sends half a head, or a body without FIN; aioquic's HTTP/3 client that stops
acknowledging. Backend side: real TCP servers that stall mid-body or stream forever.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from request_support import (
    RawBackend,
    by_path,
    eventually,
    finished,
    h3_client,
    in_flight,
    raw_client,
    stream_forever,
)
from support import http_backend, service

from netsched_client.errors import Status
from netsched_client.proto.framing import RequestHead, encode_request_head
from netsched_client.proto.slo import SLO
from netsched_edge.config import BackendConfig, EdgeConfig, LimitsConfig, ServiceConfig
from netsched_edge.dispatch import Dispatcher, IncomingRequest

H3_REQUEST_CANCELLED = 0x10C


async def stall_mid_body(reader, writer) -> None:
    """A 200 announcing 1000 bytes that sends 10 and then nothing, connection open."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"s" * 10)
    await writer.drain()
    await reader.read()  # until the edge gives up and closes


def limits(**values: float) -> LimitsConfig:
    return replace(LimitsConfig(), **values)


async def _edge(start_server, start_edge, *, read_timeout_s: float = 30.0, **edge):
    routes = {b"/stall": stall_mid_body, b"/forever": stream_forever()}
    port = await start_server(RawBackend(by_path(routes)))
    api = service("api", http_backend("b1", port, max_in_flight=1), read_timeout_s=read_timeout_s)
    return await start_edge(api, **edge)


def _head(slo: SLO | None = None, **meta: str) -> bytes:
    return encode_request_head(RequestHead(service="api", slo=slo, meta=meta))


async def test_unary_body_without_fin_ends_at_the_deadline(start_server, start_edge) -> None:
    edge = await _edge(start_server, start_edge)
    async with raw_client(edge) as client:
        sid = client.open(_head(SLO(deadline_ms=400)) + b"part of a body")  # and no FIN
        took = await finished(client.exchanges[sid], timeout=3)
        head = client.exchanges[sid].head()
    assert head is not None and head.status == Status.DEADLINE_EXCEEDED
    assert 0.3 < took < 1.5


async def test_a_silent_request_body_is_a_408(start_server, start_edge) -> None:
    edge = await _edge(start_server, start_edge, limits=limits(body_timeout_s=0.3))
    async with raw_client(edge) as client:
        sid = client.open(_head() + b"part")
        took = await finished(client.exchanges[sid], timeout=3)
        head = client.exchanges[sid].head()
    assert head is not None and head.status == Status.REQUEST_TIMEOUT
    assert took < 1.5


async def test_a_body_that_keeps_coming_is_not_cut(start_server, start_edge) -> None:
    edge = await _edge(start_server, start_edge, limits=limits(body_timeout_s=0.3))
    async with raw_client(edge) as client:
        sid = client.open(_head(method="GET", path="/ok"))
        for _ in range(4):  # 0.8 s in all, never 0.3 s of silence
            await asyncio.sleep(0.2)
            client.send(sid, b"more")
        client.send(sid, b"", end_stream=True)
        await finished(client.exchanges[sid], timeout=3)
        head = client.exchanges[sid].head()
    assert head is not None and head.status == 200


async def test_half_a_head_is_reset_after_the_header_timeout(start_server, start_edge) -> None:
    edge = await _edge(start_server, start_edge, limits=limits(header_timeout_s=0.3))
    async with raw_client(edge) as client:
        whole = _head()
        sid = client.open(whole[:3])  # the varint and a byte of the map, then silence
        took = await finished(client.exchanges[sid], timeout=3)
        assert client.exchanges[sid].reset is not None
        assert took < 1.5
        # The connection serves on.
        ok = client.open(_head(method="GET", path="/ok"), end_stream=True)
        await finished(client.exchanges[ok], timeout=3)
        head = client.exchanges[ok].head()
    assert head is not None and head.status == 200


async def test_a_backend_stalled_mid_body_is_a_502_after_read_timeout(
    start_server, start_edge, open_client
) -> None:
    edge = await _edge(start_server, start_edge, read_timeout_s=0.3)
    session = await open_client(edge)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await session.request("api", meta={"method": "GET", "path": "/stall"})
    except Exception as exc:
        assert getattr(exc, "status", None) == Status.BACKEND_ERROR, exc
    else:
        raise AssertionError("a stalled body must not be a success")
    assert loop.time() - started < 1.5
    await eventually(lambda: in_flight(edge, "api") == 0, what="slot back")


async def test_a_backend_stalled_mid_body_ends_at_the_deadline(
    start_server, start_edge, open_client
) -> None:
    edge = await _edge(start_server, start_edge)  # read_timeout_s 30 s: the deadline is first
    session = await open_client(edge)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await session.request(
            "api", meta={"method": "GET", "path": "/stall"}, slo=SLO(deadline_ms=400)
        )
    except Exception as exc:
        assert getattr(exc, "status", None) == Status.DEADLINE_EXCEEDED, exc
    else:
        raise AssertionError("a stalled body must not be a success")
    assert loop.time() - started < 1.5
    # The edge itself gave up at the deadline (the SDK's own timer fires later still).
    assert edge.dispatcher.metrics.registry.get_sample_value(
        "netsched_edge_responses_total", {"service": "api", "status": "504"}
    )
    await eventually(lambda: in_flight(edge, "api") == 0, timeout=1, what="slot back")


async def test_a_stalled_streamed_body_resets_the_stream(start_server, start_edge) -> None:
    edge = await _edge(start_server, start_edge, read_timeout_s=0.3)
    async with h3_client(edge) as client:
        exchange = await client.fetch("GET", "/api/stall", timeout=3)
    assert exchange.status == b"200" and exchange.reset is not None
    await eventually(lambda: in_flight(edge, "api") == 0, what="slot back")


async def test_a_client_that_acknowledges_nothing_is_reset_and_frees_the_slot(
    start_server, start_edge
) -> None:
    edge = await _edge(
        start_server,
        start_edge,
        limits=limits(send_timeout_s=0.5, max_stream_buffer=256 << 10),
    )
    async with h3_client(edge) as client:
        client.stalled = True  # from now on nothing is acknowledged
        client.request("GET", "/api/forever")
        await eventually(lambda: in_flight(edge, "api") == 1, what="the backend streams")
        loop = asyncio.get_running_loop()
        started = loop.time()
        await eventually(lambda: in_flight(edge, "api") == 0, timeout=3, what="slot back")
        assert loop.time() - started < 2.0
        assert len(edge.connections) == 1  # the stream was reset, not the connection


async def test_a_response_that_fits_the_buffer_frees_the_slot_at_once(
    start_server, start_edge
) -> None:
    async def finite(reader, writer) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b"f" * (200 << 10)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()

    backend = RawBackend(finite)
    port = await start_server(backend)
    edge = await start_edge(service("api", http_backend("b1", port, max_in_flight=1)))
    async with h3_client(edge) as client:
        client.stalled = True
        sid = client.request("GET", "/api/file")
        await eventually(lambda: len(backend.heads) == 1, what="the backend was asked")
        await eventually(lambda: in_flight(edge, "api") == 0, timeout=2, what="slot back")
        assert not client.exchanges[sid].done.is_set()  # the client has seen nothing yet
        client.stalled = False
        await finished(client.exchanges[sid], timeout=5)
    assert len(client.exchanges[sid].body) == 200 << 10


async def test_half_a_head_on_a_stream_opened_out_of_order_is_reset(
    start_server, start_edge
) -> None:
    edge = await _edge(start_server, start_edge, limits=limits(header_timeout_s=0.3))
    async with raw_client(edge) as client:
        earlier = client.open_at(0, b"")  # opened here, nothing on the wire yet
        later = client.open_at(4, _head(method="GET", path="/ok"))
        await asyncio.sleep(0.05)  # stream 4's head is in
        client.send(earlier, _head()[:3])  # stream 0's first bytes come after stream 4's
        client.send(later, b"", end_stream=True)
        took = await finished(client.exchanges[earlier], timeout=3)
        assert client.exchanges[earlier].reset is not None
        await finished(client.exchanges[later], timeout=3)
        assert (head := client.exchanges[later].head()) is not None and head.status == 200
    assert took < 1.5


async def test_the_deadline_not_the_clock_read_after_it_makes_a_504() -> None:
    """The deadline's timer fired while the body was still arriving: 504, even when the
    clock read just after it says a fraction of a millisecond is left (uvloop's timers
    keep milliseconds and may fire early; bench_slo saw 408 for 40 ms deadlines)."""
    loop = asyncio.get_running_loop()
    backend = BackendConfig(name="b", kind="tcp", host="127.0.0.1", port=9)
    config = EdgeConfig(services=(ServiceConfig(name="api", backends=(backend,)),))
    start = loop.time()
    # A clock a little slower than the loop's timers: when the deadline's timer fires,
    # it still reads a moment before the deadline (as uvloop's early timers do).
    lagging = Dispatcher(config, clock=lambda: start + (loop.time() - start) * 0.95)

    async def body_that_never_ends():
        yield b"part"
        await asyncio.Event().wait()

    request = IncomingRequest(
        service="api",
        slo=SLO(deadline_ms=30),
        body=body_that_never_ends(),
        received_at=lagging._clock(),
    )
    outcome = await lagging.handle(request)
    await outcome.aclose()
    assert outcome.head.status == Status.DEADLINE_EXCEEDED, outcome.head
    await lagging.close()
