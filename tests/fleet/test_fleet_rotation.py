"""A QUIC-LB config rotation at the front (a real etcd, loopback sockets, real QUIC): the
front routes the current and the previous codepoint during the grace, so connections
established before the rotation keep reaching their hosts; after the grace the old
codepoint's CIDs go by hash, like a dead host's."""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from aioquic.asyncio.client import connect
from aioquic.quic.configuration import QuicConfiguration
from fleet_support import EtcdServer
from test_fleet_failover import PlainClient
from test_fleet_loss import Host
from test_front import LOCAL, Fleet, RealFleet, fleet, short_packet, until

from netsched_client import Session, open_session
from netsched_edge.fleet.cid_config import (
    FleetCidConfig,
    read_cid_configs,
    rotate_cid_config,
    set_cid_schedule,
)
from netsched_edge.fleet.etcd import Etcd
from netsched_edge.fleet.front import FleetFront, FrontSettings
from netsched_edge.fleet.layout import Layout
from netsched_edge.server import EdgeServer
from netsched_edge.tls import CertificatePair, generate_self_signed

pytestmark = pytest.mark.timeout(30)

__all__ = ["fleet"]  # the fixture, imported

GRACE_S = 2


def _cids(config: FleetCidConfig, sid: int, count: int) -> list[bytes]:
    return [config.for_host(sid).for_worker(0).generate() for _ in range(count)]


def _plain_clients(
    stack: AsyncExitStack, front: FleetFront, fixture: Host
) -> Callable[[], Awaitable[PlainClient]]:
    """Opens aioquic h3 clients through the front, trusting the host's CA, closed with
    `stack`."""
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=["h3"], server_name="localhost"
    )
    configuration.load_verify_locations(str(fixture.pair.ca_certificate))

    async def plain() -> PlainClient:
        client = await stack.enter_async_context(
            connect(LOCAL, front.local_address[1], configuration=configuration,
                    create_protocol=PlainClient)
        )  # fmt: skip
        assert isinstance(client, PlainClient)
        return client

    return plain


async def test_both_codepoints_route_during_the_grace_then_the_old_one_goes_by_hash(
    fleet: Fleet,
) -> None:
    ids = [await fleet.host(f"edge-{i}") for i in range(3)]
    front = await fleet.front()
    old = await fleet.cids()
    assert front.status().codepoints == (old.config_rotation,)
    transport, _ = await fleet.client(front)

    def send(cids: list[bytes]) -> None:
        for cid in cids:
            transport.sendto(short_packet(cid))

    rotated = await rotate_cid_config(fleet.etcd, fleet.layout, GRACE_S)
    new = rotated.current
    assert rotated.previous == old and new.config_rotation == (old.config_rotation + 1) % 7
    assert new.key != old.key and new.seed == old.seed  # Initials hash alike across it
    # The grace is recorded: hosts move their connections off the old CIDs before its end.
    assert new.replaced_grace_s == GRACE_S and rotated.replaced_until == new.created + GRACE_S
    await until(lambda: front.status().codepoints == (new.config_rotation, old.config_rotation))

    # During the grace: the CIDs of both configurations reach the host they name.
    sent = Counter[int]()
    for sid in ids:
        send(_cids(old, sid, 10) + _cids(new, sid, 10))
        sent[sid] += 20
    await until(lambda: fleet.counts() == dict(sent))
    # A front started during the grace reads both too.
    late = await fleet.front()
    assert late.status().codepoints == front.status().codepoints
    late_transport, _ = await fleet.client(late)
    for cid in _cids(old, ids[0], 5):
        late_transport.sendto(short_packet(cid))
    sent[ids[0]] += 5
    await until(lambda: fleet.counts() == dict(sent))

    # The grace lease runs out: only the new codepoint routes by server ID.
    await until(lambda: front.status().codepoints == (new.config_rotation,), GRACE_S + 3)
    assert (await read_cid_configs(fleet.etcd, fleet.layout)).previous is None
    before = fleet.counts()
    send(_cids(old, ids[0], 60))
    await until(lambda: sum(fleet.counts().values()) == sum(before.values()) + 60)
    spread = {sid: fleet.counts()[sid] - before[sid] for sid in ids}
    assert sum(1 for n in spread.values() if n) > 1, spread  # by hash, not all to ids[0]
    before = fleet.counts()
    send(_cids(new, ids[1], 10))
    await until(lambda: fleet.counts()[ids[1]] == before[ids[1]] + 10)
    assert fleet.counts()[ids[0]] == before[ids[0]] and fleet.counts()[ids[2]] == before[ids[2]]
    assert front.status().stats.no_backend == 0


async def test_a_connection_established_before_a_rotation_keeps_its_host(
    fleet: Fleet, tmp_path: Path
) -> None:
    """Real edges issuing the old configuration's CIDs, real sessions: after the rotation
    their requests go on, on the same connection."""
    real = RealFleet(fleet, tmp_path)
    front = await real.start(2)
    sessions = [await real.session(front) for _ in range(4)]
    for session in sessions:
        assert (await session.request("api", b"before")).status == 200
    connections = real.connections()
    await rotate_cid_config(fleet.etcd, fleet.layout, 30)
    await until(lambda: len(front.status().codepoints) == 2)
    for round_ in range(3):
        for session in sessions:
            response = await asyncio.wait_for(session.request("api", b"after %d" % round_), 5)
            assert response.status == 200
    assert real.connections() == connections  # no new connection: the same ones served
    assert all(s.reconnect_stats.reconnects == 0 for s in sessions)
    assert front.status().stats.no_backend == 0


