"""From an incoming request to a backend response, under the request's SLO.

The dispatcher is protocol-agnostic: the native, HTTP/3 and HTTP/0.9 fronts
all hand it an `IncomingRequest` and stream back the `Outcome` it returns.
Every failure becomes a response status, never silence: unknown service 404,
no healthy backend or saturation 503, backend failure 502, deadline 504. A
backend's own answer, whatever its status, passes on with its headers and
body, marked `from_backend` so that the client never takes it for the edge's.
Idempotent requests are retried on another backend after a connection-level
failure (up to the service's `retries`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass, field

from netsched_client.errors import DeadlineExceeded, FramingError, NoBackend, Status
from netsched_client.proto.framing import HeaderFields, ResponseHead, encode_response_head
from netsched_client.proto.hq import SERVICE as WWW_SERVICE
from netsched_client.proto.slo import SLO

from .backends import make_backend
from .backends.base import (
    BackendRequest,
    BackendResponse,
    BackendUnavailable,
    IdleTimeoutBody,
    aclose_body,
    collect,
    iter_chunks,
)
from .balancing.policy import BackendSlot
from .config import BackendConfig, EdgeConfig, ServiceConfig
from .metrics import EdgeMetrics
from .pool import ServicePool

log = logging.getLogger("netsched.edge.dispatch")

# How often a pool replaced by a reload looks whether its requests have finished.
RETIRE_POLL_S = 0.1
TOO_EARLY = 425  # RFC 8470 §5.2: the backend refuses a request sent in early data


@dataclass(slots=True)
class IncomingRequest:
    service: str
    slo: SLO  # resolved: edge defaults < connection defaults < request
    body: AsyncIterator[bytes]
    received_at: float  # loop time
    meta: Mapping[str, str] = field(default_factory=dict)
    headers: HeaderFields = ()  # the client's HTTP header fields, for HTTP backends
    streaming: bool = False
    length: int | None = None  # the body's size, when it is complete before dispatch
    # Served from 0-RTT before the handshake completed (RFC 8470): HTTP backends are
    # told, and `confirmed()` returns once the handshake is done (what a 425 waits for).
    early: bool = False
    confirmed: Callable[[], Awaitable[object]] | None = None
    # Whose share of a service's queue this request waits in (its connection): one
    # connection flooding a service queues behind its own requests, not others'.
    tenant: Hashable = None


@dataclass(slots=True)
class Outcome:
    """A response head and its body; whoever takes it calls `aclose()` when done.

    A streamed body holds a backend slot and connection until it is read to its
    end or closed, so the front closes it in a `finally` on every path.
    """

    head: ResponseHead
    body: AsyncIterator[bytes]
    held: Held | None = None  # a collected body's bytes, charged to the memory budget

    async def aclose(self) -> None:
        if self.held is not None:
            self.held.clear()
        await aclose_body(self.body)


def error_outcome(status: Status, message: str) -> Outcome:
    return Outcome(ResponseHead(status=status, message=message), iter_chunks())


class MemoryBudget:
    """Request and response bytes the edge holds in its own buffers, over all connections.

    Against `[limits] memory_budget_mb`: once `used` reaches `limit`, new requests are
    shed with 503 (the edge sheds load before it swaps), while those under way go on.
    Callers charge what they hold and charge it back negative when they let go.
    """

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def over(self) -> bool:
        return self.used >= self.limit

    def charge(self, n: int) -> None:
        self.used += n


class Held:
    """The bytes one request holds right now, kept charged to a MemoryBudget."""

    __slots__ = ("_budget", "bytes")

    def __init__(self, budget: MemoryBudget) -> None:
        self._budget = budget
        self.bytes = 0

    def update(self, held: int) -> None:
        self._budget.charge(held - self.bytes)
        self.bytes = held

    def clear(self) -> None:
        self.update(0)


class _DeadlinePassed(TimeoutError):
    """The request's deadline, not a body timeout, ended the wait."""


