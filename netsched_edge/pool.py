"""The backends of one service: their live slots, health, policy and wait queue.

`acquire()` hands out a backend slot for one request: immediately when a
healthy backend has room, otherwise after waiting in the service's deadline
queue (earliest deadline, then RFC 9218 urgency). A request still queued at
its deadline fails with `DeadlineExceeded`; nothing waits silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

from netsched_client.errors import DeadlineExceeded, NoBackend

from .backends.base import Backend
from .balancing.health import HealthTracker, ejection_allowed
from .balancing.policy import BackendSlot, make_policy
from .balancing.queue import DeadlineQueue, QueueFull
from .config import ServiceConfig

log = logging.getLogger("netsched.edge.pool")


class ServicePool:
    def __init__(
        self,
        config: ServiceConfig,
        backends: dict[str, Backend],
        *,
        rng: random.Random,
        queue_limit: int,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.backends = backends
        self._clock = clock
        self._policy = make_policy(config.policy, rng=rng, load_cap=config.load_cap)
        self._caps = {b.name: b.max_in_flight for b in config.backends}
        self.slots = [BackendSlot(name=b.name, weight=b.weight) for b in config.backends]
        health = config.health
        self.health = {
            b.name: HealthTracker(
                unhealthy_after=health.unhealthy_after,
                healthy_after=health.healthy_after,
                ejection_s=health.ejection_s,
            )
            for b in config.backends
        }
        self._queue: DeadlineQueue[asyncio.Future[None]] = DeadlineQueue(queue_limit)
        self._checks: list[asyncio.Task[None]] = []

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def acquire(
        self, key: str | None, urgency: int, deadline_at: float | None, exclude: set[str]
    ) -> BackendSlot:
        while True:
            slot = self._try_choose(key, exclude)
            if slot is not None:
                return slot
            await self._wait_turn(urgency, deadline_at)

    def has_available_backend(self) -> bool:
        now = self._clock()
        return any(tracker.available(now) for tracker in self.health.values())

    def pick(self, key: str | None) -> Backend | None:
        """A healthy backend for a long-lived flow (datagrams), not counted as in flight."""
        self._refresh_health()
        chosen = self._policy.choose(self.slots, key)
        return None if chosen is None else self.backends[chosen.name]

    def release(self, slot: BackendSlot, *, ok: bool | None) -> None:
        """Return a slot; `ok` feeds passive health (None: the outcome says nothing)."""
        slot.in_flight -= 1
        if ok is not None:
            self.observe(slot.name, ok=ok)
        self._wake_one()

    def observe(self, name: str, *, ok: bool, now: float | None = None) -> None:
        """A passive outcome for backend `name`: a failure ejects only under the service's
        ejection ceiling (health.py)."""
        now = self._clock() if now is None else now
        tracker = self.health[name]
        if ok:
            tracker.on_success(now)
            return
        was = tracker.state
        tracker.on_failure(now, may_eject=self._may_eject(name, now))
        if tracker.state is not was:  # once per transition, not once per failure
            log.info("backend %s failed: %s", name, tracker.state.value)

    def _may_eject(self, name: str, now: float) -> bool:
        out = sum(1 for n, t in self.health.items() if n != name and not t.available(now))
        return ejection_allowed(out, len(self.health), self.config.health.max_ejection_percent)

    def start_health_checks(self) -> None:
        for name, backend in self.backends.items():
            self._checks.append(asyncio.create_task(self._check_loop(name, backend)))

    async def close(self) -> None:
        for task in self._checks:
            task.cancel()
        for task in self._checks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for backend in self.backends.values():
            await backend.close()

    def _try_choose(self, key: str | None, exclude: set[str]) -> BackendSlot | None:
        self._refresh_health()
        if not any(s.available and s.name not in exclude for s in self.slots):
            raise NoBackend(f"no healthy backend for service {self.config.name!r}")
        full = {s.name for s in self.slots if s.in_flight >= self._caps[s.name]}
        chosen = self._policy.choose(self.slots, key, exclude | full)
        if chosen is not None:
            chosen.in_flight += 1
            self._policy.record(chosen, key)
        return chosen

    def _refresh_health(self) -> None:
        now = self._clock()
        for slot in self.slots:
            slot.available = self.health[slot.name].available(now)

    async def _wait_turn(self, urgency: int, deadline_at: float | None) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            self._queue.push(waiter, deadline=deadline_at, urgency=urgency)
        except QueueFull:
            raise NoBackend(
                f"service {self.config.name!r} is saturated ({len(self._queue)} requests queued)"
            ) from None
        timeout = None if deadline_at is None else max(0.0, deadline_at - self._clock())
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            raise DeadlineExceeded("deadline passed while queued for a backend") from None
        finally:
            self._queue.remove(waiter)

    def _wake_one(self) -> None:
        while (waiter := self._queue.pop()) is not None:
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _check_loop(self, name: str, backend: Backend) -> None:
        health = self.config.health
        tracker = self.health[name]
        while True:
            try:
                ok = await backend.check(health.timeout_s)
            except Exception as exc:  # a check must never kill the loop
                log.debug("health check of %s raised %r", name, exc)
                ok = False
            was = tracker.available(self._clock())
            tracker.on_check(ok, self._clock())
            if tracker.available(self._clock()) and not was:
                self._wake_all()
            await asyncio.sleep(health.interval_s)

    def _wake_all(self) -> None:
        # A backend came back: every queued request may now find room.
        while (waiter := self._queue.pop()) is not None:
            if not waiter.done():
                waiter.set_result(None)
