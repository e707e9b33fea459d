"""One edge host's part in the fleet, for `serve` to run beside its server.

`FleetHost` joins (a member lease and a QUIC-LB server ID; `cids`, the
encrypted CIDs its workers issue under the fleet's QUIC-LB key), then runs three
followers until it leaves: the shared keys (`KeyWatcher`, `install_keys` on
every change), the key rotation campaign (`KeyRotator`), and the fleet's
config (`ConfigWatcher`, `apply_config` on every good revision: the server's
reload). `status()` says what the host runs on, for /readyz and the log: when
etcd is away the host keeps serving its last good config and keys, and says
so; when its membership is lost (`lost`: the lease revoked, or etcd out of
reach for a TTL) it must stop serving under its server ID, which another host
may take once the ID's hold runs out: `on_lost` runs then, once
(`drain_on_loss(server, settings)`: refuse new connections, let the requests
under way finish, close every connection within the hold).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..config import EdgeConfig
from ..workers import CidRotation, FleetCids
from .cid_config import CidConfigFollower, ensure_cid_config, follow_rotation
from .config_watch import ConfigWatcher
from .etcd import Etcd
from .layout import Layout
from .membership import Member, MembershipSettings
from .shared_keys import KeyRing, KeyRotator, KeySchedule, KeyWatcher

log = logging.getLogger("netsched.edge.fleet")

# Until `serve` has options for them: the member lease's TTL and the ID's idle hold.
TTL_VARIABLE = "NETSCHED_FLEET_TTL_S"
IDLE_HOLD_VARIABLE = "NETSCHED_FLEET_IDLE_HOLD_S"


def membership_from_environment() -> MembershipSettings:
    """The default membership settings, with $NETSCHED_FLEET_TTL_S and
    $NETSCHED_FLEET_IDLE_HOLD_S (whole seconds) when set."""
    defaults = MembershipSettings()
    try:
        return MembershipSettings(
            ttl_s=int(os.environ.get(TTL_VARIABLE, defaults.ttl_s)),
            idle_hold_s=int(os.environ.get(IDLE_HOLD_VARIABLE, defaults.idle_hold_s)),
        )
    except ValueError as exc:
        raise ValueError(f"${TTL_VARIABLE} / ${IDLE_HOLD_VARIABLE}: {exc}") from None


@dataclass(frozen=True, slots=True)
class FleetSettings:
    etcd: str  # the etcd cluster's client URLs, comma-separated
    name: str  # this host's member name, unique in the fleet
    address: str  # where the forwarder reaches this host
    base_dir: Path  # relative paths in the fleet's config resolve here
    prefix: str = Layout().prefix
    membership: MembershipSettings = field(default_factory=membership_from_environment)
    keys: KeySchedule = field(default_factory=KeySchedule)


@dataclass(frozen=True, slots=True)
class CidState:
    """The QUIC-LB codepoint a host issues CIDs under, and the wall-clock time the one it
    replaced stops being routed (None: none is): the server moves its connections to the
    former before the latter (reissue.CidRefresh)."""

    codepoint: int
    replaced_until: float | None


@dataclass(frozen=True, slots=True)
class FleetStatus:
    server_id: int
    member: bool  # False once the membership is lost
    etcd_available: bool
    config_revision: int  # of the fleet config applied (0: none yet)
    keys_revision: int  # of the keys installed (0: none yet)
    cids: CidState | None = None  # None: QUIC-LB rotations not followed

    def describe(self) -> str:
        """One line for /readyz and the log."""
        state = f"fleet member, server ID {self.server_id}" if self.member else "membership LOST"
        source = "etcd reachable" if self.etcd_available else "etcd UNAVAILABLE"
        cids = "" if self.cids is None else f"; QUIC-LB codepoint {self.cids.codepoint}"
        return (
            f"{state}; {source}; config revision {self.config_revision or 'none'},"
            f" keys revision {self.keys_revision or 'none'}{cids}"
        )


class Drainable(Protocol):
    """What `drain_on_loss` needs of the server (EdgeServer)."""

    @property
    def config(self) -> EdgeConfig: ...

    async def drain(self, timeout_s: float) -> None: ...


def keep_local(config: EdgeConfig, local: EdgeConfig) -> EdgeConfig:
    """The fleet's `config` as this host (or worker) serves it: its own listening and
    admin addresses and state folder, and the certificate it started with when the
    fleet's names none."""
    changes: dict[str, Any] = dict(
        host=local.host,
        port=local.port,
        admin_host=local.admin_host,
        admin_port=local.admin_port,
        state_dir=local.state_dir,
    )
    if config.certificate is None:
        changes.update(certificate=local.certificate, private_key=local.private_key)
    return dataclasses.replace(config, **changes)


