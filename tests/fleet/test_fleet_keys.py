"""Shared keys in etcd: one elected rotator, a successor when it dies, and the
previous keys kept for the grace period."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import pytest
from fleet_support import StartFleetProcess
from ticket_support import session_ticket

from netsched_edge.fleet.election import Election, leader
from netsched_edge.fleet.etcd import Etcd
from netsched_edge.fleet.layout import Layout
from netsched_edge.fleet.membership import Member, MembershipSettings
from netsched_edge.fleet.shared_keys import (
    ROTATOR_ROLE,
    KeyRing,
    KeyRotator,
    KeySchedule,
    KeyWatcher,
    ensure_ring,
    read_ring,
    rotate,
)
from netsched_edge.keys import EdgeKeys

pytestmark = pytest.mark.timeout(20)

FAST = MembershipSettings(ttl_s=1, idle_hold_s=0)


async def test_one_leader_at_a_time(etcd: Etcd, layout: Layout) -> None:
    async with (
        Member(etcd, layout, "a", "127.0.0.1", (), FAST) as a,
        Member(etcd, layout, "b", "127.0.0.2", (), FAST) as b,
    ):
        first = Election(etcd, layout, "role", a.name, a.lease.id)
        second = Election(etcd, layout, "role", b.name, b.lease.id)
        await first.campaign()
        waiting = asyncio.create_task(second.campaign())
        await asyncio.sleep(0.5)
        assert not waiting.done() and await leader(etcd, layout, "role") == "a"
        assert not (await etcd.txn([second.fence], [])).succeeded  # b may not act as leader
        await first.resign()
        async with asyncio.timeout(2):
            await waiting
        assert await leader(etcd, layout, "role") == "b" and not await first.is_leader()


async def test_rotation_keeps_the_previous_keys_for_the_grace_period(
    etcd: Etcd, layout: Layout
) -> None:
    schedule = KeySchedule(rotate_every_s=3600, grace_s=2)
    seen: list[KeyRing] = []
    watcher = KeyWatcher(etcd, layout, seen.append)
    watching = asyncio.create_task(watcher.run())
    try:
        async with Member(etcd, layout, "a", "127.0.0.1", (), FAST) as host:
            election = Election(etcd, layout, ROTATOR_ROLE, host.name, host.lease.id)
            await election.campaign()
            before = await ensure_ring(etcd, layout)
            ticket = before.ticket_sealer().seal(session_ticket())

            assert await rotate(etcd, layout, schedule, before, election.fence)
            rotated_at = time.monotonic()
            after = await read_ring(etcd, layout)
            assert after is not None and after.current != before.current
            assert after.previous == before.current
            assert after.ticket_sealer().unseal(ticket) is not None  # resumes in the grace
            assert not await rotate(etcd, layout, schedule, before, election.fence)  # stale

            async with asyncio.timeout(2):  # every host hears of it (watch)
                while watcher.ring != after:
                    await asyncio.sleep(0.05)
            async with asyncio.timeout(schedule.grace_s + 2):
                while (await read_ring(etcd, layout) or after).previous is not None:
                    await asyncio.sleep(0.1)
            assert time.monotonic() - rotated_at >= schedule.grace_s - 1  # whole seconds
            expired = await read_ring(etcd, layout)
            assert expired is not None and expired.current == after.current
            assert expired.ticket_sealer().unseal(ticket) is None  # the grace is over
            async with asyncio.timeout(2):
                while watcher.ring != expired:
                    await asyncio.sleep(0.05)
            await election.resign()
            assert not await rotate(etcd, layout, schedule, expired, election.fence)
        assert [ring.current for ring in seen] == [before.current, after.current, after.current]
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching


async def test_the_rotator_dies_and_another_member_takes_over(
    etcd: Etcd, layout: Layout, fleet_process: StartFleetProcess
) -> None:
    every = 1.0
    first = await fleet_process(layout, "first", "1", "0", "rotate", str(every), "5")
    assert await first.line() == "server_id 1"
    assert await first.line() == "leading"
    async with Member(etcd, layout, "second", "127.0.0.2", (), FAST) as host:
        rotator = KeyRotator(etcd, layout, host, KeySchedule(rotate_every_s=every, grace_s=5))
        running = asyncio.create_task(rotator.run())
        try:
            ring = await ensure_ring(etcd, layout)
            async with asyncio.timeout(every + 3):  # the first one rotates on schedule
                while (await read_ring(etcd, layout) or ring).current == ring.current:
                    await asyncio.sleep(0.1)
            assert not rotator.leading.is_set() and rotator.rotations == 0
            assert await leader(etcd, layout, ROTATOR_ROLE) == "first"

            first.kill()
            killed_at = time.monotonic()
            async with asyncio.timeout(FAST.ttl_s + 3):
                await rotator.leading.wait()
            took_over_after = time.monotonic() - killed_at
            assert await leader(etcd, layout, ROTATOR_ROLE) == "second"
            async with asyncio.timeout(every + 3):
                while rotator.rotations == 0:
                    await asyncio.sleep(0.1)
            ring = await read_ring(etcd, layout)
            assert ring is not None and ring.previous is not None
            assert took_over_after <= FAST.ttl_s + 2, took_over_after
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running


async def test_a_bad_keys_record_is_refused_and_the_last_keys_stay(
    etcd: Etcd, layout: Layout, caplog: pytest.LogCaptureFixture
) -> None:
    watcher = KeyWatcher(etcd, layout)
    following = asyncio.create_task(watcher.run())
    try:
        async with asyncio.timeout(3):
            while watcher.ring is None:
                await asyncio.sleep(0.02)
        good = watcher.ring
        await etcd.put(
            layout.keys_current, json.dumps({"created": 1, "keys": "version = 1"}).encode()
        )
        await asyncio.sleep(0.5)
        assert watcher.ring == good  # refused: the hosts keep the keys they have
        assert f"etcd:{layout.keys_current}: retry is missing" in caplog.text

        fixed = EdgeKeys.generate()
        record = {"created": time.time(), "keys": fixed.dumps()}
        await etcd.put(layout.keys_current, json.dumps(record).encode())
        async with asyncio.timeout(3):
            while watcher.ring is None or watcher.ring.current != fixed:
                await asyncio.sleep(0.05)
    finally:
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following
