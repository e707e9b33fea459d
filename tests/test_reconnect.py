"""The SDK reconnects by itself (issues #12, #17): after the edge's GOAWAY new requests go
to a new connection while those under way finish on the draining one; after a loss it
connects again within its policy's bounds, or gives up with `ReconnectFailed`.

Real edges (in this process) and real demo backends on loopback sockets; the
edge-process kill and drain tests are in test_reconnect_edge.py.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import httpx
import pytest
from support import http_backend, service

from netsched_client import (
    SLO,
    ReconnectFailed,
    ReconnectPolicy,
    RequestInterrupted,
)
from netsched_client.httpx import NetSchedTransport
from netsched_client.runtime.reconnect import Outage
from netsched_edge.demo_backends import DemoHTTPServer
from netsched_edge.server import EdgeServer

SLOW_MS = 600


async def eventually(check: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what}") from None


async def _edge(start_server, start_edge) -> tuple[EdgeServer, DemoHTTPServer]:
    slow = DemoHTTPServer("slow", base_ms=SLOW_MS, cold_ms=0)
    slow_port = await start_server(slow)
    fast_port = await start_server(DemoHTTPServer("fast", base_ms=0, cold_ms=0))
    edge: EdgeServer = await start_edge(
        service("slow", http_backend("s", slow_port)),
        service("fast", http_backend("f", fast_port)),
    )
    return edge, slow


async def test_goaway_moves_new_requests_to_a_resumed_connection_with_the_same_paths(
    start_server, start_edge, open_client
) -> None:
    edge, slow = await _edge(start_server, start_edge)
    session = await open_client(edge, paths=["127.0.0.1", "127.0.0.2"])
    await eventually(lambda: session.session_ticket is not None, what="a session ticket")
    assert len([p for p in session.paths if p.state == "active"]) == 2
    # Not idempotent (POST): it must finish where it began, never be sent twice.
    under_way = asyncio.create_task(session.request("slow", b"first"))
    await eventually(lambda: slow.requests == 1, what="the slow request reached its backend")
    (old,) = edge.connections
    old.go_away()
    response = await session.request("fast", b"second", slo=SLO(deadline_ms=3000))
    assert response.body == b"second"
    assert session.session_resumed  # the new connection resumed the TLS session
    stats = session.reconnect_stats
    assert (stats.reconnects, stats.last_reason) == (1, "goaway")
    assert stats.retried <= 1  # sent before the GOAWAY arrived: refused, then sent again
    assert not session.going_away and not session.closed
    assert (await under_way).body == b"first"
    assert slow.requests == 1
    await eventually(lambda: edge.connections.isdisjoint({old}), what="the old one closed")
    await eventually(
        lambda: len([p for p in session.paths if p.state == "active"]) == 2,
        what="the second path on the new connection",
    )


async def test_a_refused_request_goes_to_the_new_connection(
    start_server, start_edge, open_client
) -> None:
    edge, _ = await _edge(start_server, start_edge)
    session = await open_client(edge)
    (old,) = edge.connections
    old.go_away()
    # Sent before the GOAWAY arrives or after it: never refused to the caller.
    answers = await asyncio.gather(*(session.request("fast", b"%d" % i) for i in range(8)))
    assert [r.body for r in answers] == [b"%d" % i for i in range(8)]
    assert session.reconnect_stats.reconnects == 1


async def test_reconnect_gives_up_after_its_bound_and_leaves_nothing_behind(
    start_server, start_edge, open_client
) -> None:
    edge, _ = await _edge(start_server, start_edge)
    tasks_before = asyncio.all_tasks()
    policy = ReconnectPolicy(max_attempts=3, max_time_s=3.0, first_delay_s=0.05, max_waiting=2)
    session = await open_client(edge, reconnect=policy)
    flow = asyncio.create_task(session.receive_datagram())
    stuck = asyncio.create_task(session.request("slow", b"post"))  # not idempotent
    await asyncio.sleep(0.1)
    loop = asyncio.get_running_loop()
    lost_at = loop.time()
    await edge.close()  # nothing listens on its port any more
    with pytest.raises(RequestInterrupted) as interrupted:
        await asyncio.wait_for(stuck, 5)
    assert interrupted.value.may_have_been_processed
    with pytest.raises(RequestInterrupted):  # the datagram flow's connection is gone
        await asyncio.wait_for(flow, 5)
    waiting = [asyncio.create_task(session.request("fast", b"x")) for _ in range(3)]
    done = await asyncio.gather(*waiting, return_exceptions=True)
    over = [e for e in done if isinstance(e, RequestInterrupted)]
    assert len(over) == 1 and not over[0].may_have_been_processed  # max_waiting = 2
    failed = [e for e in done if isinstance(e, ReconnectFailed)]
    assert len(failed) == 2 and failed[0].attempts == 3
    assert loop.time() - lost_at < policy.max_time_s + 1.0
    assert session.closed and not session.reconnecting
    with pytest.raises(ReconnectFailed):
        await session.request("fast")
    assert session.reconnect_stats.attempts == 3
    await session.close()
    left = asyncio.all_tasks() - tasks_before - {asyncio.current_task()}
    assert not left, left  # no reconnect, probe, path or close task behind


async def test_without_reconnect_a_loss_closes_the_session(
    start_server, start_edge, open_client
) -> None:
    edge, _ = await _edge(start_server, start_edge)
    session = await open_client(edge, reconnect=False)
    assert session.reconnect_policy is None
    await edge.close()
    await eventually(lambda: session.closed, what="the session closed")
    with pytest.raises(RequestInterrupted.__mro__[1]):  # ConnectionLost
        await session.request("fast", slo=SLO(idempotent=True))
    assert session.reconnect_stats.attempts == 0


async def test_httpx_transport_keeps_its_session_across_a_goaway(start_server, start_edge) -> None:
    edge, _ = await _edge(start_server, start_edge)
    transport = NetSchedTransport(f"127.0.0.1:{edge.port}", ca_file=str(edge.ca_certificate))
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.post("http://fast/", content=b"one")).content == b"one"
        session = transport.session
        assert session is not None
        (old,) = edge.connections
        old.go_away()
        for body in (b"two", b"three"):
            assert (await client.post("http://fast/", content=body)).content == body
        # The session reconnected by itself; the transport did not open a second one.
        assert transport.session is session
        assert session.reconnect_stats.reconnects == 1
        await eventually(lambda: len(edge.connections) == 1, what="one connection to the edge")


def test_backoff_starts_at_once_then_full_jitter_under_a_doubling_cap() -> None:
    policy = ReconnectPolicy(max_attempts=6, first_delay_s=0.1, max_delay_s=0.3)
    rng = random.Random(7)
    delays = list(policy.delays(rng))
    assert len(delays) == 6 and delays[0] == 0.0
    for delay, cap in zip(delays[1:], (0.1, 0.2, 0.3, 0.3, 0.3), strict=True):
        assert 0 <= delay <= cap
    assert len(set(delays[1:])) == 5  # jittered, not a fixed schedule
    with pytest.raises(ValueError):
        ReconnectPolicy(first_delay_s=0.5, max_delay_s=0.1)


def test_an_outage_ends_at_its_attempts_or_its_time() -> None:
    policy = ReconnectPolicy(max_attempts=3, max_time_s=1.0, first_delay_s=0.1)
    by_attempts = Outage(policy, random.Random(1), now=0.0)
    assert [by_attempts.next_delay(0.0) is not None for _ in range(4)] == [True] * 3 + [False]
    by_time = Outage(policy, random.Random(1), now=0.0)
    assert by_time.next_delay(0.0) == 0.0
    assert by_time.next_delay(1.0) is None and by_time.attempts == 1
