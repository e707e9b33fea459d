"""Leader election among fleet members: one key, created in a transaction.

`leader/ROLE` holds the leader's name under the leader's member lease. A
candidate creates it only if it does not exist; otherwise it watches the key
and tries again when it is deleted (the leader resigned, or its lease expired
because it died). Whatever a leader writes in the role's name goes in a
transaction that also compares `leader/ROLE` with its own name (`fence`): a
leader that lost its lease without knowing it yet cannot overwrite its
successor's work.
"""

from __future__ import annotations

import contextlib

from .etcd import Compare, Delete, Etcd, EtcdUnavailable, Get, Put
from .layout import Layout


class Election:
    def __init__(self, etcd: Etcd, layout: Layout, role: str, name: str, lease: int) -> None:
        self.etcd = etcd
        self.layout = layout
        self.role = role
        self.key = layout.leader(role)
        self.name = name
        self.lease = lease

    @property
    def fence(self) -> Compare:
        """Add to a leader's transactions: true only while this member leads."""
        return Compare.value_is(self.key, self.name.encode())

    async def campaign(self) -> None:
        """Return once this member leads (waits as long as another one does)."""
        while True:
            result = await self.etcd.txn(
                [Compare.absent(self.key)],
                [Put(self.key, self.name.encode(), self.lease)],
                [Get(self.key)],
            )
            if result.succeeded:
                return
            current = result.ranges[0][0] if result.ranges and result.ranges[0] else None
            if current is not None and current.value == self.name.encode():
                return  # ours already (a campaign again after a lost watch)
            await self._wait_for_vacancy(result.revision)

    async def _wait_for_vacancy(self, read_at: int) -> None:
        """Until the leader key is deleted after revision `read_at`."""
        async with self.etcd.watch(self.key, prefix=False, start_revision=read_at + 1) as batches:
            async for events in batches:
                if any(event.kind == "delete" for event in events):
                    return

    async def resign(self) -> None:
        with contextlib.suppress(EtcdUnavailable):
            await self.etcd.txn([self.fence], [Delete(self.key)])

    async def is_leader(self) -> bool:
        return await leader(self.etcd, self.layout, self.role) == self.name


async def leader(etcd: Etcd, layout: Layout, role: str) -> str | None:
    """The name of the member leading `role`, if any."""
    kv = await etcd.get(layout.leader(role))
    return None if kv is None else kv.value.decode()
