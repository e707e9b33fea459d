"""Fresh CIDs for a host's connections after a QUIC-LB rotation: the edge connection's
re-issue (EdgeQuicConnection.reissue_cids) against an aioquic client in memory, and the
sweep (fleet/reissue.py) on fake connections: spread over half the grace left, in batches
of at most MAX_PER_TICK, each connection once per rotation. Then two-path SDK sessions
through the front, with real etcd and real hosts, across two rotations past their grace
(every path's CIDs re-issued); single-path ones are in test_fleet_rotation.py, the
multipath re-issue in memory in tests/test_multipath_cid_rotation.py."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.events import HandshakeCompleted
from fleet_support import EtcdServer
from test_fleet_rotation import past_each_grace, sessions_through_a_front
from test_front import LOCAL, until

from netsched_client.proto.multipath.connection import MultipathConnection
from netsched_edge.fleet.etcd import Etcd
from netsched_edge.fleet.host import CidState, FleetStatus
from netsched_edge.fleet.layout import Layout
from netsched_edge.fleet.reissue import MAX_PER_TICK, TICK_S, CidRefresh, codepoint
from netsched_edge.server import MAX_HELD_CIDS, EdgeQuicConnection
from netsched_edge.tls import generate_self_signed

pytestmark = pytest.mark.timeout(30)

CIDS_EACH = 8  # what each fake connection re-issues
CLIENT: NetworkAddress = ("127.0.0.1", 5000)
SERVER: NetworkAddress = ("127.0.0.1", 4433)


class Pair:
    """An aioquic client and an edge connection whose CID factory issues under `issuing`,
    datagrams handed over in memory."""

    def __init__(self, tmp_path: Path) -> None:
        certificate = generate_self_signed(tmp_path)
        client_config = QuicConfiguration(is_client=True, server_name="localhost")
        client_config.alpn_protocols = ["h3"]
        client_config.load_verify_locations(str(certificate.ca_certificate))
        server_config = QuicConfiguration(is_client=False, alpn_protocols=["h3"])
        server_config.load_cert_chain(certificate.certificate, certificate.private_key)
        self.issuing = 0
        self.client = QuicConnection(configuration=client_config)
        self.server = EdgeQuicConnection(
            configuration=server_config,
            original_destination_connection_id=self.client.original_destination_connection_id,
            cid_factory=lambda: bytes([self.issuing << 5]) + os.urandom(7),
        )
        self.now = 1.0
        self.client.connect(SERVER, now=self.now)

    def exchange(self, rounds: int = 10) -> None:
        for _ in range(rounds):
            self.now += 0.01
            for data, _ in self.client.datagrams_to_send(self.now):
                self.server.receive_datagram(data, CLIENT, now=self.now)
            for data, _ in self.server.datagrams_to_send(self.now):
                self.client.receive_datagram(data, SERVER, now=self.now)

    def rotate(self, to: int) -> int:
        self.issuing = to
        return self.server.reissue_cids(lambda cid: codepoint(cid) != to)

    def held(self) -> list[int]:
        """The codepoints of the edge's CIDs (aioquic keeps them private)."""
        return [codepoint(c.cid) for c in self.server._host_cids]

    def client_sends_to(self) -> int:
        return codepoint(self.client._peer_cid.cid)


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    made = Pair(tmp_path)
    made.exchange()
    events = iter(made.client.next_event, None)
    assert any(isinstance(event, HandshakeCompleted) for event in events)
    return made


def test_an_aioquic_client_moves_to_the_fresh_cids_and_retires_the_old(pair: Pair) -> None:
    assert pair.held() == [0] * 8 and pair.client_sends_to() == 0
    assert pair.rotate(1) == 8
    pair.exchange()
    assert pair.client_sends_to() == 1
    assert pair.held() == [1] * 8  # the client retired every old one
    assert pair.server.host_cid[0] >> 5 == 1
    assert pair.rotate(1) == 0  # nothing stale: nothing sent
    pair.client.send_ping(1)
    pair.exchange()
    assert pair.rotate(2) == 8
    pair.exchange()
    assert pair.client_sends_to() == 2 and pair.held() == [2] * 8


