"""Drives one sans-IO QUIC connection from an asyncio (or uvloop) loop.

receive → drain events → transmit → re-arm one timer: the whole adapter. It
owns no socket; datagrams leave through `send_batch`, a callable supplied by
the endpoint, one batch per pacer round (the seam where sendmmsg/GSO plug in).

Four rules make it cheap on a loop whose timers count whole milliseconds
(libuv's, and epoll_wait's timeout under asyncio):

- The connection reads a sub-millisecond clock. uvloop's `loop.time()` is
  `uv_now()`, floored to the millisecond: the pacer would see no time pass
  between two wake-ups in the same millisecond, earn no credit, and ask for a
  timer a few microseconds away, again and again.
- No timer is armed closer than `timer_resolution`: a deadline the loop cannot
  wait for (aioquic's pacer asks for one packet time, often µs) becomes one
  wake-up a resolution away. uvloop turns a sub-0.5 ms timer into `call_soon`,
  so without this the loop spins until the millisecond ticks over. uvloop also
  rounds every delay to the nearest millisecond, so its timers are armed half
  a resolution late: none fires early.
- A deadline that passes while a flush is being built is served at once,
  round after round, up to `MAX_BURST` datagrams per transmit: aioquic's pacer
  lets out at most 16 datagrams per round, and on a fast path its next packet
  is due before the last round was even built, so a wake-up per round would
  cap the rate at 16 datagrams per loop iteration (or per millisecond).
- Datagrams received in one loop callback share flushes: one per timer
  resolution while the batch is read, and one when it is done.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.events import ConnectionTerminated, QuicEvent

from ..proto.multipath.connection import MultipathConnection

# (payload, destination, path ID): the path picks the local socket on a multipath client.
Datagram = tuple[bytes, NetworkAddress, int]
SendBatch = Callable[[list[Datagram]], None]
EventHandler = Callable[[QuicEvent], None]
Clock = Callable[[], float]

# libuv timers and epoll_wait timeouts are whole milliseconds.
TIMER_RESOLUTION = 0.001
# Datagrams one transmit() may send in pacer rounds before yielding to the loop:
# a GSO super-datagram's worth (UDP_MAX_SEGMENTS).
MAX_BURST = 64
# A loop clock this close to time.monotonic() is the same clock, maybe coarser (uvloop's).
_SAME_CLOCK_TOLERANCE = 0.01


@dataclass(frozen=True, slots=True)
class DriverStats:
    """Counters since the driver was made (a snapshot)."""

    timers_armed: int  # loop.call_at calls
    timer_wakeups: int  # timer callbacks that ran
    flushes: int  # transmit() calls: packets built (maybe none) and one batch sent
    datagrams_sent: int


def _counts_milliseconds(loop: asyncio.AbstractEventLoop) -> bool:
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


class ConnectionDriver:
    def __init__(
        self,
        quic: QuicConnection,
        send_batch: SendBatch,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        timer_resolution: float = TIMER_RESOLUTION,
        clock: Clock | None = None,
    ) -> None:
        if timer_resolution < 0:
            raise ValueError(f"timer_resolution must be >= 0 seconds, got {timer_resolution!r}")
        self.quic = quic
        self._send_batch = send_batch
        self._loop = loop or asyncio.get_running_loop()
        self._clock = clock or loop_clock(self._loop)
        self._resolution = timer_resolution
        self._rounding_slack = timer_resolution / 2 if _counts_milliseconds(self._loop) else 0.0
        self._handlers: list[EventHandler] = []
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = 0.0  # when self._timer fires
        self._deadline: float | None = None  # what the connection asked for
        self._transmit_handle: asyncio.Handle | None = None
        self._flushed_at = -math.inf
        self._timers_armed = self._timer_wakeups = self._flushes = self._datagrams_sent = 0
        self.closed = asyncio.Event()

    @property
    def stats(self) -> DriverStats:
        return DriverStats(
            timers_armed=self._timers_armed,
            timer_wakeups=self._timer_wakeups,
            flushes=self._flushes,
            datagrams_sent=self._datagrams_sent,
        )

    def now(self) -> float:
        """The time to hand the connection (for callers that call it directly)."""
        return self._clock()

    def add_event_handler(self, handler: EventHandler) -> None:
        self._handlers.append(handler)

    def remove_event_handler(self, handler: EventHandler) -> None:
        self._handlers.remove(handler)

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        now = self._clock()
        self.quic.receive_datagram(data, addr, now=now)
        self._drain_events()
        # Within a batch, flush once per timer resolution: ACKs (and the sends they
        # free) wait no longer than a timer would, however long the batch takes.
        if now - self._flushed_at >= self._resolution:
            self.transmit()
        else:
            self.schedule_transmit()

    def schedule_transmit(self) -> None:
        """Coalesce the sends of one loop iteration into one flush."""
        if self._transmit_handle is None:
            self._transmit_handle = self._loop.call_soon(self.transmit)

    def transmit(self) -> None:
        if self._transmit_handle is not None:
            self._transmit_handle.cancel()
            self._transmit_handle = None
        now = self._flushed_at = self._clock()
        sent = self._flush(now)
        # A deadline that passed while that flush was built (a pacer whose packet
        # time is shorter than building a packet) is served now, as its timer
        # would be: another round, up to a burst per call.
        while 0 < sent < MAX_BURST:
            deadline = self.quic.get_timer()
            now = self._clock()
            if deadline is None or deadline > now:
                break
            self.quic.handle_timer(now=now)
            self._drain_events()
            more = self._flush(now)
            if not more:
                break
            sent += more
        if sent >= MAX_BURST:
            self.schedule_transmit()  # perhaps more is due: let the loop serve others first
        self._rearm_timer(now)

    def _flush(self, now: float) -> int:
        """Build what the connection may send now, as one batch; how many datagrams."""
        if isinstance(self.quic, MultipathConnection):
            datagrams = self.quic.datagrams_with_paths(now)
        else:
            datagrams = [(data, addr, 0) for data, addr in self.quic.datagrams_to_send(now)]
        self._flushes += 1
        if datagrams:
            self._datagrams_sent += len(datagrams)
            self._send_batch(datagrams)
        # Building packets can queue events too (new CIDs the endpoint must route).
        self._drain_events()
        return len(datagrams)

    def close(self, error_code: int = 0, reason: str = "") -> None:
        self.quic.close(error_code=error_code, reason_phrase=reason)
        self.transmit()

    def _rearm_timer(self, now: float) -> None:
        deadline = self.quic.get_timer()
        self._deadline = deadline
        if deadline is None:
            self._cancel_timer()
            return
        latest = max(deadline, now + self._resolution)
        # An armed timer between the deadline and `latest` does the job: keep it.
        if self._timer is not None and deadline <= self._armed_at <= latest:
            return
        self._cancel_timer()
        self._armed_at = latest
        self._timers_armed += 1
        self._timer = self._loop.call_at(latest + self._rounding_slack, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_wakeups += 1
        # Should a loop still fire a timer a little early, count the deadline as
        # reached (as aioquic's own adapter does) rather than re-arm for a few µs.
        now = max(self._deadline or 0.0, self._clock())
        self.quic.handle_timer(now=now)
        self._drain_events()
        self.transmit()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _drain_events(self) -> None:
        event = self.quic.next_event()
        while event is not None:
            for handler in self._handlers:
                handler(event)
            if isinstance(event, ConnectionTerminated):
                self._terminate()
            event = self.quic.next_event()

    def _terminate(self) -> None:
        self._cancel_timer()
        self.closed.set()
