"""Drives one sans-IO QUIC connection from an asyncio (or uvloop) loop.

receive → drain events → wake the ticker; the ticker's tick flushes the
connection (`flush`: pacer rounds, as many as are due, up to the planner's
limit) and sends its datagrams with every other connection's, then asks it
for its deadline (`rearm`). The timer rules are the ticker's (ticker.py).

The driver owns no socket and no timer. A server endpoint's connections share
the endpoint's `Ticker` (one tick per loop wake-up for all of them, one
timer); a driver made with `send_batch` alone gets a ticker of its own (a
client's single connection).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.events import ConnectionTerminated, QuicEvent
from aioquic.quic.packet import QuicErrorCode, QuicFrameType

from ..proto.multipath.connection import MultipathConnection
from ..proto.send_order import DeadlineMissed
from ..proto.slo import DEFAULT_URGENCY
from .planner import MAX_PER_FLOW, Datagram
from .ticker import TIMER_RESOLUTION, Clock, SendBatch, Ticker, loop_clock

__all__ = [
    "MAX_BURST",
    "TIMER_RESOLUTION",
    "ConnectionDriver",
    "Datagram",
    "DriverStats",
    "EventHandler",
    "SendBatch",
    "loop_clock",
]

log = logging.getLogger("netsched.driver")

EventHandler = Callable[[QuicEvent], None]

# Datagrams one flush may build in pacer rounds (the planner's per-flow limit).
MAX_BURST = MAX_PER_FLOW
# RFC 9000 §10.3: a stateless reset is at least 21 bytes, its last 16 the token.
MIN_STATELESS_RESET = 21
RESET_TOKEN_SIZE = 16
# A client checks for a stateless reset only this long after it last heard its peer.
RESET_AFTER_QUIET_S = 0.01
# A connection with nothing deadline-bound queued: last among deadlines, default urgency.
_NO_PRIORITY = (math.inf, DEFAULT_URGENCY)


@dataclass(frozen=True, slots=True)
class DriverStats:
    """Counters since the driver was made (a snapshot)."""

    timers_armed: int  # deadlines handed to the ticker (each time the connection's changed)
    timer_wakeups: int  # deadlines reached (on_timer)
    flushes: int  # datagrams_to_send calls: packets built (maybe none)
    datagrams_sent: int
    deadline_misses: int  # streams reset because their deadline passed (DeadlineMissed)


def is_stateless_reset(data: bytes, quic: QuicConnection) -> bool:
    """`data` ends with the stateless reset token of a connection ID the peer gave us.

    Checked before the datagram is opened (RFC 9000 §10.3.1 allows it): a real
    packet ending in a 128-bit token by chance is not a concern.
    """
    if len(data) < MIN_STATELESS_RESET or data[0] & 0x80:  # a long header is never one
        return False
    return data[-RESET_TOKEN_SIZE:] in _peer_reset_tokens(quic)


def handshake_confirmed(quic: QuicConnection) -> bool:
    """The peer confirmed the handshake (RFC 9001 §4.1.2; a client: HANDSHAKE_DONE came).

    Until then a server has not read the client's 1-RTT packets: a client request
    it could have acted on went in 0-RTT.
    """
    # aioquic (pinned 1.7.2) has no public accessor.
    return bool(quic._handshake_confirmed)


def _peer_reset_tokens(quic: QuicConnection) -> set[bytes]:
    if isinstance(quic, MultipathConnection):  # every path's, parked ones included
        return quic.peer_reset_tokens()
    # aioquic (pinned 1.7.2) keeps the peer's connection IDs private.
    held = [quic._peer_cid, *quic._peer_cid_available]
    return {cid.stateless_reset_token for cid in held if cid.stateless_reset_token}


class ConnectionDriver:
    """One connection on a loop. Give `send_batch` (a ticker of its own, with
    `timer_resolution` and `clock`) or `ticker` (shared), not both.

    `stateless_resets`: end the connection when a datagram is the peer's stateless
    reset (RFC 9000 §10.3), which aioquic does not recognise: a client whose edge
    lost its state learns it at once instead of at the idle timeout."""

    def __init__(
        self,
        quic: QuicConnection,
        send_batch: SendBatch | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        ticker: Ticker | None = None,
        timer_resolution: float = TIMER_RESOLUTION,
        clock: Clock | None = None,
        stateless_resets: bool = False,
    ) -> None:
        if ticker is None:
            if send_batch is None:
                raise ValueError("ConnectionDriver needs send_batch or ticker, got neither")
            ticker = Ticker(send_batch, loop, timer_resolution=timer_resolution, clock=clock)
        elif send_batch is not None:
            raise ValueError("ConnectionDriver takes send_batch or ticker, got both")
        self.quic = quic
        self._ticker = ticker
        self._handlers: list[EventHandler] = []
        self._deadline: float | None = None  # the one the ticker holds
        self._timers_armed = self._timer_wakeups = self._flushes = 0
        self._datagrams_sent = self._deadline_misses = 0
        self._stateless_resets = stateless_resets
        self.last_received = ticker.now()  # when the peer was last heard (or the start)
        self.closed = asyncio.Event()
        # Set once a flush after `close()` built the CONNECTION_CLOSE, or the connection ended.
        self.close_sent = asyncio.Event()
        self._closing = False

    @property
    def stats(self) -> DriverStats:
        return DriverStats(
            timers_armed=self._timers_armed,
            timer_wakeups=self._timer_wakeups,
            flushes=self._flushes,
            datagrams_sent=self._datagrams_sent,
            deadline_misses=self._deadline_misses,
        )

    @property
    def ticker(self) -> Ticker:
        return self._ticker

    def now(self) -> float:
        """The time to hand the connection (for callers that call it directly)."""
        return self._ticker.now()

    def add_event_handler(self, handler: EventHandler) -> None:
        self._handlers.append(handler)

    def remove_event_handler(self, handler: EventHandler) -> None:
        self._handlers.remove(handler)

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        now = self._ticker.now()
        # Only after a quiet spell: a peer that lost its state has stopped answering, and
        # every packet of ours from then on draws a reset, while matching the tokens
        # costs microseconds a datagram that a busy connection cannot spend.
        quiet = now - self.last_received >= RESET_AFTER_QUIET_S
        if quiet and self._stateless_resets and is_stateless_reset(data, self.quic):
            self.abandon(QuicErrorCode.NO_ERROR, "stateless reset")
            return
        self.last_received = now
        try:
            self.quic.receive_datagram(data, addr, now=now)
            self._drain_events()
        except Exception:  # this connection's failure, not the batch's nor the loop's
            self._ticker.send_now(self._fail("handling a datagram", now))
            return
        if not self.closed.is_set():
            self._ticker.wake_after_receive(self, now)

    def schedule_transmit(self) -> None:
        """Flush at this loop iteration's tick (with every other connection's sends)."""
        if not self.closed.is_set():
            self._ticker.wake(self)

    def transmit(self) -> None:
        """Flush now."""
        if not self.closed.is_set():
            self._ticker.transmit(self)

    def close(self, error_code: int = 0, reason: str = "", *, transport: bool = False) -> None:
        """Close with an application error code, or with a transport one (`transport`:
        a transport CONNECTION_CLOSE frame, e.g. CONNECTION_REFUSED, RFC 9000 §20.1).

        aioquic sends an application code as APPLICATION_ERROR in Initial and Handshake
        packets, so a code the peer must read during the handshake has to be a transport
        one. `close_sent` is set once the CONNECTION_CLOSE is built and handed on."""
        frame_type = QuicFrameType.PADDING if transport else None  # 0: no frame to blame
        self.quic.close(error_code=error_code, frame_type=frame_type, reason_phrase=reason)
        self._closing = True
        self.transmit()

    def end_closing(self) -> None:
        """Shutdown: a connection in its closing or draining period (`close()`, or the
        peer's CONNECTION_CLOSE) ends now rather than when the period runs out, as
        aioquic ends it at its close timer (its qlog trace is written then)."""
        at = self.quic.get_timer()
        if at is not None and not self.closed.is_set():
            self.quic.handle_timer(at)

    def abandon(self, error_code: int, reason: str) -> None:
        """End the connection at once, sending nothing more: for one never owed a
        CONNECTION_CLOSE (no ClientHello taken) or one whose core failed. Handlers
        see ConnectionTerminated; the ticker forgets the connection."""
        if self.closed.is_set():
            return
        event = ConnectionTerminated(error_code=error_code, frame_type=None, reason_phrase=reason)
        for handler in self._handlers:
            handler(event)
        self._terminate()

    # -- the planner's and the ticker's side (planner.Flow, ticker.TickedFlow) ------------

    def priority(self, now: float) -> tuple[float, int]:
        """(deadline, urgency) of the most urgent stream with data still queued."""
        quic = self.quic
        if not isinstance(quic, MultipathConnection):
            return _NO_PRIORITY
        best = _NO_PRIORITY
        # aioquic (pinned 1.7.2) has no public accessor for a stream's send state.
        streams = quic._streams
        for stream_id, priority in quic.stream_priorities().items():
            deadline = math.inf if priority.deadline_at is None else priority.deadline_at
            key = (deadline, priority.urgency)
            if key < best:
                stream = streams.get(stream_id)
                if stream is not None and not stream.sender.buffer_is_empty:
                    best = key
        return best

    def flush(self, now: float, limit: int) -> list[Datagram]:
        """Build what the connection may send: pacer rounds while they come due, to `limit`.

        A deadline that passed while a round was built (a pacer whose packet
        time is shorter than building a packet) is served at once, as its
        timer would be: aioquic's pacer lets out at most 16 datagrams per
        round, and a wake-up per round would cap the rate at 16 datagrams per
        loop iteration (or per millisecond).

        A connection whose packets cannot be built (the core raised) is closed
        with INTERNAL_ERROR and ended: one log line with the traceback, not one
        per tick for as long as the peer keeps it alive.
        """
        if self.closed.is_set():
            return []
        try:
            return self._flush(now, limit)
        except Exception:
            return self._fail("building packets", now)

    def _flush(self, now: float, limit: int) -> list[Datagram]:
        self._serve_due_deadline(now)
        out = self._round(now)
        while 0 < len(out) < limit:
            now = self._ticker.now()
            if not self._serve_due_deadline(now):
                break
            more = self._round(now)
            if not more:
                break
            out += more
        return out

    def rearm(self) -> None:
        # A connection waiting for the egress budget needs no timer: its flush serves it.
        waiting = self.closed.is_set() or self._ticker.is_waiting(self)
        deadline = None if waiting else self.quic.get_timer()
        if deadline == self._deadline:
            return
        self._deadline = deadline
        if deadline is not None:
            self._timers_armed += 1
        self._ticker.set_timer(self, deadline)

    def on_timer(self, now: float) -> None:
        self._deadline = None  # the ticker dropped it: whatever comes next is new
        self._timer_wakeups += 1
        if self.closed.is_set():
            return
        try:
            self.quic.handle_timer(now=now)
            self._drain_events()
        except Exception:
            self._ticker.send_now(self._fail("handling a timer", now))

    # -- internals -------------------------------------------------------------------------

    def _serve_due_deadline(self, now: float) -> bool:
        deadline = self.quic.get_timer()
        if deadline is None or deadline > now:
            return False
        self.quic.handle_timer(now=now)
        self._drain_events()
        return True

    def _round(self, now: float) -> list[Datagram]:
        """One datagrams_to_send: what the pacer and the congestion window let out now."""
        if isinstance(self.quic, MultipathConnection):
            datagrams = self.quic.datagrams_with_paths(now)
        else:
            datagrams = [(data, addr, 0) for data, addr in self.quic.datagrams_to_send(now)]
        self._flushes += 1
        self._datagrams_sent += len(datagrams)
        if self._closing and datagrams:
            self.close_sent.set()  # after close(), a flush builds the CONNECTION_CLOSE first
        # Building packets can queue events too (new CIDs the endpoint must route,
        # streams reset for a missed deadline).
        self._drain_events()
        return datagrams

    def _drain_events(self) -> None:
        event = self.quic.next_event()
        while event is not None:
            if isinstance(event, DeadlineMissed):
                self._deadline_misses += 1
                self._ticker.record_deadline_miss()
            for handler in self._handlers:
                handler(event)
            if isinstance(event, ConnectionTerminated):
                self._terminate()
            event = self.quic.next_event()

    def _fail(self, what: str, now: float) -> list[Datagram]:
        """The core raised: log it once, close with INTERNAL_ERROR (best effort), end."""
        log.exception("connection failed while %s: closing it (INTERNAL_ERROR)", what)
        out: list[Datagram] = []
        try:
            self.quic.close(error_code=QuicErrorCode.INTERNAL_ERROR, reason_phrase="internal error")
            out = self._round(now)  # the CONNECTION_CLOSE, if the core can still build it
        except Exception:
            log.debug("no CONNECTION_CLOSE could be built either", exc_info=True)
        self.abandon(QuicErrorCode.INTERNAL_ERROR, f"internal error while {what}")
        return out

    def _terminate(self) -> None:
        self._ticker.forget(self)
        self._deadline = None
        self.closed.set()
        self.close_sent.set()
