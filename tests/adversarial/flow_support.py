"""Hostile UDP clients and picky UDP backends for the flow and health tests, on loopback.

`start_backend` runs a backend in its own process that answers only datagrams
starting with b"ok" (prefixed with its name) and ignores everything else, as
a real protocol server ignores garbage. `Client` is one UDP socket; a client
bound to its own 127.x.y.z address stands for a distinct (spoofed) source:
all of 127/8 is loopback on Linux.
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

from netsched_edge.backends.udp import UDPBackend
from netsched_edge.config import BackendConfig, HealthConfig, ServiceConfig
from netsched_edge.pool import ServicePool

TIMEOUT = 10.0  # generous: a busy 2-core machine

PICKY = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
name = sys.argv[1].encode()
HEALTH_PROBE = b"\\x00netsched-health"
while True:
    data, source = sock.recvfrom(65536)
    if data.startswith(b"ok") or data == HEALTH_PROBE:
        sock.sendto(name + b":" + data, source)
"""


class BackendProcess:
    def __init__(self, name: str, process: asyncio.subprocess.Process, port: int) -> None:
        self.name = name
        self.process = process
        self.port = port

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def start_backend(stack: AsyncExitStack, name: str) -> BackendProcess:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-S", "-c", PICKY, name, stdout=asyncio.subprocess.PIPE
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


async def open_clients(
    stack: AsyncExitStack, front: tuple[str, int], count: int, *, source: str = "127.0.0.1"
) -> list[Client]:
    loop = asyncio.get_running_loop()
    clients = []
    for _ in range(count):
        transport, client = await loop.create_datagram_endpoint(
            Client, local_addr=(source, 0), remote_addr=front
        )
        stack.callback(transport.close)
        clients.append(client)
    return clients


async def keep_sending(
    clients: list[Client],
    make: Callable[[int], bytes],
    until: Callable[[], bool],
    *,
    every: float = 0.03,
    timeout: float = TIMEOUT,
) -> None:
    """Every client sends `make(round)` each `every` seconds until `until()` holds."""
    async with asyncio.timeout(timeout):
        sent = 0
        while not until():
            for client in clients:
                client.send(make(sent))
            sent += 1
            await asyncio.sleep(every)


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
