"""A fleet member for tests: joins, says its server ID, optionally campaigns to
rotate keys and says when it leads, then waits to be killed.

    python fleet_process.py ENDPOINT PREFIX NAME TTL_S HOLD_S [rotate EVERY_S GRACE_S]
"""

from __future__ import annotations

import asyncio
import sys

from netsched_edge.fleet.etcd import Etcd
from netsched_edge.fleet.layout import Layout
from netsched_edge.fleet.membership import Member, MembershipSettings
from netsched_edge.fleet.shared_keys import KeyRotator, KeySchedule


async def main(endpoint: str, prefix: str, name: str, ttl: str, hold: str, *rotate: str) -> None:
    layout = Layout(prefix)
    settings = MembershipSettings(ttl_s=int(ttl), idle_hold_s=int(hold))
    async with Etcd(endpoint) as etcd, Member(etcd, layout, name, "127.0.0.1", (), settings) as m:
        print(f"server_id {m.server_id}", flush=True)
        if rotate:
            schedule = KeySchedule(rotate_every_s=float(rotate[1]), grace_s=int(rotate[2]))
            rotator = KeyRotator(etcd, layout, m, schedule)
            task = asyncio.create_task(rotator.run())
            await rotator.leading.wait()
            print("leading", flush=True)
            await task
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
