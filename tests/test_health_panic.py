"""Issue #12 (what the soak test found): the health panic threshold, Envoy's
healthy_panic_threshold, on real sockets. Backends whose health checks time out while
they still answer requests (as under CPU starvation) get traffic when too few of a
service's backends are healthy, instead of every request getting 503."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import http_backend, service

from netsched_client import NoBackend
from netsched_edge.balancing.health import panic
from netsched_edge.config import ConfigError, HealthConfig, parse_config
from netsched_edge.demo_backends import DemoHTTPServer

# The checks ask for a path the demo backends serve as a request: 300 ms, beyond the
# checks' 100 ms timeout. Requests (timeout_s 10) are answered. One failed check ejects.
STARVED_CHECKS = dict(interval_s=0.1, timeout_s=0.1, unhealthy_after=1, ejection_s=30)
SLOW_MS = 300


def _health(**kwargs: object) -> HealthConfig:
    return HealthConfig(path="/slow-health", **{**STARVED_CHECKS, **kwargs})  # type: ignore[arg-type]


async def _ejected(edge, service_name: str, count: int) -> None:
    """Wait until `count` backends of the service are out by their checks."""
    pool = edge.dispatcher.pools[service_name]
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(10):
        while sum(not t.available(loop.time()) for t in pool.health.values()) < count:
            await asyncio.sleep(0.05)


async def _panic_gauge(edge, service_name: str) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.admin_port)
    writer.write(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
    body = (await asyncio.wait_for(reader.read(), 10)).partition(b"\r\n\r\n")[2]
    writer.close()
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "netsched_edge_service_panic" and sample.labels == {
                "service": service_name
            }:
                return sample.value
    raise AssertionError("no netsched_edge_service_panic sample")


async def test_a_lone_backend_failing_its_checks_still_serves_in_panic(
    start_server, start_edge, open_client, caplog: pytest.LogCaptureFixture
) -> None:
    starved = DemoHTTPServer("starved", base_ms=SLOW_MS, cold_ms=0)
    port = await start_server(starved)
    edge = await start_edge(
        service("api", http_backend("starved", port), health=_health()),
        admin_host="127.0.0.1",
        admin_port=0,
    )
    await _ejected(edge, "api", 1)
    session = await open_client(edge)
    with caplog.at_level(logging.WARNING, logger="netsched.edge.pool"):
        responses = await asyncio.gather(*(session.request("api", b"x") for _ in range(3)))
    assert [(r.status, r.backend) for r in responses] == [(200, "starved")] * 3
    assert await _panic_gauge(edge, "api") == 1
    (line,) = [r.getMessage() for r in caplog.records if "panic" in r.getMessage()]
    assert line == (
        "service api: 0 of 1 backends healthy, under panic_threshold_percent 50: "
        "panic, routing to all of them"
    )


async def test_without_panic_the_same_backend_gets_no_traffic(
    start_server, start_edge, open_client
) -> None:
    starved = DemoHTTPServer("starved", base_ms=SLOW_MS, cold_ms=0)
    port = await start_server(starved)
    edge = await start_edge(
        service("api", http_backend("starved", port), health=_health(panic_threshold_percent=0)),
        admin_host="127.0.0.1",
        admin_port=0,
    )
    await _ejected(edge, "api", 1)
    session = await open_client(edge)
    served_before = starved.requests  # the checks count as requests for this backend
    with pytest.raises(NoBackend, match="no healthy backend"):
        await session.request("api", b"x")
    assert await _panic_gauge(edge, "api") == 0
    assert starved.requests - served_before <= 1  # a check at most, never the request


async def test_panic_spreads_over_all_backends_only_under_the_threshold(
    start_server, start_edge, open_client
) -> None:
    """Three backends, two failing checks: 1/3 healthy < 50 %, all three serve. Two
    backends, one failing: 1/2 is not under 50 %, the healthy one takes everything."""
    healthy = [DemoHTTPServer(f"ok{i}", base_ms=1, cold_ms=0) for i in range(2)]
    starved = [DemoHTTPServer(f"starved{i}", base_ms=SLOW_MS, cold_ms=0) for i in range(2)]
    ports = [await start_server(server) for server in (*healthy, *starved)]
    # The healthy backends answer the check path in 1 ms, the starved ones in 300.
    edge = await start_edge(
        service(
            "three",
            http_backend("ok0", ports[0]),
            http_backend("starved0", ports[2]),
            http_backend("starved1", ports[3]),
            policy="round-robin",
            health=_health(),
        ),
        service(
            "two",
            http_backend("ok1", ports[1]),
            http_backend("starved0", ports[2]),
            policy="round-robin",
            health=_health(),
        ),
        admin_host="127.0.0.1",
        admin_port=0,
    )
    await _ejected(edge, "three", 2)
    await _ejected(edge, "two", 1)
    session = await open_client(edge)
    three = await asyncio.gather(*(session.request("three", b"x") for _ in range(6)))
    assert {r.backend for r in three} == {"ok0", "starved0", "starved1"}
    assert all(r.status == 200 for r in three)
    two = await asyncio.gather(*(session.request("two", b"x") for _ in range(6)))
    assert {r.backend for r in two} == {"ok1"}
    assert (await _panic_gauge(edge, "three"), await _panic_gauge(edge, "two")) == (1, 0)


def test_panic_is_under_the_threshold_share() -> None:
    assert panic(0, 1, 50) and not panic(1, 1, 50)
    assert panic(1, 3, 50) and not panic(1, 2, 50) and not panic(2, 3, 50)
    assert not panic(0, 4, 0) and panic(9, 10, 100) and not panic(10, 10, 100)
    with pytest.raises(ValueError, match=r"0\.\.100"):
        panic(0, 1, 101)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("101", "must be between 0 and 100, got 101"),
        ("-1", "must be between 0 and 100, got -1"),
        ('"half"', "expected an integer, got 'half'"),
    ],
)
def test_the_threshold_is_checked_with_its_line(value: str, message: str) -> None:
    text = (
        '[[services]]\nname = "api"\n[services.health]\n'
        f"panic_threshold_percent = {value}\n"
        '[[services.backends]]\nkind = "http"\naddress = "127.0.0.1:1"\n'
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, file="edge.toml")
    assert str(caught.value) == (
        f"edge.toml:4: services[0].health.panic_threshold_percent: {message}"
    )
    good = parse_config(text.replace(f"= {value}", "= 25"), file="edge.toml")
    assert good.services[0].health.panic_threshold_percent == 25
    assert HealthConfig().panic_threshold_percent == 50