async def test_the_rotate_command(fleet: Fleet) -> None:
    old = await fleet.cids()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "netsched_edge.fleet", "--etcd", fleet.server.endpoint,
        "--prefix", fleet.layout.prefix, "rotate-cids", "--grace", "60",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode == 0, err
    configs = await read_cid_configs(fleet.etcd, fleet.layout)
    assert configs.previous == old and configs.current.config_rotation == 1
    assert out.decode().strip() == "QUIC-LB codepoint 1 in force; 0 routed for 60 s more"


async def test_a_host_issues_cids_under_the_new_codepoint_after_a_rotation(
    etcd_server: EtcdServer, etcd: Etcd, layout: Layout, tmp_path: Path
) -> None:
    """A real EdgeServer joined with FleetHost (as `serve` joins): connections opened
    after the rotation get CIDs of the new codepoint, those opened before carry on."""
    async with AsyncExitStack() as stack:
        fixture = Host(stack, tmp_path)
        host, _ = await fixture.start(etcd_server.endpoint, layout)
        assert host.cids is not None and host.cids.rotation is not None
        front = FleetFront(FrontSettings(etcd_server.endpoint, (LOCAL, 0), prefix=layout.prefix))
        await stack.enter_async_context(front)
        plain = _plain_clients(stack, front, fixture)

        before = await plain()
        old = front.accepted[0]
        assert before.codepoint() == old.config_rotation

        rotated = await rotate_cid_config(etcd, layout, GRACE_S)
        new = rotated.current.config_rotation
        await until(lambda: host.cids is not None and host.cids.rotation is not None
                    and host.cids.rotation.config_rotation == new)  # fmt: skip
        await until(lambda: front.status().codepoints == (new, old.config_rotation))
        after = await plain()
        assert after.codepoint() == new  # the CID the server chose at the handshake
        await asyncio.wait_for(before.ping(), 2)  # the old codepoint, during the grace
        await asyncio.wait_for(after.ping(), 2)
        await until(lambda: front.status().codepoints == (new,), GRACE_S + 3)
        await asyncio.wait_for(after.ping(), 2)  # the new codepoint, after it


EVERY_S = 2.5  # the scheduled rotation's interval in these tests
SCHEDULED_GRACE_S = 1


async def test_the_elected_host_rotates_the_cids_on_schedule(
    etcd_server: EtcdServer, etcd: Etcd, layout: Layout, tmp_path: Path
) -> None:
    """A real EdgeServer joined with FleetHost (it leads the key rotation): with a
    schedule in etcd it rotates the QUIC-LB configuration every EVERY_S, the front routes
    the replaced one for the grace, and clients of each codepoint go on answering."""
    async with AsyncExitStack() as stack:
        fixture = Host(stack, tmp_path)
        host, _ = await fixture.start(etcd_server.endpoint, layout)
        front = FleetFront(FrontSettings(etcd_server.endpoint, (LOCAL, 0), prefix=layout.prefix))
        await stack.enter_async_context(front)
        plain = _plain_clients(stack, front, fixture)

        first = await set_cid_schedule(etcd, layout, EVERY_S, SCHEDULED_GRACE_S)
        before = await plain()
        assert before.codepoint() == first.config_rotation
        codepoints = [first.config_rotation]
        made = [first.created]
        for _ in range(2):  # two rotations, nobody but the schedule asking
            await until(lambda: front.status().codepoints[0] != codepoints[-1], EVERY_S + 3)
            configs = await read_cid_configs(etcd, layout)
            assert front.status().codepoints == (
                configs.current.config_rotation, codepoints[-1],
            )  # fmt: skip
            assert configs.current.rotate_every_s == EVERY_S  # the schedule carries on
            codepoints.append(configs.current.config_rotation)
            made.append(configs.current.created)
            await asyncio.wait_for(before.ping(), 2)  # the previous codepoint, in the grace
            await until(lambda: host.cids is not None and host.cids.rotation is not None
                        and host.cids.rotation.config_rotation == codepoints[-1])  # fmt: skip
            before = await plain()
            assert before.codepoint() == codepoints[-1]
            await until(lambda: front.status().codepoints == (codepoints[-1],),
                        SCHEDULED_GRACE_S + 3)  # fmt: skip
            await asyncio.wait_for(before.ping(), 2)
        intervals = [later - earlier for earlier, later in itertools.pairwise(made)]
        print(f"scheduled QUIC-LB rotations {intervals} s apart (every {EVERY_S} s)")
        assert all(EVERY_S <= gap <= EVERY_S + 0.5 for gap in intervals), intervals
        assert codepoints == [first.config_rotation + i for i in range(3)]


