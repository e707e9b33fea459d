"""Membership and QUIC-LB server IDs against a real etcd; members that die are
processes killed with SIGKILL (their leases run out, nobody says goodbye)."""

from __future__ import annotations

import asyncio
import time

import pytest
from fleet_support import StartFleetProcess

from netsched_edge.fleet.etcd import Etcd
from netsched_edge.fleet.layout import Layout
from netsched_edge.fleet.membership import (
    FleetFull,
    Member,
    MembershipSettings,
    NameTaken,
    held_server_ids,
    members,
)

pytestmark = pytest.mark.timeout(20)

FAST = MembershipSettings(ttl_s=1, idle_hold_s=3)


async def test_members_joining_at_once_get_distinct_ids(etcd: Etcd, layout: Layout) -> None:
    hosts = [
        Member(etcd, layout, f"edge-{n}", f"127.0.0.{n}", (4433, 4434), FAST) for n in range(4)
    ]
    joined = await asyncio.gather(*(host.__aenter__() for host in hosts))
    try:
        assert sorted(m.server_id for m in joined) == [1, 2, 3, 4]
        listed = await members(etcd, layout)
        assert {(i.name, i.server_id, i.address, i.ports) for i in listed} == {
            (m.name, m.server_id, m.address, (4433, 4434)) for m in joined
        }
        assert all(held.alive for held in await held_server_ids(etcd, layout))
        with pytest.raises(NameTaken):
            async with Member(etcd, layout, "edge-0", "127.0.0.9", (), FAST):
                pass
    finally:
        for host in hosts:
            await host.leave()
    assert await members(etcd, layout) == []


async def test_no_free_id_is_fleet_full(etcd: Etcd, layout: Layout) -> None:
    settings = MembershipSettings(ttl_s=1, idle_hold_s=0, max_server_id=2)
    async with (
        Member(etcd, layout, "a", "127.0.0.1", (), settings),
        Member(etcd, layout, "b", "127.0.0.1", (), settings),
    ):
        with pytest.raises(FleetFull):
            async with Member(etcd, layout, "c", "127.0.0.1", (), settings):
                pass
    assert await etcd.get(layout.member("c")) is None  # nothing left of the failed join


async def test_a_dead_members_id_is_reused_only_after_the_hold(
    etcd: Etcd, layout: Layout, fleet_process: StartFleetProcess
) -> None:
    doomed = await fleet_process(layout, "doomed", str(FAST.ttl_s), str(FAST.idle_hold_s))
    assert await doomed.line() == "server_id 1"
    # Die just before a renewal at a third of the hold lease's TTL would come: only
    # renewals as frequent as the member lease's keep the hold past the idle time.
    await asyncio.sleep((FAST.ttl_s + FAST.idle_hold_s) / 3 - 0.15)
    doomed.kill()
    killed_at = time.monotonic()

    async with asyncio.timeout(FAST.ttl_s + 2):  # the member lease runs out
        while await members(etcd, layout):
            await asyncio.sleep(0.1)
    (held,) = await held_server_ids(etcd, layout)
    assert (held.server_id, held.holder, held.alive) == (1, "doomed", False)

    # Meanwhile a new host gets another ID: the dead one's connections still name 1.
    async with Member(etcd, layout, "newcomer", "127.0.0.2", (), FAST) as newcomer:
        assert newcomer.server_id == 2
        async with asyncio.timeout(FAST.ttl_s + FAST.idle_hold_s + 2):
            while any(h.server_id == 1 for h in await held_server_ids(etcd, layout)):
                await asyncio.sleep(0.1)
        freed_after = time.monotonic() - killed_at
        # The hold lease (TTL + idle hold) was last renewed at most TTL/3 before the kill.
        assert freed_after >= FAST.idle_hold_s + FAST.ttl_s * 2 / 3 - 0.1, freed_after
        async with Member(etcd, layout, "successor", "127.0.0.3", (), FAST) as successor:
            assert successor.server_id == 1


async def test_a_member_that_leaves_keeps_its_id_held(etcd: Etcd, layout: Layout) -> None:
    async with Member(etcd, layout, "leaver", "127.0.0.1", (), FAST) as leaver:
        assert leaver.server_id == 1
    assert await members(etcd, layout) == []  # gone from the list at once
    (held,) = await held_server_ids(etcd, layout)
    assert held.server_id == 1 and not held.alive and held.expires_in_s >= 1