def drain_on_loss(server: Drainable, settings: FleetSettings) -> Callable[[], Awaitable[None]]:
    """`FleetHost(on_lost=...)` for an edge server: drain it (no new connection, the
    requests under way finish, then every connection is closed, NO_ERROR) within its
    drain timeout, cut to the server ID's idle hold: after that another host may issue
    CIDs with this host's ID."""

    async def drain() -> None:
        timeout = min(server.config.drain_timeout_s, float(settings.membership.idle_hold_s))
        log.error(
            "fleet membership lost (server ID may be reused): draining, %.1f s at most", timeout
        )
        await server.drain(timeout)
        log.error("fleet membership lost: drained; restart this host to join again")

    return drain


class FleetHost:
    def __init__(
        self,
        settings: FleetSettings,
        *,
        ports: tuple[int, ...],
        apply_config: Callable[[EdgeConfig], None],
        install_keys: Callable[[KeyRing], None],
        on_lost: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.layout = Layout(settings.prefix)
        self.etcd = Etcd(settings.etcd)
        self.member = Member(
            self.etcd, self.layout, settings.name, settings.address, ports, settings.membership
        )
        self.keys = KeyWatcher(self.etcd, self.layout, install_keys)
        self._apply_config = apply_config
        self._on_lost = on_lost
        self._tasks: list[asyncio.Task[None]] = []
        self.config: ConfigWatcher | None = None
        self.cids: FleetCids | None = None  # this host's encrypted CIDs, once joined
        self.cid_configs: CidConfigFollower | None = None

    @property
    def lost(self) -> asyncio.Event:
        return self.member.lost

    async def __aenter__(self) -> FleetHost:
        async with contextlib.AsyncExitStack() as undo:  # on a failure only
            undo.push_async_callback(self.etcd.close)
            await undo.enter_async_context(self.member)
            cid_config = await ensure_cid_config(self.etcd, self.layout)
            undo.pop_all()
        # Issued under the configuration in force, which follows the fleet's rotations.
        rotation = CidRotation(cid_config.key, cid_config.config_rotation)
        self.cids = cid_config.for_host(self.member.server_id, rotation)
        self.cid_configs = CidConfigFollower(
            self.etcd, self.layout, follow_rotation(self.cids), "fleet host"
        )
        self.config = ConfigWatcher(
            self.etcd,
            self.layout,
            self.settings.name,
            self._apply_config,
            base_dir=self.settings.base_dir,
            lease=self.member.lease.id,
        )
        rotator = KeyRotator(self.etcd, self.layout, self.member, self.settings.keys)
        self._tasks = [
            asyncio.create_task(runner(), name=f"fleet {runner.__qualname__}")
            for runner in (
                self.keys.run,
                rotator.run,
                self.config.run,
                self.cid_configs.run,
                self._when_lost,
            )
        ]
        return self

    async def _when_lost(self) -> None:
        await self.lost.wait()
        if self._on_lost is None:
            log.error("fleet membership lost: this host's server ID may be reused")
            return
        await self._on_lost()

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self.member.leave()
        finally:
            await self.etcd.close()

    def status(self) -> FleetStatus:
        ring = self.keys.ring
        config = self.config
        return FleetStatus(
            server_id=self.member.server_id,
            member=not self.lost.is_set(),
            etcd_available=self.member.lease.renewing
            and self.keys.etcd_available
            and (config is None or config.etcd_available),
            config_revision=0 if config is None else config.applied_revision,
            keys_revision=0 if ring is None else ring.revision,
            cids=cid_state(self.cids, self.cid_configs),
        )


def cid_state(cids: FleetCids | None, follower: CidConfigFollower | None) -> CidState | None:
    """A host's (or worker's) `CidState`, when its `cids` follow the fleet's rotations."""
    rotation = None if cids is None else cids.rotation
    if rotation is None:
        return None
    configs = None if follower is None else follower.configs
    return CidState(rotation.config_rotation, None if configs is None else configs.replaced_until)