async def test_a_schedule_shorter_than_its_grace_is_refused(etcd: Etcd, layout: Layout) -> None:
    with pytest.raises(ValueError, match="grace"):
        await set_cid_schedule(etcd, layout, 10.0, 60)
    assert (await read_cid_configs(etcd, layout)).current.rotate_every_s is None


async def sessions_through_a_front(
    stack: AsyncExitStack,
    endpoint: str,
    layout: Layout,
    tmp_path: Path,
    paths: list[str] | None = None,
) -> tuple[list[EdgeServer], FleetFront, list[Session], CertificatePair]:
    """Three real EdgeServers joined with FleetHost behind the front, and six SDK sessions
    through it (from `paths`, the SDK's default when None) that each had a request
    answered, spread over more than one host."""
    pair = generate_self_signed(tmp_path)
    edges = []
    for i in range(3):
        (tmp_path / f"edge-{i}").mkdir()
        fixture = Host(stack, tmp_path / f"edge-{i}", f"edge-{i}", pair)
        fixture.backend.gate.set()
        edges.append((await fixture.start(endpoint, layout))[1])
    front = FleetFront(FrontSettings(endpoint, (LOCAL, 0), prefix=layout.prefix))
    await stack.enter_async_context(front)
    await until(lambda: front.status().members == 3)
    sessions = []
    for _ in range(6):
        session = await open_session(
            LOCAL, front.local_address[1], paths=paths, ca_file=str(pair.ca_certificate)
        )
        stack.push_async_callback(session.close)
        assert (await session.request("api", b"before")).status == 200
        sessions.append(session)
    connections = [len(edge.connections) for edge in edges]
    assert sum(connections) == 6 and sum(1 for n in connections if n) > 1, connections
    return edges, front, sessions, pair


async def past_each_grace(
    etcd: Etcd, layout: Layout, front: FleetFront, rotations: int = 2
) -> AsyncIterator[list[int]]:
    """Schedule QUIC-LB rotations every EVERY_S with SCHEDULED_GRACE_S of grace; after each
    of `rotations`, once its grace has passed (the previous codepoint no longer routed),
    yield the codepoints so far (the current one last)."""
    first = await set_cid_schedule(etcd, layout, EVERY_S, SCHEDULED_GRACE_S)
    codepoints = [first.config_rotation]
    for _ in range(rotations):
        await until(lambda: front.status().codepoints[0] != codepoints[-1], EVERY_S + 3)
        codepoints.append(front.status().codepoints[0])
        await until(lambda: front.status().codepoints == (codepoints[-1],),
                    SCHEDULED_GRACE_S + 3)  # fmt: skip
        yield codepoints


async def test_connections_older_than_the_grace_move_to_fresh_cids(
    etcd_server: EtcdServer, etcd: Etcd, layout: Layout, tmp_path: Path
) -> None:
    """Three real EdgeServers joined with FleetHost behind the front, the elected one
    rotating the QUIC-LB configuration every EVERY_S with SCHEDULED_GRACE_S of grace: SDK
    sessions connected before two rotations go on after each grace has passed, on the same
    connections with no reconnect, because each host gave them fresh CIDs (Retire Prior To
    covering the old ones) and they moved to them. Without that their old CIDs go by hash
    after the grace, mostly to another host, which resets them."""
    async with AsyncExitStack() as stack:
        edges, front, sessions, _ = await sessions_through_a_front(
            stack, etcd_server.endpoint, layout, tmp_path
        )
        connections = [len(edge.connections) for edge in edges]
        codepoints: list[int] = []
        async for codepoints in past_each_grace(etcd, layout, front):
            for session in sessions:
                response = await asyncio.wait_for(session.request("api", b"after"), 5)
                assert response.status == 200
            sent_to = [quic.host_cid[0] >> 5 for edge in edges for quic in edge.quic_connections()]
            assert sent_to == [codepoints[-1]] * 6  # every client sends to a fresh CID
        assert [len(edge.connections) for edge in edges] == connections  # the same ones
        assert all(s.reconnect_stats.reconnects == 0 for s in sessions)
        assert front.status().stats.no_backend == 0
        refreshes = [edge.cid_refresh for edge in edges]
        assert all(r is not None and r.late == 0 for r in refreshes)
        moved = sum(r.connections for r in refreshes if r is not None)
        assert moved == 12  # each connection, at each rotation
        for edge, count in zip(edges, connections, strict=True):
            status, counted = edge.notes()  # what /readyz says under its answer
            assert status.endswith(f"QUIC-LB codepoint {codepoints[-1]}")
            rotations = 2 if count else 0
            # Per connection and rotation: path 0's 8 CIDs, and 2 for each of the path
            # IDs 1-3 issued ahead (multipath is negotiated), so 14; two rotations.
            assert counted.startswith(f"CIDs re-issued after {rotations} QUIC-LB rotations: "
                                      f"{2 * count} connections, {28 * count} CIDs")  # fmt: skip
        print(f"connections moved to fresh CIDs {moved}, CIDs issued "
              f"{sum(r.cids for r in refreshes if r is not None)}")  # fmt: skip
