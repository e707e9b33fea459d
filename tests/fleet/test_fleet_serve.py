"""`netsched-edge serve --fleet-etcd ...`: real edge processes as fleet hosts, a real etcd.

A ticket issued by one host resumes (with 0-RTT) on another; a config put in
etcd reaches both; /readyz says when etcd is away and when the membership is
lost; `netsched-edge fleet` lists the members; fleet CIDs of 17 bytes work.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path

import pytest
from edge_binary import RunningEdge, run, write_config
from fleet_support import EtcdServer, config_text, start_etcd, stop_etcd
from support import http_backend, service

from netsched_client import open_session
from netsched_client.runtime.session import TicketStore
from netsched_edge.config import EdgeConfig
from netsched_edge.demo_backends import DemoHTTPServer
from netsched_edge.fleet.etcd import Etcd
from netsched_edge.fleet.host import FleetStatus
from netsched_edge.fleet.layout import Layout
from netsched_edge.server import EdgeServer
from netsched_edge.tls import default_state_dir
from netsched_edge.workers import FleetCids, WorkerIdentity

pytestmark = pytest.mark.timeout(20)


def _free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _host(
    tmp_path: Path, etcd: str, layout: Layout, name: str, backend: int, admin: int | None = None
) -> RunningEdge:
    edge = "" if admin is None else f'admin = "127.0.0.1:{admin}"'
    config = write_config(tmp_path / f"{name}.toml", backend, edge=edge)
    fleet = ("--fleet-etcd", etcd, "--fleet-name", name, "--fleet-prefix", layout.prefix)
    return await RunningEdge.start("--config", str(config), *fleet, timeout=15)


async def _hosts(tmp_path: Path, etcd: str, layout: Layout, backend: int) -> list[RunningEdge]:
    """Hosts "a" and "b", started together."""
    return list(
        await asyncio.gather(*(_host(tmp_path, etcd, layout, n, backend) for n in ("a", "b")))
    )


def _ca() -> str:
    # Hosts started under one XDG_STATE_HOME (conftest) keep one generated CA.
    return str(default_state_dir() / "ca.pem")


async def _readyz(port: int) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


async def test_a_ticket_from_host_a_resumes_with_0rtt_on_host_b(
    etcd_server: EtcdServer, layout: Layout, tmp_path: Path, start_server
) -> None:
    backend = await start_server(DemoHTTPServer("b", base_ms=1, cold_ms=0))
    hosts = await _hosts(tmp_path, etcd_server.endpoint, layout, backend)
    try:
        store = TicketStore()
        first = await open_session("127.0.0.1", hosts[0].port, ca_file=_ca(), ticket_store=store)
        try:
            assert (await first.request("api", b"x")).status == 200
            async with asyncio.timeout(5):
                while not len(store):
                    await asyncio.sleep(0.01)
        finally:
            await first.close()
        second = await open_session(
            "127.0.0.1", hosts[1].port, ca_file=_ca(), ticket_store=store, early_data=True
        )
        try:
            response = await second.request("api", b"y", meta={"method": "GET", "path": "/"})
            assert response.status == 200
            assert second.session_resumed and second.early_data == "accepted"
        finally:
            await second.close()
        # Each host said which fleet ID it took.
        lines = [await host.wait_for_output("fleet member, server ID") for host in hosts]
        assert {line.split("server ID ")[1].split(";")[0] for line in lines} == {"1", "2"}
    finally:
        for host in hosts:
            assert await host.stop() == 0


async def test_a_config_put_in_etcd_reaches_both_hosts(
    etcd_server: EtcdServer, etcd: Etcd, layout: Layout, tmp_path: Path, start_server
) -> None:
    backend = await start_server(DemoHTTPServer("b", base_ms=1, cold_ms=0))
    hosts = await _hosts(tmp_path, etcd_server.endpoint, layout, backend)
    try:
        sessions = [await open_session("127.0.0.1", h.port, ca_file=_ca()) for h in hosts]
        text = config_text("added").replace("127.0.0.1:9", f"127.0.0.1:{backend}")
        await etcd.put(layout.config, text.encode())
        for host, session in zip(hosts, sessions, strict=True):
            await host.wait_for_output("configuration reloaded from etcd:", timeout=5)
            # Opened before the change, the session reaches the new service.
            assert (await session.request("added", b"new")).status == 200
            await session.close()
        # The fleet's config names no address: each host still listens where it did.
        for host in hosts:
            later = await open_session("127.0.0.1", host.port, ca_file=_ca())
            assert (await later.request("added", b"later")).status == 200
            await later.close()
    finally:
        for host in hosts:
            assert await host.stop() == 0


async def test_readyz_says_when_etcd_is_away(tmp_path: Path, start_server) -> None:
    own = await asyncio.to_thread(start_etcd, tmp_path)
    admin = _free_tcp_port()
    try:
        backend = await start_server(DemoHTTPServer("b", base_ms=1, cold_ms=0))
        host = await _host(tmp_path, own.endpoint, Layout("/f/"), "a", backend, admin)
        try:
            async with asyncio.timeout(3):  # the followers' first reads
                while "etcd reachable" not in (body := (await _readyz(admin))[1]):
                    await asyncio.sleep(0.05)
            assert body.startswith("ready\nfleet member, server ID 1; etcd reachable")
            own.process.send_signal(signal.SIGSTOP)
            try:
                # A lease renewal (every 10/3 s) times out (2 s): etcd counts as away.
                async with asyncio.timeout(9):
                    while "etcd UNAVAILABLE" not in body:
                        await asyncio.sleep(0.2)
                        status, body = await _readyz(admin)
                # Still a member (within the 10 s TTL): serving on its config and keys.
                assert status == 200 and "fleet member, server ID 1; etcd UNAVAILABLE" in body
            finally:
                own.process.send_signal(signal.SIGCONT)
            assert "not renewed" in await host.wait_for_output("etcd lease", timeout=1)  # logged
            async with asyncio.timeout(5):  # etcd continues: so does the host
                while "etcd reachable" not in (await _readyz(admin))[1]:
                    await asyncio.sleep(0.1)
        finally:
            assert await host.stop() == 0
    finally:
        await asyncio.to_thread(stop_etcd, own)


async def test_a_lost_membership_makes_the_edge_unready(start_server, start_edge) -> None:
    backend = await start_server(DemoHTTPServer("b", base_ms=1, cold_ms=0))
    edge: EdgeServer = await start_edge(
        service("api", http_backend("b", backend)), admin_host="127.0.0.1", admin_port=0
    )
    assert edge.admin_port is not None
    status = FleetStatus(server_id=3, member=True, etcd_available=True, config_revision=7,
                         keys_revision=5)  # fmt: skip
    edge.follow_fleet(lambda: status)
    assert await _readyz(edge.admin_port) == (
        200,
        "ready\nfleet member, server ID 3; etcd reachable; config revision 7, keys revision 5\n",
    )
    status = FleetStatus(3, member=False, etcd_available=False, config_revision=7, keys_revision=5)
    code, body = await _readyz(edge.admin_port)
    assert code == 503
    assert body.splitlines() == [
        "not ready: fleet membership lost: this host's server ID may be reused",
        "membership LOST; etcd UNAVAILABLE; config revision 7, keys revision 5",
    ]


async def test_fleet_command_lists_the_members(
    etcd_server: EtcdServer, layout: Layout, tmp_path: Path, start_server
) -> None:
    backend = await start_server(DemoHTTPServer("b", base_ms=1, cold_ms=0))
    host = await _host(tmp_path, etcd_server.endpoint, layout, "edge-a", backend)
    try:
        listed = await run(
            "fleet", "--etcd", etcd_server.endpoint, "--prefix", layout.prefix, "members"
        )
        assert listed.code == 0, listed.err
        assert "edge-a" in listed.out and f":{host.port}" in listed.out
    finally:
        assert await host.stop() == 0


async def test_a_host_that_loses_its_membership_drains_and_exits_1(
    etcd_server: EtcdServer, etcd: Etcd, layout: Layout, tmp_path: Path, start_server
) -> None:
    """`serve --fleet-etcd`, the lease revoked: the host serves no new connection once
    drained and ends with status 1 (its supervisor restarts it into the fleet), within
    its ID hold, before another host may issue CIDs under its ID."""
    from netsched_edge.fleet.membership import members

    backend = await start_server(DemoHTTPServer("b", base_ms=1, cold_ms=0))
    config = write_config(tmp_path / "h.toml", backend)
    fleet = ("--fleet-etcd", etcd_server.endpoint, "--fleet-name", "h", "--fleet-prefix")
    timing = ("--fleet-ttl", "1", "--fleet-idle-hold", "2")
    host = await RunningEdge.start("--config", str(config), *fleet, layout.prefix, *timing)
    try:
        session = await open_session("127.0.0.1", host.port, ca_file=_ca())
        assert (await session.request("api", b"x")).body == b"x"
        [info] = await members(etcd, layout)
        await etcd.revoke(info.lease)
        assert await asyncio.wait_for(host.proc.wait(), 10) == 1
        await host.wait_for_output("fleet membership lost")
        await session.close()
    finally:
        await host.stop()


async def test_single_pass_fleet_cids_of_17_bytes(start_server, open_client) -> None:
    """A scheme whose server ID + nonce fill one AES block: the edge parses short
    headers with the worker's CID length, not aioquic's 8."""
    backend = await start_server(DemoHTTPServer("b", base_ms=1, cold_ms=0))
    config = EdgeConfig(
        host="127.0.0.1", port=0, services=(service("api", http_backend("b", backend)),)
    )
    cids = FleetCids(host_server_id=b"\x01", key=os.urandom(16), cid_length=17)
    edge = EdgeServer(config, worker=WorkerIdentity(0, 1, cids))
    await edge.start()
    try:
        session = await open_client(edge)
        for _ in range(3):  # 1-RTT packets: short headers with the 17-byte CID
            assert (await session.request("api", b"x")).status == 200
        (quic,) = edge.quic_connections()
        assert len(quic.host_cid) == 17
        assert cids.for_worker(0).scheme.server_id(quic.host_cid) == b"\x01\x00"
    finally:
        await edge.close()


async def test_a_host_that_cannot_join_does_not_start(tmp_path: Path) -> None:
    config = str(write_config(tmp_path / "edge.toml", 9))
    with socket.socket() as probe:  # a port nobody listens on: etcd refused
        probe.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{probe.getsockname()[1]}"
    refused = await run("serve", "--config", config, "--fleet-etcd", nowhere, timeout=15)
    assert refused.code == 1
    assert refused.err.startswith(f"netsched-edge: cannot start: fleet: etcd at {nowhere}")
    with_workers = await run(
        "serve", "--config", config, "--workers", "2", "--fleet-etcd", nowhere, timeout=15
    )
    assert with_workers.code == 1
    assert with_workers.err.startswith(f"netsched-edge: cannot start: fleet: etcd at {nowhere}")
