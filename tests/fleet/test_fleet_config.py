"""The fleet's config in etcd: every host applies a change within a second or
refuses it (and says why under its status key); `python -m netsched_edge.fleet`
puts a config there and shows the members."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fleet_support import config_text, start_etcd, stop_etcd

from netsched_edge.config import EdgeConfig
from netsched_edge.fleet.config_watch import ConfigStatus, ConfigWatcher, config_statuses
from netsched_edge.fleet.etcd import Etcd
from netsched_edge.fleet.layout import Layout
from netsched_edge.fleet.membership import MembershipSettings

pytestmark = pytest.mark.timeout(20)

FAST = MembershipSettings(ttl_s=2, idle_hold_s=0)


class Host:
    """A host's side of config watching: what it applied, and when."""

    def __init__(self, etcd: Etcd, layout: Layout, name: str, base_dir: Path) -> None:
        self.applied: list[tuple[float, EdgeConfig]] = []
        self.watcher = ConfigWatcher(
            etcd,
            layout,
            name,
            lambda c: self.applied.append((time.monotonic(), c)),
            base_dir=base_dir,
        )

    def services(self) -> list[list[str]]:
        return [[s.name for s in config.services] for _, config in self.applied]


@contextlib.asynccontextmanager
async def watching(*hosts: Host) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(h.watcher.run()) for h in hosts]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def statuses_for(
    etcd: Etcd, layout: Layout, revision: int, count: int
) -> dict[str, ConfigStatus]:
    async with asyncio.timeout(3):
        while True:
            found = await config_statuses(etcd, layout)
            if sum(s.revision == revision for s in found.values()) == count:
                return found
            await asyncio.sleep(0.05)


async def test_every_host_applies_a_change_or_refuses_it(
    etcd: Etcd, layout: Layout, tmp_path: Path
) -> None:
    (tmp_path / "a" / "www").mkdir(parents=True)  # host a serves static files, b has none
    (tmp_path / "b").mkdir()
    a, b = Host(etcd, layout, "a", tmp_path / "a"), Host(etcd, layout, "b", tmp_path / "b")
    first = await etcd.put(layout.config, config_text("one").encode())
    async with watching(a, b):
        async with asyncio.timeout(3):  # the config there at start is applied
            while not (a.applied and b.applied):
                await asyncio.sleep(0.02)
        await statuses_for(etcd, layout, first, 2)

        put_at = time.monotonic()
        second = await etcd.put(layout.config, config_text("two").encode())
        statuses = await statuses_for(etcd, layout, second, 2)
        assert statuses == {"a": ConfigStatus(second, True), "b": ConfigStatus(second, True)}
        for host in (a, b):
            assert host.services() == [["one"], ["two"]]
            assert host.applied[-1][0] - put_at < 1.0  # within a second of the put
            assert host.watcher.applied_revision == second

        bad = await etcd.put(layout.config, b'[[services]]\nname = "x"\npolicy = "nope"\n')
        statuses = await statuses_for(etcd, layout, bad, 2)
        for name, host in (("a", a), ("b", b)):
            assert not statuses[name].applied
            assert f"etcd:{layout.config}:3: services[0].policy" in (statuses[name].error or "")
            assert host.services() == [["one"], ["two"]]  # the old config keeps serving
            assert host.watcher.applied_revision == second

        # Paths resolve on each host: only the host that has the directory applies it.
        third = await etcd.put(layout.config, config_text("three", static_root="www").encode())
        statuses = await statuses_for(etcd, layout, third, 2)
        assert statuses["a"] == ConfigStatus(third, True)
        assert not statuses["b"].applied and "no such directory" in (statuses["b"].error or "")
        assert a.services()[-1] == ["three", "files"] and b.services()[-1] == ["two"]


async def test_a_host_keeps_its_config_while_etcd_is_away(tmp_path: Path) -> None:
    """An etcd of this test's own, stopped and started again under the host."""
    own = await asyncio.to_thread(start_etcd, tmp_path)
    layout = Layout("/fleet/")
    try:
        async with Etcd(own.endpoint, timeout=0.5) as etcd:
            host = Host(etcd, layout, "a", tmp_path)
            first = await etcd.put(layout.config, config_text("one").encode())
            async with watching(host):
                await statuses_for(etcd, layout, first, 1)
                await asyncio.to_thread(stop_etcd, own)
                async with asyncio.timeout(3):
                    while host.watcher.etcd_available:
                        await asyncio.sleep(0.05)
                assert host.services() == [["one"]]  # still serving what it had
                # Same ports and data directory: the same etcd is back.
                own = await asyncio.to_thread(start_etcd, tmp_path, own.ports)
                second = await etcd.put(layout.config, config_text("two").encode())
                await statuses_for(etcd, layout, second, 1)
                assert host.services() == [["one"], ["two"]] and host.watcher.etcd_available
    finally:
        await asyncio.to_thread(stop_etcd, own)
