"""A fleet host of N worker processes (`serve --workers N --fleet-etcd ...`).

The parent is the member: it joins (the member lease and a server ID, its
workers' ports in the member key), makes the fleet's first keys when there are
none, campaigns to rotate them, and supervises the workers
(`netsched_edge.workers.supervise`). Each worker issues CIDs whose server ID is
the host's ID followed by its index, on a port of its own (the front routes to
it: docs/FLEET.md), and follows the fleet's keys and config itself
(`follow_fleet`: a KeyWatcher and a ConfigWatcher of its own; etcd serves a
watch per worker at little cost, and no pipe from the parent is needed). A
worker waits for the keys before it serves, so every ticket and Retry token is
sealed with the fleet's. Each worker reports its verdict on a config under
`config-status/NAME/INDEX`, with the member lease.

A lost membership ends the host: the parent asks `supervise` to stop, as a
SIGTERM would, and the workers drain (drain_timeout_s) and exit; a supervisor
(systemd) starts it again, and it joins under a new server ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..config import EdgeConfig
from ..workers import CidRotation, FleetCids, WorkerIdentity, WorkerPool, supervise
from .cid_config import CidConfigFollower, ensure_cid_config, follow_rotation
from .config_watch import ConfigWatcher
from .etcd import Etcd, EtcdError
from .host import FleetSettings, FleetStatus, cid_state, keep_local
from .layout import Layout
from .membership import Member
from .shared_keys import KeyRing, KeyRotator, KeyWatcher, ensure_ring

log = logging.getLogger("netsched.edge.fleet")

JOIN_TIMEOUT_S = 15.0  # the parent's join, before any worker starts
FIRST_KEYS_TIMEOUT_S = 10.0  # a worker's first read of the fleet's keys


@dataclass(frozen=True, slots=True)
class WorkerFleet:
    """What a worker needs to follow the fleet (sent to it when it is spawned)."""

    etcd: str
    prefix: str
    name: str  # the host's member name
    lease: int  # the member lease: the worker's config status goes with it
    base_dir: Path
    server_id: int  # the host's


class FollowingServer(Protocol):
    """What `follow_fleet` needs of the worker's server (EdgeServer)."""

    @property
    def config(self) -> EdgeConfig: ...
    def install_keys(self, ring: KeyRing) -> None: ...
    def reload(self, config: EdgeConfig) -> None: ...
    def follow_fleet(self, status: Callable[[], FleetStatus]) -> None: ...


@contextlib.asynccontextmanager
async def follow_fleet(
    fleet: WorkerFleet, server: FollowingServer, identity: WorkerIdentity
) -> AsyncIterator[None]:
    """In a worker, before its server starts: the fleet's keys installed (waited for), its
    config applied (keeping the worker's addresses) and its QUIC-LB rotations followed
    (the worker's `CidRotation`), until the context ends."""
    index = identity.index
    layout = Layout(fleet.prefix)
    local = server.config
    async with Etcd(fleet.etcd) as etcd:
        keys = KeyWatcher(etcd, layout, server.install_keys)
        config = ConfigWatcher(
            etcd,
            layout,
            f"{fleet.name}/{index}",
            lambda new: server.reload(keep_local(new, local)),
            base_dir=fleet.base_dir,
            lease=fleet.lease,
        )
        tasks = [asyncio.create_task(keys.run()), asyncio.create_task(config.run())]
        cids = identity.fleet
        follower = None
        if cids is not None and cids.rotation is not None:
            follower = CidConfigFollower(etcd, layout, follow_rotation(cids), f"worker {index}")
            tasks.append(asyncio.create_task(follower.run()))
        try:
            async with asyncio.timeout(FIRST_KEYS_TIMEOUT_S):
                while keys.ring is None:
                    await asyncio.sleep(0.01)
            server.follow_fleet(
                lambda: FleetStatus(
                    server_id=fleet.server_id,
                    member=True,  # the parent's to know: it stops the host when it is not
                    etcd_available=keys.etcd_available and config.etcd_available,
                    config_revision=config.applied_revision,
                    keys_revision=0 if keys.ring is None else keys.ring.revision,
                    cids=cid_state(cids, follower),
                )
            )
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def worker_ports(config: EdgeConfig, count: int) -> tuple[int, ...]:
    """Each worker's port: the configured one + index, or free ones picked now (the
    member key carries them before the workers bind)."""
    if config.port != 0:
        return tuple(config.port + index for index in range(count))
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    probes = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(count)]
    try:
        for probe in probes:
            probe.bind((config.host, 0))
        return tuple(int(probe.getsockname()[1]) for probe in probes)
    finally:
        for probe in probes:
            probe.close()