class Dispatcher:
    def __init__(
        self,
        config: EdgeConfig,
        *,
        rng: random.Random | None = None,
        metrics: EdgeMetrics | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or EdgeMetrics()
        self._clock = clock or asyncio.get_running_loop().time
        self._rng = rng or random.Random()
        self.pools = {svc.name: self._pool(svc) for svc in _services(config)}
        self._started = False
        self._retiring: set[asyncio.Task[None]] = set()
        self.budget = MemoryBudget(config.limits.memory_budget_mb << 20)

    def _pool(self, svc: ServiceConfig) -> ServicePool:
        return ServicePool(
            svc,
            {b.name: make_backend(b, svc.health) for b in svc.backends},
            rng=self._rng,
            queue_limit=svc.max_queue,
            clock=self._clock,
        )

    def start(self) -> None:
        self._started = True
        for pool in self.pools.values():
            pool.start_health_checks()

    def reload(self, config: EdgeConfig, *, keep: frozenset[str] = frozenset()) -> None:
        """Serve by `config` from now on. A service whose configuration is unchanged (or
        named in `keep`) keeps its pool, slots and health; a changed one gets a new pool,
        and the old pool closes once its requests under way have finished."""
        pools: dict[str, ServicePool] = {}
        for svc in _services(config):
            current = self.pools.get(svc.name)
            if current is not None and (current.config == svc or svc.name in keep):
                pools[svc.name] = current
                continue
            pools[svc.name] = self._pool(svc)
            if self._started:
                pools[svc.name].start_health_checks()
        retired = [pool for name, pool in self.pools.items() if pools.get(name) is not pool]
        self.config, self.pools = config, pools
        self.budget.limit = config.limits.memory_budget_mb << 20
        for pool in retired:
            task = asyncio.create_task(_retire(pool))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        for pool in self.pools.values():
            await pool.close()

    async def handle(self, request: IncomingRequest) -> Outcome:
        outcome = await self._handle(request)
        # Unknown names share one label: a peer must not grow our label set.
        label = request.service if request.service in self.pools else "_unknown"
        self.metrics.observe_response(label, outcome.head.status)
        return outcome

    async def _handle(self, request: IncomingRequest) -> Outcome:
        pool = self.pools.get(request.service)
        if pool is None:
            return error_outcome(Status.NOT_FOUND, f"unknown service {request.service!r}")
        deadline_at = self._deadline_at(request)
        if deadline_at is not None and deadline_at <= self._clock():
            return error_outcome(Status.DEADLINE_EXCEEDED, "deadline passed on arrival")
        try:
            if request.streaming:
                return await self._stream(pool, request, deadline_at)
            return await self._unary(pool, request, deadline_at)
        except DeadlineExceeded as exc:
            return error_outcome(Status.DEADLINE_EXCEEDED, str(exc))
        except NoBackend as exc:
            return error_outcome(Status.NO_BACKEND, str(exc))

    def _deadline_at(self, request: IncomingRequest) -> float | None:
        if request.slo.deadline_ms is None:
            return None
        return request.received_at + request.slo.deadline_ms / 1000

    def _remaining(self, deadline_at: float | None) -> float | None:
        """Seconds left until the deadline (0 once past), None without one."""
        if deadline_at is None:
            return None
        return max(0.0, deadline_at - self._clock())

    async def _collect_request(
        self, pool: ServicePool, request: IncomingRequest, deadline_at: float | None
    ) -> bytes:
        """The whole request body: each piece within body_timeout_s, all by the deadline."""
        paced = IdleTimeoutBody(request.body, self.config.limits.body_timeout_s)
        try:
            async with asyncio.timeout(self._remaining(deadline_at)) as deadline:
                return await collect(paced, pool.config.max_body)
        except TimeoutError:
            # Which timer fired, not the clock read after it: uvloop's timers keep
            # milliseconds and may fire a fraction of one before the deadline.
            if deadline.expired():
                raise _DeadlinePassed from None
            raise

    def _timeout(self, pool: ServicePool, deadline_at: float | None) -> float:
        if deadline_at is None:
            return pool.config.timeout_s
        return max(0.0, min(pool.config.timeout_s, deadline_at - self._clock()))

    def _backend_request(self, request: IncomingRequest, length: int | None) -> BackendRequest:
        return BackendRequest(
            service=request.service,
            meta=dict(request.meta),
            headers=request.headers,
            affinity=request.slo.affinity,
            length=length,
            early_data=request.early,
        )

    async def _unary(
        self, pool: ServicePool, request: IncomingRequest, deadline_at: float | None
    ) -> Outcome:
        try:
            body = await self._collect_request(pool, request, deadline_at)
        except ValueError as exc:
            return error_outcome(Status.BAD_REQUEST, f"request {exc}")
        except _DeadlinePassed:
            return error_outcome(
                Status.DEADLINE_EXCEEDED, "deadline passed waiting for the request body"
            )
        except TimeoutError:
            return error_outcome(
                Status.REQUEST_TIMEOUT,
                f"request body silent for {self.config.limits.body_timeout_s:g} s",
            )
        held = Held(self.budget)
        held.update(len(body))  # the body waits in memory for (each) backend
        try:
            return await self._answer_unary(pool, request, body, deadline_at)
        finally:
            held.clear()

    async def _answer_unary(
        self, pool: ServicePool, request: IncomingRequest, body: bytes, deadline_at: float | None
    ) -> Outcome:
        outcome = await self._attempts(pool, request, body, deadline_at)
        if outcome.head.status != TOO_EARLY or not request.early or request.confirmed is None:
            return outcome
        # RFC 8470 §5.2: the backend will not act on early data. The body is in hand,
        # so wait for the handshake (a replay never completes one) and ask once more.
        try:
            async with asyncio.timeout(self._remaining(deadline_at)):
                await request.confirmed()
        except TimeoutError:
            return error_outcome(Status.DEADLINE_EXCEEDED, "deadline passed awaiting the handshake")
        request.early = False
        return await self._attempts(pool, request, body, deadline_at)

    async def _attempts(
        self, pool: ServicePool, request: IncomingRequest, body: bytes, deadline_at: float | None
    ) -> Outcome:
        """Backends in turn until one answers (more than one only for idempotent requests)."""
        breq = self._backend_request(request, len(body))
        key = request.slo.affinity or request.service
        attempts = 1 + (pool.config.retries if request.slo.idempotent else 0)
        tried: set[str] = set()
        failure = "no attempt made"
        for _ in range(attempts):
            queued_at = self._clock()
            slot = await pool.acquire(
                key, request.slo.urgency or 0, deadline_at, tried, tenant=request.tenant
            )
            queue_ms = (self._clock() - queued_at) * 1000
            outcome, failure = await self._attempt(pool, slot, breq, body, deadline_at, queue_ms)
            if outcome is not None:
                return outcome
            tried.add(slot.name)
            self.metrics.retries.labels(request.service).inc()
        return error_outcome(Status.BACKEND_ERROR, failure)

    async def _attempt(
        self,
        pool: ServicePool,
        slot: BackendSlot,
        breq: BackendRequest,
        body: bytes,
        deadline_at: float | None,
        queue_ms: float,
    ) -> tuple[Outcome | None, str]:
        """One try on one backend: (outcome, "") or (None, why) when another may be tried."""
        backend = pool.backends[slot.name]
        started = self._clock()
        ok: bool | None = False
        try:
            response = await backend.exchange(
                breq, iter_chunks(body), self._timeout(pool, deadline_at)
            )
            # The head came within the timeout; the body must keep coming (read_timeout_s
            # between reads) and be whole by the deadline.
            paced = IdleTimeoutBody(response.body, pool.config.read_timeout_s)
            async with asyncio.timeout(self._remaining(deadline_at)):
                data = await collect(paced, pool.config.max_body)
            ok = True
        except BackendUnavailable as exc:
            log.info("backend %s unavailable: %s", slot.name, exc)
            return None, f"backend {slot.name} failed: {exc}"
        except TimeoutError:
            if deadline_at is not None and self._clock() >= deadline_at - 1e-3:
                ok = None  # our deadline, not the backend's fault
                return error_outcome(
                    Status.DEADLINE_EXCEEDED, "deadline passed waiting for the backend"
                ), ""
            return error_outcome(Status.BACKEND_ERROR, f"backend {slot.name} timed out"), ""
        except ValueError as exc:
            ok = None
            return error_outcome(Status.BACKEND_ERROR, f"backend {slot.name}: response {exc}"), ""
        finally:
            pool.release(slot, ok=ok)
        backend_ms = (self._clock() - started) * 1000
        self.metrics.observe_backend(breq.service, slot.name, backend_ms / 1000)
        head = _backend_head(response, slot.name, queue_ms=queue_ms, backend_ms=backend_ms)
        if isinstance(head, Outcome):
            return head, ""
        held = Held(self.budget)
        held.update(len(data))  # until the front has sent it and closes the outcome
        return Outcome(head, iter_chunks(data), held), ""

    async def _stream(
        self, pool: ServicePool, request: IncomingRequest, deadline_at: float | None
    ) -> Outcome:
        key = request.slo.affinity or request.service
        queued_at = self._clock()
        slot = await pool.acquire(
            key, request.slo.urgency or 0, deadline_at, set(), tenant=request.tenant
        )
        release = SlotRelease(pool, slot)
        queue_ms = (self._clock() - queued_at) * 1000
        backend = pool.backends[slot.name]
        started = self._clock()
        try:
            response = await backend.exchange(
                self._backend_request(request, request.length),
                request.body,
                self._timeout(pool, deadline_at),
            )
        except TimeoutError:
            if deadline_at is not None and self._clock() >= deadline_at - 1e-3:
                release(ok=None)  # our deadline, not the backend's fault
                return error_outcome(
                    Status.DEADLINE_EXCEEDED, "deadline passed waiting for the backend"
                )
            release(ok=False)
            return error_outcome(Status.BACKEND_ERROR, f"backend {slot.name} timed out")
        except BackendUnavailable as exc:
            release(ok=False)
            return error_outcome(Status.BACKEND_ERROR, f"backend {slot.name} failed: {exc!r}")
        except ValueError as exc:  # the request cannot be framed for this backend
            release(ok=None)
            return error_outcome(Status.BACKEND_ERROR, f"backend {slot.name}: {exc}")
        except Exception as exc:
            log.warning("backend %s raised %r", slot.name, exc)
            release(ok=False)
            return error_outcome(Status.BACKEND_ERROR, f"backend {slot.name} failed: {exc!r}")
        except BaseException:  # cancelled: the client left while the backend was asked
            release(ok=None)
            raise
        backend_ms = (self._clock() - started) * 1000  # until the response head
        head = _backend_head(response, slot.name, queue_ms=queue_ms, backend_ms=backend_ms)
        if isinstance(head, Outcome):
            release(ok=None)
            await aclose_body(response.body)
            return head
        paced = IdleTimeoutBody(response.body, pool.config.read_timeout_s)
        return Outcome(head, SlotBody(paced, release))


def _backend_head(
    response: BackendResponse, backend: str, *, queue_ms: float, backend_ms: float
) -> ResponseHead | Outcome:
    """The head passing the backend's answer on (its status and headers), or a 502 outcome
    for an answer the protocol cannot carry (a field too long, too many fields, a head over
    MAX_HEAD_BYTES): found here, the client gets a status, not a stream reset."""
    try:
        head = ResponseHead(
            status=response.status,
            backend=backend,
            queue_ms=round(queue_ms, 3),
            backend_ms=round(backend_ms, 3),
            headers=response.headers.fields,
            from_backend=True,
        )
        encode_response_head(head)
    except FramingError as exc:
        return error_outcome(Status.BACKEND_ERROR, f"backend {backend}: response {exc}")
    return head


class SlotRelease:
    """Gives one backend slot back to its pool, exactly once, whoever calls first."""

    __slots__ = ("_pool", "_slot", "released")

    def __init__(self, pool: ServicePool, slot: BackendSlot) -> None:
        self._pool = pool
        self._slot = slot
        self.released = False

    def __call__(self, *, ok: bool | None) -> None:
        if not self.released:
            self.released = True
            self._pool.release(self._slot, ok=ok)


class SlotBody(AsyncIterator[bytes]):
    """A streamed backend response body that holds its backend slot until it ends.

    The slot goes back at the body's end (a success for the backend), when a
    read fails (the backend's fault), or in `aclose()` (the client left or the
    edge gave up: no verdict on the backend). The front calls `aclose()` in a
    `finally`, so no path waits for a generator to be finalised.
    """

    def __init__(self, body: AsyncIterator[bytes], release: SlotRelease) -> None:
        self._body = body
        self._release = release

    def __aiter__(self) -> SlotBody:
        return self

    async def __anext__(self) -> bytes:
        if self._release.released:
            raise StopAsyncIteration
        try:
            return await anext(self._body)
        except StopAsyncIteration:
            self._release(ok=True)
            raise
        except Exception:
            self._release(ok=False)
            raise
        except BaseException:
            self._release(ok=None)
            raise

    async def aclose(self) -> None:
        # The slot first, synchronously: the close below may be interrupted.
        self._release(ok=None)
        await aclose_body(self._body)


async def _retire(pool: ServicePool) -> None:
    """Close a pool replaced by a reload once its last request gave its slot back."""
    try:
        while any(slot.in_flight for slot in pool.slots):
            await asyncio.sleep(RETIRE_POLL_S)
    finally:
        await pool.close()


def _services(config: EdgeConfig) -> tuple[ServiceConfig, ...]:
    """The configured services, plus the HTTP/0.9 file service when a www root is set."""
    if config.www is None or config.service(WWW_SERVICE) is not None:
        return config.services
    www = ServiceConfig(
        name=WWW_SERVICE,
        backends=(BackendConfig(name=WWW_SERVICE, kind="static", root=config.www),),
        policy="round-robin",
    )
    return (*config.services, www)
