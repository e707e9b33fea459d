"""The backends of one service: their live slots, health, policy and wait queue.

`acquire()` hands out a backend slot for one request: immediately when a
healthy backend has room and nobody is waiting, otherwise after waiting in
the service's queue (balancing/queue.py: fair between tenants, i.e. client
connections, and within a tenant earliest deadline, then RFC 9218 urgency).
The queue holds at most the service's `max_queue` requests (beyond: 503). A
request still queued at its deadline fails with `DeadlineExceeded` (504); one
without a deadline, or with a later one, waits at most `queue_timeout_s`
([limits]) and then fails with `NoBackend` (503, as HAProxy's `timeout
queue`); nothing waits silently. A freed slot is handed to the waiter it
wakes: a request that arrives meanwhile queues behind it instead of taking
the slot, so the queue's order is the order slots are given in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Hashable

from netsched_client.errors import DeadlineExceeded, NoBackend

from .backends.base import Backend
from .balancing.health import HealthTracker, ejection_allowed, panic
from .balancing.policy import BackendSlot, make_policy
from .balancing.queue import DeadlineQueue, QueueFull
from .config import LimitsConfig, ServiceConfig

log = logging.getLogger("netsched.edge.pool")

DEFAULT_QUEUE_TIMEOUT_S = LimitsConfig().queue_timeout_s


class ServicePool:
    def __init__(
        self,
        config: ServiceConfig,
        backends: dict[str, Backend],
        *,
        rng: random.Random,
        queue_limit: int | None = None,
        clock: Callable[[], float],
        queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S,
    ) -> None:
        """`queue_limit` None: the service's `max_queue`."""
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
        limit = config.max_queue if queue_limit is None else queue_limit
        self._queue: DeadlineQueue[asyncio.Future[None]] = DeadlineQueue(limit)
        self.queue_timeout_s = queue_timeout_s
        self._woken: set[asyncio.Future[None]] = set()  # handed a freed slot, not yet resumed
        self._checks: list[asyncio.Task[None]] = []
        # Requests turned away by the queue, by reason ("full", "timeout"; metrics).
        self.queue_rejections: dict[str, int] = {"full": 0, "timeout": 0}
        # Too few backends healthy: all of them take traffic (health.panic), as of the last
        # choice; metrics judge it again at scrape time.
        self.panic = False

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def acquire(
        self,
        key: str | None,
        urgency: int,
        deadline_at: float | None,
        exclude: set[str],
        tenant: Hashable = None,
    ) -> BackendSlot:
        """A slot for one request; `tenant` (its connection; None: shared) is its share of
        the queue. Raises NoBackend (503) or DeadlineExceeded (504)."""
        give_up_at = self._clock() + self.queue_timeout_s
        woken = False
        while True:
            try:
                self._check_available(exclude)
            except NoBackend:
                if woken and self._spare() > 0:
                    self._wake_one()  # the slot handed to us may suit another request
                raise
            if woken or not self._queue:
                slot = self._try_choose(key, exclude) if woken or self._spare() > 0 else None
                if slot is not None:
                    if self._queue and self._spare() > 0:
                        self._wake_one()  # several slots came free at once
                    return slot
            elif self._spare() > 0:
                self._wake_one()  # room that nobody was handed: the queue's turn first
            woken = await self._wait_turn(urgency, deadline_at, tenant, give_up_at)

    def held_ejections(self) -> dict[str, int]:
        """Per backend: passive ejections the ejection ceiling held back (metrics)."""
        return {name: tracker.held for name, tracker in self.health.items()}

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

    def _check_available(self, exclude: set[str]) -> None:
        self._refresh_health()
        if not any(s.available and s.name not in exclude for s in self.slots):
            raise NoBackend(f"no healthy backend for service {self.config.name!r}")

    def _spare(self) -> int:
        """Free slots on available backends not yet handed to a woken waiter."""
        free = sum(max(0, self._caps[s.name] - s.in_flight) for s in self.slots if s.available)
        return free - len(self._woken)

    def _try_choose(self, key: str | None, exclude: set[str]) -> BackendSlot | None:
        full = {s.name for s in self.slots if s.in_flight >= self._caps[s.name]}
        chosen = self._policy.choose(self.slots, key, exclude | full)
        if chosen is not None:
            chosen.in_flight += 1
            self._policy.record(chosen, key)
        return chosen

    def _refresh_health(self) -> None:
        now = self._clock()
        healthy = {name: tracker.available(now) for name, tracker in self.health.items()}
        threshold = self.config.health.panic_threshold_percent
        panicking = panic(sum(healthy.values()), len(healthy), threshold)
        if panicking != self.panic:
            self.panic = panicking
            log.warning(
                "service %s: %d of %d backends healthy, %s panic_threshold_percent %d%s",
                self.config.name,
                sum(healthy.values()),
                len(healthy),
                "under" if panicking else "back at",
                threshold,
                ": panic, routing to all of them" if panicking else ": panic over",
            )
        for slot in self.slots:
            slot.available = panicking or healthy[slot.name]

    async def _wait_turn(
        self, urgency: int, deadline_at: float | None, tenant: Hashable, give_up_at: float
    ) -> bool:
        """Wait to be woken (True); raise at the deadline or `give_up_at`."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            self._queue.push(waiter, deadline=deadline_at, urgency=urgency, tenant=tenant)
        except QueueFull:
            self.queue_rejections["full"] += 1
            raise NoBackend(
                f"service {self.config.name!r} is saturated ({len(self._queue)} requests "
                f"queued, max_queue {self.config.max_queue})"
            ) from None
        by_deadline = deadline_at is not None and deadline_at <= give_up_at
        until = deadline_at if by_deadline and deadline_at is not None else give_up_at
        resumed = False
        try:
            async with asyncio.timeout(max(0.0, until - self._clock())):
                await waiter
            resumed = True
        except TimeoutError:
            if by_deadline:
                raise DeadlineExceeded("deadline passed while queued for a backend") from None
            self.queue_rejections["timeout"] += 1
            raise NoBackend(
                f"service {self.config.name!r}: no backend slot within queue_timeout_s="
                f"{self.queue_timeout_s:g} ({len(self._queue)} requests queued)"
            ) from None
        finally:
            self._queue.remove(waiter)
            if waiter in self._woken:
                self._woken.discard(waiter)
                if not resumed:
                    self._wake_one()  # woken, then cancelled or timed out: pass the slot on
        return True

    def _wake_one(self) -> None:
        """Hand a freed slot to the queue's next request."""
        while (waiter := self._queue.pop()) is not None:
            if not waiter.done():
                waiter.set_result(None)
                self._woken.add(waiter)
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
                self._woken.add(waiter)
