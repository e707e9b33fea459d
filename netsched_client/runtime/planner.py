"""The burst planner: each tick, which connections send, in what order, in which bursts.

Sans-IO: time is passed in, datagrams come back as batches for the caller to
hand to the socket. The driving contract, per tick:

1. `wake(flow)` for every connection that may have something to send (data
   written, datagrams received, a timer handled).
2. `tick(now)`: the planner orders the woken flows, earliest stream deadline
   first, then RFC 9218 urgency ("edf"), or in the order they were woken
   ("fifo"), and asks each for its datagrams with `flow.flush(now, limit)`.
   aioquic's pacer and congestion window decide what a connection releases;
   the planner decides the order, the grouping and, with an egress rate, how
   much the whole endpoint sends per tick.
3. Send each of `TickPlan.batches` as one `send_batch` (one sendmmsg; a run of
   same-size datagrams to one destination is one UDP GSO message in it), and
   tick again at `TickPlan.next_tick_at`.

Datagrams are grouped by destination (and path), each destination's in the
order its connections produced them, so one flow's packets leave together
(Reframer, NSDI'22: locality) and their order on a path is kept (reordering
would look like loss to the peer). A flow that filled its limit, or that the
egress budget did not reach, stays woken for the next tick.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from aioquic.quic.connection import NetworkAddress

log = logging.getLogger("netsched.planner")

# (payload, destination, path ID): the path picks the local socket on a multipath client.
Datagram = tuple[bytes, NetworkAddress, int]
ORDERS = ("edf", "fifo")

# Datagrams one flow may release per tick: a GSO super-datagram's worth
# (UDP_MAX_SEGMENTS), about four rounds of aioquic's pacer.
MAX_PER_FLOW = 64
# The io layer's GSO limits (netsched_client/io/_mmsg.pxd): a burst is at most this.
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65507
# An egress budget in datagrams counts this many bytes each (aioquic's default
# max_datagram_size); a flow that sends bigger ones runs the budget into debt.
BUDGET_DATAGRAM_BYTES = 1200
# Burst-size histogram: upper bounds, in datagrams.
BURST_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Flow(Protocol):
    """One connection, as the planner sees it (the runtime's driver implements it)."""

    def priority(self, now: float) -> tuple[float, int]:
        """(deadline, urgency) of its most urgent stream with data queued; (inf, 3) if none."""
        ...

    def flush(self, now: float, limit: int) -> list[Datagram]:
        """Build what the connection may send now, about `limit` datagrams at most."""
        ...


F = TypeVar("F", bound=Flow)


@dataclass(frozen=True, slots=True)
class Burst:
    """A run of datagrams to one destination: one UDP GSO message (or one datagram)."""

    destination: NetworkAddress
    path_id: int
    datagrams: int
    size: int  # bytes


@dataclass(frozen=True, slots=True)
class TickPlan(Generic[F]):
    """What one tick decided: the batches to send, in order, and when to tick again."""

    batches: tuple[list[Datagram], ...]  # one send_batch each
    bursts: tuple[Burst, ...]
    flushed: tuple[F, ...]  # in the order they were served
    next_tick_at: float | None  # None: nothing left waiting


@dataclass(frozen=True, slots=True)
class PlannerStats:
    """Counters since the planner was made (a snapshot)."""

    ticks: int
    flushes: int  # flow.flush calls
    datagrams: int
    bytes: int
    bursts: int
    batches: int  # send_batch calls asked for
    burst_histogram: tuple[int, ...]  # bursts per BURST_BUCKETS bound (not cumulative)
    budget_waits: int  # ticks that left flows waiting for the egress budget


class BurstPlanner(Generic[F]):
    """Orders and groups the sends of many connections, one tick at a time.

    `order`: "edf" (earliest deadline, then urgency, then wake order) or
    "fifo" (wake order: round robin among busy flows). `egress_rate` (bytes
    per second, None: unlimited) is a token bucket over every flow, holding
    up to `egress_burst` bytes: flows served while the bucket is positive,
    a flush's overshoot paid back from the next refills. `coalesce=False`
    sends each flow's datagrams as a batch of its own (one syscall per
    connection flush, as before the planner: a baseline for benchmarks).
    """

    def __init__(
        self,
        *,
        order: str = "edf",
        egress_rate: float | None = None,
        egress_burst: int = 64 * 1024,
        max_per_flow: int = MAX_PER_FLOW,
        coalesce: bool = True,
    ) -> None:
        if order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
        if egress_rate is not None and not (egress_rate > 0 and math.isfinite(egress_rate)):
            raise ValueError(
                f"egress_rate must be a positive number of bytes/s, got {egress_rate!r}"
            )
        if egress_burst < BUDGET_DATAGRAM_BYTES:
            raise ValueError(
                f"egress_burst must be >= {BUDGET_DATAGRAM_BYTES} bytes, got {egress_burst!r}"
            )
        if max_per_flow < 1:
            raise ValueError(f"max_per_flow must be >= 1, got {max_per_flow!r}")
        self.order = order
        self.egress_rate = egress_rate
        self._burst_bytes = float(egress_burst)
        self._max_per_flow = max_per_flow
        self._coalesce = coalesce
        self._tokens = float(egress_burst)
        # The largest datagram seen: paths raise their size (PMTU search) from 1200.
        self._datagram_bytes = BUDGET_DATAGRAM_BYTES
        self._refilled_at: float | None = None
        self._woken: dict[F, int] = {}  # flow -> wake sequence (insertion order: FIFO)
        self._sequence = itertools.count()
        self._ticks = self._flushes = self._datagrams = self._bytes = 0
        self._bursts = self._batches = self._budget_waits = 0
        self._histogram = [0] * len(BURST_BUCKETS)

    @property
    def stats(self) -> PlannerStats:
        return PlannerStats(
            ticks=self._ticks,
            flushes=self._flushes,
            datagrams=self._datagrams,
            bytes=self._bytes,
            bursts=self._bursts,
            batches=self._batches,
            burst_histogram=tuple(self._histogram),
            budget_waits=self._budget_waits,
        )

    def wake(self, flow: F) -> None:
        """`flow` may have something to send: serve it at the next tick (keeps its place)."""
        if flow not in self._woken:
            self._woken[flow] = next(self._sequence)

    def forget(self, flow: F) -> None:
        """`flow` is gone (its connection closed)."""
        self._woken.pop(flow, None)

    def is_waiting(self, flow: F) -> bool:
        return flow in self._woken

    @property
    def waiting(self) -> int:
        return len(self._woken)

    def tick(self, now: float) -> TickPlan[F]:
        self._ticks += 1
        self._refill(now)
        served: list[F] = []
        produced: list[list[Datagram]] = []
        again: list[F] = []
        for flow in self._ordered(now):
            if self._tokens <= 0:
                break
            if self._woken.pop(flow, None) is None:
                continue  # forgotten while an earlier flow was flushed (its connection closed)
            limit = self._limit()
            datagrams = self._flush(flow, now, limit)
            served.append(flow)
            self._flushes += 1
            if datagrams:
                produced.append(datagrams)
                self._spend(datagrams)
            if len(datagrams) >= limit:
                again.append(flow)  # perhaps more is due: after the others, next tick
        for flow in again:
            self.wake(flow)
        batches = self._batch(produced)
        bursts = tuple(b for batch in batches for b in bursts_of(batch))
        self._count(batches, bursts)
        return TickPlan(batches, bursts, tuple(served), self._next_tick_at(now))

    @staticmethod
    def _flush(flow: F, now: float, limit: int) -> list[Datagram]:
        """One flow's datagrams; a flow that raises loses its own, not the tick's."""
        try:
            return flow.flush(now, limit)
        except Exception:
            log.exception("flush of %r failed; nothing of it leaves this tick", flow)
            return []

    def _ordered(self, now: float) -> list[F]:
        if self.order == "fifo" or len(self._woken) < 2:
            return list(self._woken)  # one flow: no priorities to weigh (a scan of its streams)
        return sorted(self._woken, key=lambda f: (*f.priority(now), self._woken[f]))

    def _refill(self, now: float) -> None:
        if self.egress_rate is None:
            return
        last = now if self._refilled_at is None else self._refilled_at
        if now > last:
            self._tokens = min(self._tokens + (now - last) * self.egress_rate, self._burst_bytes)
        self._refilled_at = max(now, last)

    def _limit(self) -> int:
        if self.egress_rate is None:
            return self._max_per_flow
        allowed = math.ceil(self._tokens / self._datagram_bytes)
        return max(1, min(self._max_per_flow, allowed))

    def _spend(self, datagrams: list[Datagram]) -> None:
        size = sum(len(data) for data, _, _ in datagrams)
        self._datagram_bytes = max(self._datagram_bytes, *(len(d) for d, _, _ in datagrams))
        self._datagrams += len(datagrams)
        self._bytes += size
        if self.egress_rate is not None:
            self._tokens -= size

    def _next_tick_at(self, now: float) -> float | None:
        if not self._woken:
            return None
        if self.egress_rate is None or self._tokens > 0:
            return now
        self._budget_waits += 1
        # When the bucket is back above zero (plus a hair, so float rounding cannot
        # bring a tick that finds it still empty).
        return now + (-self._tokens + 1) / self.egress_rate

    def _batch(self, produced: list[list[Datagram]]) -> tuple[list[Datagram], ...]:
        if not produced:
            return ()
        if not self._coalesce:
            return tuple(produced)
        if len(produced) == 1:
            return (group_by_destination(produced[0]),)
        return (group_by_destination(itertools.chain.from_iterable(produced)),)

    def _count(self, batches: Sequence[list[Datagram]], bursts: Sequence[Burst]) -> None:
        self._batches += len(batches)
        self._bursts += len(bursts)
        for burst in bursts:
            self._histogram[_bucket(burst.datagrams)] += 1


def group_by_destination(datagrams: Iterable[Datagram]) -> list[Datagram]:
    """The datagrams grouped by (path, destination), groups in order of first appearance.

    Stable: within a group the order is kept, so a path's packets leave in the
    order they were numbered.
    """
    groups: dict[tuple[int, NetworkAddress], list[Datagram]] = {}
    for datagram in datagrams:
        key = (datagram[2], datagram[1])
        group = groups.get(key)
        if group is None:
            groups[key] = [datagram]
        else:
            group.append(datagram)
    if len(groups) == 1:
        return next(iter(groups.values()))
    return [datagram for group in groups.values() for datagram in group]


def bursts_of(batch: Sequence[Datagram]) -> list[Burst]:
    """The UDP GSO messages the io layer makes of `batch` (its rules, _mmsg.pyx):
    consecutive datagrams to one destination, none bigger than the first, a
    shorter one ending the run, within GSO_MAX_SEGMENTS and GSO_MAX_BYTES."""
    bursts: list[Burst] = []
    i, n = 0, len(batch)
    while i < n:
        first, destination, path_id = batch[i]
        segment = total = len(first)
        count = 1
        while segment and i + count < n and count < GSO_MAX_SEGMENTS:
            data, addr, path = batch[i + count]
            size = len(data)
            if not size or size > segment or total + size > GSO_MAX_BYTES:
                break
            if path != path_id or addr != destination:
                break
            count += 1
            total += size
            if size < segment:
                break  # a short datagram can only end a run
        bursts.append(Burst(destination, path_id, count, total))
        i += count
    return bursts


def _bucket(datagrams: int) -> int:
    for index, bound in enumerate(BURST_BUCKETS):
        if datagrams <= bound:
            return index
    return len(BURST_BUCKETS) - 1