class FleetParent:
    """The member, on an event loop in a thread of its own beside `supervise` (which
    must run in the main thread, for the signals)."""

    def __init__(self, settings: FleetSettings, ports: tuple[int, ...]) -> None:
        self.settings = settings
        self.ports = ports
        self.lost = False
        self._joined: queue.SimpleQueue[tuple[FleetCids, WorkerFleet] | BaseException] = (
            queue.SimpleQueue()
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._leave: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="fleet member", daemon=True)

    def join(self) -> tuple[FleetCids, WorkerFleet]:
        """Join (in the thread); EtcdError if it fails."""
        self._thread.start()
        try:
            joined = self._joined.get(timeout=JOIN_TIMEOUT_S)
        except queue.Empty:
            raise EtcdError(f"not joined within {JOIN_TIMEOUT_S:g} s") from None
        if isinstance(joined, BaseException):
            self._thread.join()
            raise joined
        return joined

    def leave(self) -> None:
        if self._loop is not None and self._leave is not None:
            self._loop.call_soon_threadsafe(self._leave.set)
        self._thread.join(10.0)

    def _run(self) -> None:
        try:
            asyncio.run(self._member())
        except BaseException as exc:  # reported to join(), which raises it
            self._joined.put(exc)

    async def _member(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._leave = asyncio.Event()
        settings = self.settings
        layout = Layout(settings.prefix)
        async with Etcd(settings.etcd) as etcd:
            member = Member(
                etcd, layout, settings.name, settings.address, self.ports, settings.membership
            )
            async with member:
                cid_config = await ensure_cid_config(etcd, layout)
                await ensure_ring(etcd, layout)  # the fleet's first keys, if none yet
                follow = WorkerFleet(
                    settings.etcd, settings.prefix, settings.name, member.lease.id,
                    settings.base_dir, member.server_id,
                )  # fmt: skip
                rotation = CidRotation(cid_config.key, cid_config.config_rotation)
                self._joined.put((cid_config.for_host(member.server_id, rotation), follow))
                log.info("fleet member %s, server ID %d", settings.name, member.server_id)
                rotator = asyncio.create_task(KeyRotator(etcd, layout, member, settings.keys).run())
                lost = asyncio.create_task(member.lost.wait())
                leave = asyncio.create_task(self._leave.wait())
                await asyncio.wait({lost, leave}, return_when=asyncio.FIRST_COMPLETED)
                for task in (rotator, lost, leave):
                    task.cancel()
                if member.lost.is_set() and not self._leave.is_set():
                    self.lost = True
                    log.error("fleet membership lost (server ID may be reused): stopping")
                    os.kill(os.getpid(), signal.SIGTERM)  # supervise drains the workers


def serve_fleet_workers(
    config: EdgeConfig,
    config_path: str | None,
    count: int,
    settings: FleetSettings,
    announce: Callable[[int], None],
) -> int:
    """`serve --workers N --fleet-etcd ...`: join, run the workers until SIGTERM/SIGINT
    (or the membership is lost), leave. Exit status: 0, or 1 when the fleet could not
    be joined or the membership was lost."""
    ports = worker_ports(config, count)
    parent = FleetParent(settings, ports)
    try:
        cids, follow = parent.join()
    except (EtcdError, OSError) as exc:
        print(f"netsched-edge: cannot start: fleet: {exc}", file=sys.stderr)
        return 1
    try:
        pool = WorkerPool(config, count, config_path, fleet=cids, follow=follow, ports=ports)
        code = supervise(pool, announce)
    finally:
        parent.leave()
    return 1 if parent.lost else code
