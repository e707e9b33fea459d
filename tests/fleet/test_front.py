"""The fleet's front (a real etcd, loopback sockets): each host's CIDs reach that host,
a connection's Initials one host, membership changes reroute, and a real QUIC client
reaches real edge servers through it."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from fleet_support import EtcdServer, probe_answer
from support import http_backend, service

from netsched_client import Session
from netsched_client.runtime.session import open_session
from netsched_edge.config import EdgeConfig
from netsched_edge.demo_backends import DemoHTTPServer
from netsched_edge.fleet.cid_config import FleetCidConfig, ensure_cid_config
from netsched_edge.fleet.etcd import Etcd
from netsched_edge.fleet.front import FleetFront, FrontSettings
from netsched_edge.fleet.health import HealthSettings
from netsched_edge.fleet.layout import Layout
from netsched_edge.fleet.membership import Member, MembershipSettings
from netsched_edge.server import EdgeServer
from netsched_edge.tls import generate_self_signed
from netsched_edge.workers import WorkerIdentity

pytestmark = pytest.mark.timeout(20)

SETTINGS = MembershipSettings(ttl_s=1, idle_hold_s=0)
LOCAL = "127.0.0.1"


class FakeHost(asyncio.DatagramProtocol):
    """A fleet host's worker that counts what reaches it and answers each datagram."""

    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.mute = False  # stopped, or behind a firewall that drops: nothing in, nothing out
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        if self.mute:
            return
        answer = probe_answer(data)
        if answer is not None:  # the front's health check, not a client's datagram
            self.transport.sendto(answer, addr)
            return
        self.got.append(data)
        self.transport.sendto(b"reply " + data[:9], addr)

    @property
    def port(self) -> int:
        assert self.transport is not None
        port: int = self.transport.get_extra_info("sockname")[1]
        return port


class Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: list[tuple[bytes, tuple[str, int]]] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.replies.append((data, addr))


def short_packet(cid: bytes) -> bytes:
    return b"\x40" + cid + bytes(24)


def initial(dcid: bytes) -> bytes:
    return b"\xc0\x00\x00\x00\x01" + bytes([len(dcid)]) + dcid + b"\x08" + bytes(8) + bytes(1100)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


class Fleet:
    """Fake hosts as members, the front, clients; all closed with the stack."""

    def __init__(self, stack: AsyncExitStack, etcd: Etcd, server: EtcdServer, layout: Layout):
        self.stack, self.etcd, self.server, self.layout = stack, etcd, server, layout
        self.hosts: dict[int, FakeHost] = {}  # by server ID
        self.members: dict[int, Member] = {}

    async def cids(self) -> FleetCidConfig:
        return await ensure_cid_config(self.etcd, self.layout)

    async def host(self, name: str) -> int:
        loop = asyncio.get_running_loop()
        transport, host = await loop.create_datagram_endpoint(FakeHost, local_addr=(LOCAL, 0))
        self.stack.callback(transport.close)
        member = Member(self.etcd, self.layout, name, LOCAL, (host.port,), SETTINGS)
        await self.stack.enter_async_context(member)
        self.hosts[member.server_id] = host
        self.members[member.server_id] = member
        return member.server_id

    async def front(self, health: HealthSettings | None = None) -> FleetFront:
        settings = FrontSettings(self.server.endpoint, (LOCAL, 0), prefix=self.layout.prefix)
        if health is not None:
            settings = dataclasses.replace(settings, health=health)
        front = FleetFront(settings)
        await self.stack.enter_async_context(front)
        return front

    async def client(self, front: FleetFront) -> tuple[asyncio.DatagramTransport, Client]:
        loop = asyncio.get_running_loop()
        transport, client = await loop.create_datagram_endpoint(
            Client, local_addr=(LOCAL, 0), remote_addr=front.local_address
        )
        self.stack.callback(transport.close)
        return transport, client

    def counts(self) -> dict[int, int]:
        return {sid: len(host.got) for sid, host in self.hosts.items()}


