"""The client's view of its paths: open, close, prefer, and watch them.

A thin asyncio layer over `MultipathConnection`'s path API; it owns the
socket of each extra path (through the endpoint) and turns path events into
awaitables and a bounded history.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from aioquic.quic.connection import NetworkAddress
from aioquic.quic.events import QuicEvent

from ..errors import NetSchedError
from ..proto.multipath import events as mpe
from ..proto.multipath.connection import MultipathConnection, MultipathError, PathIdNotReady
from ..proto.multipath.frames import APPLICATION_ABANDON_PATH
from .driver import ConnectionDriver
from .endpoint import ClientEndpoint
from .interfaces import InterfaceError, resolve_local

log = logging.getLogger("netsched.paths")

PATH_VALIDATION_TIMEOUT_S = 5.0
# A path the network took away (abandoned after a long silence, or by the edge) is
# opened again from the same local address: first after this long, then twice as
# long after each failed try, up to REOPEN_MAX_S, while the session lives.
REOPEN_FIRST_S = 1.0
REOPEN_MAX_S = 30.0


class PathError(NetSchedError):
    """A path could not be opened or used."""


@dataclass(frozen=True, slots=True)
class PathStats:
    path_id: int
    state: str  # validating | active | closing | closed
    local: NetworkAddress | None
    remote: NetworkAddress | None
    backup: bool
    rtt_ms: float | None
    cwnd: int
    bytes_in_flight: int
    bytes_sent: int
    bytes_received: int
    packets_lost: int
    packets_reinjected: int = 0  # resent on another path when this one stalled
    loss_rate: float = 0.0  # recent share of packets lost (the scheduler's standing)
    stalled: bool = False  # silent: no new data, probed until it answers
    recovering: bool = False  # back from a stall: no deadline data yet (hysteresis)
    # The scheduler's decisions for this path, by reason (see proto/multipath/scheduler.py).
    decisions: Mapping[str, int] = field(default_factory=dict)
    # Bytes of stream data sent on this path (retransmissions and copies included), by
    # the streams' RFC 9218 urgency (0 most urgent; 3 without an SLO): which class rode it.
    stream_bytes: Mapping[int, int] = field(default_factory=dict)


class PathManager:
    def __init__(
        self,
        driver: ConnectionDriver,
        endpoint: ClientEndpoint,
        family: socket.AddressFamily,
        remote: NetworkAddress,
    ) -> None:
        self._driver = driver
        self._endpoint = endpoint
        self._family = family
        self._remote = remote
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._id_ready: asyncio.Future[None] | None = None
        self.events: deque[QuicEvent] = deque(maxlen=256)
        self._removed: set[int] = set()  # abandoned by the application: not reopened
        self._reopening: dict[str, asyncio.Task[None]] = {}  # local host -> its task
        self.reopened = 0  # paths opened again after the network took them
        driver.add_event_handler(self._on_event)

    @property
    def _quic(self) -> MultipathConnection:
        quic = self._driver.quic
        assert isinstance(quic, MultipathConnection)
        return quic

    @property
    def multipath(self) -> bool:
        return self._quic.multipath_enabled

    def stats(self) -> list[PathStats]:
        live = [
            PathStats(
                path_id=info["path_id"],
                state=info["state"],
                local=info["local"]
                or (self._endpoint.local_address if info["path_id"] == 0 else None),
                remote=info["remote"],
                backup=info["backup"],
                rtt_ms=None if info["rtt"] is None else info["rtt"] * 1000,
                cwnd=info["cwnd"],
                bytes_in_flight=info["bytes_in_flight"],
                bytes_sent=info["bytes_sent"],
                bytes_received=info["bytes_received"],
                packets_lost=info["packets_lost"],
                packets_reinjected=info["packets_reinjected"],
                loss_rate=info["loss_rate"],
                stalled=info["stalled"],
                recovering=info["recovering"],
                decisions=info["decisions"],
                stream_bytes=info["stream_bytes"],
            )
            for info in self._quic.path_info()
        ]
        closed = [
            PathStats(
                path_id,
                "closed",
                None,
                None,
                False,
                None,
                0,
                0,
                s.bytes_sent,
                s.bytes_received,
                s.packets_lost,
                stream_bytes=dict(s.stream_bytes),
            )
            for path_id, s in self._quic.closed_stats.items()
        ]
        return live + closed

    async def add(self, local: str, timeout: float = PATH_VALIDATION_TIMEOUT_S) -> int:
        """Open a path from `local` (address or interface name); return once validated."""
        try:
            host = resolve_local(local, self._family)
        except InterfaceError as exc:
            raise PathError(str(exc)) from None
        sock = await self._endpoint.open_path_socket(self._family, host)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                path_id = await self._open(sock.local_address)
        except (MultipathError, TimeoutError) as exc:
            sock.close()
            raise PathError(str(exc) or "no path ID became ready") from None
        self._endpoint.bind_path(path_id, sock)
        waiter = self._waiters[path_id] = loop.create_future()
        self._driver.schedule_transmit()
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            self.remove(path_id)
            raise PathError(f"path from {local} not validated within {timeout} s") from None
        finally:
            self._waiters.pop(path_id, None)
        return path_id

    def _reopen_later(self, path_id: int) -> None:
        """The network took this path (not the application): open one from its local
        address again once that works (failback, with a new path ID)."""
        path = self._quic.paths.get(path_id)
        local = path.local_addr if path is not None else None
        if path_id == 0 or local is None:
            local = self._endpoint.local_address
        host = str(local[0])
        if host in self._reopening or self._quic.multipath_enabled is False:
            return
        task = asyncio.get_running_loop().create_task(self._reopen(host))
        self._reopening[host] = task
        task.add_done_callback(lambda _: self._reopening.pop(host, None))

    async def _reopen(self, host: str) -> None:
        delay = REOPEN_FIRST_S
        while True:
            await asyncio.sleep(delay)
            if self._driver.closed.is_set():
                return
            try:
                await self.add(host)
            except PathError as exc:
                log.info("path from %s not back yet: %s", host, exc)
                delay = min(2 * delay, REOPEN_MAX_S)
                continue
            self.reopened += 1
            return

    async def _open(self, local: NetworkAddress) -> int:
        """open_path, waiting while path IDs are not ready (just after the handshake)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                return self._quic.open_path(local, self._remote, loop.time())
            except PathIdNotReady:
                self._id_ready = loop.create_future()
                self._driver.schedule_transmit()  # PATH_CIDS_BLOCKED, if one was queued
                await self._id_ready

    @property
    def can_migrate(self) -> bool:
        return self.multipath or self._quic.can_migrate

    async def migrate(self, local: str | None = None) -> int:
        """Move the session to a new local address; the path ID in use afterwards.

        Multipath: open a path from `local` and abandon the others once it is
        validated (make before break). Otherwise path 0 moves (RFC 9000 §9): its
        datagrams leave from a new socket, under a new connection ID, and the edge
        validates the new address. `local` defaults to the current address (a new
        port)."""
        host = self._endpoint.local_address[0] if local is None else local
        if self.multipath:
            before = [s.path_id for s in self.stats() if s.state == "active"]
            path_id = await self.add(host)
            for old in before:
                self.remove(old)
            return path_id
        try:
            sock = await self._endpoint.open_path_socket(
                self._family, resolve_local(host, self._family)
            )
        except (InterfaceError, OSError) as exc:
            raise PathError(f"cannot migrate to {host}: {exc}") from None
        try:
            self._quic.prepare_migration()
        except MultipathError as exc:
            sock.close()
            raise PathError(str(exc)) from None
        previous = self._endpoint.bind_path(0, sock)
        if previous is not None:  # late packets to the old address still need reading
            asyncio.get_running_loop().call_later(3.0, previous.close)
        self._driver.schedule_transmit()
        return 0

    def close(self) -> None:
        """Stop reopening paths (the session is closing)."""
        for task in self._reopening.values():
            task.cancel()
        self._reopening.clear()

    def remove(self, path_id: int) -> None:
        self._removed.add(path_id)
        self._quic.abandon_path(
            path_id, APPLICATION_ABANDON_PATH, now=asyncio.get_running_loop().time()
        )
        self._driver.schedule_transmit()

    def set_backup(self, path_id: int, backup: bool) -> None:
        self._quic.set_path_backup(path_id, backup)
        self._driver.schedule_transmit()

    def _on_event(self, event: QuicEvent) -> None:
        if isinstance(
            event, mpe.PathValidated | mpe.PathAbandoned | mpe.PathStatusChanged | mpe.PathAvailable
        ):
            self.events.append(event)
        if isinstance(event, mpe.PathIdReady):
            if self._id_ready is not None and not self._id_ready.done():
                self._id_ready.set_result(None)
        elif isinstance(event, mpe.PathValidated):
            waiter = self._waiters.get(event.path_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif isinstance(event, mpe.PathAbandoned):
            waiter = self._waiters.get(event.path_id)
            if waiter is not None and not waiter.done():
                waiter.set_exception(
                    PathError(f"path {event.path_id} abandoned (code {event.error_code:#x})")
                )
            elif event.path_id not in self._removed:
                self._reopen_later(event.path_id)
            # Keep the socket until the path is forgotten: late packets still need ACKs.
            asyncio.get_running_loop().call_later(3.0, self._endpoint.release_path, event.path_id)
