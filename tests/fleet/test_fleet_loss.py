"""A fleet host that loses its membership drains (issue #17): a real etcd, a real
EdgeServer joined as `serve --fleet-etcd` joins it, real QUIC clients.

Once the member lease is gone (revoked, or etcd out of reach for a TTL) another
host may take this host's server ID after its hold: the host refuses new
connections at once, lets the requests under way finish, and closes every
connection (NO_ERROR) within its drain timeout, cut to the ID's idle hold.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from fleet_support import EtcdServer, start_etcd, stop_etcd
from support import http_backend, service
from test_reconnect_edge import GatedBackend

from netsched_client import SLO, ConnectionLost, ConnectionRefused, Session, open_session
from netsched_edge.config import EdgeConfig
from netsched_edge.fleet.etcd import Etcd
from netsched_edge.fleet.host import FleetHost, FleetSettings, drain_on_loss
from netsched_edge.fleet.layout import Layout
from netsched_edge.fleet.membership import MembershipSettings
from netsched_edge.server import EdgeServer
from netsched_edge.tls import CertificatePair, generate_self_signed
from netsched_edge.workers import WorkerIdentity

pytestmark = pytest.mark.timeout(30)

LOCAL = "127.0.0.1"
TTL_S = 1
HOLD_S = 3  # the server ID's idle hold: the drain must end within it
DRAIN_S = 1.5  # the edge's drain timeout
DEADLINE = SLO(deadline_ms=10_000)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((LOCAL, 0))
        return int(probe.getsockname()[1])


class Host:
    """An EdgeServer joined to the fleet as `serve --fleet-etcd` does it (cli._join_fleet),
    with `on_lost=drain_on_loss(...)`; a gated HTTP backend behind it."""

    def __init__(
        self,
        stack: AsyncExitStack,
        tmp_path: Path,
        name: str = "edge-a",
        pair: CertificatePair | None = None,  # one for several hosts: clients trust any
    ) -> None:
        self.stack = stack
        self.pair = pair or generate_self_signed(tmp_path)
        self.tmp_path = tmp_path
        self.name = name
        self.backend = GatedBackend()

    async def start(self, endpoint: str, layout: Layout) -> tuple[FleetHost, EdgeServer]:
        port = await self.backend.start()
        self.stack.push_async_callback(self.backend.stop)
        edge = EdgeServer(
            EdgeConfig(host=LOCAL, port=_free_udp_port(), services=(
                service("api", http_backend("b", port)),), drain_timeout_s=DRAIN_S,
                certificate=self.pair.certificate, private_key=self.pair.private_key),
        )  # fmt: skip
        settings = FleetSettings(
            endpoint, self.name, LOCAL, self.tmp_path, prefix=layout.prefix,
            membership=MembershipSettings(ttl_s=TTL_S, idle_hold_s=HOLD_S),
        )  # fmt: skip
        host = FleetHost(
            settings,
            ports=(edge.config.port,),
            apply_config=edge.reload,
            install_keys=edge.install_keys,
            on_lost=drain_on_loss(edge, settings),
        )
        self.stack.push_async_callback(edge.close)  # after the host has left
        await self.stack.enter_async_context(host)
        async with asyncio.timeout(5):
            while host.keys.ring is None:
                await asyncio.sleep(0.01)
        assert host.cids is not None
        edge.worker = WorkerIdentity(0, 1, host.cids)
        edge.follow_fleet(host.status)
        await edge.start()
        return host, edge

    async def session(self, edge: EdgeServer) -> Session:
        session = await open_session(
            LOCAL, edge.port, ca_file=str(self.pair.ca_certificate), reconnect=False
        )
        self.stack.push_async_callback(session.close)
        return session


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as stack:
        yield stack


async def _refused(fixture: Host, edge: EdgeServer) -> None:
    """A new connection is refused by the draining edge in its handshake (a transport
    CONNECTION_REFUSED, RFC 9000 §20.1): no CID under this server ID is handed out."""
    with pytest.raises(ConnectionRefused) as refused:
        await fixture.session(edge)
    assert refused.value.error_code == 0x02
    assert fixture.backend.targets.count("/new") == 0


async def _connections_closed(edge: EdgeServer, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while edge.connections:
            await asyncio.sleep(0.01)


async def test_a_revoked_lease_drains_the_host(
    etcd_server: EtcdServer, etcd: Etcd, layout: Layout, tmp_path: Path, stack: AsyncExitStack
) -> None:
    fixture = Host(stack, tmp_path)
    host, edge = await fixture.start(etcd_server.endpoint, layout)
    session = await fixture.session(edge)
    fixture.backend.gate.set()
    assert (await session.request("api", path="/before", slo=DEADLINE)).status == 200
    fixture.backend.gate.clear()
    running = asyncio.create_task(session.request("api", path="/running", slo=DEADLINE))
    async with asyncio.timeout(5):
        while "/running" not in fixture.backend.targets:
            await asyncio.sleep(0.01)

    await etcd.revoke(host.member.lease.id)  # an operator's, or etcd's expiry
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(host.lost.wait(), TTL_S + 1)
    lost_at = loop.time()
    await asyncio.sleep(0.05)  # the drain starts
    assert edge.draining and "draining" in edge.unready()
    assert not host.status().member
    await _refused(fixture, edge)  # no new connection under this server ID
    assert len(edge.connections) == 1  # the one with the request under way
    # The request under way finishes, then the connection is closed, well before
    # the drain timeout (nothing else was running).
    fixture.backend.gate.set()
    response = await asyncio.wait_for(running, 5)
    assert (response.status, response.body) == (200, b"/running")
    await _connections_closed(edge, DRAIN_S)
    assert loop.time() - lost_at < DRAIN_S
    with pytest.raises(ConnectionLost):
        await session.request("api", path="/after", slo=DEADLINE)


async def test_etcd_out_of_reach_longer_than_the_lease_drains_the_host(
    tmp_path: Path, stack: AsyncExitStack
) -> None:
    own = await asyncio.to_thread(start_etcd, tmp_path)
    stack.callback(stop_etcd, own)
    stack.callback(own.process.send_signal, signal.SIGCONT)  # before it is stopped
    fixture = Host(stack, tmp_path)
    host, edge = await fixture.start(own.endpoint, Layout("/loss/"))
    session = await fixture.session(edge)
    stuck = asyncio.create_task(session.request("api", path="/stuck", slo=DEADLINE))
    async with asyncio.timeout(5):
        while "/stuck" not in fixture.backend.targets:
            await asyncio.sleep(0.01)

    loop = asyncio.get_running_loop()
    own.process.send_signal(signal.SIGSTOP)
    stopped_at = loop.time()
    # While the lease may still hold, the host serves on.
    await asyncio.sleep(TTL_S / 2)
    assert not edge.draining
    # No renewal for a TTL (each renewal attempt bounded by the client's 2 s timeout).
    await asyncio.wait_for(host.lost.wait(), TTL_S + 3)
    lost_at = loop.time()
    assert lost_at - stopped_at >= TTL_S * 0.9
    await asyncio.sleep(0.05)
    assert edge.draining and host.status().describe().startswith("membership LOST")
    await _refused(fixture, edge)
    # The stuck request is not waited for past the drain timeout: the connection
    # is closed then (within the ID's hold), and the request ends with it.
    await _connections_closed(edge, DRAIN_S + 1)
    closed_s = loop.time() - lost_at
    assert DRAIN_S - 0.2 <= closed_s <= DRAIN_S + 0.5 < HOLD_S
    with pytest.raises(ConnectionLost):
        await asyncio.wait_for(stuck, 2)
