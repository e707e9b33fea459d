"""A fleet host of two worker processes behind the front (a real etcd, real QUIC): each
worker issues CIDs under the host's ID and its own index on a port of its own, takes
the fleet's keys and config itself; a lost membership stops the host."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from edge_binary import EDGE
from fleet_support import EtcdServer, config_text

from netsched_client import Session, open_session
from netsched_edge.demo_backends import DemoHTTPServer
from netsched_edge.fleet.cid_config import rotate_cid_config
from netsched_edge.fleet.cli import render_members
from netsched_edge.fleet.config_watch import config_statuses
from netsched_edge.fleet.etcd import Etcd
from netsched_edge.fleet.front import FleetFront, FrontSettings
from netsched_edge.fleet.layout import Layout
from netsched_edge.fleet.membership import members
from netsched_edge.fleet.shared_keys import read_ring
from netsched_edge.tls import generate_self_signed

pytestmark = pytest.mark.timeout(60)

LOCAL = "127.0.0.1"


def serve_command(config: Path, etcd: str, prefix: str, name: str) -> tuple[str, ...]:
    """`netsched-edge serve --workers 2` in the fleet: leases of 1 s, an ID hold of 2 s."""
    fleet = ("--fleet-etcd", etcd, "--fleet-prefix", prefix, "--fleet-name", name)
    timing = ("--fleet-ttl", "1", "--fleet-idle-hold", "2")
    return (EDGE, "serve", "--config", str(config), "--workers", "2", *fleet, *timing)


CONFIG = """[edge]
listen = "127.0.0.1:0"
certificate = "{cert}"
private_key = "{key}"
drain_timeout_s = 1.0

[[services]]
name = "api"

[[services.backends]]
name = "b"
kind = "http"
address = "127.0.0.1:{backend}"
"""


async def until(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    try:
        async with asyncio.timeout(timeout):
            while not await check():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what}") from None


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as stack:
        yield stack


async def test_two_workers_in_the_fleet_behind_the_front(
    etcd_server: EtcdServer, etcd: Etcd, layout: Layout, tmp_path: Path, stack: AsyncExitStack
) -> None:
    backend = DemoHTTPServer("b", base_ms=1, cold_ms=0)
    port = await backend.start()
    stack.push_async_callback(backend.stop)
    pair = generate_self_signed(tmp_path)
    config = tmp_path / "edge.toml"
    config.write_text(CONFIG.format(cert=pair.certificate, key=pair.private_key, backend=port))
    process = await asyncio.create_subprocess_exec(
        *serve_command(config, etcd_server.endpoint, layout.prefix, "host"),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip

    async def reap() -> None:
        if process.returncode is None:
            process.kill()
            await process.wait()

    stack.push_async_callback(reap)
    assert process.stdout is not None
    async with asyncio.timeout(30):
        while b"listening on" not in await process.stdout.readline():
            pass
    [info] = await members(etcd, layout)
    assert len(info.ports) == 2 and len(set(info.ports)) == 2  # a port per worker

    front = FleetFront(FrontSettings(etcd_server.endpoint, (LOCAL, 0), prefix=layout.prefix))
    await stack.enter_async_context(front)
    assert (front.status().members, front.status().workers) == (1, 2)
    cids = front.cid_config
    assert cids is not None

    async def session() -> Session:
        opened = await open_session(LOCAL, front.local_address[1], ca_file=str(pair.ca_certificate))
        stack.push_async_callback(opened.close)
        return opened

    # Sessions until both workers served one (the front hashes the client's Initials).
    served: dict[str, Session] = {}
    for _ in range(24):
        opened = await session()
        response = await opened.request("api", b"w")
        assert response.status == 200
        served.setdefault(response.meta["edge-worker"], opened)
        if len(served) == 2:
            break
    assert sorted(served) == ["0", "1"]
    # The workers answer a CID nobody holds (a gone host's) with a stateless reset under
    # the fleet's reset key: the token its client would hold.
    ring = await read_ring(etcd, layout)
    assert ring is not None
    loop = asyncio.get_running_loop()
    probe, resets = await loop.create_datagram_endpoint(
        Collect, local_addr=(LOCAL, 0), remote_addr=front.local_address
    )
    stack.callback(probe.close)
    stray = [cids.for_host(200).for_worker(0).generate() for _ in range(8)]
    for cid in stray:
        probe.sendto(b"\x40" + cid + bytes(60))
    async with asyncio.timeout(5):
        while len(resets.got) < len(stray):
            await asyncio.sleep(0.01)
    tokens = {ring.current.endpoint_keys().reset_token(cid) for cid in stray}
    assert {reset[-16:] for reset in resets.got} == tokens

    # The fleet's config reaches both workers, sessions opened before carry on.
    text = config_text("added").replace("127.0.0.1:9", f"127.0.0.1:{port}")
    await etcd.put(layout.config, text.encode())

    async def both_applied() -> bool:
        statuses = await config_statuses(etcd, layout)
        return all(statuses.get(f"host/{i}") and statuses[f"host/{i}"].applied for i in (0, 1))

    await until(both_applied, 5, "both workers applied the config")
    for worker, opened in served.items():
        response = await opened.request("added", b"new")
        assert (response.status, response.meta["edge-worker"]) == (200, worker)
    # `fleet members` gives the host the workers' verdict.
    put = await etcd.get(layout.config)
    assert put is not None
    report = await render_members(etcd, layout)
    [line] = [line for line in report.splitlines() if " host " in line]
    assert line.endswith(f"applied revision {put.mod_revision}"), line

    # A QUIC-LB rotation, its grace over: each worker gave its connections fresh CIDs
    # first (fleet/reissue.py), so the sessions carry on, each with its worker.
    await rotate_cid_config(etcd, layout, 1)

    async def grace_over() -> bool:
        routed = front.status().codepoints
        return len(routed) == 1 and routed[0] != cids.config_rotation

    await until(grace_over, 8, "only the new codepoint routed")
    for worker, opened in served.items():
        response = await asyncio.wait_for(opened.request("added", b"rotated"), 5)
        assert (response.status, response.meta["edge-worker"]) == (200, worker)
        assert opened.reconnect_stats.reconnects == 0

    # The membership is lost (the lease revoked): the host drains and exits, status 1.
    await etcd.revoke(info.lease)
    assert await asyncio.wait_for(process.wait(), 15) == 1
    assert await members(etcd, layout) == []
    async with asyncio.timeout(5):  # the front forgot the host
        while front.status().members:
            await asyncio.sleep(0.02)


class Collect(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: list[bytes] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.got.append(data)


async def test_sigterm_stops_the_workers_and_leaves(
    etcd_server: EtcdServer, etcd: Etcd, layout: Layout, tmp_path: Path
) -> None:
    pair = generate_self_signed(tmp_path)
    config = tmp_path / "edge.toml"
    config.write_text(CONFIG.format(cert=pair.certificate, key=pair.private_key, backend=9))
    process = await asyncio.create_subprocess_exec(
        *serve_command(config, etcd_server.endpoint, layout.prefix, "h"),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30):
            while b"listening on" not in await process.stdout.readline():
                pass
        assert [m.name for m in await members(etcd, layout)] == ["h"]
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
        assert await members(etcd, layout) == []  # left at once, not at the lease's end
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