def test_a_peer_that_never_retires_leaves_the_edge_a_bounded_set(pair: Pair) -> None:
    """No datagram reaches the client: rotation after rotation, the edge forgets the CIDs
    it asked to have retired beyond MAX_HELD_CIDS, except the one the client sends to."""
    for to in range(1, 7):
        assert pair.rotate(to) == 8
        assert len(pair.held()) <= MAX_HELD_CIDS
    assert pair.server.host_cid in [c.cid for c in pair.server._host_cids]


class FakeQuic:
    """A connection whose CIDs all carry one codepoint."""

    def __init__(self, visits: list[float]) -> None:
        self.cid = bytes([0 << 5]) + bytes(7)
        self.visits = visits

    def reissue_cids(self, stale: Callable[[bytes], bool]) -> int:
        if not stale(self.cid):
            return 0
        self.visits.append(time.monotonic())
        # What the CID factory would issue now: the one codepoint the sweep asks for.
        self.cid = next(bytes([c << 5]) + bytes(7) for c in range(7) if not stale(bytes([c << 5])))
        return CIDS_EACH

    def reissue_path_cids(self, stale: Callable[[bytes], bool]) -> int:
        return 0  # a connection of one path


class FakeDriver:
    def __init__(self, visits: list[float]) -> None:
        self.quic = FakeQuic(visits)
        self.closed = asyncio.Event()
        self.transmits = 0

    def schedule_transmit(self) -> None:
        self.transmits += 1


