"""The common httpx app pattern through the edge: a service that calls another service.

`profile` is a small HTTP/1.1 service (h11, in the test's process) that keeps
one `httpx.AsyncClient` for its lifetime, as a FastAPI app opens one in its
lifespan, and calls `echo` through the edge with `NetSchedTransport` and a
deadline of its own. The outside caller reaches `profile` through the same
edge, also with httpx. Every hop is real: UDP/QUIC to the edge, TCP/HTTP/1.1
from the edge to each service.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import h11
import httpx
import pytest

from netsched_client.httpx import NetSchedTransport
from netsched_edge.config import BackendConfig, ServiceConfig
from netsched_edge.server import EdgeServer
from tests.test_http_semantics import _echo, _next

EdgeFactory = Callable[..., Awaitable[EdgeServer]]


class ProfileService:
    """GET /profile/<id>[?query]: the user from `echo` (through the edge), within 300 ms."""

    def __init__(self) -> None:
        self.client: httpx.AsyncClient | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            request = await _next(conn, reader)
            assert isinstance(request, h11.Request)
            while not isinstance(await _next(conn, reader), h11.EndOfMessage):
                pass
            status, body = await self._profile(request.target.decode())
            head = h11.Response(
                status_code=status,
                headers=[("content-type", "application/json"), ("content-length", str(len(body)))],
            )
            writer.write(conn.send(head) or b"")
            writer.write(conn.send(h11.Data(data=body)) or b"")
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
        finally:
            writer.close()

    async def _profile(self, target: str) -> tuple[int, bytes]:
        assert self.client is not None
        path, _, query = target.partition("?")  # the query passes on (`sleep=` for tests)
        user = path.removeprefix("/profile/")
        try:
            r = await self.client.get(
                f"http://echo/users/{user}",
                params=httpx.QueryParams(query),
                extensions={"netsched": {"deadline_ms": 300}},
            )
        except httpx.TimeoutException:
            return 504, b'{"error": "users timed out"}'
        seen = r.json()
        return 200, json.dumps({"user": user, "via": seen["target"]}).encode()


@pytest.fixture
async def edge(start_edge: EdgeFactory) -> AsyncIterator[tuple[EdgeServer, ProfileService]]:
    profile = ProfileService()
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    front = await asyncio.start_server(profile.handle, "127.0.0.1", 0)
    edge = await start_edge(
        ServiceConfig(
            "echo", (BackendConfig("e", "http", "127.0.0.1", echo.sockets[0].getsockname()[1]),)
        ),
        ServiceConfig(
            "profile",
            (BackendConfig("p", "http", "127.0.0.1", front.sockets[0].getsockname()[1]),),
        ),
    )
    transport = NetSchedTransport(f"127.0.0.1:{edge.port}", ca_file=str(edge.ca_certificate))
    async with httpx.AsyncClient(transport=transport) as client:  # the app's lifespan
        profile.client = client
        yield edge, profile
    front.close()
    echo.close()


async def test_a_service_calls_another_through_the_edge(
    edge: tuple[EdgeServer, ProfileService],
) -> None:
    server, _ = edge
    transport = NetSchedTransport(f"127.0.0.1:{server.port}", ca_file=str(server.ca_certificate))
    async with httpx.AsyncClient(transport=transport) as client:
        responses = await asyncio.gather(
            *(client.get(f"http://profile/profile/{n}") for n in range(8))
        )
    assert [r.json() for r in responses] == [
        {"user": str(n), "via": f"/users/{n}"} for n in range(8)
    ]
    assert {r.extensions["netsched"].backend for r in responses} == {"p"}


async def test_the_inner_deadline_becomes_the_services_own_answer(
    edge: tuple[EdgeServer, ProfileService],
) -> None:
    server, _ = edge
    transport = NetSchedTransport(f"127.0.0.1:{server.port}", ca_file=str(server.ca_certificate))
    async with httpx.AsyncClient(transport=transport) as client:
        r = await client.get("http://profile/profile/1?sleep=2")  # echo sleeps 2 s
    # The inner call's deadline fired (an httpx timeout in the app); the app's 504 is
    # a backend answer for the outer caller, not an edge decision.
    assert r.status_code == 504 and r.json() == {"error": "users timed out"}
