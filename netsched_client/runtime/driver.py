"""Drives one sans-IO QUIC connection from an asyncio loop.

receive → drain events → transmit → re-arm one timer: the whole adapter. It
owns no socket; datagrams leave through `send_batch`, a callable supplied by
the endpoint, so that one flush of a connection is one batch (the seam where
sendmmsg/GSO plug in).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.events import ConnectionTerminated, QuicEvent

from ..proto.multipath.connection import MultipathConnection

# (payload, destination, path ID): the path picks the local socket on a multipath client.
Datagram = tuple[bytes, NetworkAddress, int]
SendBatch = Callable[[list[Datagram]], None]
EventHandler = Callable[[QuicEvent], None]


class ConnectionDriver:
    def __init__(
        self,
        quic: QuicConnection,
        send_batch: SendBatch,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.quic = quic
        self._send_batch = send_batch
        self._loop = loop or asyncio.get_running_loop()
        self._handlers: list[EventHandler] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._transmit_handle: asyncio.Handle | None = None
        self.closed = asyncio.Event()

    def add_event_handler(self, handler: EventHandler) -> None:
        self._handlers.append(handler)

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        self.quic.receive_datagram(data, addr, now=self._loop.time())
        self._drain_events()
        self.transmit()

    def schedule_transmit(self) -> None:
        """Coalesce the sends of one loop iteration into one flush."""
        if self._transmit_handle is None:
            self._transmit_handle = self._loop.call_soon(self.transmit)

    def transmit(self) -> None:
        if self._transmit_handle is not None:
            self._transmit_handle.cancel()
            self._transmit_handle = None
        now = self._loop.time()
        if isinstance(self.quic, MultipathConnection):
            datagrams = self.quic.datagrams_with_paths(now)
        else:
            datagrams = [(data, addr, 0) for data, addr in self.quic.datagrams_to_send(now)]
        if datagrams:
            self._send_batch(datagrams)
        # Building packets can queue events too (new CIDs the endpoint must route).
        self._drain_events()
        self._rearm_timer()

    def close(self, error_code: int = 0, reason: str = "") -> None:
        self.quic.close(error_code=error_code, reason_phrase=reason)
        self.transmit()

    def _rearm_timer(self) -> None:
        timer_at = self.quic.get_timer()
        if self._timer is not None and self._timer_at != timer_at:
            self._timer.cancel()
            self._timer = None
        if self._timer is None and timer_at is not None:
            self._timer = self._loop.call_at(timer_at, self._on_timer)
        self._timer_at = timer_at

    def _on_timer(self) -> None:
        now = max(self._timer_at or 0.0, self._loop.time())
        self._timer = None
        self._timer_at = None
        self.quic.handle_timer(now=now)
        self._drain_events()
        self.transmit()

    def _drain_events(self) -> None:
        event = self.quic.next_event()
        while event is not None:
            for handler in self._handlers:
                handler(event)
            if isinstance(event, ConnectionTerminated):
                self._terminate()
            event = self.quic.next_event()

    def _terminate(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.closed.set()
