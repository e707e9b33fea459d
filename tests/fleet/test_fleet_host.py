"""Edge servers as fleet hosts (FleetHost beside a real EdgeServer, a real etcd):
a config change reaches every host with no connection dropped, and every host
runs on the same keys."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
from fleet_support import EtcdServer, config_text, start_etcd, stop_etcd
from support import http_backend, service

from netsched_client import Session
from netsched_edge.demo_backends import DemoHTTPServer
from netsched_edge.fleet.config_watch import config_statuses
from netsched_edge.fleet.etcd import Etcd
from netsched_edge.fleet.host import FleetHost, FleetSettings
from netsched_edge.fleet.layout import Layout
from netsched_edge.fleet.membership import MembershipSettings
from netsched_edge.fleet.shared_keys import KeyRing
from netsched_edge.server import EdgeServer

pytestmark = pytest.mark.timeout(20)


def two_services(backend_port: int) -> str:
    """The fleet's second config: the first one's service, pointed at the backend, and
    a new one."""
    text = config_text("api").replace("127.0.0.1:9", f"127.0.0.1:{backend_port}")
    return text + config_text("added").replace("127.0.0.1:9", f"127.0.0.1:{backend_port}")


async def test_a_config_change_applies_on_every_host_and_drops_no_connection(
    etcd_server: EtcdServer,
    etcd: Etcd,
    layout: Layout,
    tmp_path: Path,
    start_edge,
    start_server,
    open_client,
) -> None:
    backend = await start_server(DemoHTTPServer("b", base_ms=1, cold_ms=0))
    edges: list[EdgeServer] = [
        await start_edge(service("api", http_backend("b", backend))) for _ in range(2)
    ]
    rings: list[list[KeyRing]] = [[], []]
    hosts = [
        FleetHost(
            FleetSettings(
                etcd_server.endpoint,
                f"edge-{i}",
                "127.0.0.1",
                tmp_path,
                prefix=layout.prefix,
                membership=MembershipSettings(ttl_s=2, idle_hold_s=0),
            ),
            ports=(edge.port,),
            apply_config=edge.reload,
            install_keys=rings[i].append,
        )
        for i, edge in enumerate(edges)
    ]
    async with hosts[0], hosts[1]:
        assert sorted(h.status().server_id for h in hosts) == [1, 2]
        for host in hosts:  # the CIDs its workers would issue name it, under the fleet's key
            assert host.cids is not None
            cid = host.cids.for_worker(0).generate()
            assert cid[0] >> 5 == 0 and len(cid) == 8
            assert host.cids.for_worker(0).scheme.server_id(cid) == bytes(
                [host.status().server_id, 0]
            )
        sessions: list[Session] = [await open_client(edge) for edge in edges]
        for session in sessions:
            assert (await session.request("api", b"before")).status == 200

        put_at = time.monotonic()
        revision = await etcd.put(layout.config, two_services(backend).encode())
        async with asyncio.timeout(3):
            while [s.applied for s in (await config_statuses(etcd, layout)).values()] != [
                True,
                True,
            ] or any(h.status().config_revision != revision for h in hosts):
                await asyncio.sleep(0.02)
        applied_within = time.monotonic() - put_at
        for session in sessions:  # the connections opened before the change carry on
            assert (await session.request("added", b"after")).status == 200
            assert (await session.request("api", b"after")).status == 200
        assert applied_within < 1.0, applied_within

        # Every host runs on the fleet's keys, the same ones.
        async with asyncio.timeout(3):
            while not all(rings):
                await asyncio.sleep(0.02)
        assert rings[0][-1].current == rings[1][-1].current
        status = hosts[0].status()
        assert status.etcd_available and status.member and status.keys_revision > 0
        assert "etcd reachable" in status.describe()


async def test_without_etcd_a_host_keeps_its_config_and_keys_and_says_so(
    tmp_path: Path, start_edge, start_server, open_client
) -> None:
    own = await asyncio.to_thread(start_etcd, tmp_path)
    try:
        backend = await start_server(DemoHTTPServer("b", base_ms=1, cold_ms=0))
        edge: EdgeServer = await start_edge(service("api", http_backend("b", backend)))
        layout = Layout("/fleet/")
        async with Etcd(own.endpoint) as etcd:
            revision = await etcd.put(layout.config, two_services(backend).encode())
        rings: list[KeyRing] = []
        settings = FleetSettings(
            own.endpoint,
            "edge-0",
            "127.0.0.1",
            tmp_path,
            prefix=layout.prefix,
            membership=MembershipSettings(ttl_s=1, idle_hold_s=0),
        )
        host = FleetHost(
            settings, ports=(edge.port,), apply_config=edge.reload, install_keys=rings.append
        )
        async with host:
            async with asyncio.timeout(3):
                while host.status().config_revision != revision or not rings:
                    await asyncio.sleep(0.02)
            session = await open_client(edge)
            await asyncio.to_thread(stop_etcd, own)
            async with asyncio.timeout(4):  # a TTL without renewal: the lease counts as lost
                while host.status().etcd_available or host.status().member:
                    await asyncio.sleep(0.05)
            status = host.status()
            assert (status.config_revision, status.keys_revision) == (revision, rings[-1].revision)
            assert "membership LOST; etcd UNAVAILABLE; config revision" in status.describe()
            assert (await session.request("added", b"still served")).status == 200
            assert len(rings) == 1
    finally:
        await asyncio.to_thread(stop_etcd, own)


async def test_a_silent_etcd_is_noticed_by_the_lease_renewals(tmp_path: Path) -> None:
    """etcd stopped (SIGSTOP): connections stay open, nothing answers, watches
    just wait; the failing renewals say etcd is away, before the lease is lost."""
    own = await asyncio.to_thread(start_etcd, tmp_path)
    settings = FleetSettings(
        own.endpoint,
        "edge-0",
        "127.0.0.1",
        tmp_path,
        membership=MembershipSettings(ttl_s=5, idle_hold_s=0),
    )
    try:
        async with FleetHost(
            settings, ports=(), apply_config=lambda config: None, install_keys=lambda ring: None
        ) as host:
            async with asyncio.timeout(3):
                while not host.status().etcd_available:
                    await asyncio.sleep(0.05)
            own.process.send_signal(signal.SIGSTOP)
            try:
                async with asyncio.timeout(5):  # a renewal (every 5/3 s) times out (2 s)
                    while host.status().etcd_available:
                        await asyncio.sleep(0.05)
                assert host.status().member  # not lost yet: within the TTL
            finally:
                own.process.send_signal(signal.SIGCONT)
            async with asyncio.timeout(3):
                while not host.status().etcd_available:
                    await asyncio.sleep(0.05)
            assert host.status().member
    finally:
        await asyncio.to_thread(stop_etcd, own)