@pytest.fixture
async def fleet(etcd: Etcd, etcd_server: EtcdServer, layout: Layout) -> AsyncIterator[Fleet]:
    async with AsyncExitStack() as stack:
        yield Fleet(stack, etcd, etcd_server, layout)


async def test_each_hosts_cids_reach_that_host_and_replies_come_back(fleet: Fleet) -> None:
    ids = [await fleet.host(f"edge-{i}") for i in range(3)]
    front = await fleet.front()
    assert front.status().members == 3
    config = await fleet.cids()
    transport, client = await fleet.client(front)
    sent = Counter[int]()
    for i in range(60):
        sid = ids[i % 3]
        transport.sendto(short_packet(config.for_host(sid).for_worker(0).generate()))
        sent[sid] += 1
    await until(lambda: sum(fleet.counts().values()) == 60 and len(client.replies) == 60)
    assert fleet.counts() == dict(sent)  # every packet at the host its CID names
    for sid, host in fleet.hosts.items():  # ... and only those
        assert {config.locate(packet[1:9]) for packet in host.got} == {(sid, 0)}
    assert {addr for _, addr in client.replies} == {front.local_address}  # via the front


async def test_initials_of_one_connection_land_on_one_host(fleet: Fleet) -> None:
    for i in range(3):
        await fleet.host(f"edge-{i}")
    front = await fleet.front()
    dcids = [os.urandom(8 + i % 13) for i in range(45)]
    for _ in range(3):  # the first Initial and two retransmissions, each from another port
        transport, _ = await fleet.client(front)
        for dcid in dcids:
            transport.sendto(initial(dcid))
    await until(lambda: sum(fleet.counts().values()) == 3 * len(dcids))
    landed = {
        dcid: {sid for sid, host in fleet.hosts.items() for p in host.got if p[6:].startswith(dcid)}
        for dcid in dcids
    }
    assert all(len(hosts) == 1 for hosts in landed.values()), landed
    assert len(set().union(*landed.values())) == 3  # and spread over the hosts


async def test_a_member_joining_then_leaving_reroutes(fleet: Fleet) -> None:
    first = [await fleet.host(f"edge-{i}") for i in range(2)]
    front = await fleet.front()
    config = await fleet.cids()
    transport, _ = await fleet.client(front)

    joined = await fleet.host("edge-new")
    await until(lambda: front.status().members == 3)
    for _ in range(10):
        transport.sendto(short_packet(config.for_host(joined).for_worker(0).generate()))
    await until(lambda: fleet.counts()[joined] == 10)

    await fleet.members[joined].leave()
    await until(lambda: front.status().members == 2)
    before = fleet.counts()
    for _ in range(30):
        transport.sendto(short_packet(config.for_host(joined).for_worker(0).generate()))
    await until(lambda: sum(fleet.counts()[sid] - before[sid] for sid in first) == 30)
    assert fleet.counts()[joined] == before[joined]  # nothing more for the host gone
    assert front.status().stats.flows_retired == 1  # the client's flow to it


async def test_membership_changes_drop_no_packet_of_the_others(fleet: Fleet) -> None:
    """A steady stream to one host while others join and leave: every packet arrives."""
    steady = await fleet.host("edge-steady")
    front = await fleet.front()
    config = await fleet.cids()
    transport, client = await fleet.client(front)

    async def stream() -> None:
        for _ in range(300):
            transport.sendto(short_packet(config.for_host(steady).for_worker(0).generate()))
            await asyncio.sleep(0.002)

    sending = asyncio.create_task(stream())
    for round_ in range(3):
        joined = await fleet.host(f"edge-{round_}")
        await until(lambda: front.status().members == 2)
        await fleet.members[joined].leave()
        await until(lambda: front.status().members == 1)
    await sending
    await until(lambda: fleet.counts()[steady] == 300 and len(client.replies) == 300)
    assert front.status().stats.no_backend == 0


