"""The fleet's front: the forwarder on the public address, routing QUIC by connection ID.

`FleetFront` reads the fleet's QUIC-LB configuration from etcd, opens the UDP
relay (netsched_edge.forwarder) with a `QuicLbRouter`, follows the
configuration (`quic-lb`, and `quic-lb-previous` during a rotation's grace:
the router accepts both codepoints, so established connections keep their
routes while hosts move to the new one) and follows `members/`: every live
member's worker ports become backend slots of the relay, and the router maps
each host ID's workers to them. The routing rules (decrypt the server ID,
else rendezvous hashing over the live members) are in
netsched_edge/forwarder/routing.py.

Replies come back through the front (the relay's flow sockets, one per
client and worker: a host sees each client as one of the front's ports, and
a client's new address as a new path to validate). A real deployment returns
them directly instead (DSR, docs/FLEET.md says why and how).

A membership change is applied between two batches of the event loop:
new workers' slots are filled, then the routes replaced, then the slots of
workers gone are emptied (their flows closed), so no datagram meets a half
table; datagrams waiting meanwhile stay in the socket's buffer. While etcd is
unavailable the last table stays in use.

A worker whose port refuses (ICMP port unreachable, which the relay reports
as REFUSED: no process is bound there, so its connections are gone) is
routed around at once, for `refused_hold_s`, rather than until its member
lease runs out (`ttl_s`): its CIDs go by hash to the living hosts, which
answer them with a stateless reset under the fleet's shared reset key, and
new connections avoid it. After the hold it is tried again (a worker
restarted on its port gets traffic back); a member that joins again (a new
lease) is routed to at once.

A host whose machine died, whose process is stopped or whose firewall drops
packets sends no ICMP: the front's health checks (health.py: a probe that
every worker must answer with a Version Negotiation packet) mark a worker
down after `down_after` unanswered probes in a row, with the same effect as a
refusal, and up again after `up_after` answered ones. When fewer than
`panic_threshold` of the workers answer, the probes' verdicts are ignored
(health.py says why); refusals still count, they are the worker host's own word.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

from netsched_client.io import Address

from ..forwarder import QuicLbRouter, UdpForwarder, UdpRelay
from ..forwarder.flows import FlowOutcome, ForwarderStats
from ..forwarder.routing import DOWN, HostRoute
from .cid_config import CidConfigFollower, CidConfigs, FleetCidConfig, ensure_cid_config
from .etcd import Etcd, KeyValue
from .follow import Follower
from .health import HealthSettings, ProbeCounters, WorkerProber
from .layout import Layout
from .membership import MemberInfo

log = logging.getLogger("netsched.edge.fleet")

DEFAULT_MAX_BACKENDS = 1024  # worker ports over every member
# A flow must outlive its QUIC connection's idle time (the edge's idle_timeout_s, 30 s by
# default), or the host's last packets (a close) find no flow back to the client.
DEFAULT_IDLE_TIMEOUT_S = 60.0
# A worker whose port refused is routed around this long, then tried again.
DEFAULT_REFUSED_HOLD_S = 2.0


def _no_choice(client: Address) -> None:
    """The routed relay never asks: the router picks each datagram's backend."""


@dataclass(frozen=True, slots=True)
class FrontSettings:
    etcd: str  # the etcd cluster's client URLs, comma-separated
    listen: Address  # the public address (numeric)
    prefix: str = Layout().prefix
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S  # a flow's
    max_backends: int = DEFAULT_MAX_BACKENDS
    max_flows: int | None = None  # the relay's default (from RLIMIT_NOFILE)
    refused_hold_s: float = DEFAULT_REFUSED_HOLD_S
    health: HealthSettings = field(default_factory=HealthSettings)


@dataclass(frozen=True, slots=True)
class FrontStatus:
    members: int
    workers: int
    down: int  # workers routed around: their ports refused, or they left probes unanswered
    silent: int  # the ones the health checks mark down (routed around unless in panic)
    panic: bool  # too few workers answer probes: their verdicts are ignored
    etcd_available: bool
    members_revision: int  # of the member list in use (0: none read yet)
    codepoints: tuple[int, ...]  # the QUIC-LB config rotation codepoints routed, current first
    stats: ForwarderStats
    probes: ProbeCounters

    def describe(self) -> str:
        source = "etcd reachable" if self.etcd_available else "etcd UNAVAILABLE"
        down = f" ({self.down} down, {self.silent} silent)" if self.down else ""
        if self.panic:
            down = f" (PANIC: {self.silent} silent but routed to, {self.down} down)"
        return (
            f"fleet front: {self.members} members, {self.workers} workers{down}; {source}; "
            f"members revision {self.members_revision or 'none'}"
        )


