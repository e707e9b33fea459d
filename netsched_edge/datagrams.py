"""Relays a connection's QUIC DATAGRAM frames to UDP backends and back.

One flow per (connection, service): the backend is chosen once, when the
flow's first datagram arrives, and replies return as DATAGRAM frames tagged
with the same service. Datagrams are unreliable by contract, so anything that
cannot be relayed (unknown service, no UDP backend, too many flows, a flow
still opening with its small buffer full, a payload the backend cannot take)
is counted and dropped.

Replies go through `DatagramOutbox`, which keeps the connection's outgoing
DATAGRAM queue moving. aioquic sends queued datagrams strictly in order and
leaves the head in place when it does not fit the packet being built, so a
single reply larger than a packet would hold every later one back for the
connection's life. The outbox therefore, per reply:

1. drops it (counted, reason "oversized") when its DATAGRAM frame could never
   be sent: larger than the peer's max_datagram_frame_size, or than a 1-RTT
   packet of the current path MTU can carry with the longest header
   (`max_reply_size`);
2. drops queued replies older than `max_age` (reason "stale"): one that no
   path can carry (its MTU shrank since) or that waited through congestion
   is useless to a datagram application by now, and leaves the queue;
3. drops the oldest queued reply (reason "queue_full") when
   `limits.max_datagram_queue` are already waiting, so a slow client costs
   the edge at most that many replies.

Without the QUIC connection (`connection=None`), the outbox can only apply
the size rule, with the smallest MTU QUIC allows (1200 bytes: every path
carries that much) and no frame-size limit of the peer's.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from aioquic.buffer import size_uint_var
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE
from aioquic.quic.connection import QuicConnection

from .backends.base import BackendUnavailable
from .backends.udp import UDPBackend, UDPFlow
from .config import LimitsConfig

if TYPE_CHECKING:
    from .dispatch import Dispatcher

log = logging.getLogger("netsched.edge.datagrams")

MAX_FLOWS_PER_CONNECTION = 16
MAX_PENDING_PER_FLOW = 32
MAX_AGE_S: Final = 1.0  # a queued reply older than this is dropped
# A 1-RTT packet's most expensive wrapping: the flags byte, the longest connection ID
# (RFC 9000: 20 bytes), the longest packet number (4) and the AEAD tag (16).
PACKET_OVERHEAD: Final = 1 + 20 + 4 + 16


def max_reply_size(path_mtu: int, peer_frame_limit: int | None) -> int:
    """The largest DATAGRAM frame payload that can be sent: 0 if none can.

    `path_mtu`: the UDP payload size of the path's packets; `peer_frame_limit`:
    the peer's max_datagram_frame_size (type, length and payload; None: the peer
    takes no DATAGRAM frames).
    """
    room = path_mtu - PACKET_OVERHEAD
    if peer_frame_limit is not None:
        room = min(room, peer_frame_limit)
    else:
        return 0
    size = room - 1 - size_uint_var(max(room, 0))  # the frame type, the length field
    return max(size, 0)


class DatagramOutbox:
    """The replies a connection has queued as DATAGRAM frames, kept moving (module doc).

    Driving contract: call `admit(size, now)` before queueing a frame payload of
    `size` bytes, and `queued(now)` right after queueing it. The only module that
    reads aioquic's outgoing-datagram state (three private names: the queue
    `_datagrams_pending`, the path's `_max_datagram_size` and the peer's
    `_remote_max_datagram_frame_size`); every frame in that queue must have gone
    through this outbox.
    """

    def __init__(
        self,
        connection: QuicConnection | None,
        *,
        max_queue: int,
        max_age: float = MAX_AGE_S,
        on_drop: Callable[[str, int], None] = lambda reason, count: None,
    ) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self._connection = connection
        self.max_queue = max_queue
        self.max_age = max_age
        self._on_drop = on_drop
        self._queued_at: deque[float] = deque()  # one entry per frame still in aioquic's queue

    def room(self) -> int:
        """The largest frame payload the connection can send now."""
        if self._connection is None:
            return max_reply_size(SMALLEST_MAX_DATAGRAM_SIZE, 1 << 16)
        return max_reply_size(
            self._connection._max_datagram_size,
            self._connection._remote_max_datagram_frame_size,
        )

    def admit(self, size: int, now: float) -> bool:
        """Whether a frame payload of `size` bytes may be queued now; drops what must go."""
        if size > self.room():
            self._on_drop("oversized", 1)
            return False
        pending = self._pending()
        if pending is None:
            return True
        while len(self._queued_at) > len(pending):
            self._queued_at.popleft()  # aioquic sent these (from the head)
        stale = 0
        while self._queued_at and now - self._queued_at[0] > self.max_age:
            self._drop_head(pending)
            stale += 1
        if stale:
            self._on_drop("stale", stale)
        if len(self._queued_at) >= self.max_queue:
            self._drop_head(pending)
            self._on_drop("queue_full", 1)
        return True

    def queued(self, now: float) -> None:
        """A frame admitted at `now` was queued."""
        pending = self._pending()
        if pending is not None and len(pending) > len(self._queued_at):
            self._queued_at.append(now)

    def __len__(self) -> int:
        """Replies queued and not yet sent (as of the last call)."""
        return len(self._queued_at)

    def _pending(self) -> deque[bytes] | None:
        return None if self._connection is None else self._connection._datagrams_pending

    def _drop_head(self, pending: deque[bytes]) -> None:
        self._queued_at.popleft()
        if pending:
            pending.popleft()


class DatagramRelay:
    def __init__(
        self,
        dispatcher: Dispatcher,
        send: Callable[[str, bytes], None],
        *,
        connection: QuicConnection | None = None,
        limits: LimitsConfig | None = None,
    ) -> None:
        self._dispatcher = dispatcher
        self._send = send
        self._flows: dict[str, UDPFlow] = {}
        self._opening: dict[str, list[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._clock = asyncio.get_running_loop().time
        limits = LimitsConfig() if limits is None else limits
        self.outbox = DatagramOutbox(
            connection, max_queue=limits.max_datagram_queue, on_drop=self._count_drop
        )
        self.dropped = 0

    def on_datagram(self, service: str, payload: bytes) -> None:
        flow = self._flows.get(service)
        if flow is not None:
            self._to_backend(flow, payload)
            return
        pending = self._opening.get(service)
        if pending is not None:
            self._queue(pending, payload)
            return
        if len(self._flows) + len(self._opening) >= MAX_FLOWS_PER_CONNECTION:
            self._count_drop("too_many_flows", 1)
            return
        backend = self._udp_backend(service)
        if backend is None:
            self._count_drop("no_backend", 1)
            return
        self._opening[service] = [payload]
        task = asyncio.create_task(self._open(service, backend))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _to_backend(self, flow: UDPFlow, payload: bytes) -> None:
        try:
            flow.send(payload)
        except (ValueError, RuntimeError):  # empty, over the backend's max_datagram, closed
            self._count_drop("bad_request", 1)

    def _reply(self, service: str, payload: bytes) -> None:
        size = 1 + len(service) + len(payload)  # the frame payload (framing.encode_datagram)
        now = self._clock()
        if not self.outbox.admit(size, now):
            return
        self._send(service, payload)
        self.outbox.queued(now)

    def _count_drop(self, reason: str, count: int) -> None:
        self.dropped += count
        self._dispatcher.metrics.datagrams_dropped.labels(reason).inc(count)

    def _queue(self, pending: list[bytes], payload: bytes) -> None:
        if len(pending) < MAX_PENDING_PER_FLOW:
            pending.append(payload)
        else:
            self._count_drop("opening", 1)

    def _udp_backend(self, service: str) -> UDPBackend | None:
        pool = self._dispatcher.pools.get(service)
        if pool is None:
            return None
        backend = pool.pick(service)
        return backend if isinstance(backend, UDPBackend) else None

    async def _open(self, service: str, backend: UDPBackend) -> None:
        try:
            flow = await backend.open_flow(lambda data: self._reply(service, data))
        except (OSError, BackendUnavailable) as exc:
            log.info("cannot open a datagram flow to %s: %s", backend.name, exc)
            self._count_drop("open_error", len(self._opening.pop(service, [])))
            return
        self._flows[service] = flow
        for payload in self._opening.pop(service, []):
            self._to_backend(flow, payload)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for flow in self._flows.values():
            flow.close()
        self._flows.clear()
        self._opening.clear()
