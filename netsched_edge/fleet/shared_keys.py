"""The fleet's shared keys (session tickets, Retry tokens, stateless resets) in etcd.

`keys/current` holds the keys every host uses: a JSON envelope with the
creation time and the keys file's TOML text (`netsched_edge.keys`, the same
format and checks as `keys_file`). One member, elected (`Election`, role
`key-rotator`), makes new keys every `rotate_every_s`: in one transaction,
fenced by its leadership and by the revision of the keys it replaces, the old
keys move to `keys/previous` under a lease of `grace_s` and the new ones
become current. Hosts seal with the current keys and open with both
(`KeyRing.ticket_sealer`); when the grace lease runs out etcd deletes the
previous keys and tickets sealed with them stop resuming (a full handshake).
The same elected member rotates the fleet's QUIC-LB configuration when its
schedule says (cid_config.ScheduledCids): one leader for both duties, each on
a schedule of its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..keys import EdgeKeys, KeysError, TicketSealer, parse_keys
from .cid_config import ScheduledCids
from .election import Election
from .etcd import Compare, Etcd, EtcdError, Get, KeyValue, Put
from .follow import RETRY_AFTER_S, Follower
from .layout import Layout
from .membership import Member

log = logging.getLogger("netsched.edge.fleet")

ROTATOR_ROLE = "key-rotator"


@dataclass(frozen=True, slots=True)
class KeySchedule:
    rotate_every_s: float = 24 * 3600.0
    grace_s: int = 3600  # previous keys still open tickets and tokens this long

    def __post_init__(self) -> None:
        if self.rotate_every_s <= 0 or self.grace_s < 1:
            raise ValueError(f"bad key schedule: {self}")


@dataclass(frozen=True, slots=True)
class KeyRing:
    current: EdgeKeys
    previous: EdgeKeys | None
    created: float  # wall-clock time the current keys were made (for the schedule only)
    revision: int  # mod_revision of keys/current: which keys a rotation replaces

    def ticket_sealer(self) -> TicketSealer:
        previous = () if self.previous is None else (self.previous.session_ticket,)
        return TicketSealer(self.current.session_ticket, previous)


def _record(keys: EdgeKeys, created: float) -> bytes:
    return json.dumps({"created": created, "keys": keys.dumps()}).encode()


def _unpack(kv: KeyValue) -> tuple[EdgeKeys, float]:
    try:
        envelope = json.loads(kv.value)
        text, created = envelope["keys"], float(envelope["created"])
        keys = parse_keys(text.encode(), file=f"etcd:{kv.key}")
    except KeysError as exc:  # a ValueError too: keep its own message, it names the line
        raise EtcdError(str(exc)) from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise EtcdError(f"etcd:{kv.key}: not a keys record ({exc!r})") from None
    return keys, created


async def read_ring(etcd: Etcd, layout: Layout) -> KeyRing | None:
    """Current and previous keys read at one revision; None before the first keys."""
    snapshot = await etcd.txn([], [Get(layout.keys_current), Get(layout.keys_previous)])
    current, previous = snapshot.ranges
    if not current:
        return None
    keys, created = _unpack(current[0])
    return KeyRing(
        keys, _unpack(previous[0])[0] if previous else None, created, current[0].mod_revision
    )


async def ensure_ring(etcd: Etcd, layout: Layout) -> KeyRing:
    """The fleet's keys, made now if it has none (the first host to ask makes them)."""
    ring = await read_ring(etcd, layout)
    if ring is None:
        record = _record(EdgeKeys.generate(), time.time())
        await etcd.txn([Compare.absent(layout.keys_current)], [Put(layout.keys_current, record)])
        ring = await read_ring(etcd, layout)
        assert ring is not None  # ours, or another host's made meanwhile
    return ring


async def rotate(
    etcd: Etcd, layout: Layout, schedule: KeySchedule, replacing: KeyRing, fence: Compare
) -> bool:
    """New current keys, `replacing`'s current ones kept `grace_s` as previous; False if
    the keys changed meanwhile or `fence` no longer holds (nothing written)."""
    grace = await etcd.grant(schedule.grace_s)
    result = await etcd.txn(
        [fence, Compare.unchanged(layout.keys_current, replacing.revision)],
        [
            Put(layout.keys_previous, _record(replacing.current, replacing.created), grace),
            Put(layout.keys_current, _record(EdgeKeys.generate(), time.time())),
        ],
    )
    if not result.succeeded:
        await etcd.revoke(grace)
    return result.succeeded


