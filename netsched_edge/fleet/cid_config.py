"""The fleet's QUIC-LB configuration in etcd, shared by its hosts and its forwarder.

`quic-lb` holds the config rotation codepoint, the server ID and nonce lengths
and the 16-byte AES key (made by the first host that finds none). A host's
CIDs carry its member server ID ‖ its worker index (`for_host`, the
`FleetCids` of `netsched_edge.workers`); the forwarder recovers both from a
DCID (`locate`) and sends the packet to that host's worker port.

Rotation (`rotate_cid_config`, the draft's config rotation): a new key under
the next codepoint (0-6, cycling) becomes `quic-lb`, and the configuration it
replaces moves to `quic-lb-previous` under a lease of the grace period, in one
transaction; the front accepts both codepoints until etcd deletes the
previous one. Lengths stay (the edge parses short headers with one CID
length), and so does the rendezvous seed (`hash_seed`): a client's Initials
hash to the same host across a rotation.

Scheduled rotation (`set_cid_schedule`, `fleet cid-schedule`): the
configuration carries its creation time and, once an operator sets one, its
schedule (`rotate_every_s`, `grace_s`), which each rotation copies to the next
configuration. The member elected to rotate the fleet's keys
(shared_keys.KeyRotator) rotates it when it is due (`ScheduledCids`), fenced
by its leadership. The schedule lives in etcd beside the key it rotates
rather than in each host's settings: one value for the whole fleet, whoever
is elected.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from netsched_client.proto.quic_lb import KEY_BYTES, UNROUTABLE_ROTATION, QuicLbScheme

from ..forwarder.routing import rendezvous_seed
from ..workers import CidRotation, FleetCids
from .etcd import Compare, Etcd, EtcdError, Get, KeyValue, Put
from .follow import RETRY_AFTER_S, Follower
from .layout import Layout

log = logging.getLogger("netsched.edge.fleet")

WORKER_ID_BYTES = 1  # the last octet of the server ID: the worker index
DEFAULT_GRACE_S = 3600


@dataclass(frozen=True, slots=True)
class FleetCidConfig:
    key: bytes
    config_rotation: int = 0
    server_id_length: int = 2  # host ID (1 octet: membership's max_server_id 255) + worker
    nonce_length: int = 5  # 8-byte CIDs, what the edge parses today (docs/FLEET.md)
    hash_seed: int | None = None  # the fronts' rendezvous seed; None: from the key
    # The schedule, not the routing: equal configurations route alike whatever these say.
    created: float = field(default=0.0, compare=False)  # wall clock (0: made before schedules)
    rotate_every_s: float | None = field(default=None, compare=False)  # None: by hand only
    grace_s: int = field(default=DEFAULT_GRACE_S, compare=False)  # of a scheduled rotation
    # How long the configuration this one replaced stays routed after `created` (None: not
    # made by a rotation): hosts move their connections off it before then (reissue.py).
    replaced_grace_s: int | None = field(default=None, compare=False)
    scheme: QuicLbScheme = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.server_id_length <= WORKER_ID_BYTES:
            raise ValueError("the server ID needs a host part before the worker octet")
        scheme = QuicLbScheme(
            self.server_id_length, self.nonce_length, self.config_rotation, self.key
        )
        object.__setattr__(self, "scheme", scheme)

    @property
    def seed(self) -> int:
        """The rendezvous seed every front uses (kept across rotations)."""
        return rendezvous_seed(self.key) if self.hash_seed is None else self.hash_seed

    def rotated(self, grace_s: int) -> FleetCidConfig:
        """The next configuration: a new key under the next codepoint, the same lengths,
        rendezvous seed and schedule; this one routed `grace_s` more."""
        return replace(
            self,
            key=os.urandom(KEY_BYTES),
            config_rotation=(self.config_rotation + 1) % UNROUTABLE_ROTATION,
            hash_seed=self.seed,
            created=time.time(),
            replaced_grace_s=grace_s,
        )

    def scheduled(self, every_s: float | None, grace_s: int) -> FleetCidConfig:
        """This configuration rotated every `every_s` from now on (None: by hand only).

        Only one previous configuration is routed: a rotation within the grace of the
        last one would cut that grace short, hence `every_s` >= `grace_s`."""
        if grace_s < 1 or (every_s is not None and not grace_s <= every_s < math.inf):
            raise ValueError(
                f"a QUIC-LB rotation schedule needs 1 <= grace ({grace_s} s) <= every ({every_s} s)"
            )
        return replace(
            self, rotate_every_s=every_s, grace_s=grace_s, created=self.created or time.time()
        )

    def due_in(self, now: float) -> float | None:
        """Seconds until a scheduled rotation is due (<= 0: now); None: not scheduled."""
        if self.rotate_every_s is None:
            return None
        return self.created + self.rotate_every_s - now

    @property
    def host_id_bytes(self) -> int:
        return self.server_id_length - WORKER_ID_BYTES

    def for_host(self, server_id: int, rotation: CidRotation | None = None) -> FleetCids:
        """A host's CIDs under this configuration (and, given a `rotation`, under the one
        in force at each call: the host follows rotations)."""
        return FleetCids(
            host_server_id=server_id.to_bytes(self.host_id_bytes, "big"),
            key=self.key,
            config_rotation=self.config_rotation,
            cid_length=self.scheme.cid_length,
            rotation=rotation,
        )

    def locate(self, cid: bytes) -> tuple[int, int] | None:
        """(host server ID, worker index) a CID of this configuration names, else None."""
        server_id = self.scheme.server_id(cid)
        if server_id is None:
            return None
        return int.from_bytes(server_id[:-WORKER_ID_BYTES], "big"), server_id[-1]

    def encode(self) -> bytes:
        fields: dict[str, object] = {
            "config_rotation": self.config_rotation,
            "server_id_length": self.server_id_length,
            "nonce_length": self.nonce_length,
            "key": self.key.hex(),
            "created": self.created,
            "grace_s": self.grace_s,
        }
        if self.hash_seed is not None:
            fields["hash_seed"] = self.hash_seed
        if self.rotate_every_s is not None:
            fields["rotate_every_s"] = self.rotate_every_s
        if self.replaced_grace_s is not None:
            fields["replaced_grace_s"] = self.replaced_grace_s
        return json.dumps(fields).encode()

    @classmethod
    def decode(cls, data: bytes, source: str) -> FleetCidConfig:
        try:
            fields = json.loads(data)
            every = fields.get("rotate_every_s")
            replaced = fields.get("replaced_grace_s")
            return cls(
                key=bytes.fromhex(fields["key"]),
                config_rotation=int(fields["config_rotation"]),
                server_id_length=int(fields["server_id_length"]),
                nonce_length=int(fields["nonce_length"]),
                hash_seed=None if fields.get("hash_seed") is None else int(fields["hash_seed"]),
                created=float(fields.get("created", 0.0)),
                rotate_every_s=None if every is None else float(every),
                grace_s=int(fields.get("grace_s", DEFAULT_GRACE_S)),
                replaced_grace_s=None if replaced is None else int(replaced),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise EtcdError(f"{source}: not a QUIC-LB configuration ({exc})") from None


async def ensure_cid_config(etcd: Etcd, layout: Layout) -> FleetCidConfig:
    """The fleet's QUIC-LB configuration, made now if it has none."""
    made = FleetCidConfig(key=os.urandom(KEY_BYTES), created=time.time())
    await etcd.txn([Compare.absent(layout.quic_lb)], [Put(layout.quic_lb, made.encode())])
    kv = await etcd.get(layout.quic_lb)
    if kv is None:
        raise EtcdError(f"etcd:{layout.quic_lb}: deleted while being read")
    return FleetCidConfig.decode(kv.value, f"etcd:{layout.quic_lb}")


