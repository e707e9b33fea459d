"""The ejection ceiling on passive outcomes (Envoy's max_ejection_percent), in the pool.

Failed requests are fed through `ServicePool.release` as the dispatcher does;
no request is sent, so no socket is involved (the pool is sans-IO but for its
health-check tasks, which are not started here). The clock is a variable.
"""

from __future__ import annotations

import random

import pytest

from netsched_client.errors import NoBackend
from netsched_edge.backends import make_backend
from netsched_edge.balancing.health import Health, ejection_allowed
from netsched_edge.config import BackendConfig, HealthConfig, ServiceConfig
from netsched_edge.pool import ServicePool


def http_pool(count: int, max_percent: int, clock: list[float]) -> ServicePool:
    health = HealthConfig(unhealthy_after=2, ejection_s=30.0, max_ejection_percent=max_percent)
    backends = tuple(
        BackendConfig(name=f"b{i}", kind="http", host="127.0.0.1", port=9) for i in range(count)
    )
    config = ServiceConfig(name="api", backends=backends, policy="round-robin", health=health)
    return ServicePool(
        config,
        {b.name: make_backend(b, health) for b in backends},
        rng=random.Random(1),
        queue_limit=16,
        clock=lambda: clock[0],
    )


@pytest.mark.parametrize(
    ("count", "max_percent", "ejectable"),
    [(1, 50, 0), (2, 50, 1), (3, 50, 1), (4, 50, 2), (3, 100, 3), (3, 0, 0), (10, 10, 1)],
)
async def test_failing_every_backend_ejects_at_most_the_ceiling(
    count: int, max_percent: int, ejectable: int
) -> None:
    clock = [0.0]
    pool = http_pool(count, max_percent, clock)
    for _ in range(5 * count):
        try:
            slot = await pool.acquire(None, 3, None, set())
        except NoBackend:
            break  # every backend is out
        pool.release(slot, ok=False)
        clock[0] += 0.01
    ejected = [n for n, t in pool.health.items() if t.state is Health.EJECTED]
    assert len(ejected) == ejectable
    assert pool.has_available_backend() == (ejectable < count)


async def test_a_held_backend_is_ejected_once_another_comes_back() -> None:
    clock = [0.0]
    pool = http_pool(2, 50, clock)
    for name in ("b0", "b1", "b1"):
        pool.observe(name, ok=False)
        pool.observe(name, ok=False)
    assert (pool.health["b0"].state, pool.health["b1"].state) == (Health.EJECTED, Health.HEALTHY)
    assert pool.health["b1"].held == 3
    assert pool.held_ejections() == {"b0": 0, "b1": 3}
    clock[0] = 31.0  # b0's ejection expires: it is available again (probing)
    pool.observe("b1", ok=False)
    assert pool.health["b1"].state is Health.EJECTED


def test_envoy_rule() -> None:
    assert ejection_allowed(0, 2, 50)
    assert not ejection_allowed(1, 2, 50)
    assert not ejection_allowed(0, 1, 99)
    assert ejection_allowed(0, 1, 100)
    with pytest.raises(ValueError, match="max_percent"):
        ejection_allowed(0, 1, 101)