class Host:
    """A host's status (its codepoint moves when a test says) and its connections."""

    def __init__(self, count: int) -> None:
        self.visits: list[float] = []
        self.drivers = [FakeDriver(self.visits) for _ in range(count)]
        self.state = CidState(0, None)
        self.refresh = CidRefresh(self.status, lambda: self.drivers)

    def status(self) -> FleetStatus:
        return FleetStatus(1, True, True, 1, 1, cids=self.state)

    def rotate(self, to: int, grace_left_s: float) -> None:
        self.state = CidState(to, time.time() + grace_left_s)

    async def swept(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while self.refresh.pending or not self.refresh.rotations:
                await asyncio.sleep(0.01)


@pytest.fixture
async def running() -> AsyncIterator[Callable[[int], Host]]:
    tasks: list[asyncio.Task[None]] = []

    def start(count: int) -> Host:
        host = Host(count)
        tasks.append(asyncio.create_task(host.refresh.run()))
        return host

    yield start
    for task in tasks:
        task.cancel()


async def _started(host: Host) -> None:
    """The sweep has seen the first codepoint (nothing to do: every CID carries it)."""
    await asyncio.sleep(TICK_S)
    assert host.refresh.connections == 0 and not host.visits


async def test_a_sweep_is_spread_over_half_the_grace_left(running: Callable[[int], Host]) -> None:
    host = running(500)
    await _started(host)
    host.rotate(1, grace_left_s=2.0)  # 1 s to sweep: 20 ticks of 25 connections
    await host.swept(5)
    refresh = host.refresh
    assert (refresh.connections, refresh.cids, refresh.late) == (500, 500 * CIDS_EACH, 0)
    assert 25 <= refresh.largest_batch <= MAX_PER_TICK  # the last ticks catch up on late ones
    assert all(codepoint(d.quic.cid) == 1 and d.transmits == 1 for d in host.drivers)
    span = host.visits[-1] - host.visits[0]
    assert 0.8 <= span <= 1.5, span
    assert "500 connections, 4000 CIDs (0 pending, 0 late)" in refresh.summary()


async def test_a_tick_never_takes_more_than_its_share(running: Callable[[int], Host]) -> None:
    """A grace too short for the host's connections: batches stay at MAX_PER_TICK, and the
    connections reached after the old CIDs' route ended are counted late."""
    count = 10 * MAX_PER_TICK
    host = running(count)
    await _started(host)
    host.rotate(1, grace_left_s=0.1)
    await host.swept(5)
    refresh = host.refresh
    assert refresh.connections == count and refresh.largest_batch == MAX_PER_TICK
    assert 0 < refresh.late < count
    span = host.visits[-1] - host.visits[0]
    assert span >= 8 * TICK_S, span  # ten batches, not one


async def test_a_rotation_during_a_sweep_restarts_it_for_the_newer_codepoint(
    running: Callable[[int], Host],
) -> None:
    host = running(200)
    await _started(host)
    host.drivers[0].closed.set()  # ended meanwhile: skipped
    host.rotate(1, grace_left_s=20.0)  # slow: a few a tick
    async with asyncio.timeout(5):
        while not host.refresh.connections:
            await asyncio.sleep(0.01)
    host.rotate(2, grace_left_s=0.4)
    async with asyncio.timeout(5):
        while host.refresh.pending or host.refresh.rotations < 2:
            await asyncio.sleep(0.01)
    assert codepoint(host.drivers[0].quic.cid) == 0
    assert all(codepoint(d.quic.cid) == 2 for d in host.drivers[1:])
    moved_twice = sum(1 for d in host.drivers if d.transmits == 2)
    assert host.refresh.connections == 199 + moved_twice and moved_twice < 199


async def test_two_path_sessions_outlive_two_rotations_past_their_grace(
    etcd_server: EtcdServer, etcd: Etcd, layout: Layout, tmp_path: Path
) -> None:
    """Three real hosts behind the front, the elected one rotating the QUIC-LB
    configuration every EVERY_S with SCHEDULED_GRACE_S of grace; SDK sessions with a second
    path from 127.0.0.2. After each grace every request succeeds, on the same connections
    with both paths and no reconnect: each host gave path 1 (and the path IDs issued
    ahead) fresh CIDs too, and the clients moved to them. Without that, path 1's old CIDs
    go by hash after the grace, mostly to another host, whose stateless reset ends the
    connection."""
    async with AsyncExitStack() as stack:
        edges, front, sessions, _ = await sessions_through_a_front(
            stack, etcd_server.endpoint, layout, tmp_path, paths=[LOCAL, "127.0.0.2"]
        )
        await until(lambda: all([p.state for p in s.paths] == ["active"] * 2 for s in sessions))
        connections = [len(edge.connections) for edge in edges]
        codepoints: list[int] = []
        async for codepoints in past_each_grace(etcd, layout, front):
            for _ in range(3):  # past the grace: both paths carry requests, ACKs, PINGs
                for session in sessions:
                    response = await asyncio.wait_for(session.request("api", b"after"), 5)
                    assert response.status == 200
                await asyncio.sleep(0.2)
            quics = [q for edge in edges for q in edge.quic_connections()]
            assert all(isinstance(q, MultipathConnection) for q in quics)
            sent_to = [q.path_cids(p).host_in_use for q in quics for p in (0, 1)
                       if isinstance(q, MultipathConnection)]  # fmt: skip
            assert len(sent_to) == 12  # both paths of each, on a fresh CID
            assert all(c is not None and codepoint(c) == codepoints[-1] for c in sent_to)
        assert [len(edge.connections) for edge in edges] == connections  # the same ones
        assert all(s.reconnect_stats.reconnects == 0 for s in sessions)
        assert all([p.state for p in s.paths] == ["active"] * 2 for s in sessions)
        assert all(p.bytes_received > 0 for s in sessions for p in s.paths)
        refreshes = [edge.cid_refresh for edge in edges]
        assert all(r is not None and r.late == 0 for r in refreshes)
        assert sum(r.connections for r in refreshes if r is not None) == 12
        cids = sum(r.cids for r in refreshes if r is not None)
        # Per connection and rotation: path 0's 8, path 1's 2, 2 for each of the path IDs
        # issued ahead (2 and 3: both sides allow 3).
        assert cids == 12 * (8 + 2 + 2 * 2), cids
        print(f"two-path connections moved to fresh CIDs 12, CIDs issued {cids}")
