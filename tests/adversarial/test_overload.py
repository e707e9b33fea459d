"""An edge whose event loop falls behind sheds new work (issue #12: overload fails fast).

A real edge and the SDK on loopback, in one process: a hog callback keeps the loop
busy 300 ms at a time, as a saturated CPU would. At twice `[limits] shed_loop_lag_ms`
of smoothed lag, a new request is answered 503 "overloaded" at once, a new client is
refused statelessly, and /readyz says why; once the loop catches up, everything is
served again. Before the governor the same requests were queued behind the lag and
the new client was taken on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aioquic.quic.packet import QuicErrorCode
from intake_support import eventually
from request_support import h3_client
from support import http_backend, service

from netsched_client import NoBackend, open_session
from netsched_client.errors import ConnectionRefused
from netsched_edge.config import LimitsConfig
from netsched_edge.demo_backends import DemoHTTPServer
from netsched_edge.overload import LagGovernor
from netsched_edge.server import EdgeServer

HOG_BLOCK_S = 0.3
LAG_MS = 50.0


@asynccontextmanager
async def hogged_loop() -> AsyncIterator[None]:
    """The running loop blocked HOG_BLOCK_S at a time, 10 ms free in between."""
    loop = asyncio.get_running_loop()
    handle: asyncio.TimerHandle | None = None

    def hog() -> None:
        nonlocal handle
        time.sleep(HOG_BLOCK_S)
        handle = loop.call_later(0.01, hog)

    handle = loop.call_later(0.01, hog)
    try:
        yield
    finally:
        handle.cancel()


async def _edge(start_edge, start_server) -> EdgeServer:
    port = await start_server(DemoHTTPServer("b", base_ms=0, cold_ms=0))
    edge: EdgeServer = await start_edge(
        service("api", http_backend("b", port)),
        limits=LimitsConfig(shed_loop_lag_ms=LAG_MS),
    )
    return edge


async def test_a_loop_far_behind_turns_new_work_away_and_recovers(
    start_edge, start_server, open_client
) -> None:
    edge = await _edge(start_edge, start_server)
    session = await open_client(edge)
    get = {"method": "GET", "path": "/"}
    assert (await session.request("api", meta=get)).status == 200
    async with hogged_loop():
        await eventually(lambda: edge.overload.share == 1.0, timeout=15.0)
        with pytest.raises(NoBackend) as caught:
            await session.request("api", meta=get)
        assert "overloaded: event loop" in str(caught.value)
        assert any(reason.startswith("overloaded") for reason in edge.unready())
        with pytest.raises(ConnectionRefused) as refused:
            await open_session(
                "127.0.0.1",
                edge.port,
                ca_file=str(edge.ca_certificate),
                timeout=10.0,
                pmtud=None,
            )
        assert refused.value.error_code == QuicErrorCode.CONNECTION_REFUSED
    await eventually(lambda: edge.overload.share == 0.0, timeout=5.0)
    assert (await session.request("api", meta=get)).status == 200
    assert edge.unready() == []
    shed = edge.dispatcher.metrics.registry.get_sample_value("netsched_edge_overload_shed_total")
    assert shed is not None and shed >= 2


def _shed_now(edge: EdgeServer) -> None:
    """Make the governor refuse all new work, as a loop far behind would."""
    for now in range(20):
        edge.overload.observe(1.0, float(now))
    assert edge.overload.share == 1.0


async def test_a_request_stopped_with_its_headers_is_shed_without_an_error(
    start_edge, start_server, caplog: pytest.LogCaptureFixture
) -> None:
    """HEADERS and STOP_SENDING in one datagram while shedding: aioquic reset our side
    before the request's event, and the 503 used to raise out of the receive path
    (found by the 1,000-connection soak, h3 cancels). Now the stream is skipped and the
    connection serves on."""
    edge = await _edge(start_edge, start_server)
    async with h3_client(edge) as client:
        _shed_now(edge)  # after the handshake: a new client would be refused
        sid = client._quic.get_next_available_stream_id()
        headers = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"localhost")]
        client.h3.send_headers(sid, [*headers, (b":path", b"/api/")], end_stream=True)
        client._quic.stop_stream(sid, 0x10C)  # H3_REQUEST_CANCELLED, in the same datagram
        client.transmit()
        exchange = await client.fetch("GET", "/api/")
        assert exchange.status == b"503"
        assert b"overloaded" in exchange.headers.get(b"netsched-message", b"")
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_zero_turns_the_governor_off(start_edge, start_server) -> None:
    port = await start_server(DemoHTTPServer("b", base_ms=0, cold_ms=0))
    edge: EdgeServer = await start_edge(
        service("api", http_backend("b", port)), limits=LimitsConfig(shed_loop_lag_ms=0)
    )
    async with hogged_loop():
        await asyncio.sleep(2.0)
    assert not edge.overload.shedding and edge.overload.episodes == 0


# -- the governor alone, on a fake clock -----------------------------------------------------


def test_one_late_sample_is_not_overload() -> None:
    governor = LagGovernor(threshold_s=0.5)
    for now, lag in [(0.1, 0.9), (0.2, 0.0), (0.3, 0.0)]:
        governor.observe(lag, now)
    assert governor.share == 0.0 and not governor.shedding and governor.admit() is None


def test_the_share_refused_grows_with_the_lag_and_is_spread_evenly() -> None:
    governor = LagGovernor(threshold_s=0.5, smoothing=1.0)  # no smoothing: exact levels
    governor.observe(0.75, 1.0)  # halfway to twice the threshold: half refused
    assert governor.share == pytest.approx(0.5) and governor.shedding
    answers = [governor.admit() for _ in range(10)]
    assert answers[1::2] == ["overloaded: event loop 750 ms behind"] * 5
    assert answers[0::2] == [None] * 5
    governor.observe(1.5, 1.1)
    assert governor.share == 1.0 and all(governor.admit() for _ in range(5))
    assert governor.shed == 10 and governor.episodes == 1


def test_an_episode_ends_after_recover_s_without_refusals() -> None:
    governor = LagGovernor(threshold_s=0.5, smoothing=1.0, recover_s=1.0)
    governor.observe(0.6, 1.0)
    assert governor.shedding
    governor.observe(0.1, 1.1)  # nothing refused from here
    assert governor.share == 0.0 and governor.shedding
    governor.observe(0.6, 1.5)  # refusing again: the calm starts over
    governor.observe(0.1, 1.6)
    governor.observe(0.1, 2.5)
    assert governor.shedding
    governor.observe(0.1, 2.7)
    assert not governor.shedding and governor.episodes == 1
