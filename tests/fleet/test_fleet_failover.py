"""A fleet host killed mid-load behind the front (issue #17): real `netsched-edge serve
--fleet-etcd` processes, a real etcd, the front in this process, real QUIC clients.

The front sees the dead host's port refuse (ICMP port unreachable) and routes its
CIDs by hash to the living host at once; that host answers them with a stateless
reset under the fleet's shared reset key, so the SDK learns of the death within a
probe or two (not at its idle timeout), reconnects through the front to the living
host and sends its idempotent requests again. A plain aioquic client, which does not
check stateless resets, finds out at its idle timeout. When the dead host's lease
runs out the front drops it from the member list.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from edge_binary import RunningEdge
from fleet_support import EtcdServer
from test_reconnect_edge import GatedBackend

from netsched_client import SLO, ReconnectPolicy, RequestInterrupted, Session, open_session
from netsched_client.runtime.session import LIVENESS_S
from netsched_edge.fleet.cid_config import FleetCidConfig, ensure_cid_config
from netsched_edge.fleet.etcd import Etcd
from netsched_edge.fleet.front import FleetFront, FrontSettings
from netsched_edge.fleet.health import HealthSettings
from netsched_edge.fleet.host import IDLE_HOLD_VARIABLE, TTL_VARIABLE
from netsched_edge.fleet.layout import Layout
from netsched_edge.tls import default_state_dir

pytestmark = pytest.mark.timeout(60)

LOCAL = "127.0.0.1"
TTL_S = 1  # the hosts' member lease
PLAIN_IDLE_S = 2.0  # the plain aioquic clients' idle timeout
# The front's health checks: the defaults (down after 1.5-2 s) leave a killed host's
# refusal to tell first; the quick ones find a stopped host within 0.4 s.
DEFAULT_PROBES = HealthSettings()
PROBES = HealthSettings(interval_s=0.1, down_after=3, up_after=2)
STOPPED_TTL_S = 10  # a lease that outlives the stop: only the probes can find it
POLICY = ReconnectPolicy(max_attempts=20, max_time_s=15.0, first_delay_s=0.1, max_delay_s=0.5)
DEADLINE = SLO(deadline_ms=12_000)
CONFIG = """[edge]
listen = "127.0.0.1:0"

[[services]]
name = "api"

