"""Relays a connection's QUIC DATAGRAM frames to UDP backends and back.

One flow per (connection, service): the backend is chosen once, when the
flow's first datagram arrives, and replies return as DATAGRAM frames tagged
with the same service. Datagrams are unreliable by contract, so anything that
cannot be relayed (unknown service, no UDP backend, too many flows, a flow
still opening with its small buffer full) is counted and dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from .backends.udp import UDPBackend, UDPFlow

if TYPE_CHECKING:
    from .dispatch import Dispatcher

log = logging.getLogger("netsched.edge.datagrams")

MAX_FLOWS_PER_CONNECTION = 16
MAX_PENDING_PER_FLOW = 32


class DatagramRelay:
    def __init__(self, dispatcher: Dispatcher, send: Callable[[str, bytes], None]) -> None:
        self._dispatcher = dispatcher
        self._send = send
        self._flows: dict[str, UDPFlow] = {}
        self._opening: dict[str, list[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.dropped = 0

    def on_datagram(self, service: str, payload: bytes) -> None:
        flow = self._flows.get(service)
        if flow is not None:
            flow.send(payload)
            return
        pending = self._opening.get(service)
        if pending is not None:
            self._queue(pending, payload)
            return
        if len(self._flows) + len(self._opening) >= MAX_FLOWS_PER_CONNECTION:
            self.dropped += 1
            return
        backend = self._udp_backend(service)
        if backend is None:
            self.dropped += 1
            return
        self._opening[service] = [payload]
        task = asyncio.create_task(self._open(service, backend))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _queue(self, pending: list[bytes], payload: bytes) -> None:
        if len(pending) < MAX_PENDING_PER_FLOW:
            pending.append(payload)
        else:
            self.dropped += 1

    def _udp_backend(self, service: str) -> UDPBackend | None:
        pool = self._dispatcher.pools.get(service)
        if pool is None:
            return None
        backend = pool.pick(service)
        return backend if isinstance(backend, UDPBackend) else None

    async def _open(self, service: str, backend: UDPBackend) -> None:
        try:
            flow = await backend.open_flow(lambda data: self._send(service, data))
        except OSError as exc:
            log.info("cannot open a datagram flow to %s: %s", backend.name, exc)
            self.dropped += len(self._opening.pop(service, []))
            return
        self._flows[service] = flow
        for payload in self._opening.pop(service, []):
            flow.send(payload)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for flow in self._flows.values():
            flow.close()
        self._flows.clear()
        self._opening.clear()
