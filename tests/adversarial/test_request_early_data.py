"""0-RTT follows RFC 8470 (issue #12, fault 6): only safe methods are served before the
handshake completes by default, HTTP backends are told (`Early-Data: 1`), and a
backend's 425 Too Early is honoured.

Our SDK resumes with a ticket and sends its first requests in 0-RTT packets, over
real UDP and TLS, to a real edge in front of a real TCP backend that records the
request heads it gets.
"""

from __future__ import annotations

import asyncio

import pytest
from request_support import RawBackend
from support import http_backend, service

from netsched_client import SLO, Session
from netsched_client.runtime.session import TicketStore
from netsched_edge.server import EdgeServer


async def too_early_unless_confirmed(reader, writer) -> None:
    """425 to a request that came in early data, 200 otherwise (RFC 8470 §5.2)."""
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    if b"\r\nearly-data: 1\r\n" in head:
        writer.write(b"HTTP/1.1 425 Too Early\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
    else:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
    await writer.drain()


async def answer_ok(reader, writer) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
    await writer.drain()


async def _early_session(edge: EdgeServer, open_client) -> Session:
    """A session resumed with a ticket whose first requests leave in 0-RTT."""
    store = TicketStore()
    first = await open_client(edge, ticket_store=store)
    async with asyncio.timeout(5):
        while first.session_ticket is None:
            await asyncio.sleep(0.01)
    session: Session = await open_client(edge, ticket_store=store, early_data=True)
    assert session.early_data == "pending" and not session.handshake_complete
    return session


def _early(edge: EdgeServer, action: str) -> float:
    value = edge.dispatcher.metrics.registry.get_sample_value(
        "netsched_edge_early_data_requests_total", {"action": action}
    )
    return value or 0.0


def _early_flags(backend: RawBackend) -> list[bool]:
    return [b"\r\nearly-data: 1\r\n" in head.lower() for head in backend.heads]


async def _edge(
    start_server, start_edge, handler, **config: object
) -> tuple[EdgeServer, RawBackend]:
    backend = RawBackend(handler)
    port = await start_server(backend)
    edge = await start_edge(service("api", http_backend("b1", port)), **config)
    return edge, backend


async def test_safe_request_in_0rtt_tells_the_backend_and_retries_after_425(
    start_server, start_edge, open_client
) -> None:
    edge, backend = await _edge(start_server, start_edge, too_early_unless_confirmed)
    session = await _early_session(edge, open_client)
    response = await session.request("api", meta={"method": "GET", "path": "/page"})
    assert response.status == 200 and response.body == b"ok"
    assert session.early_data == "accepted"
    assert _early(edge, "served") == 1
    # First as early data (refused with 425), then again once the handshake completed.
    assert _early_flags(backend) == [True, False]


@pytest.mark.parametrize("method", ["PUT", "DELETE", "POST"])
async def test_unsafe_methods_wait_for_the_handshake(
    start_server, start_edge, open_client, method: str
) -> None:
    edge, backend = await _edge(start_server, start_edge, answer_ok)
    session = await _early_session(edge, open_client)
    response = await session.request("api", b"x", meta={"method": method, "path": "/item"})
    assert response.body == b"ok"
    assert _early(edge, "held") == 1 and _early(edge, "served") == 0
    assert _early_flags(backend) == [False]  # it reached the backend after the handshake


async def test_idempotent_slo_is_held_in_safe_mode(start_server, start_edge, open_client) -> None:
    edge, backend = await _edge(start_server, start_edge, answer_ok)
    session = await _early_session(edge, open_client)
    idempotent = SLO(idempotent=True)
    response = await session.request("api", b"x", slo=idempotent, meta={"method": "POST"})
    assert response.body == b"ok"
    assert _early(edge, "held") == 1 and _early_flags(backend) == [False]


async def test_idempotent_slo_is_served_early_in_idempotent_mode(
    start_server, start_edge, open_client
) -> None:
    edge, backend = await _edge(start_server, start_edge, answer_ok, early_data="idempotent")
    session = await _early_session(edge, open_client)
    idempotent = SLO(idempotent=True)
    response = await session.request("api", b"x", slo=idempotent, meta={"method": "POST"})
    assert response.body == b"ok"
    assert _early(edge, "served") == 1 and _early_flags(backend) == [True]


async def test_a_client_cannot_forge_early_data(start_server, start_edge, open_client) -> None:
    edge, backend = await _edge(start_server, start_edge, answer_ok)
    session = await open_client(edge)
    # The edge sets Early-Data itself: a client's own is dropped, never passed on.
    response = await session.request("api", method="GET", headers={"Early-Data": "1"})
    assert response.body == b"ok"
    assert _early_flags(backend) == [False]