# A fleet host in a process of its own, to be killed without a goodbye: a UDP socket
# counting nothing (it dies), registered as a member with its port.
DYING_HOST = """
import asyncio, socket, sys
from netsched_edge.fleet.etcd import Etcd
from netsched_edge.fleet.layout import Layout
from netsched_edge.fleet.membership import Member, MembershipSettings

async def main(endpoint, prefix):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    settings = MembershipSettings(ttl_s=1, idle_hold_s=0)
    async with Etcd(endpoint) as etcd, Member(
        etcd, Layout(prefix), "dying", "127.0.0.1", (sock.getsockname()[1],), settings
    ) as member:
        print(member.server_id, flush=True)
        await asyncio.Event().wait()

asyncio.run(main(*sys.argv[1:]))
"""


async def test_a_dead_members_cids_go_to_the_living(fleet: Fleet) -> None:
    living = [await fleet.host(f"edge-{i}") for i in range(2)]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", DYING_HOST, fleet.server.endpoint, fleet.layout.prefix,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        async with asyncio.timeout(10):
            dead = int(await process.stdout.readline())
        front = await fleet.front()
        assert front.status().members == 3
        config = await fleet.cids()
        process.kill()
        await process.wait()
        await until(lambda: front.status().members == 2)  # its lease ran out (1 s)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    transport, _ = await fleet.client(front)
    for _ in range(40):
        transport.sendto(short_packet(config.for_host(dead).for_worker(0).generate()))
    await until(lambda: sum(fleet.counts().values()) == 40)
    assert all(fleet.counts()[sid] > 0 for sid in living)  # by hash, over the living


class RealFleet:
    """Real edge servers as members (one worker each, the fleet's encrypted CIDs, one
    certificate for all), a demo HTTP backend behind them, the front before them."""

    def __init__(self, fleet: Fleet, tmp_path: Path) -> None:
        self.fleet = fleet
        self.pair = generate_self_signed(tmp_path)
        self.edges: list[EdgeServer] = []

    async def start(self, hosts: int, health: HealthSettings | None = None) -> FleetFront:
        stack = self.fleet.stack
        backend = DemoHTTPServer("b", base_ms=1, cold_ms=0)
        api = service("api", http_backend("b", await backend.start()))
        stack.push_async_callback(backend.stop)
        config = await self.fleet.cids()
        for i in range(hosts):
            port = _free_udp_port()  # the member says its port before its server ID is known
            member = Member(self.fleet.etcd, self.fleet.layout, f"edge-{i}", LOCAL, (port,),
                            SETTINGS)  # fmt: skip
            await stack.enter_async_context(member)
            edge = EdgeServer(
                EdgeConfig(host=LOCAL, port=port, services=(api,),
                           certificate=self.pair.certificate, private_key=self.pair.private_key),
                worker=WorkerIdentity(0, 1, config.for_host(member.server_id)),
            )  # fmt: skip
            await edge.start()
            stack.push_async_callback(edge.close)
            self.edges.append(edge)
        return await self.fleet.front(health)

    async def session(self, front: FleetFront, **kwargs: object) -> Session:
        session = await open_session(
            LOCAL, front.local_address[1], ca_file=str(self.pair.ca_certificate), **kwargs
        )  # type: ignore[arg-type]
        self.fleet.stack.push_async_callback(session.close)
        return session

    def connections(self) -> list[int]:
        return [len(edge.connections) for edge in self.edges]


async def test_a_quic_client_reaches_real_edges_through_the_front(
    fleet: Fleet, tmp_path: Path
) -> None:
    real = RealFleet(fleet, tmp_path)
    front = await real.start(2)
    sessions = [await real.session(front) for _ in range(4)]
    for session in sessions:
        assert (await session.request("api", b"through the front")).status == 200
    assert sum(real.connections()) == 4  # each on one host
    stats = front.status().stats
    assert stats.no_backend == stats.send_errors == 0
    assert stats.to_clients > 0 and stats.to_backends == stats.from_clients