@dataclass(frozen=True, slots=True)
class CidConfigs:
    """The configuration in force and, during a rotation's grace, the one it replaced."""

    current: FleetCidConfig
    previous: FleetCidConfig | None
    revision: int  # of `current`

    @property
    def accepted(self) -> tuple[FleetCidConfig, ...]:
        """The current one first (a router's `set_schemes` order)."""
        return (self.current,) if self.previous is None else (self.current, self.previous)

    @property
    def replaced_until(self) -> float | None:
        """Wall-clock time the previous one stops being routed (None: none is routed, or
        its grace was not recorded)."""
        grace = self.current.replaced_grace_s
        if self.previous is None or grace is None:
            return None
        return self.current.created + grace


def decode_cid_configs(layout: Layout, current: KeyValue, previous: KeyValue | None) -> CidConfigs:
    made = FleetCidConfig.decode(current.value, f"etcd:{layout.quic_lb}")
    before = None
    if previous is not None:
        before = FleetCidConfig.decode(previous.value, f"etcd:{layout.quic_lb_previous}")
        if before.config_rotation == made.config_rotation:
            before = None  # an old record the current one overwrote: nothing to accept
    return CidConfigs(made, before, current.mod_revision)


async def read_cid_configs(etcd: Etcd, layout: Layout) -> CidConfigs:
    """Both configurations, read at one revision (the current one made when none)."""
    await ensure_cid_config(etcd, layout)
    snapshot = await etcd.txn([], [Get(layout.quic_lb), Get(layout.quic_lb_previous)])
    current, previous = snapshot.ranges
    if not current:
        raise EtcdError(f"etcd:{layout.quic_lb}: deleted while being read")
    return decode_cid_configs(layout, current[0], previous[0] if previous else None)