@dataclass(slots=True)
class BackendSlots:
    """Which relay backend slot each worker address holds; freed slots are reused."""

    capacity: int
    held: dict[Address, int] = field(default_factory=dict)

    def update(self, wanted: Iterable[Address]) -> tuple[dict[Address, int], list[int]]:
        """Hold a slot for every wanted address: (the new ones' slots, the slots let go)."""
        wanted = list(dict.fromkeys(wanted))
        gone = [self.held.pop(address) for address in list(self.held) if address not in wanted]
        free = sorted(set(range(self.capacity)) - set(self.held.values()))
        added = {}
        for address in wanted:
            if address not in self.held:
                if not free:
                    log.error("fleet front: no backend slot left for %s (max_backends)", address)
                    continue
                added[address] = self.held[address] = free.pop(0)
        return added, gone

    def address_of(self, slot: int) -> Address | None:
        return next((address for address, held in self.held.items() if held == slot), None)


@dataclass(frozen=True, slots=True)
class Refused:
    """A worker the front routes around: its port refused while `lease` was its member's."""

    until: float  # loop time
    lease: int


def worker_addresses(info: MemberInfo) -> list[Address] | None:
    """Where a member's workers listen; None (logged) for a member the front cannot use."""
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in info.address else socket.AF_INET, info.address)
    except OSError:
        log.error("fleet front: member %s: %r is not a numeric address", info.name, info.address)
        return None
    if not info.ports:
        log.error("fleet front: member %s has no worker ports", info.name)
        return None
    return [(info.address, port) for port in info.ports]


class MemberFollower(Follower):
    """The live members, read then watched; `apply` gets the whole list on every change."""

    what = "fleet members"

    def __init__(self, etcd: Etcd, layout: Layout, front: FleetFront) -> None:
        super().__init__()
        self.etcd = etcd
        self.layout = layout
        self.front = front
        self.revision = 0  # of the member list applied
        self.live: dict[str, MemberInfo] = {}
        self._watch_from = 0  # a read not yet followed by a watch: its revision + 1

    async def read(self) -> None:
        """Read and apply the member list; the next `_follow` watches from there."""
        found, read_at = await self.etcd.get_prefix(self.layout.members)
        self.etcd_available = True
        self.live = {info.name: info for info in map(self._decode, found) if info is not None}
        self._apply(read_at)
        self._watch_from = read_at + 1

    async def _follow(self) -> None:
        if not self._watch_from:
            await self.read()
        start, self._watch_from = self._watch_from, 0
        async with self.etcd.watch(self.layout.members, start_revision=start) as batches:
            async for events in batches:
                for event in events:
                    name = event.kv.key.removeprefix(self.layout.members)
                    info = self._decode(event.kv) if event.kind == "put" else None
                    if info is None:
                        self.live.pop(name, None)
                    else:
                        self.live[name] = info
                self._apply(events[-1].kv.mod_revision)

    def _apply(self, revision: int) -> None:
        self.front.apply(self.live.values())
        self.revision = revision

    def _decode(self, kv: KeyValue) -> MemberInfo | None:
        try:
            return MemberInfo.decode(kv.key.removeprefix(self.layout.members), kv.value, kv.lease)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("fleet front: etcd:%s is not a member (%s): ignored", kv.key, exc)
            return None


