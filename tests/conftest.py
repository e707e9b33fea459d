"""Shared fixtures: real demo backends and a real edge on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from netsched_client import SLO, Session, open_session
from netsched_edge.config import EdgeConfig, ServiceConfig
from netsched_edge.server import EdgeServer

EdgeFactory = Callable[..., Awaitable[EdgeServer]]
SessionFactory = Callable[..., Awaitable[Session]]


@pytest.fixture(autouse=True)
def _state_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Edges started without a certificate keep what they generate under the state
    home: each test's in a folder of its own, never the user's."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as exit_stack:
        yield exit_stack


@pytest.fixture
def start_edge(stack: AsyncExitStack) -> EdgeFactory:
    async def start(*services: ServiceConfig, **kwargs: object) -> EdgeServer:
        config = EdgeConfig(host="127.0.0.1", port=0, services=services, **kwargs)  # type: ignore[arg-type]
        edge = EdgeServer(config)
        await edge.start()
        stack.push_async_callback(edge.close)
        return edge

    return start


@pytest.fixture
def start_server(stack: AsyncExitStack) -> Callable[[object], Awaitable[int]]:
    """Start any demo server object (start() -> port, stop()) for the test's lifetime."""

    async def start(server: object) -> int:
        port: int = await server.start()  # type: ignore[attr-defined]
        stack.push_async_callback(server.stop)  # type: ignore[attr-defined]
        return port

    return start


@pytest.fixture
def open_client(stack: AsyncExitStack) -> SessionFactory:
    async def open_(
        edge: EdgeServer, slo: SLO | None = None, port: int | None = None, **kwargs: object
    ) -> Session:
        ca = edge.ca_certificate
        session = await open_session(
            "127.0.0.1",
            port or edge.port,
            slo=slo,
            ca_file=str(ca) if ca else None,
            **kwargs,  # type: ignore[arg-type]
        )
        stack.push_async_callback(session.close)
        return session

    return open_


@pytest.fixture
def www(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello from the edge\n")
    (root / "big.bin").write_bytes(bytes(range(256)) * 8192)  # 2 MiB
    return root
