"""Health poisoning through the UDP front: garbage from many sources must not eject backends.

Real backend processes that answer only well-formed datagrams (flow_support.py),
the edge's real UDP front and pool, clients on loopback sockets. A client
that sends garbage goes unanswered; the rules under test (udp_front.py,
forwarder/flows.py, balancing/health.py): that silence counts against a
backend only when the backend answered nobody else meanwhile, and passive
outcomes never eject more than `max_ejection_percent` of a service's backends.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from flow_support import (
    TIMEOUT,
    BackendProcess,
    Client,
    open_clients,
    start_backend,
    udp_pool,
)

from netsched_edge.balancing.health import Health
from netsched_edge.config import HealthConfig
from netsched_edge.pool import ServicePool
from netsched_edge.udp_front import UdpFront

REPLY_TIMEOUT = 0.3
GARBAGE = 8  # attacking sources; every one of them goes unanswered
H, E = Health.HEALTHY, Health.EJECTED


def open_front(
    stack: AsyncExitStack, backends: list[BackendProcess], health: HealthConfig
) -> tuple[UdpFront, ServicePool]:
    pool = udp_pool("game", {b.name: b.port for b in backends}, health)
    front = UdpFront(pool, ("127.0.0.1", 0), reply_timeout=REPLY_TIMEOUT)
    stack.callback(front.close)
    return front, pool


async def flood(
    front: UdpFront, pool: ServicePool, legit: list[Client], garbage: list[Client]
) -> None:
    """Legit clients keep talking, garbage clients keep sending junk, until every garbage
    flow was judged silent twice (each judgement closes the flow and opens a new one),
    or no backend is left."""
    goal = len(legit) + 3 * len(garbage)
    async with asyncio.timeout(TIMEOUT):
        n = 0
        while front.forwarder.stats.flows_opened < goal and pool.has_available_backend():
            for client in legit:
                client.send(b"ok%d" % n)
            for client in garbage:
                client.send(b"\xff\x00junk%d" % n)
            n += 1
            await asyncio.sleep(0.03)


async def served(stack: AsyncExitStack, front: UdpFront, count: int) -> set[bytes]:
    """Which backends serve `count` new well-behaved clients."""
    clients = await open_clients(stack, front.local_address, count)
    async with asyncio.timeout(TIMEOUT):
        n = 0
        while not all(c.replies for c in clients):
            for client in clients:
                client.send(b"ok%d" % n)
            n += 1
            await asyncio.sleep(0.03)
    return {c.replies[0].split(b":")[0] for c in clients}


async def test_garbage_that_answering_backends_ignore_ejects_nobody(
    stack: AsyncExitStack,
) -> None:
    a, b = [await start_backend(stack, name) for name in ("a", "b")]
    health = HealthConfig(unhealthy_after=2, ejection_s=60.0, max_ejection_percent=100)
    front, pool = open_front(stack, [a, b], health)
    legit = await open_clients(stack, front.local_address, 4)  # round robin: a, b, a, b
    garbage = await open_clients(stack, front.local_address, GARBAGE)

    await flood(front, pool, legit, garbage)

    assert (pool.health["a"].state, pool.health["b"].state) == (H, H)
    stats = front.forwarder.stats
    assert stats.flows_silent == 0
    assert stats.flows_ignored >= 2 * GARBAGE
    assert all(c.replies for c in legit)
    assert await served(stack, front, 4) == {b"a", b"b"}


async def test_the_ceiling_keeps_a_backend_when_every_one_falls_silent(
    stack: AsyncExitStack,
) -> None:
    a, b = [await start_backend(stack, name) for name in ("a", "b")]
    health = HealthConfig(unhealthy_after=2, ejection_s=60.0)  # max_ejection_percent: 50
    front, pool = open_front(stack, [a, b], health)
    garbage = await open_clients(stack, front.local_address, GARBAGE)

    await flood(front, pool, [], garbage)  # nobody gets an answer: every flow is SILENT

    states = sorted(t.state.value for t in pool.health.values())
    assert states == [E.value, H.value]
    kept = next(name for name, t in pool.health.items() if t.state is H)
    assert pool.health[kept].held > 0  # its failures did reach the budget
    assert pool.has_available_backend()
    assert await served(stack, front, 3) == {kept.encode()}


async def test_a_backend_that_passes_health_checks_is_not_ejected_by_silence(
    stack: AsyncExitStack,
) -> None:
    (a,) = [await start_backend(stack, "a")]
    health = HealthConfig(
        interval_s=0.05, timeout_s=0.5, unhealthy_after=2, ejection_s=60.0, max_ejection_percent=100
    )
    front, pool = open_front(stack, [a], health)
    pool.start_health_checks()
    stack.push_async_callback(pool.close)
    garbage = await open_clients(stack, front.local_address, GARBAGE)

    await flood(front, pool, [], garbage)

    assert not pool.health["a"].transitions  # never ejected, not even for a moment
    stats = front.forwarder.stats
    assert stats.flows_silent >= 2 * GARBAGE  # judged silent, discounted
    assert stats.no_backend == 0
    assert await served(stack, front, 2) == {b"a"}


async def test_failing_active_checks_eject_past_the_ceiling(stack: AsyncExitStack) -> None:
    a, b = [await start_backend(stack, name) for name in ("a", "b")]
    health = HealthConfig(interval_s=0.05, timeout_s=0.2, unhealthy_after=2, ejection_s=60.0)
    pool = udp_pool("game", {"a": a.port, "b": b.port}, health)
    await a.kill()
    await b.kill()  # both ports now answer ICMP port unreachable
    pool.start_health_checks()
    stack.push_async_callback(pool.close)
    async with asyncio.timeout(TIMEOUT):
        while not all(t.state is E for t in pool.health.values()):
            await asyncio.sleep(0.02)
    assert not pool.has_available_backend()
