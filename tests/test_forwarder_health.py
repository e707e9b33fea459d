"""Backend health through the edge's UDP front: real UDP backend processes, killed or frozen.

The front's relay reports each flow's outcome to the service pool's health
tracking (netsched_edge/balancing/health.py; no active checks run here, so
only those reports can eject). A killed backend's port answers ICMP port
unreachable (ECONNREFUSED on the flow sockets); a frozen one (SIGSTOP) keeps
its socket and stays silent. Either way its clients must end up on the
healthy backend within the bound of netsched_edge/forwarder/flows.py, and
new clients must avoid it.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from contextlib import AsyncExitStack

import pytest
import udp_support
from udp_support import TIMEOUT, BackendProcess, Client, udp_pool

from netsched_edge.balancing.health import Health
from netsched_edge.config import HealthConfig
from netsched_edge.pool import ServicePool
from netsched_edge.udp_front import UdpFront

REPLY_TIMEOUT = 0.5
SEND_EVERY = 0.03  # well under REPLY_TIMEOUT: the clients keep sending
UNHEALTHY_AFTER = 2

# A backend process: echoes each datagram prefixed with its name.
ECHO = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
name = sys.argv[1].encode()
while True:
    data, source = sock.recvfrom(65536)
    sock.sendto(name + b":" + data, source)
"""


async def start_backend(stack: AsyncExitStack, name: str) -> BackendProcess:
    return await udp_support.start_backend(stack, name, ECHO)


async def open_clients(stack: AsyncExitStack, front: UdpFront, count: int) -> list[Client]:
    loop = asyncio.get_running_loop()
    clients = []
    for _ in range(count):
        transport, client = await loop.create_datagram_endpoint(
            Client, remote_addr=front.local_address
        )
        stack.callback(transport.close)
        clients.append(client)
    return clients


async def keep_sending(clients: list[Client], until: Callable[[], bool]) -> None:
    """Every client sends a datagram each SEND_EVERY seconds until `until()` holds."""
    async with asyncio.timeout(TIMEOUT):
        sent = 0
        while not until():
            for client in clients:
                client.transport.sendto(b"%d" % sent)
            sent += 1
            await asyncio.sleep(SEND_EVERY)


def open_front(
    stack: AsyncExitStack, backends: list[BackendProcess]
) -> tuple[UdpFront, ServicePool]:
    health = HealthConfig(unhealthy_after=UNHEALTHY_AFTER, ejection_s=60.0)
    pool = udp_pool("game", {b.name: b.port for b in backends}, health)
    front = UdpFront(pool, ("127.0.0.1", 0), reply_timeout=REPLY_TIMEOUT)
    stack.callback(front.close)
    return front, pool


@pytest.mark.parametrize("failure", ["killed", "frozen"])
async def test_a_failing_backend_is_ejected_and_its_clients_re_pinned(
    stack: AsyncExitStack, failure: str
) -> None:
    a, b = [await start_backend(stack, name) for name in ("a", "b")]
    front, pool = open_front(stack, [a, b])
    clients = await open_clients(stack, front, 4)
    await keep_sending(clients, lambda: all(c.replies for c in clients))
    assert sorted(c.served_by or b"" for c in clients) == [b"a", b"a", b"b", b"b"]
    assert pool.health["a"].state is Health.HEALTHY

    if failure == "killed":
        await a.kill()
    else:
        a.process.send_signal(signal.SIGSTOP)
    for client in clients:
        client.replies.clear()
    await keep_sending(clients, lambda: all(c.served_by == b"b" for c in clients))

    assert (pool.health["a"].state, pool.health["b"].state) == (Health.EJECTED, Health.HEALTHY)
    stats = front.forwarder.stats
    failures = stats.refused_by_backend if failure == "killed" else stats.silent_by_backend
    # The bound: ejection takes UNHEALTHY_AFTER failed flows; after it, only
    # the flows still pinned to "a" (at most one per other client) fail once.
    assert UNHEALTHY_AFTER <= failures[0] <= UNHEALTHY_AFTER - 1 + len(clients)
    assert failures[1] == 0
    assert all(reply.startswith(b"b:") for c in clients for reply in c.replies[-3:])

    newcomers = await open_clients(stack, front, 3)  # new flows avoid the ejected backend
    await keep_sending(newcomers, lambda: all(c.replies for c in newcomers))
    assert {reply.split(b":")[0] for c in newcomers for reply in c.replies} == {b"b"}


async def test_answering_backends_stay_healthy(stack: AsyncExitStack) -> None:
    a, b = [await start_backend(stack, name) for name in ("a", "b")]
    front, pool = open_front(stack, [a, b])
    clients = await open_clients(stack, front, 4)
    await keep_sending(clients, lambda: all(len(c.replies) >= 15 for c in clients))

    stats = front.forwarder.stats
    assert (stats.flows_opened, stats.flows_silent, stats.flows_failed) == (4, 0, 0)
    assert all(tracker.state is Health.HEALTHY for tracker in pool.health.values())
