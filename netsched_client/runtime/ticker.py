"""Runs the burst planner on an asyncio (or uvloop) loop: one tick per wake-up, one timer.

Every connection of an endpoint shares one `Ticker`. Whatever wakes the loop
(datagrams read, data written, a timer) marks connections as woken; the tick
that follows in the same loop iteration asks the planner to serve them all
and sends what they built as one batch (one sendmmsg, GSO runs per
destination). The earliest of the connections' deadlines, kept in a heap,
arms the only loop timer.

Four rules make this cheap on a loop whose timers count whole milliseconds
(libuv's, and epoll_wait's timeout under asyncio):

- Connections read a sub-millisecond clock. uvloop's `loop.time()` is
  `uv_now()`, floored to the millisecond: a pacer would see no time pass
  between two wake-ups in the same millisecond, earn no credit, and ask for a
  timer a few microseconds away, again and again.
- No timer is armed closer than `timer_resolution`: a deadline the loop cannot
  wait for (aioquic's pacer asks for one packet time, often µs) becomes one
  wake-up a resolution away. uvloop turns a sub-0.5 ms timer into `call_soon`,
  so without this the loop spins until the millisecond ticks over. uvloop also
  rounds every delay to the nearest millisecond, so its timers are armed half
  a resolution late: none fires early.
- A connection whose pacer is due again as soon as a round is built is served
  round after round in the same tick, up to the planner's per-flow limit
  (the driver's `flush`); beyond it, the next tick comes one loop iteration
  later, after the other ready callbacks, not a timer later.
- Datagrams received in one loop callback share ticks: one per timer
  resolution while the batch is read (ACKs wait no longer than a timer
  would), and one when it is done.

A connection waiting for the egress budget has no timer of its own: its due
deadlines are served when it is next flushed.

Datagrams come before timers. A loop busy past a timer's deadline (a long
receive batch) runs that timer, under uvloop, before it polls the sockets:
libuv's iteration runs due timers first. The timer would then judge a path
silent or its packets overdue while their ACKs wait in the kernel. So the
endpoint's `read_first` takes in what is waiting before any timer is handled.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from .planner import BurstPlanner, Datagram, Flow

log = logging.getLogger("netsched.ticker")

SendBatch = Callable[[list[Datagram]], None]
Clock = Callable[[], float]

# libuv timers and epoll_wait timeouts are whole milliseconds.
TIMER_RESOLUTION = 0.001
# A loop clock this close to time.monotonic() is the same clock, maybe coarser (uvloop's).
_SAME_CLOCK_TOLERANCE = 0.01


class TickedFlow(Flow, Protocol):
    """A connection as the ticker drives it (ConnectionDriver)."""

    def rearm(self) -> None:
        """Tell the ticker the connection's deadline (`set_timer`), if it changed."""
        ...

    def on_timer(self, now: float) -> None:
        """Its deadline was reached: handle it (the ticker flushes it next)."""
        ...


@dataclass(frozen=True, slots=True)
class TickerStats:
    """Counters since the ticker was made (a snapshot)."""

    ticks: int
    timers_armed: int  # loop.call_at calls
    timer_wakeups: int  # timer callbacks that ran
    deadline_misses: int  # streams reset by their connection for a missed deadline


