"""The etcd client against a real etcd: keys, transactions, leases, watches."""

from __future__ import annotations

import asyncio

import pytest
from fleet_support import EtcdServer

from netsched_edge.fleet.etcd import (
    Compare,
    Delete,
    Etcd,
    EtcdUnavailable,
    Get,
    KeptLease,
    Put,
    prefix_end,
)
from netsched_edge.fleet.layout import Layout

pytestmark = pytest.mark.timeout(20)


async def test_keys_and_transactions(etcd: Etcd, layout: Layout) -> None:
    a, b = f"{layout.prefix}a", f"{layout.prefix}b"
    first = await etcd.put(a, b"1")
    await etcd.put(b, b"\x00\xff binary")
    kv = await etcd.get(a)
    assert kv is not None and kv.value == b"1" and kv.mod_revision == kv.create_revision == first
    found, revision = await etcd.get_prefix(layout.prefix)
    assert [(k.key, k.value) for k in found] == [(a, b"1"), (b, b"\x00\xff binary")]
    assert revision >= first

    # Compare-and-swap: only the writer that read the current revision wins.
    won = await etcd.txn([Compare.unchanged(a, first)], [Put(a, b"2")], [Get(a)])
    lost = await etcd.txn([Compare.unchanged(a, first)], [Put(a, b"3")], [Get(a)])
    assert won.succeeded and not lost.succeeded
    assert [k.value for k in lost.ranges[0]] == [b"2"]
    assert not (await etcd.txn([Compare.absent(a)], [Put(a, b"4")])).succeeded
    assert (await etcd.txn([Compare.value_is(a, b"2")], [Delete(a)])).succeeded
    assert await etcd.get(a) is None
    assert await etcd.delete(layout.prefix, prefix=True) == 1


def test_prefix_end() -> None:
    assert prefix_end(b"/a/") == b"/a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff") == b"\x00"


async def test_a_lease_keeps_its_keys_while_renewed_and_drops_them_when_not(
    etcd: Etcd, layout: Layout
) -> None:
    key = f"{layout.prefix}leased"
    async with KeptLease(etcd, 1) as lease:
        await etcd.put(key, b"x", lease.id)
        await asyncio.sleep(2.5)  # beyond the TTL: only the renewals keep it
        assert await etcd.get(key) is not None and not lease.lost.is_set()
        assert 0 <= await etcd.time_to_live(lease.id) <= 1  # whole seconds left
    assert await etcd.get(key) is None  # revoked on exit: at once
    assert await etcd.time_to_live(lease.id) == -1
    assert await etcd.keep_alive_once(lease.id) == 0

    unrenewed = await etcd.grant(1)
    await etcd.put(key, b"y", unrenewed)
    async with asyncio.timeout(4):
        while await etcd.get(key) is not None:
            await asyncio.sleep(0.1)


async def test_watch_from_a_revision_sees_every_change(etcd: Etcd, layout: Layout) -> None:
    start = await etcd.put(f"{layout.prefix}k1", b"a")  # before the watch: replayed
    seen: list[tuple[str, str, bytes]] = []
    async with etcd.watch(layout.prefix, start_revision=start) as batches:
        await etcd.put(f"{layout.prefix}k2", b"b")
        await etcd.delete(f"{layout.prefix}k1")
        await etcd.put(f"{layout.prefix.rstrip('/')}-elsewhere", b"not ours")
        async with asyncio.timeout(5):
            async for events in batches:
                seen += [(e.kind, e.kv.key.removeprefix(layout.prefix), e.kv.value) for e in events]
                if len(seen) >= 3:
                    break
    assert seen == [("put", "k1", b"a"), ("put", "k2", b"b"), ("delete", "k1", b"")]


async def test_no_etcd_is_etcd_unavailable() -> None:
    async with Etcd("http://127.0.0.1:9", timeout=1.0) as nowhere:
        with pytest.raises(EtcdUnavailable):
            await nowhere.get("/x")
        with pytest.raises(EtcdUnavailable):
            async with nowhere.watch("/x") as batches:
                async for _ in batches:
                    pass


async def test_calls_go_to_a_member_that_answers(etcd_server: EtcdServer, layout: Layout) -> None:
    """A cluster's endpoints, the first one down: calls and watches reach the other."""
    async with Etcd(f"http://127.0.0.1:9, {etcd_server.endpoint}", timeout=1.0) as etcd:
        revision = await etcd.put(f"{layout.prefix}k", b"v")
        assert etcd.endpoint == etcd_server.endpoint
        async with etcd.watch(layout.prefix, start_revision=revision) as batches:
            async with asyncio.timeout(5):
                events = await anext(aiter(batches))
        assert [(e.kind, e.kv.value) for e in events] == [("put", b"v")]
    with pytest.raises(ValueError, match="no etcd endpoint"):
        Etcd(" , ")
