"""Requests waiting for a backend: fair between tenants, earliest deadline first (sans-IO).

Rules:

- Each item belongs to a tenant (the connection it came on; None: one shared
  tenant). A tenant's own items are served earliest deadline first (no
  deadline sorts after every deadline), then by RFC 9218 urgency (0 is the
  most urgent), then in arrival order.
- Between tenants the queue is fair, as start-time fair queuing with one
  request per turn: every tenant with waiting items has a round; the next
  item served is the head of the tenant with the lowest round, ties broken by
  the heads' (deadline, urgency, arrival). Serving a tenant moves it to the
  next round. A tenant that starts waiting joins the current round (the
  round of the last item served), unless it was served in a later round
  already: leaving the queue for a moment earns no credit.
- So while N tenants wait, each gets one of every N items served, whatever
  deadlines and urgencies it claims: client-chosen priority orders a
  tenant's own requests, and breaks ties inside a round, but cannot take
  another tenant's share. With a single tenant the order is exactly
  (deadline, urgency, arrival).
- Items are matched by identity, and an item may be queued at most once at a
  time; ``remove`` marks its entry dead (lazy deletion), and a heap is
  compacted once dead entries outnumber live ones, so memory stays
  proportional to ``limit``.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

T = TypeVar("T")

# RFC 9218 §4.1: urgency is an integer from 0 to 7.
URGENCY_RANGE: Final = range(8)

# (deadline or +inf, urgency, arrival number, item): the arrival number is unique,
# so tuple comparison never reaches the item.
_Entry = tuple[float, int, int, T]
# A tenant's turn: (round, its head's deadline, urgency, arrival number, tenant). Stale
# once the tenant's round or head changed (checked on use).
_Turn = tuple[int, float, int, int, Hashable]


class QueueFull(Exception):
    """The queue already holds `limit` items."""


@dataclass(slots=True)
class _Tenant(Generic[T]):
    round: int
    heap: list[_Entry[T]] = field(default_factory=list)
    live: int = 0


class DeadlineQueue(Generic[T]):
    """Requests waiting for a backend: one turn per tenant and round, and within a tenant
    earliest deadline first, then RFC 9218 urgency (lower = more urgent), then arrival."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self._limit = limit
        self._tenants: dict[Hashable, _Tenant[T]] = {}
        self._turns: list[_Turn] = []  # invariant: the head is current (or the list is empty)
        # id(item) -> (arrival number of its live entry, tenant); the heap entry keeps the
        # item alive, so its id cannot be reused while it is queued.
        self._live: dict[int, tuple[int, Hashable]] = {}
        self._arrivals = itertools.count()
        self._round = 0  # the round of the last item served
        self._ahead: dict[Hashable, int] = {}  # tenants gone idle after being served ahead

    def __len__(self) -> int:
        return len(self._live)

    @property
    def tenants(self) -> int:
        """How many tenants have items waiting."""
        return len(self._tenants)

    def push(
        self, item: T, *, deadline: float | None, urgency: int, tenant: Hashable = None
    ) -> None:
        """Queue `item` for `tenant`; `deadline` is an absolute time, or None for after
        every deadline."""
        if deadline is not None and not math.isfinite(deadline):
            raise ValueError(f"deadline must be a finite time or None, got {deadline!r}")
        if urgency not in URGENCY_RANGE:
            raise ValueError(f"urgency must be 0..7 (RFC 9218), got {urgency!r}")
        if id(item) in self._live:
            raise ValueError(f"item {item!r} is already queued")
        if len(self._live) >= self._limit:
            raise QueueFull(f"deadline queue is full ({self._limit} requests waiting)")
        state = self._tenants.get(tenant)
        if state is None:
            joins = max(self._round, self._ahead.pop(tenant, self._round))
            state = self._tenants[tenant] = _Tenant(joins)
        seq = next(self._arrivals)
        entry: _Entry[T] = (math.inf if deadline is None else deadline, urgency, seq, item)
        heapq.heappush(state.heap, entry)
        state.live += 1
        self._live[id(item)] = (seq, tenant)
        if state.heap[0] is entry:
            self._add_turn(tenant, state)

    def pop(self) -> T | None:
        """Remove and return the next item to serve, or None when the queue is empty."""
        if not self._turns:
            return None
        tenant = heapq.heappop(self._turns)[4]
        state = self._tenants[tenant]
        item = heapq.heappop(state.heap)[3]
        del self._live[id(item)]
        state.live -= 1
        self._round = state.round
        state.round += 1
        self._settle(tenant, state)
        return item

    def peek(self) -> T | None:
        if not self._turns:
            return None
        return self._tenants[self._turns[0][4]].heap[0][3]

    def remove(self, item: T) -> bool:
        """Withdraw `item` (by identity); False when it is not queued. O(1), lazy."""
        found = self._live.pop(id(item), None)
        if found is None:
            return False
        tenant = found[1]
        state = self._tenants[tenant]
        state.live -= 1
        was_head = state.heap[0][3] is item
        if len(state.heap) > 2 * state.live + 8:
            state.heap = [e for e in state.heap if self._is_live(e)]
            heapq.heapify(state.heap)
            was_head = True  # the head may be another entry now
        if was_head:
            self._settle(tenant, state)
        return True

    def expire(self, now: float) -> list[T]:
        """Remove and return every item whose deadline is <= now, in deadline order (items
        without a deadline never expire)."""
        due = sorted(
            entry
            for state in self._tenants.values()
            for entry in state.heap
            if entry[0] <= now and entry[0] != math.inf and self._is_live(entry)
        )
        for entry in due:
            self.remove(entry[3])
        return [entry[3] for entry in due]

    def next_deadline(self) -> float | None:
        """The earliest deadline of a queued item (for the caller's timer); None if none."""
        earliest = min((s.heap[0][0] for s in self._tenants.values()), default=math.inf)
        return None if earliest == math.inf else earliest

    def _is_live(self, entry: _Entry[T]) -> bool:
        found = self._live.get(id(entry[3]))
        return found is not None and found[0] == entry[2]

    def _settle(self, tenant: Hashable, state: _Tenant[T]) -> None:
        """After `tenant`'s head was served or removed: its next turn, or its departure."""
        while state.heap and not self._is_live(state.heap[0]):
            heapq.heappop(state.heap)
        if state.heap:
            self._add_turn(tenant, state)
        else:
            del self._tenants[tenant]
            if state.round > self._round:
                self._remember_ahead(tenant, state.round)
        self._drop_stale_turns()

    def _add_turn(self, tenant: Hashable, state: _Tenant[T]) -> None:
        deadline, urgency, seq, _ = state.heap[0]
        heapq.heappush(self._turns, (state.round, deadline, urgency, seq, tenant))
        if len(self._turns) > 2 * len(self._tenants) + 8:
            self._turns = [t for t in self._turns if self._is_current(t)]
            heapq.heapify(self._turns)
        self._drop_stale_turns()

    def _is_current(self, turn: _Turn) -> bool:
        state = self._tenants.get(turn[4])
        return state is not None and state.round == turn[0] and state.heap[0][2] == turn[3]

    def _drop_stale_turns(self) -> None:
        while self._turns and not self._is_current(self._turns[0]):
            heapq.heappop(self._turns)

    def _remember_ahead(self, tenant: Hashable, round_: int) -> None:
        self._ahead[tenant] = round_
        if len(self._ahead) > 2 * self._limit:  # forget those the others have caught up with
            self._ahead = {t: r for t, r in self._ahead.items() if r > self._round}