[[services.backends]]
name = "{name}"
kind = "http"
address = "127.0.0.1:{backend}"
"""


def _ca() -> str:
    # Hosts started under one XDG_STATE_HOME (conftest) keep one generated CA.
    return str(default_state_dir() / "ca.pem")


async def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what}") from None


class Fleet:
    """Hosts "a" and "b" (`serve --fleet-etcd`, 1 s leases; each names its backend after
    itself), the front before them; all stopped with the stack."""

    def __init__(self, stack: AsyncExitStack, etcd: Etcd, server: EtcdServer, layout: Layout):
        self.stack, self.etcd, self.server, self.layout = stack, etcd, server, layout
        self.hosts: dict[str, RunningEdge] = {}

    async def start(
        self,
        tmp_path: Path,
        backend: int,
        ttl_s: int = TTL_S,
        health: HealthSettings = DEFAULT_PROBES,
    ) -> FleetFront:
        env = {TTL_VARIABLE: str(ttl_s), IDLE_HOLD_VARIABLE: "2"}

        async def host(name: str) -> RunningEdge:
            config = tmp_path / f"{name}.toml"
            config.write_text(CONFIG.format(name=name, backend=backend))
            fleet = ("--fleet-etcd", self.server.endpoint, "--fleet-name", name)
            return await RunningEdge.start(
                "--config", str(config), *fleet, "--fleet-prefix", self.layout.prefix,
                env=env, timeout=15,
            )  # fmt: skip

        for name, edge in zip("ab", await asyncio.gather(host("a"), host("b")), strict=True):
            self.hosts[name] = edge
            self.stack.push_async_callback(edge.stop)
        settings = FrontSettings(
            self.server.endpoint, (LOCAL, 0), prefix=self.layout.prefix, health=health
        )
        front = FleetFront(settings)
        await self.stack.enter_async_context(front)
        await eventually(lambda: front.status().members == 2, 5, "both hosts at the front")
        return front

    async def session(self, front: FleetFront) -> Session:
        session = await open_session(
            LOCAL, front.local_address[1], ca_file=_ca(), reconnect=POLICY, pmtud=None
        )
        self.stack.push_async_callback(session.close)
        return session

    async def cids(self) -> FleetCidConfig:
        return await ensure_cid_config(self.etcd, self.layout)


@pytest.fixture
async def fleet(etcd: Etcd, etcd_server: EtcdServer, layout: Layout) -> AsyncIterator[Fleet]:
    async with AsyncExitStack() as stack:
        yield Fleet(stack, etcd, etcd_server, layout)


class PlainClient(QuicConnectionProtocol):
    """aioquic's own client: no stateless reset check, it finds a dead host at its idle
    timeout."""

    def host(self, cids: FleetCidConfig) -> int:
        located = cids.locate(self.server_cid())
        assert located is not None
        return located[0]

    def codepoint(self) -> int:
        """The QUIC-LB config rotation codepoint of the CID the server gave it."""
        return self.server_cid()[0] >> 5

    def server_cid(self) -> bytes:
        # aioquic (pinned 1.7.2) has no public accessor for the CID it sends to.
        cid: bytes = self._quic._peer_cid.cid
        return cid


async def _plain_clients(front: FleetFront, stack: AsyncExitStack, count: int) -> list[PlainClient]:
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=["h3"], server_name="localhost", idle_timeout=PLAIN_IDLE_S
    )
    configuration.load_verify_locations(_ca())
    clients = []
    for _ in range(count):
        client = await stack.enter_async_context(
            connect(LOCAL, front.local_address[1], configuration=configuration,
                    create_protocol=PlainClient, wait_connected=True)
        )  # fmt: skip
        assert isinstance(client, PlainClient)
        clients.append(client)
    return clients


async def test_a_host_killed_mid_load_its_clients_move_to_the_living_host(
    fleet: Fleet, tmp_path: Path
) -> None:
    backend = GatedBackend()
    fleet.stack.push_async_callback(backend.stop)
    front = await fleet.start(tmp_path, await backend.start())
    cids = await fleet.cids()
    loop = asyncio.get_running_loop()

    started = loop.time()
    session = await fleet.session(front)
    handshake_s = loop.time() - started
    backend.gate.set()
    victim = (await session.request("api", path="/warm", slo=DEADLINE)).backend
    assert victim in ("a", "b")
    survivor = "b" if victim == "a" else "a"
    ids = {name: int(line.split("server ID ")[1].split(";")[0]) for name, line in [
        (n, await h.wait_for_output("fleet member, server ID")) for n, h in fleet.hosts.items()
    ]}  # fmt: skip
    # Plain clients until one is on each host (the front hashes their Initials).
    plain = await _plain_clients(front, fleet.stack, 2)
    while {c.host(cids) for c in plain} != set(ids.values()) and len(plain) < 16:
        plain += await _plain_clients(front, fleet.stack, 1)
    on_victim = [c for c in plain if c.host(cids) == ids[victim]]
    on_survivor = [c for c in plain if c.host(cids) == ids[survivor]]
    assert on_victim and on_survivor

    backend.gate.clear()
    gets = [
        asyncio.create_task(session.request("api", path=f"/get/{i}", slo=DEADLINE))
        for i in range(3)
    ]
    post = asyncio.create_task(session.request("api", b"x", path="/post", slo=DEADLINE))
    await eventually(lambda: len(backend.targets) == 5, 5, "every request at the backend")

    fleet.hosts[victim].proc.send_signal(signal.SIGKILL)
    await asyncio.wait_for(fleet.hosts[victim].proc.wait(), 5)
    killed_at = loop.time()
    backend.gate.set()  # what reaches the backend from now on is answered at once

    answers = await asyncio.wait_for(asyncio.gather(*gets), 10)
    recovered_s = loop.time() - killed_at
    assert sorted(r.body for r in answers) == [b"/get/0", b"/get/1", b"/get/2"]
    assert {r.backend for r in answers} == {survivor}
    with pytest.raises(RequestInterrupted) as interrupted:  # may have been processed
        await post
    assert interrupted.value.may_have_been_processed
    stats = session.reconnect_stats
    assert (stats.reconnects, stats.retried, stats.interrupted) == (1, 3, 1), stats
    assert stats.last_reason == "stateless reset"  # the survivor's, under the fleet's key
    # The refused probe, the probe the survivor resets, the handshake, the requests.
    print(f"recovered in {recovered_s:.3f} s (handshake {handshake_s:.3f} s)")
    assert recovered_s <= 2 * (LIVENESS_S + handshake_s) + LIVENESS_S
    assert front.status().down == 1 and front.status().stats.backend_refused >= 1

    # New connections go to the living host while the dead one still holds its lease.
    assert front.status().members == 2
    later = await fleet.session(front)
    assert (await later.request("api", path="/new", slo=DEADLINE)).backend == survivor

    # The plain clients: the dead host's at their idle timeout, the living host's go on.
    for client in on_survivor:
        await asyncio.wait_for(client.ping(), 2)
    await asyncio.wait_for(asyncio.gather(*(c.wait_closed() for c in on_victim)), 5)
    assert loop.time() - killed_at <= PLAIN_IDLE_S + 1.0
    for client in on_survivor:
        await asyncio.wait_for(client.ping(), 2)

    # Its lease runs out: the front forgets it (and its refused port with it).
    await eventually(lambda: front.status().members == 1, TTL_S + 3, "the dead host gone")
    assert front.status().down == 0
    assert [m.name for m in front.members] == [survivor]
    again = await fleet.session(front)
    assert (await again.request("api", path="/after", slo=DEADLINE)).backend == survivor
    assert (await session.request("api", path="/same", slo=DEADLINE)).backend == survivor


async def test_a_stopped_host_is_found_by_the_probes_and_its_clients_move(
    fleet: Fleet, tmp_path: Path
) -> None:
    """SIGSTOP: no ICMP, and the lease (10 s) holds. The front's probes go unanswered,
    it routes the host's CIDs to the living host, which resets them; SIGCONT: the host
    answers again and gets traffic back."""
    backend = GatedBackend()
    fleet.stack.push_async_callback(backend.stop)
    front = await fleet.start(tmp_path, await backend.start(), STOPPED_TTL_S, PROBES)
    loop = asyncio.get_running_loop()
    started = loop.time()
    session = await fleet.session(front)
    handshake_s = loop.time() - started
    backend.gate.set()
    victim = (await session.request("api", path="/warm", slo=DEADLINE)).backend
    assert victim is not None
    survivor = "b" if victim == "a" else "a"

    backend.gate.clear()
    gets = [
        asyncio.create_task(session.request("api", path=f"/get/{i}", slo=DEADLINE))
        for i in range(3)
    ]
    await eventually(lambda: len(backend.targets) == 4, 5, "every request at the backend")
    fleet.hosts[victim].proc.send_signal(signal.SIGSTOP)
    stopped_at = loop.time()
    fleet.stack.callback(fleet.hosts[victim].proc.send_signal, signal.SIGCONT)
    backend.gate.set()

    down = asyncio.create_task(eventually(lambda: front.status().silent == 1, 10, "down"))
    answers = await asyncio.wait_for(asyncio.gather(*gets), STOPPED_TTL_S / 2)
    recovered_s = loop.time() - stopped_at
    await down  # done before the answers: it is polled more often than they can come
    detected_s = front.health.changed_at - stopped_at
    assert sorted(r.body for r in answers) == [b"/get/0", b"/get/1", b"/get/2"]
    assert {r.backend for r in answers} == {survivor}
    stats = session.reconnect_stats
    assert (stats.reconnects, stats.retried) == (1, 3), stats
    assert stats.last_reason == "stateless reset"
    print(f"stopped host: down after {detected_s:.3f} s, requests done after "
          f"{recovered_s:.3f} s (handshake {handshake_s:.3f} s)")  # fmt: skip
    assert detected_s <= (PROBES.down_after + 1) * PROBES.interval_s + 0.2
    # After detection: the SDK's next liveness PING, the reset, a handshake, the requests.
    assert recovered_s - detected_s <= 2 * (LIVENESS_S + handshake_s) + LIVENESS_S
    assert front.status().members == 2  # its lease still holds: the probes found it

    fleet.hosts[victim].proc.send_signal(signal.SIGCONT)
    continued_at = loop.time()
    await eventually(lambda: front.status().down == 0, 5, "the host up again")
    assert loop.time() - continued_at <= (PROBES.up_after + 1) * PROBES.interval_s + 0.2
    served = set()
    for i in range(12):  # new connections hash over both hosts again
        later = await fleet.session(front)
        served.add((await later.request("api", path=f"/new/{i}", slo=DEADLINE)).backend)
        if served == {"a", "b"}:
            break
    assert served == {"a", "b"}