def counts_milliseconds(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether the loop's clock is whole milliseconds (libuv's `uv_now`): such a
    loop rounds timer delays to the nearest millisecond too."""
    return all(abs(t * 1000 - round(t * 1000)) < 1e-6 for t in (loop.time(), loop.time()))


def loop_clock(loop: asyncio.AbstractEventLoop) -> Clock:
    """A sub-millisecond clock on the loop's time base.

    `time.monotonic` when the loop keeps that clock (asyncio exactly, uvloop
    floored to the millisecond), so that deadlines given to `call_at` mean the
    same instant; else the loop's own clock (a loop with virtual time, say).
    """
    if abs(loop.time() - time.monotonic()) < _SAME_CLOCK_TOLERANCE:
        return time.monotonic
    return loop.time


class Ticker:
    def __init__(
        self,
        send_batch: SendBatch,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        planner: BurstPlanner[TickedFlow] | None = None,
        timer_resolution: float = TIMER_RESOLUTION,
        clock: Clock | None = None,
    ) -> None:
        if timer_resolution < 0:
            raise ValueError(f"timer_resolution must be >= 0 seconds, got {timer_resolution!r}")
        self.planner: BurstPlanner[TickedFlow] = planner or BurstPlanner()
        self._send_batch = send_batch
        self._loop = loop or asyncio.get_running_loop()
        self._clock = clock or loop_clock(self._loop)
        self._resolution = timer_resolution
        self._rounding_slack = timer_resolution / 2 if counts_milliseconds(self._loop) else 0.0
        # Deadlines: a heap of (deadline, entry, flow); an entry is live while
        # _entries[flow] names it (a changed deadline leaves the old one behind).
        self._heap: list[tuple[float, int, TickedFlow]] = []
        self._entries: dict[TickedFlow, int] = {}
        self._entry_ids = itertools.count()
        self._touched: set[TickedFlow] = set()  # deadlines to refresh after the tick
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = 0.0  # when self._timer fires
        self._soon: asyncio.Handle | None = None
        self._ticking = False
        self._ticked_at = -math.inf
        self._ticks = self._timers_armed = self._timer_wakeups = self._deadline_misses = 0
        # Reads the sockets' waiting datagrams (the endpoint sets it): see the module doc.
        self.read_first: Callable[[], None] | None = None

    @property
    def stats(self) -> TickerStats:
        return TickerStats(
            ticks=self._ticks,
            timers_armed=self._timers_armed,
            timer_wakeups=self._timer_wakeups,
            deadline_misses=self._deadline_misses,
        )

    def now(self) -> float:
        return self._clock()

    def wake(self, flow: TickedFlow) -> None:
        """`flow` has something to send: serve it at the tick of this loop iteration."""
        self._mark(flow)
        if self._soon is None:
            self._soon = self._loop.call_soon(self.tick)

    def wake_after_receive(self, flow: TickedFlow, now: float) -> None:
        """As `wake`, for a datagram received at `now`; ticks now if the last tick
        is a timer resolution old (a long receive batch still sends its ACKs)."""
        if now - self._ticked_at >= self._resolution and not self._ticking:
            self._mark(flow)
            self.tick()
        else:
            self.wake(flow)

    def transmit(self, flow: TickedFlow) -> None:
        """Serve `flow` (and every other woken one) now."""
        self._mark(flow)
        self.tick()

    def is_waiting(self, flow: TickedFlow) -> bool:
        """Woken and not yet served (the egress budget ran out before it)."""
        return self.planner.is_waiting(flow)

    def set_timer(self, flow: TickedFlow, deadline: float | None) -> None:
        """`flow` needs `on_timer` at `deadline` (None: no timer); replaces its last one."""
        if deadline is None:
            self._entries.pop(flow, None)
            return
        entry = next(self._entry_ids)
        self._entries[flow] = entry
        heapq.heappush(self._heap, (deadline, entry, flow))
        if len(self._heap) > 2 * len(self._entries) + 64:
            self._compact()

    def forget(self, flow: TickedFlow) -> None:
        """`flow`'s connection is gone."""
        self.planner.forget(flow)
        self._entries.pop(flow, None)
        self._touched.discard(flow)

    def send_now(self, datagrams: list[Datagram]) -> None:
        """Send datagrams built outside a tick (a failed connection's CONNECTION_CLOSE)."""
        if datagrams:
            self._send_batch(datagrams)

    def record_deadline_miss(self) -> None:
        self._deadline_misses += 1

    def tick(self) -> None:
        if self._ticking:  # a handler asked for a flush during this tick's flushes
            if self._soon is None:
                self._soon = self._loop.call_soon(self.tick)
            return
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None
        self._ticking = True
        next_tick_at = None
        try:
            now = self._ticked_at = self._clock()
            self._ticks += 1
            plan = self.planner.tick(now)
            for batch in plan.batches:
                self._send_batch(batch)
            touched, self._touched = self._touched, set()
            touched.update(plan.flushed)
            for flow in touched:
                flow.rearm()
            next_tick_at = plan.next_tick_at
        finally:
            self._ticking = False
            # Even when a flush or the send raised: the other connections keep their timers.
            self._arm(self._clock(), next_tick_at)

    def close(self) -> None:
        """Stop the timer (the flows stay as they are)."""
        for handle in (self._timer, self._soon):
            if handle is not None:
                handle.cancel()
        self._timer = self._soon = None

    def _mark(self, flow: TickedFlow) -> None:
        self.planner.wake(flow)
        self._touched.add(flow)

    def _arm(self, now: float, next_tick_at: float | None) -> None:
        if next_tick_at is not None and next_tick_at <= now and self._soon is None:
            self._soon = self._loop.call_soon(self.tick)
        target = self._earliest()
        if next_tick_at is not None and next_tick_at > now:
            target = next_tick_at if target is None else min(target, next_tick_at)
        if target is None:
            self._cancel_timer()
            return
        latest = max(target, now + self._resolution)
        # An armed timer between the target and `latest` does the job: keep it.
        if self._timer is not None and target <= self._armed_at <= latest:
            return
        self._cancel_timer()
        self._armed_at = latest
        self._timers_armed += 1
        self._timer = self._loop.call_at(latest + self._rounding_slack, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_wakeups += 1
        armed_at = self._armed_at  # a tick below arms the next timer
        if self.read_first is not None:
            try:
                self.read_first()
            except Exception:  # the timers below must run whatever a datagram did
                log.exception("reading datagrams before the timers failed")
            if self._touched:  # re-arms what the datagrams changed: a deadline they moved
                self.tick()  # is no longer due (and aioquic re-reads its loss timer)
        now = self._clock()
        # Should a loop still fire a timer a little early, count what it was armed
        # for as reached (as aioquic's own adapter does) rather than re-arm for µs.
        for flow, deadline in self._due(max(now, armed_at)):
            self._mark(flow)  # first: a connection the timer ends forgets itself
            try:
                flow.on_timer(max(deadline, now))
            except Exception:  # one flow's failure must not cost the others their timers
                log.exception("timer of %r failed", flow)
                self.forget(flow)
        self.tick()

    def _due(self, horizon: float) -> Iterator[tuple[TickedFlow, float]]:
        heap = self._heap
        while heap and heap[0][0] <= horizon:
            deadline, entry, flow = heapq.heappop(heap)
            if self._entries.get(flow) == entry:
                del self._entries[flow]
                yield flow, deadline

    def _earliest(self) -> float | None:
        heap = self._heap
        while heap and self._entries.get(heap[0][2]) != heap[0][1]:
            heapq.heappop(heap)  # a replaced deadline
        return heap[0][0] if heap else None

    def _compact(self) -> None:
        self._heap = [item for item in self._heap if self._entries.get(item[2]) == item[1]]
        heapq.heapify(self._heap)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
