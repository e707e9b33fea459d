"""Fleet membership: each edge host registers under a lease and holds a QUIC-LB server ID.

A host that joins keeps two leases alive:

- its member lease (`ttl_s`): `members/NAME` (where it listens) lives under it,
  and so does whatever it leads (`leader/ROLE`); when the host dies the key
  goes `ttl_s` after its last renewal, and the forwarder stops sending it new
  connections;
- its hold lease (`ttl_s + idle_hold_s`, renewed as often as the member
  lease): `server-ids/N` lives under it. The dead host's connections may still
  be in clients' hands, with CIDs that name N, until their idle timeout
  passes: the ID is taken again only once the hold lease ran out too. The
  "free after" moment is thus kept by etcd itself, as the hold lease's expiry:
  no host's clock is compared with another's, and nobody has to see the death
  happen to start the count.

A host cut off from etcd takes its leases as lost after a TTL without renewal
(`Member.lost`); it must then stop issuing CIDs with its ID and close its
connections within `idle_hold_s` (docs/FLEET.md), which is what makes the
reuse safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass

from .etcd import Compare, Etcd, EtcdError, Get, KeptLease, Put
from .layout import Layout

# Claims lost to other hosts' simultaneous claims before giving up.
CLAIM_ATTEMPTS = 16


class FleetFull(EtcdError):
    """Every server ID is held (by a live host, or a dead one's connections)."""


class NameTaken(EtcdError):
    """Another live member has this name (or this host's previous run, for one TTL)."""


@dataclass(frozen=True, slots=True)
class MembershipSettings:
    ttl_s: int = 10  # a dead host leaves the member list this long after its last renewal
    idle_hold_s: int = 60  # the edge's idle timeout: a dead host's connections outlive it by this
    max_server_id: int = 255  # IDs 1..max (one octet: docs/FLEET.md, "CID length")

    def __post_init__(self) -> None:
        if self.ttl_s < 1 or self.idle_hold_s < 0 or not 1 <= self.max_server_id <= 0xFFFF:
            raise ValueError(f"bad membership settings: {self}")


@dataclass(frozen=True, slots=True)
class MemberInfo:
    name: str
    server_id: int
    address: str
    ports: tuple[int, ...] = ()  # a fleet host's worker ports (WorkerPool.ports)
    lease: int = 0  # the member lease (etcd's, not part of the value)

    def encode(self) -> bytes:
        return json.dumps(
            {"server_id": self.server_id, "address": self.address, "ports": list(self.ports)}
        ).encode()

    @classmethod
    def decode(cls, name: str, data: bytes, lease: int = 0) -> MemberInfo:
        fields = json.loads(data)
        return cls(
            name, int(fields["server_id"]), str(fields["address"]), tuple(fields["ports"]), lease
        )


@dataclass(frozen=True, slots=True)
class HeldId:
    server_id: int
    holder: str
    alive: bool  # the holder is a member now
    expires_in_s: int  # left on the hold lease (it is renewed while the holder lives)


class Member:
    """This host in the fleet, for as long as the context lasts (`async with`).

    On exit the member key goes at once and the server ID stays held for
    `idle_hold_s` more (the connections this host had may still be out there).
    """

    def __init__(
        self,
        etcd: Etcd,
        layout: Layout,
        name: str,
        address: str,
        ports: tuple[int, ...] = (),
        settings: MembershipSettings | None = None,
    ) -> None:
        self.etcd = etcd
        self.layout = layout
        self.name = name
        self.address = address
        self.ports = ports
        self.settings = settings or MembershipSettings()
        self.lease = KeptLease(etcd, self.settings.ttl_s)
        # Renewed as often as the member lease: it then runs out at least idle_hold_s
        # after the host's death (at its own third it could go up to a third sooner).
        self._hold = KeptLease(
            etcd,
            self.settings.ttl_s + self.settings.idle_hold_s,
            renew_every_s=self.lease.renew_every_s,
        )
        self.info: MemberInfo | None = None

    @property
    def lost(self) -> asyncio.Event:
        """Set when the membership is gone (lease expired, or etcd unreachable for a TTL)."""
        return self.lease.lost

    @property
    def server_id(self) -> int:
        if self.info is None:
            raise RuntimeError("not a member (yet)")
        return self.info.server_id

    async def __aenter__(self) -> Member:
        async with contextlib.AsyncExitStack() as undo:
            await undo.enter_async_context(self.lease)
            await undo.enter_async_context(self._hold)
            self.info = await self._claim()
            undo.pop_all()  # joined: the leases stay until leave()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.leave()

    async def leave(self) -> None:
        await self._hold.stop(revoke=False)
        await self.lease.stop()
        self.info = None

    async def _claim(self) -> MemberInfo:
        """Take the lowest free ID, atomically with the member key (a transaction)."""
        member_key = self.layout.member(self.name)
        for _ in range(CLAIM_ATTEMPTS):
            held, _ = await self.etcd.get_prefix(self.layout.server_ids)
            taken = {_id_of(self.layout, kv.key) for kv in held}
            number = next(
                (n for n in range(1, self.settings.max_server_id + 1) if n not in taken), None
            )
            if number is None:
                raise FleetFull(f"all {self.settings.max_server_id} server IDs are held")
            info = MemberInfo(self.name, number, self.address, self.ports, self.lease.id)
            id_key = self.layout.server_id(number)
            result = await self.etcd.txn(
                [Compare.absent(id_key), Compare.absent(member_key)],
                [
                    Put(id_key, self.name.encode(), self._hold.id),
                    Put(member_key, info.encode(), self.lease.id),
                ],
                [Get(member_key)],
            )
            if result.succeeded:
                return info
            if result.ranges and result.ranges[0]:
                raise NameTaken(f"a member named {self.name!r} is registered")
        raise EtcdError(f"no server ID claimed after {CLAIM_ATTEMPTS} attempts (contention)")


async def members(etcd: Etcd, layout: Layout) -> list[MemberInfo]:
    """The live members, by server ID."""
    found, _ = await etcd.get_prefix(layout.members)
    infos = [
        MemberInfo.decode(kv.key.removeprefix(layout.members), kv.value, kv.lease) for kv in found
    ]
    return sorted(infos, key=lambda info: info.server_id)


async def held_server_ids(etcd: Etcd, layout: Layout) -> list[HeldId]:
    """Every server ID held, by a live member or for a dead one's connections."""
    held, _ = await etcd.get_prefix(layout.server_ids)
    alive = {info.name for info in await members(etcd, layout)}
    return [
        HeldId(
            _id_of(layout, kv.key),
            kv.value.decode(),
            kv.value.decode() in alive,
            await etcd.time_to_live(kv.lease),
        )
        for kv in held
    ]


def _id_of(layout: Layout, key: str) -> int:
    return int(key.removeprefix(layout.server_ids))
