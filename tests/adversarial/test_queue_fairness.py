"""One connection's flood of urgent requests must not starve the others in a service queue.

The queue (balancing/queue.py) is sans-IO: driven directly, and against a plain
model. Then the pool hands its slots out in that order (`ServicePool.acquire`
with a tenant per connection), with a real HTTP backend behind it.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from netsched_edge.backends import make_backend
from netsched_edge.backends.base import BackendRequest, collect, iter_chunks
from netsched_edge.balancing.policy import BackendSlot
from netsched_edge.balancing.queue import DeadlineQueue
from netsched_edge.config import BackendConfig, ServiceConfig
from netsched_edge.demo_backends import DemoHTTPServer
from netsched_edge.pool import ServicePool


@dataclass(eq=False)
class Req:
    tenant: str
    label: str


def test_a_flood_of_urgent_requests_gets_one_turn_per_round() -> None:
    queue: DeadlineQueue[Req] = DeadlineQueue(limit=100)
    for i in range(30):  # everything as urgent as it gets, and a tight deadline
        queue.push(Req("flood", f"f{i}"), deadline=1.0, urgency=0, tenant="flood")
    for i in range(5):
        queue.push(Req("bulk", f"b{i}"), deadline=None, urgency=7, tenant="bulk")
        queue.push(Req("web", f"w{i}"), deadline=None, urgency=3, tenant="web")

    served = [queue.pop() for _ in range(15)]

    assert Counter(r.tenant for r in served if r) == {"flood": 5, "bulk": 5, "web": 5}
    # Inside a round, deadline then urgency still order the tenants' heads.
    assert [r.label for r in served[:6] if r] == ["f0", "w0", "b0", "f1", "w1", "b1"]
    assert all(r.tenant == "flood" for r in (queue.pop() for _ in range(25)) if r)
    assert queue.pop() is None and len(queue) == 0 and queue.tenants == 0


def test_a_tenant_orders_its_own_requests_by_deadline_then_urgency() -> None:
    queue: DeadlineQueue[Req] = DeadlineQueue(limit=10)
    queue.push(Req("a", "lax"), deadline=None, urgency=0, tenant="a")
    queue.push(Req("a", "soon"), deadline=5.0, urgency=7, tenant="a")
    queue.push(Req("a", "urgent"), deadline=None, urgency=1, tenant="a")
    queue.push(Req("a", "sooner"), deadline=4.0, urgency=7, tenant="a")
    assert [r.label for r in iter(queue.pop, None)] == ["sooner", "soon", "lax", "urgent"]


def test_leaving_the_queue_for_a_moment_earns_no_credit() -> None:
    queue: DeadlineQueue[Req] = DeadlineQueue(limit=10)
    for i in range(4):
        queue.push(Req("patient", f"p{i}"), deadline=None, urgency=7, tenant="patient")
    served = []
    for i in range(4):  # one urgent request at a time, re-sent as soon as it is served
        queue.push(Req("eager", f"e{i}"), deadline=None, urgency=0, tenant="eager")
        served.append(queue.pop())
        served.append(queue.pop())
    assert [r.label for r in served if r] == ["e0", "p0", "e1", "p1", "e2", "p2", "e3", "p3"]


_OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("push"),
            st.integers(0, 3),  # tenant
            st.one_of(st.none(), st.integers(0, 5).map(float)),
            st.integers(0, 7),
        ),
        st.tuples(st.just("pop")),
        st.tuples(st.just("remove"), st.integers(0, 50)),
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(_OPS)
def test_matches_a_round_by_round_model(ops: list[tuple[object, ...]]) -> None:
    """Against a plain model: per tenant a round and a sorted list; the next item is the
    head of the tenant with the lowest (round, head key)."""
    queue: DeadlineQueue[Req] = DeadlineQueue(limit=20)
    rounds: dict[int, int] = {}  # tenant -> its round (kept while it has items or is ahead)
    items: dict[int, list[tuple[float, int, int, Req]]] = {}
    current = 0  # the round of the last item served
    seq = 0
    pushed: list[Req] = []
    for op in ops:
        if op[0] == "push":
            tenant, deadline, urgency = op[1], op[2], op[3]
            assert isinstance(tenant, int) and isinstance(urgency, int)
            if len(queue) == 20:
                continue
            req = Req(str(tenant), str(seq))
            queue.push(req, deadline=deadline, urgency=urgency, tenant=tenant)  # type: ignore[arg-type]
            if not items.get(tenant):
                rounds[tenant] = max(current, rounds.get(tenant, current))
            key = math.inf if deadline is None else float(deadline)  # type: ignore[arg-type]
            items.setdefault(tenant, []).append((key, urgency, seq, req))
            items[tenant].sort(key=lambda e: e[:3])
            pushed.append(req)
            seq += 1
        elif op[0] == "pop":
            waiting = [t for t, entries in items.items() if entries]
            got = queue.pop()
            if not waiting:
                assert got is None
                continue
            tenant = min(waiting, key=lambda t: (rounds[t], *items[t][0][:3]))
            assert got is items[tenant].pop(0)[3]
            current = rounds[tenant]
            rounds[tenant] += 1
        else:
            index = op[1]
            assert isinstance(index, int)
            if index >= len(pushed):
                continue
            req = pushed[index]
            entries = items.get(int(req.tenant), [])
            live = any(e[3] is req for e in entries)
            assert queue.remove(req) is live
            items[int(req.tenant)] = [e for e in entries if e[3] is not req]
        assert len(queue) == sum(len(e) for e in items.values())


def slow_pool(port: int) -> ServicePool:
    backend = BackendConfig(name="h", kind="http", host="127.0.0.1", port=port, max_in_flight=1)
    config = ServiceConfig(name="api", backends=(backend,), policy="round-robin")
    return ServicePool(
        config,
        {"h": make_backend(backend, config.health)},
        rng=random.Random(1),
        clock=asyncio.get_running_loop().time,
    )


async def test_the_pool_hands_slots_out_fairly_between_connections(start_server) -> None:
    port = await start_server(DemoHTTPServer("h", base_ms=1, cold_ms=0))
    pool = slow_pool(port)
    order: list[str] = []

    async def request(tenant: str, urgency: int) -> None:
        slot = await pool.acquire("api", urgency, None, set(), tenant=tenant)
        order.append(tenant)
        await serve(pool, slot)

    first = await pool.acquire("api", 0, None, set(), tenant="flood")
    tasks = [asyncio.create_task(request("flood", 0)) for _ in range(20)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(request("victim", 7)))
    await asyncio.sleep(0)
    assert pool.queued == 21
    await serve(pool, first)
    async with asyncio.timeout(10):
        await asyncio.gather(*tasks)

    assert order.index("victim") <= 1  # the first round: the flood's head, then the victim
    assert pool.queued == 0


async def serve(pool: ServicePool, slot: BackendSlot) -> None:
    """A real exchange with the backend on the slot, then the slot back."""
    backend = pool.backends[slot.name]
    try:
        response = await backend.exchange(
            BackendRequest(service="api", meta={}, affinity=None, length=1), iter_chunks(b"x"), 5.0
        )
        await collect(response.body, 1 << 16)
    finally:
        pool.release(slot, ok=True)


async def test_a_freed_slot_goes_to_the_waiter_it_wakes(start_server) -> None:
    port = await start_server(DemoHTTPServer("h", base_ms=1, cold_ms=0))
    pool = slow_pool(port)
    first = await pool.acquire("api", 3, None, set(), tenant="a")
    waiter = asyncio.create_task(pool.acquire("api", 7, None, set(), tenant="b"))
    await asyncio.sleep(0)
    assert pool.queued == 1

    async def release_then_ask() -> BackendSlot:
        pool.release(first, ok=True)  # wakes b: the slot is b's now
        return await pool.acquire("api", 0, None, set(), tenant="c")

    newcomer = asyncio.create_task(release_then_ask())
    slot = await asyncio.wait_for(waiter, 2.0)
    await asyncio.sleep(0)
    assert not newcomer.done() and pool.queued == 1  # c queued behind instead of barging
    pool.release(slot, ok=True)
    pool.release(await asyncio.wait_for(newcomer, 2.0), ok=True)


async def test_a_woken_waiter_that_is_cancelled_passes_its_slot_on(start_server) -> None:
    port = await start_server(DemoHTTPServer("h", base_ms=1, cold_ms=0))
    pool = slow_pool(port)
    first = await pool.acquire("api", 3, None, set(), tenant="a")
    gone = asyncio.create_task(pool.acquire("api", 3, None, set(), tenant="b"))
    await asyncio.sleep(0)
    stays = asyncio.create_task(pool.acquire("api", 3, None, set(), tenant="c"))
    await asyncio.sleep(0)
    pool.release(first, ok=True)  # wakes b ...
    gone.cancel()  # ... which leaves before it runs
    slot = await asyncio.wait_for(stays, 2.0)
    pool.release(slot, ok=True)
    assert pool.queued == 0