async def rotate_cid_config(etcd: Etcd, layout: Layout, grace_s: int) -> CidConfigs:
    """Put the next configuration in force; the current one stays accepted `grace_s`
    (it must cover a connection's life: its CIDs route until then)."""
    if grace_s < 1:
        raise ValueError("the grace period must be 1 s or more")
    rotated = await try_rotate_cid_config(etcd, layout, [], grace_s)
    if rotated is None:
        raise EtcdError(f"etcd:{layout.quic_lb}: changed while being rotated, try again")
    return rotated


async def try_rotate_cid_config(
    etcd: Etcd, layout: Layout, fences: list[Compare], grace_s: int | None = None
) -> CidConfigs | None:
    """`rotate_cid_config` if `fences` hold and the configuration does not change
    meanwhile (None: nothing written); `grace_s` None: the configuration's schedule's."""
    found = await read_cid_configs(etcd, layout)
    kv = await etcd.get(layout.quic_lb)
    if kv is None or kv.mod_revision != found.revision:
        return None
    grace_s = found.current.grace_s if grace_s is None else grace_s
    made = found.current.rotated(grace_s)
    grace = await etcd.grant(grace_s)
    result = await etcd.txn(
        [Compare.unchanged(layout.quic_lb, kv.mod_revision), *fences],
        [Put(layout.quic_lb_previous, kv.value, grace), Put(layout.quic_lb, made.encode())],
    )
    if not result.succeeded:
        await etcd.revoke(grace)
        return None
    return await read_cid_configs(etcd, layout)


async def set_cid_schedule(
    etcd: Etcd, layout: Layout, every_s: float | None, grace_s: int
) -> FleetCidConfig:
    """Rotate the fleet's QUIC-LB configuration every `every_s` (None: by hand only),
    keeping the replaced one routed `grace_s`; the first rotation is due `every_s` after
    the current configuration was made."""
    await ensure_cid_config(etcd, layout)
    kv = await etcd.get(layout.quic_lb)
    if kv is None:
        raise EtcdError(f"etcd:{layout.quic_lb}: deleted while being read")
    made = FleetCidConfig.decode(kv.value, f"etcd:{layout.quic_lb}").scheduled(every_s, grace_s)
    result = await etcd.txn(
        [Compare.unchanged(layout.quic_lb, kv.mod_revision)], [Put(layout.quic_lb, made.encode())]
    )
    if not result.succeeded:
        raise EtcdError(f"etcd:{layout.quic_lb}: changed while being scheduled, try again")
    return made