async def test_a_multipath_clients_paths_reach_its_host(fleet: Fleet, tmp_path: Path) -> None:
    """Two paths from two client addresses: two flows at the front, one connection on
    one host, both paths validated there (a path challenge answered by its host)."""
    real = RealFleet(fleet, tmp_path)
    front = await real.start(2)
    session = await real.session(front, paths=["127.0.0.1", "127.0.0.2"])
    assert session.multipath
    assert [p.state for p in session.paths] == ["active", "active"]
    for _ in range(5):
        assert (await session.request("api", b"two paths")).status == 200
    assert sorted(real.connections()) == [0, 1]
    assert {p.local[0] if p.local else LOCAL for p in session.paths} == {LOCAL, "127.0.0.2"}
    assert all(p.bytes_received > 0 for p in session.paths)
    stats = front.status().stats
    assert stats.active_flows == 2 and stats.no_backend == 0


QUICK = HealthSettings(interval_s=0.05, down_after=3, up_after=2)


async def test_a_mute_worker_is_routed_around_then_back(fleet: Fleet) -> None:
    """A host that stops answering (SIGSTOP, a firewall: no ICMP) is down after 3 probes
    unanswered, its CIDs then go to the others; it is up after 2 answered."""
    ids = [await fleet.host(f"edge-{i}") for i in range(3)]
    front = await fleet.front(QUICK)
    config = await fleet.cids()
    transport, _ = await fleet.client(front)
    mute = fleet.hosts[ids[0]]
    loop = asyncio.get_running_loop()
    await until(lambda: front.status().probes.answered >= 6)
    assert front.status().silent == 0

    mute.mute = True
    muted_at = loop.time()
    await until(lambda: front.status().silent == 1, 2.0)
    detected_s = loop.time() - muted_at
    assert detected_s <= (QUICK.down_after + 1) * QUICK.interval_s + 0.1
    assert front.status().down == 1 and front.status().members == 3
    before = fleet.counts()
    for _ in range(30):
        transport.sendto(short_packet(config.for_host(ids[0]).for_worker(0).generate()))
    await until(lambda: sum(fleet.counts()[sid] - before[sid] for sid in ids[1:]) == 30)

    mute.mute = False
    unmuted_at = loop.time()
    await until(lambda: front.status().down == 0, 2.0)
    assert loop.time() - unmuted_at <= (QUICK.up_after + 1) * QUICK.interval_s + 0.1
    for _ in range(10):
        transport.sendto(short_packet(config.for_host(ids[0]).for_worker(0).generate()))
    await until(lambda: len(mute.got) == 10)


async def test_real_edges_answer_the_health_probes(fleet: Fleet, tmp_path: Path) -> None:
    """An edge answers the probe (a version it does not speak) with Version Negotiation."""
    real = RealFleet(fleet, tmp_path)
    front = await real.start(2, QUICK)
    await until(lambda: front.status().probes.answered >= 20)
    probes = front.status().probes
    assert probes.missed <= 2 and probes.send_errors == 0  # the round under way at most
    assert front.status().down == 0


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((LOCAL, 0))
        port: int = probe.getsockname()[1]
        return port


async def test_the_console_front_routes_and_stops_on_sigterm(fleet: Fleet) -> None:
    sid = await fleet.host("edge-0")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "netsched_edge.fleet", "--prefix", fleet.layout.prefix,
        "front", "--etcd", fleet.server.endpoint, "--listen", f"{LOCAL}:0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        async with asyncio.timeout(10):
            line = (await process.stdout.readline()).decode()
        assert "fleet front: 1 members, 1 workers; etcd reachable" in line, line
        port = int(line.split()[2].rstrip(";").rsplit(":", 1)[1])
        config = await fleet.cids()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.sendto(
                short_packet(config.for_host(sid).for_worker(0).generate()), (LOCAL, port)
            )
        await until(lambda: fleet.counts()[sid] == 1)
        process.terminate()
        async with asyncio.timeout(10):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_the_console_front_refuses_a_bad_address() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "netsched_edge.fleet", "front", "--listen", "localhost:443",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode == 2 and b"not a numeric HOST:PORT: 'localhost:443'" in err
