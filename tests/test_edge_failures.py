"""Dead backends, saturation and queueing at the edge, over real sockets."""

from __future__ import annotations

import asyncio
from collections import Counter

from support import http_backend, service

from netsched_client import SLO, BackendFailed, NetSchedError
from netsched_edge.config import HealthConfig
from netsched_edge.demo_backends import DemoHTTPServer


async def test_backend_killed_mid_load_loses_nothing(start_server, start_edge, open_client) -> None:
    servers = [DemoHTTPServer(f"b{i}", base_ms=15, cold_ms=0) for i in range(3)]
    ports = [await start_server(s) for s in servers]
    edge = await start_edge(
        service(
            "api",
            *(http_backend(s.name, p) for s, p in zip(servers, ports, strict=True)),
            policy="least-in-flight",
            retries=2,
        )
    )
    session = await open_client(edge)
    slo = SLO(idempotent=True, deadline_ms=5000)

    async def one(i: int) -> str | None:
        response = await session.request("api", b"req-%d" % i, slo=slo)
        assert response.body == b"req-%d" % i
        return response.backend

    tasks = []
    for i in range(90):
        tasks.append(asyncio.create_task(one(i)))
        if i == 30:
            await servers[0].kill()
        await asyncio.sleep(0.004)
    backends = Counter(await asyncio.gather(*tasks))  # raises if any request was lost
    assert sum(backends.values()) == 90
    assert backends["b1"] + backends["b2"] > 60
    # Requests that hit the dead backend were retried elsewhere, not failed.
    retries = edge.dispatcher.metrics.registry.get_sample_value(
        "netsched_edge_retries_total", {"service": "api"}
    )
    assert retries is not None and retries >= 1


async def test_non_idempotent_request_is_not_retried(start_server, start_edge, open_client) -> None:
    server = DemoHTTPServer("only", base_ms=300, cold_ms=0)
    port = await start_server(server)
    other = await start_server(DemoHTTPServer("other", base_ms=1, cold_ms=0))
    edge = await start_edge(
        service(
            "api", http_backend("only", port), http_backend("other", other), policy="round-robin"
        )
    )
    session = await open_client(edge)
    first = asyncio.create_task(session.request("api", b"a"))
    second = asyncio.create_task(session.request("api", b"b"))
    await asyncio.sleep(0.1)
    await server.kill()
    results = await asyncio.gather(first, second, return_exceptions=True)
    failed = [r for r in results if isinstance(r, BackendFailed)]
    assert len(failed) == 1  # the request on the killed backend reports it; no silent replay
    assert any(getattr(r, "backend", None) == "other" for r in results)


async def test_queue_serves_by_deadline_then_urgency(start_server, start_edge, open_client) -> None:
    port = await start_server(DemoHTTPServer("one", base_ms=60, cold_ms=0))
    edge = await start_edge(service("api", http_backend("one", port, max_in_flight=1)))
    session = await open_client(edge)
    blocker = asyncio.create_task(session.request("api", b"blocker"))
    await asyncio.sleep(0.02)
    order = {
        "late": SLO(deadline_ms=4000, urgency=0),
        "none": SLO(urgency=0),
        "soon": SLO(deadline_ms=2000, urgency=7),
    }
    tasks = {}
    for name, slo in order.items():
        tasks[name] = asyncio.create_task(session.request("api", name.encode(), slo=slo))
        await asyncio.sleep(0.005)
    await blocker
    queued = {name: (await task).queue_ms for name, task in tasks.items()}
    assert queued["soon"] < queued["late"] < queued["none"], queued


async def test_queued_request_past_deadline_gets_504(start_server, start_edge, open_client) -> None:
    port = await start_server(DemoHTTPServer("one", base_ms=300, cold_ms=0))
    edge = await start_edge(service("api", http_backend("one", port, max_in_flight=1)))
    session = await open_client(edge)
    blocker = asyncio.create_task(session.request("api", b"blocker"))
    await asyncio.sleep(0.02)
    try:
        await session.request("api", b"x", slo=SLO(deadline_ms=50))
    except NetSchedError as exc:
        assert getattr(exc, "status", None) == 504
        assert "queued" in str(exc)
    else:
        raise AssertionError("expected 504")
    assert (await blocker).status == 200


async def test_dead_backend_ejected_then_restored(start_server, start_edge, open_client) -> None:
    server = DemoHTTPServer("flaky", base_ms=1, cold_ms=0)
    port = await start_server(server)
    healthy = await start_server(DemoHTTPServer("steady", base_ms=1, cold_ms=0))
    health = HealthConfig(
        interval_s=0.05, timeout_s=0.2, unhealthy_after=2, healthy_after=1, ejection_s=0.2
    )
    edge = await start_edge(
        service(
            "api",
            http_backend("flaky", port),
            http_backend("steady", healthy),
            policy="round-robin",
            health=health,
        )
    )
    session = await open_client(edge)
    await server.kill()
    await asyncio.sleep(0.4)  # active checks fail and eject it
    pool = edge.dispatcher.pools["api"]
    assert not pool.health["flaky"].available(asyncio.get_running_loop().time())
    backends = {(await session.request("api", b"x")).backend for _ in range(10)}
    assert backends == {"steady"}
    # Bring a server back on the same port: checks restore it.
    revived = DemoHTTPServer("flaky", base_ms=1, cold_ms=0, port=port)
    await start_server(revived)
    for _ in range(100):
        if pool.health["flaky"].available(asyncio.get_running_loop().time()):
            break
        await asyncio.sleep(0.05)
    backends = {(await session.request("api", b"x")).backend for _ in range(10)}
    assert backends == {"flaky", "steady"}
