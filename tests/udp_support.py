"""UDP backends in processes of their own, UDP clients and a udp service pool, on
loopback: shared by the forwarder health tests and the adversarial flow tests."""

from __future__ import annotations

import asyncio
import random
import sys
from contextlib import AsyncExitStack
from typing import Any

from netsched_edge.backends.udp import UDPBackend
from netsched_edge.config import BackendConfig, HealthConfig, ServiceConfig
from netsched_edge.pool import ServicePool

TIMEOUT = 10.0  # generous: a busy 2-core machine


class BackendProcess:
    def __init__(self, name: str, process: asyncio.subprocess.Process, port: int) -> None:
        self.name = name
        self.process = process
        self.port = port

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()  # a frozen process dies too
            await self.process.wait()


async def start_backend(stack: AsyncExitStack, name: str, script: str) -> BackendProcess:
    """Run `script` (it prints its UDP port, then serves) as backend `name`."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-S", "-c", script, name, stdout=asyncio.subprocess.PIPE
    )
    backend = BackendProcess(name, process, 0)
    stack.push_async_callback(backend.kill)
    assert process.stdout is not None
    backend.port = int(await asyncio.wait_for(process.stdout.readline(), TIMEOUT))
    return backend


class Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: list[bytes] = []
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.replies.append(data)

    def send(self, data: bytes) -> None:
        self.transport.sendto(data)

    @property
    def served_by(self) -> bytes | None:
        return self.replies[-1].split(b":")[0] if self.replies else None


def udp_pool(service: str, ports: dict[str, int], health: HealthConfig) -> ServicePool:
    """A service pool of udp backends on loopback, round robin (clients spread evenly)."""
    config = ServiceConfig(
        name=service,
        backends=tuple(
            BackendConfig(name=name, kind="udp", host="127.0.0.1", port=port)
            for name, port in ports.items()
        ),
        policy="round-robin",
        health=health,
    )
    return ServicePool(
        config,
        {name: UDPBackend(name, "127.0.0.1", port) for name, port in ports.items()},
        rng=random.Random(1),
        queue_limit=16,
        clock=asyncio.get_running_loop().time,  # the relay reports in event-loop time too
    )
