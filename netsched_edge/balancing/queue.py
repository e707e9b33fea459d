"""Requests waiting for a backend, served earliest deadline first (sans-IO).

Order: earliest deadline first (no deadline sorts after every deadline), then
RFC 9218 urgency (0 is the most urgent), then arrival order. Items are matched
by identity, and an item may be queued at most once at a time; ``remove`` marks
its heap entry dead (lazy deletion) and the heap is compacted once dead entries
outnumber live ones, so memory stays proportional to ``limit``.
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Final, Generic, TypeVar

T = TypeVar("T")

# RFC 9218 §4.1: urgency is an integer from 0 to 7.
URGENCY_RANGE: Final = range(8)

# (deadline or +inf, urgency, arrival number, item): the arrival number is unique,
# so tuple comparison never reaches the item.
_Entry = tuple[float, int, int, T]


class QueueFull(Exception):
    """The queue already holds `limit` items."""


class DeadlineQueue(Generic[T]):
    """Requests waiting for a backend: earliest deadline first, then RFC 9218 urgency
    (lower = more urgent), then arrival order."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self._limit = limit
        self._heap: list[_Entry[T]] = []
        # id(item) -> arrival number of its live entry; the heap entry keeps the item
        # alive, so its id cannot be reused while it is queued.
        self._live: dict[int, int] = {}
        self._arrivals = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def push(self, item: T, *, deadline: float | None, urgency: int) -> None:
        """Queue `item`; `deadline` is an absolute time, or None for after every deadline."""
        if deadline is not None and not math.isfinite(deadline):
            raise ValueError(f"deadline must be a finite time or None, got {deadline!r}")
        if urgency not in URGENCY_RANGE:
            raise ValueError(f"urgency must be 0..7 (RFC 9218), got {urgency!r}")
        if id(item) in self._live:
            raise ValueError(f"item {item!r} is already queued")
        if len(self._live) >= self._limit:
            raise QueueFull(f"deadline queue is full ({self._limit} requests waiting)")
        seq = next(self._arrivals)
        key = math.inf if deadline is None else deadline
        heapq.heappush(self._heap, (key, urgency, seq, item))
        self._live[id(item)] = seq

    def pop(self) -> T | None:
        """Remove and return the first item, or None when the queue is empty."""
        return self._pop_head() if self._heap else None

    def peek(self) -> T | None:
        return self._heap[0][3] if self._heap else None

    def remove(self, item: T) -> bool:
        """Withdraw `item` (by identity); False when it is not queued. O(1), lazy."""
        if self._live.pop(id(item), None) is None:
            return False
        if len(self._heap) > 2 * len(self._live):
            self._heap = [e for e in self._heap if self._is_live(e)]
            heapq.heapify(self._heap)
        else:
            self._drop_dead_head()
        return True

    def expire(self, now: float) -> list[T]:
        """Remove and return every item whose deadline is <= now, in queue order."""
        expired: list[T] = []
        while (deadline := self.next_deadline()) is not None and deadline <= now:
            expired.append(self._pop_head())
        return expired

    def next_deadline(self) -> float | None:
        """The earliest deadline of a queued item (for the caller's timer); None if none."""
        if not self._heap or self._heap[0][0] == math.inf:
            return None
        return self._heap[0][0]

    def _pop_head(self) -> T:
        item = heapq.heappop(self._heap)[3]
        del self._live[id(item)]
        self._drop_dead_head()
        return item

    def _is_live(self, entry: _Entry[T]) -> bool:
        return self._live.get(id(entry[3])) == entry[2]

    def _drop_dead_head(self) -> None:
        # Invariant: the head of the heap is live, so peek and next_deadline stay pure.
        while self._heap and not self._is_live(self._heap[0]):
            heapq.heappop(self._heap)
