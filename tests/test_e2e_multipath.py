"""Multipath end to end: our client on 127.0.0.1 + 127.0.0.2 → the edge, real sockets."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support import service

from netsched_client import Session
from netsched_client.proto.multipath import events as mpe
from netsched_edge.config import BackendConfig
from netsched_lab.impairment import LinkSpec, PathProfile
from netsched_lab.relay import UdpRelay

BIG = bytes(range(256)) * (16 * 1024)  # 4 MiB


def _files(root: Path):
    (root / "big.bin").write_bytes(BIG)
    return service("files", BackendConfig(name="f", kind="static", root=root), max_body=8 << 20)


async def test_two_paths_carry_one_download(start_edge, open_client, www: Path) -> None:
    edge = await start_edge(_files(www))
    session = await open_client(edge, paths=["127.0.0.1", "127.0.0.2"])
    assert session.multipath
    assert [p.state for p in session.paths] == ["active", "active"]
    response = await session.request("files", meta={"method": "GET", "path": "/big.bin"})
    assert response.body == BIG
    received = {p.path_id: p.bytes_received for p in session.paths}
    assert all(n > 100_000 for n in received.values()), received
    locals_ = {p.local[0] if p.local else "127.0.0.1" for p in session.paths}
    assert locals_ == {"127.0.0.1", "127.0.0.2"}


async def _two_shaped_paths(edge, open_client, stack) -> tuple[UdpRelay, Session]:
    """A session on 127.0.0.1 and 127.0.0.2 through a relay: 20 Mbit/s, 5 ms each way."""
    link = LinkSpec(delay_ms=5, rate_mbps=20)
    relay = UdpRelay(("127.0.0.1", edge.port), default=PathProfile(up=link, down=link))
    _, relay_port = await relay.start()
    stack.push_async_callback(relay.stop)
    session = await open_client(edge, port=relay_port, paths=["127.0.0.1", "127.0.0.2"])
    return relay, session


async def test_failover_when_a_path_is_blackholed(
    start_edge, open_client, www: Path, stack
) -> None:
    edge = await start_edge(_files(www))
    relay, session = await _two_shaped_paths(edge, open_client, stack)
    download = asyncio.create_task(
        session.request("files", meta={"method": "GET", "path": "/big.bin"})
    )
    await asyncio.sleep(0.5)
    relay.blackhole("127.0.0.1")  # path 0 goes dark mid-transfer
    response = await asyncio.wait_for(download, 60)
    assert response.body == BIG  # the application sees no lost byte
    # An outage is not death: the path is kept (probed), and used again once it answers.
    assert not [e for e in session.path_events if isinstance(e, mpe.PathAbandoned)]
    relay.restore("127.0.0.1")
    before = _received_on(session, 0)
    for _ in range(20):
        await asyncio.sleep(0.3)  # a probe gets through, the path recovers
        response = await session.request("files", meta={"method": "GET", "path": "/big.bin"})
        assert response.body == BIG
        if _received_on(session, 0) - before > 500_000:
            break
    assert _received_on(session, 0) - before > 500_000, session.paths


def _received_on(session, path_id: int) -> int:
    return sum(p.bytes_received for p in session.paths if p.path_id == path_id)


async def test_single_path_fallback_when_edge_lacks_multipath(
    start_edge, open_client, www: Path
) -> None:
    edge = await start_edge(_files(www), multipath=False)
    session = await open_client(edge, paths=["127.0.0.1", "127.0.0.2"])
    assert not session.multipath
    assert [p.path_id for p in session.paths] == [0]
    assert (await session.request("files", meta={"method": "GET", "path": "/big.bin"})).body == BIG


async def test_bad_local_addresses_are_clear_errors(start_edge, open_client, www: Path) -> None:
    from netsched_client import PathError

    edge = await start_edge(_files(www))
    with pytest.raises(PathError, match="no-such-if0"):
        await open_client(edge, paths=["no-such-if0"])
    session = await open_client(edge, paths=["lo"])  # an interface name resolves
    with pytest.raises(PathError):
        await session.add_path("::1")  # wrong address family for this server
    assert (await session.request("files", meta={"method": "GET", "path": "/big.bin"})).body == BIG


async def test_a_path_the_network_took_is_opened_again(
    start_edge, open_client, www: Path, stack
) -> None:
    """Cellular goes dark for longer than a path may stay silent: the path is abandoned
    (while Wi-Fi carries everything), and once cellular answers again the client opens
    a new path from its address by itself (failback)."""
    edge = await start_edge(_files(www))
    relay, session = await _two_shaped_paths(edge, open_client, stack)
    assert [p.state for p in session.paths] == ["active", "active"]

    def cellular_back() -> bool:
        return any(
            p.state == "active" and p.path_id > 1 and p.local and p.local[0] == "127.0.0.2"
            for p in session.paths
        )

    async def downloads() -> int:
        count = 0
        while not cellular_back():
            response = await session.request("files", meta={"method": "GET", "path": "/big.bin"})
            assert response.body == BIG
            count += 1
        return count

    traffic = asyncio.create_task(downloads())
    await asyncio.sleep(0.3)
    relay.blackhole("127.0.0.2")
    await asyncio.sleep(7.0)  # longer than dead_after_s (5 s)
    abandoned = [e for e in session.path_events if isinstance(e, mpe.PathAbandoned)]
    # Path 1, then each try to open one again while the address is still dark.
    assert abandoned and abandoned[0].path_id == 1
    assert all(e.path_id > 1 for e in abandoned[1:])
    relay.restore("127.0.0.2")
    assert await asyncio.wait_for(traffic, 15) > 0
    assert cellular_back()