class FleetFront:
    """The front for as long as the context lasts (`async with FleetFront(settings)`)."""

    def __init__(self, settings: FrontSettings) -> None:
        self.settings = settings
        self.layout = Layout(settings.prefix)
        self.etcd = Etcd(settings.etcd)
        self.slots = BackendSlots(settings.max_backends)
        self.cid_config: FleetCidConfig | None = None
        self.members: tuple[MemberInfo, ...] = ()
        self._offered: tuple[MemberInfo, ...] = ()  # the live members as etcd says
        self.down: dict[Address, Refused] = {}
        self.health = WorkerProber(settings.health, self._reroute)
        self._retry: asyncio.TimerHandle | None = None  # the next hold to run out
        self._closed = False
        self._relay: UdpRelay | None = None
        self._router: QuicLbRouter | None = None
        self._forwarder: UdpForwarder | None = None
        self._follower = MemberFollower(self.etcd, self.layout, self)
        self._configs = CidConfigFollower(self.etcd, self.layout, self.accept, "fleet front")
        self.accepted: tuple[FleetCidConfig, ...] = ()  # the router's, current first
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def local_address(self) -> Address:
        return self.relay.local_address

    @property
    def relay(self) -> UdpRelay:
        if self._relay is None:
            raise RuntimeError("the front is not running")
        return self._relay

    async def __aenter__(self) -> FleetFront:
        async with contextlib.AsyncExitStack() as undo:  # on a failure only
            undo.push_async_callback(self.etcd.close)
            # The first of the fleet (host or front) to find no configuration makes it.
            self.cid_config = await ensure_cid_config(self.etcd, self.layout)
            self._router = QuicLbRouter(self.cid_config.scheme, self.cid_config.seed)
            self.accepted = (self.cid_config,)
            self._relay = UdpRelay(
                self.settings.listen,
                [],
                _no_choice,
                router=self._router,
                max_backends=self.settings.max_backends,
                max_flows=self.settings.max_flows,
                idle_timeout=self.settings.idle_timeout,
                report=self._flow_outcome,
            )
            undo.callback(self._relay.close)
            # Routes before traffic; an empty fleet is no error (datagrams are dropped
            # until members join), an etcd that does not answer is.
            await self._configs.read()  # a rotation under way: both codepoints
            await self._follower.read()
            self._forwarder = UdpForwarder(self._relay)
            undo.pop_all()
        self._tasks = [
            asyncio.create_task(self._follower.run(), name="fleet front members"),
            asyncio.create_task(self._configs.run(), name="fleet front QUIC-LB"),
            asyncio.create_task(self.health.run(), name="fleet front health checks"),
        ]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.health.close()
        try:
            if self._forwarder is not None:
                self._forwarder.close()  # which closes the relay
            elif self._relay is not None:
                self._relay.close()
        finally:
            await self.etcd.close()

    def accept(self, configs: CidConfigs) -> None:
        """Route CIDs of these configurations from now on (the current one first)."""
        assert self._router is not None and self.cid_config is not None
        accepted = configs.accepted
        if accepted == self.accepted:
            return
        if configs.current.seed != self.cid_config.seed:
            log.warning("fleet front: the new QUIC-LB configuration changes the rendezvous "
                        "seed: handshakes under way may move host")  # fmt: skip
        try:
            self._router.set_schemes([config.scheme for config in accepted])
        except ValueError as exc:
            log.error("fleet front: QUIC-LB configuration refused (%s): routing as before", exc)
            return
        self.accepted = accepted
        self.cid_config = configs.current
        log.info(
            "fleet front: QUIC-LB codepoints accepted: %s (current first)",
            ", ".join(str(config.config_rotation) for config in accepted),
        )

    def apply(self, members: Iterable[MemberInfo]) -> None:
        """Route to these members from now on (the order of steps: the module doc)."""
        self._offered = tuple(members)
        live = self._routable(self._offered)
        added, gone = self.slots.update(a for _, addresses in live for a in addresses)
        self.health.track(self.slots.held)
        for address, slot in added.items():
            self.relay.set_backend(slot, address)
        at = asyncio.get_running_loop().time()
        leases = {a: info.lease for info, addresses in live for a in addresses}
        self.down = {
            address: refused
            for address, refused in self.down.items()
            if refused.until > at and leases.get(address) == refused.lease
        }
        down = self.down.keys() | self.health.down
        routes = [
            HostRoute(
                info.server_id,
                tuple(DOWN if a in down else self.slots.held[a] for a in addresses),
            )
            for info, addresses in live
            if all(a in self.slots.held for a in addresses)
        ]
        assert self._router is not None
        self._router.set_routes(routes)
        for slot in gone:
            self.relay.set_backend(slot, None)
        before = {info.name for info in self.members}
        self.members = tuple(info for info, _ in live)
        now = {info.name for info in self.members}
        if now != before:
            log.info(
                "fleet front: members %s (joined %s, left %s)",
                sorted(now), sorted(now - before), sorted(before - now),
            )  # fmt: skip

    def _flow_outcome(self, slot: int, outcome: FlowOutcome, now: float) -> None:
        """The relay's report: a worker port that refused is routed around (module doc)."""
        address = self.slots.address_of(slot)
        if outcome is not FlowOutcome.REFUSED or address is None or address in self.down:
            return
        lease = next((i.lease for i in self.members if address in (worker_addresses(i) or ())), 0)
        hold = self.settings.refused_hold_s
        self.down[address] = Refused(asyncio.get_running_loop().time() + hold, lease)
        log.warning(
            "fleet front: %s port %d refused (nothing listens): routed around for %.1f s",
            address[0], address[1], hold,
        )  # fmt: skip
        asyncio.get_running_loop().call_soon(self._reroute)  # between two of the relay's batches

    def _reroute(self) -> None:
        """The same members again, with the workers down now (the holds that ran out: up)."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._closed:
            return
        self.apply(self._offered)
        if self.down:
            first = min(refused.until for refused in self.down.values())
            self._retry = asyncio.get_running_loop().call_at(first, self._reroute)

    def _routable(self, members: Iterable[MemberInfo]) -> list[tuple[MemberInfo, list[Address]]]:
        """The members the front can route to, by server ID, with their workers' addresses."""
        assert self.cid_config is not None
        ids = 1 << (8 * self.cid_config.host_id_bytes)
        found: dict[int, tuple[MemberInfo, list[Address]]] = {}
        for info in sorted(members, key=lambda info: (info.server_id, info.name)):
            addresses = worker_addresses(info)
            if addresses is None:
                continue
            if info.server_id in found or not 0 < info.server_id < ids:
                log.error("fleet front: member %s: server ID %d taken or out of range",
                          info.name, info.server_id)  # fmt: skip
                continue
            found[info.server_id] = (info, addresses)
        return list(found.values())

    def status(self) -> FrontStatus:
        return FrontStatus(
            members=len(self.members),
            workers=len(self.slots.held),
            down=len(self.down.keys() | self.health.down),
            silent=len(self.health.silent),
            panic=self.health.panic,
            etcd_available=self._follower.etcd_available and self._configs.etcd_available,
            members_revision=self._follower.revision,
            codepoints=tuple(config.config_rotation for config in self.accepted),
            stats=self.relay.stats,
            probes=dataclasses.replace(self.health.counters),
        )