class ScheduledCids:
    """The fleet's QUIC-LB configuration as a duty of the elected rotator (KeyRotator):
    due when its schedule says, rotated with the schedule's grace."""

    def __init__(self, etcd: Etcd, layout: Layout) -> None:
        self.etcd = etcd
        self.layout = layout
        self.rotations = 0

    async def due_in(self) -> float:
        """Seconds until due; an unscheduled configuration is looked at again later
        (an operator may schedule it)."""
        due_in = (await ensure_cid_config(self.etcd, self.layout)).due_in(time.time())
        return RETRY_AFTER_S if due_in is None else due_in

    async def rotate(self, fence: Compare) -> bool:
        """Rotate it if due; False when it is not, `fence` failed or it changed meanwhile."""
        found = await read_cid_configs(self.etcd, self.layout)
        due_in = found.current.due_in(time.time())
        if due_in is None or due_in > 0:
            return False  # rotated or unscheduled since it was found due
        unchanged = Compare.unchanged(self.layout.quic_lb, found.revision)
        rotated = await try_rotate_cid_config(self.etcd, self.layout, [fence, unchanged])
        if rotated is None:
            return False
        self.rotations += 1
        log.info("QUIC-LB codepoint %d in force (scheduled)", rotated.current.config_rotation)
        return True


class CidConfigFollower(Follower):
    """`quic-lb` and `quic-lb-previous` (one prefix), read then watched; `on_change` gets
    both on every change (the front routes both; a host issues CIDs under the current)."""

    what = "fleet QUIC-LB configuration"

    def __init__(
        self, etcd: Etcd, layout: Layout, on_change: Callable[[CidConfigs], None], who: str
    ) -> None:
        super().__init__()
        self.etcd = etcd
        self.layout = layout
        self.on_change = on_change
        self.who = who  # for the log

        self.held: dict[str, KeyValue] = {}
        self.configs: CidConfigs | None = None  # the last applied
        self._watch_from = 0  # a read not yet followed by a watch: its revision + 1

    async def read(self) -> None:
        """Read and apply both; the next `_follow` watches from there."""
        found, read_at = await self.etcd.get_prefix(self.layout.quic_lb)
        self.etcd_available = True
        self.held = {kv.key: kv for kv in found}
        self._apply()
        self._watch_from = read_at + 1

    async def _follow(self) -> None:
        if not self._watch_from:
            await self.read()
        start, self._watch_from = self._watch_from, 0
        async with self.etcd.watch(self.layout.quic_lb, start_revision=start) as batches:
            async for events in batches:
                for event in events:
                    if event.kind == "put":
                        self.held[event.kv.key] = event.kv
                    else:
                        self.held.pop(event.kv.key, None)
                self._apply()

    def _apply(self) -> None:
        held = self.held
        current = held.get(self.layout.quic_lb)
        if current is None:
            log.error("%s: etcd:%s is gone: as before", self.who, self.layout.quic_lb)
            return
        try:
            configs = decode_cid_configs(
                self.layout, current, held.get(self.layout.quic_lb_previous)
            )
        except EtcdError as exc:
            log.error("%s: %s: as before", self.who, exc)
            return
        self.configs = configs
        self.on_change(configs)


def follow_rotation(cids: FleetCids) -> Callable[[CidConfigs], None]:
    """A host's `CidConfigFollower.on_change`: its CIDs (`cids.rotation`) are issued under
    the current configuration from now on; one of other lengths is not followed (the
    edge parses one CID length, and the host ID keeps its width)."""
    rotation = cids.rotation
    if rotation is None:
        raise ValueError("these CIDs follow no rotation")

    def on_change(configs: CidConfigs) -> None:
        current = configs.current
        lengths = (current.server_id_length, current.scheme.cid_length)
        if lengths != (len(cids.host_server_id) + WORKER_ID_BYTES, cids.cid_length):
            log.error(
                "fleet: QUIC-LB codepoint %d has other lengths %s: CIDs stay under %d",
                current.config_rotation, lengths, rotation.config_rotation,
            )  # fmt: skip
            return
        if (current.key, current.config_rotation) != (rotation.key, rotation.config_rotation):
            rotation.switch(current.key, current.config_rotation)
            log.info("fleet: CIDs issued under QUIC-LB codepoint %d", current.config_rotation)

    return on_change