class Duty(Protocol):
    """Something the elected rotator rotates on a schedule."""

    rotations: int

    async def due_in(self) -> float:
        """Seconds until the next rotation is due (<= 0: now)."""
        ...

    async def rotate(self, fence: Compare) -> bool:
        """Rotate; False (nothing written) when `fence` failed or another rotated first."""
        ...


class ScheduledKeys:
    """The shared keys as a duty: due `rotate_every_s` after the current ones were made."""

    def __init__(self, etcd: Etcd, layout: Layout, schedule: KeySchedule) -> None:
        self.etcd = etcd
        self.layout = layout
        self.schedule = schedule
        self.rotations = 0

    async def due_in(self) -> float:
        return self._due_in(await ensure_ring(self.etcd, self.layout))

    async def rotate(self, fence: Compare) -> bool:
        ring = await ensure_ring(self.etcd, self.layout)
        if self._due_in(ring) > 0:
            return False  # rotated since it was found due
        if not await rotate(self.etcd, self.layout, self.schedule, ring, fence):
            return False
        self.rotations += 1
        log.info("fleet keys rotated")
        return True

    def _due_in(self, ring: KeyRing) -> float:
        return ring.created + self.schedule.rotate_every_s - time.time()


class KeyRotator:
    """Campaign for `key-rotator`; while leading, rotate the keys and the QUIC-LB
    configuration on their schedules. Every member runs one: the others wait in the
    campaign and take over when the leader dies."""

    def __init__(self, etcd: Etcd, layout: Layout, member: Member, schedule: KeySchedule) -> None:
        self.election = Election(etcd, layout, ROTATOR_ROLE, member.name, member.lease.id)
        self.keys = ScheduledKeys(etcd, layout, schedule)
        self.cids = ScheduledCids(etcd, layout)
        self.leading = asyncio.Event()

    @property
    def rotations(self) -> int:
        """Of the keys, by this member."""
        return self.keys.rotations

    async def run(self) -> None:
        while True:
            try:
                await self.election.campaign()
                self.leading.set()
                await self._rotate_while_leading()
            except EtcdError as exc:  # unavailable, or the member lease is gone
                log.warning("key rotation paused: %s", exc)
            self.leading.clear()
            await asyncio.sleep(RETRY_AFTER_S)

    async def _rotate_while_leading(self) -> None:
        duties: tuple[Duty, ...] = (self.keys, self.cids)
        while True:
            # Look again within a second: another leader may have rotated meanwhile,
            # and a deposed one must notice (the fenced transaction tells).
            wait = RETRY_AFTER_S
            for duty in duties:
                due_in = await duty.due_in()
                if due_in > 0:
                    wait = min(wait, due_in)
                elif not await duty.rotate(self.election.fence):
                    if not await self.election.is_leader():
                        return  # deposed: campaign again
                    wait = 0  # another rotated first: look at what it wrote
            await asyncio.sleep(wait)


class KeyWatcher(Follower):
    """The fleet's latest keys on this host: `ring`, and `on_change(ring)` on each
    change. When etcd is unavailable the last keys read stay in use."""

    what = "fleet keys"

    def __init__(
        self, etcd: Etcd, layout: Layout, on_change: Callable[[KeyRing], None] | None = None
    ) -> None:
        super().__init__()
        self.etcd = etcd
        self.layout = layout
        self.on_change = on_change
        self.ring: KeyRing | None = None

    async def _follow(self) -> None:
        ring = await ensure_ring(self.etcd, self.layout)
        self._install(ring)
        self.etcd_available = True
        watch = self.etcd.watch(self.layout.keys, start_revision=ring.revision + 1)
        async with watch as batches:
            async for _ in batches:
                new = await read_ring(self.etcd, self.layout)
                if new is not None:
                    self._install(new)

    def _install(self, ring: KeyRing) -> None:
        if ring == self.ring:
            return
        self.ring = ring
        if self.on_change is not None:
            self.on_change(ring)
