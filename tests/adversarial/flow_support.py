"""Hostile UDP clients and picky UDP backends for the flow and health tests, on loopback.

`start_backend` runs a backend in its own process that answers only datagrams
starting with b"ok" (prefixed with its name) and ignores everything else, as
a real protocol server ignores garbage. `Client` is one UDP socket; a client
bound to its own 127.x.y.z address stands for a distinct (spoofed) source:
all of 127/8 is loopback on Linux.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AsyncExitStack

import udp_support
from udp_support import TIMEOUT, BackendProcess, Client, udp_pool

__all__ = ["TIMEOUT", "BackendProcess", "Client", "keep_sending", "open_clients", "udp_pool"]

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


async def start_backend(stack: AsyncExitStack, name: str) -> BackendProcess:
    return await udp_support.start_backend(stack, name, PICKY)


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
