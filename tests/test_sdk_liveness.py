"""The SDK's liveness PINGs while a request waits on a live but slow edge (issue #12).

A request waiting for its answer PINGs an edge that went quiet (a dead edge is
found by the restarted one's stateless reset, `test_reconnect_edge`). A live
edge answers each PING, and then the next one waits twice as long, up to
LIVENESS_MAX_S: under load, when every answer is slow, a PING every 250 ms per
waiting request was work the loaded edge had to read and acknowledge (measured
with 200 sessions waiting on a 2 s backend: the edge's CPU per request 2.2 ms
without PINGs, 4.7 ms with them). Real edge, real backend, and a UDP relay on
loopback that counts what the client sends.
"""

from __future__ import annotations

import asyncio

from support import http_backend, service

from netsched_client import SLO, open_session
from netsched_client.runtime.session import LIVENESS_MAX_S, LIVENESS_S
from netsched_edge.demo_backends import DemoHTTPServer
from netsched_edge.server import EdgeServer

WAIT_S = 5.0  # the backend's answer time


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, front: _Front) -> None:
        self.front = front

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.front.to_client(data)


class _Front(asyncio.DatagramProtocol):
    """One client's datagrams to the edge and back, counting those to the edge."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.upstream: asyncio.DatagramTransport | None = None
        self.client: tuple[str, int] | None = None
        self.to_edge = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.client = addr
        self.to_edge += 1
        assert self.upstream is not None
        self.upstream.sendto(data)

    def to_client(self, data: bytes) -> None:
        if self.transport is not None and self.client is not None:
            self.transport.sendto(data, self.client)


async def _relay(edge_port: int) -> tuple[_Front, int]:
    loop = asyncio.get_running_loop()
    front_transport, front = await loop.create_datagram_endpoint(
        _Front, local_addr=("127.0.0.1", 0)
    )
    upstream, _ = await loop.create_datagram_endpoint(
        lambda: _Upstream(front), remote_addr=("127.0.0.1", edge_port)
    )
    front.upstream = upstream
    return front, front_transport.get_extra_info("sockname")[1]


async def test_a_live_edge_is_pinged_less_and_less_while_a_request_waits(
    start_server, start_edge
) -> None:
    port = await start_server(DemoHTTPServer("slow", base_ms=WAIT_S * 1000, cold_ms=0))
    edge: EdgeServer = await start_edge(service("slow", http_backend("b1", port)))
    front, relay_port = await _relay(edge.port)
    session = await open_session(
        "127.0.0.1", relay_port, ca_file=str(edge.ca_certificate), timeout=5
    )
    try:
        await asyncio.sleep(0.3)  # the handshake's last ACKs are out
        before = front.to_edge
        response = await session.request("slow", b"x", slo=SLO(deadline_ms=10_000))
        sent = front.to_edge - before
    finally:
        await session.close()
    assert response.status == 200
    # The request and the PINGs, 0.25, 0.75, 1.25, 2.25, 3.25 and 4.25 s into the wait
    # (an ACK may ride along). A PING whenever the edge was silent for 250 ms, one every
    # 0.5 s with the edge's delayed ACK, made 11 datagrams.
    assert LIVENESS_MAX_S == 4 * LIVENESS_S
    assert 4 <= sent <= 8, f"{sent} datagrams to the edge in a {WAIT_S:g} s wait"
