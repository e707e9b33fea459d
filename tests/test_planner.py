"""The burst planner: order, grouping, budget (sans-IO, scripted flows), and on real sockets.

The sans-IO part steps a virtual `now`; the socket part runs QUIC connections
on loopback through one ServerEndpoint (one ticker for all of them) and an
edge, asserting counts, never timings.
"""

from __future__ import annotations

import asyncio
import math
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.events import HandshakeCompleted, QuicEvent, StreamDataReceived
from hypothesis import given
from hypothesis import strategies as st

from netsched_client import connect
from netsched_client.runtime.driver import ConnectionDriver
from netsched_client.runtime.endpoint import ServerEndpoint, open_client_endpoint
from netsched_client.runtime.planner import (
    BURST_BUCKETS,
    GSO_MAX_BYTES,
    GSO_MAX_SEGMENTS,
    MAX_PER_FLOW,
    BurstPlanner,
    Datagram,
    bursts_of,
    group_by_destination,
)
from netsched_edge.config import BackendConfig, EdgeConfig, ServiceConfig
from netsched_edge.server import EdgeServer
from netsched_edge.tls import CertificatePair, generate_self_signed

A: NetworkAddress = ("127.0.0.1", 4001)
B: NetworkAddress = ("127.0.0.1", 4002)
PATIENCE_S = 10.0


@dataclass(eq=False)
class ScriptedFlow:
    """A connection that releases its queued datagrams, `limit` at a time."""

    name: str
    queued: list[Datagram] = field(default_factory=list)
    deadline: float = math.inf
    urgency: int = 3
    flushes: list[tuple[float, int]] = field(default_factory=list)  # (now, limit) per flush

    def priority(self, now: float) -> tuple[float, int]:
        return (self.deadline, self.urgency)

    def flush(self, now: float, limit: int) -> list[Datagram]:
        self.flushes.append((now, limit))
        out, self.queued = self.queued[:limit], self.queued[limit:]
        return out


def _flow(
    name: str,
    count: int,
    addr: NetworkAddress = A,
    *,
    size: int = 1200,
    deadline: float = math.inf,
    urgency: int = 3,
) -> ScriptedFlow:
    return ScriptedFlow(name, [(bytes(size), addr, 0)] * count, deadline, urgency)


def _served(planner: BurstPlanner[ScriptedFlow], now: float = 0.0) -> list[str]:
    return [flow.name for flow in planner.tick(now).flushed]


# -- order ------------------------------------------------------------------------------


def test_edf_serves_the_earliest_deadline_then_the_most_urgent() -> None:
    planner: BurstPlanner[ScriptedFlow] = BurstPlanner(order="edf")
    for flow in (
        _flow("bulk", 1, urgency=6),
        _flow("late", 1, deadline=5.0),
        _flow("soon", 1, deadline=2.0),
        _flow("urgent", 1, urgency=0),
        _flow("soon-bulk", 1, deadline=2.0, urgency=7),
    ):
        planner.wake(flow)
    assert _served(planner) == ["soon", "soon-bulk", "late", "urgent", "bulk"]


def test_fifo_serves_in_wake_order_and_a_second_wake_keeps_the_place() -> None:
    planner: BurstPlanner[ScriptedFlow] = BurstPlanner(order="fifo")
    first, second, third = _flow("first", 1), _flow("second", 1, deadline=1.0), _flow("third", 1)
    for flow in (first, second, third, first):
        planner.wake(flow)
    assert _served(planner) == ["first", "second", "third"]
    assert planner.waiting == 0


def test_equal_priorities_keep_wake_order_under_edf() -> None:
    planner: BurstPlanner[ScriptedFlow] = BurstPlanner()
    flows = [_flow(str(i), 1) for i in range(5)]
    for flow in flows:
        planner.wake(flow)
    assert _served(planner) == ["0", "1", "2", "3", "4"]


def test_a_flow_that_fills_its_limit_goes_again_after_the_others() -> None:
    planner: BurstPlanner[ScriptedFlow] = BurstPlanner(order="fifo")
    big, small = _flow("big", MAX_PER_FLOW + 10), _flow("small", 3, addr=B)
    planner.wake(big)
    planner.wake(small)
    plan = planner.tick(1.0)
    assert [f.name for f in plan.flushed] == ["big", "small"]
    assert plan.next_tick_at == 1.0  # at once: more may be due
    assert big.flushes == [(1.0, MAX_PER_FLOW)]
    planner.wake(small)  # woken again meanwhile: after `big`, which was re-queued first
    assert _served(planner, 2.0) == ["big", "small"]
    assert not big.queued and planner.tick(3.0).next_tick_at is None


def test_a_forgotten_flow_is_not_served() -> None:
    planner: BurstPlanner[ScriptedFlow] = BurstPlanner()
    gone, kept = _flow("gone", 1), _flow("kept", 1)
    planner.wake(gone)
    planner.wake(kept)
    planner.forget(gone)
    assert _served(planner) == ["kept"]


# -- grouping and bursts --------------------------------------------------------------------


def test_datagrams_are_grouped_by_path_and_destination_in_their_order() -> None:
    d = [
        (b"a1", A, 0),
        (b"b1", B, 0),
        (b"a2", A, 0),
        (b"a-path1", A, 1),
        (b"b2", B, 0),
        (b"a3", A, 0),
    ]
    grouped = group_by_destination(d)
    assert [data for data, _, _ in grouped] == [b"a1", b"a2", b"a3", b"b1", b"b2", b"a-path1"]


def test_one_tick_sends_every_flow_in_one_batch_grouped() -> None:
    planner: BurstPlanner[ScriptedFlow] = BurstPlanner()
    planner.wake(_flow("a", 10, A))
    planner.wake(_flow("b", 5, B, size=800))
    plan = planner.tick(0.0)
    [batch] = plan.batches
    assert len(batch) == 15
    assert [(b.destination, b.datagrams, b.size) for b in plan.bursts] == [
        (A, 10, 12000),
        (B, 5, 4000),
    ]
    stats = planner.stats
    assert (stats.datagrams, stats.bursts, stats.batches, stats.flushes) == (15, 2, 1, 2)
    assert stats.burst_histogram[BURST_BUCKETS.index(16)] == 1  # 10 datagrams: 9..16
    assert stats.burst_histogram[BURST_BUCKETS.index(8)] == 1  # 5: 5..8


def test_without_coalescing_each_flow_is_a_batch_of_its_own() -> None:
    planner: BurstPlanner[ScriptedFlow] = BurstPlanner(coalesce=False)
    planner.wake(_flow("a", 2, A))
    planner.wake(_flow("b", 3, B))
    assert [len(batch) for batch in planner.tick(0.0).batches] == [2, 3]


def test_burst_rules_follow_the_io_layer() -> None:
    def shape(sizes: list[int], addrs: list[NetworkAddress] | None = None) -> list[int]:
        batch = [(bytes(s), (addrs or [A] * len(sizes))[i], 0) for i, s in enumerate(sizes)]
        return [burst.datagrams for burst in bursts_of(batch)]

    assert shape([1200] * 3 + [500]) == [4]  # a shorter last one ends the run
    assert shape([1200, 500, 1200]) == [2, 1]
    assert shape([500, 1200]) == [1, 1]  # a bigger one starts a new run
    assert shape([1000] * (GSO_MAX_SEGMENTS + 1)) == [GSO_MAX_SEGMENTS, 1]
    fit = GSO_MAX_BYTES // 1400
    assert shape([1400] * (fit + 1)) == [fit, 1]
    assert shape([1200] * 3, [A, B, B]) == [1, 2]


@given(
    st.lists(
        st.tuples(st.sampled_from([0, 1, 100, 1199, 1200, 1400]), st.sampled_from([A, B])),
        max_size=300,
    )
)
def test_bursts_cover_the_batch_within_gso_limits(items: list[tuple[int, NetworkAddress]]) -> None:
    batch = [(bytes(size), addr, 0) for size, addr in items]
    bursts = bursts_of(batch)
    assert sum(b.datagrams for b in bursts) == len(batch)
    i = 0
    for burst in bursts:
        run = batch[i : i + burst.datagrams]
        assert 1 <= burst.datagrams <= GSO_MAX_SEGMENTS
        assert burst.size == sum(len(d) for d, _, _ in run)
        assert burst.datagrams == 1 or burst.size <= GSO_MAX_BYTES
        assert {addr for _, addr, _ in run} == {burst.destination}
        assert all(len(d) <= len(run[0][0]) for d, _, _ in run)
        assert all(len(d) == len(run[0][0]) for d, _, _ in run[:-1])
        i += burst.datagrams


# -- egress budget -----------------------------------------------------------------------


def test_the_egress_budget_goes_to_the_earliest_deadline_and_the_rest_waits() -> None:
    rate = 120_000.0  # bytes/s: 100 datagrams of 1200 B
    planner: BurstPlanner[ScriptedFlow] = BurstPlanner(egress_rate=rate, egress_burst=12_000)
    bulk = _flow("bulk", 50, A)
    urgent = _flow("urgent", 5, B, deadline=0.5)
    planner.wake(bulk)
    planner.wake(urgent)
    plan = planner.tick(0.0)
    assert [f.name for f in plan.flushed] == ["urgent", "bulk"]
    assert urgent.flushes == [(0.0, 10)]  # the whole bucket: 12 000 B
    assert bulk.flushes == [(0.0, 5)]  # what is left of it
    assert planner.is_waiting(bulk)  # it filled its share: more may be due
    assert plan.next_tick_at == pytest.approx(1 / rate)  # when the bucket is above 0 again
    assert planner.tick(0.0).flushed == ()
    # The bucket refills at `rate`: 5 ms buy 600 B, one datagram (overdrawn: a debt).
    plan = planner.tick(0.005)
    assert [f.name for f in plan.flushed] == ["bulk"] and bulk.flushes[-1][1] == 1
    assert planner.stats.budget_waits == 3  # each tick that ended overdrawn


def test_an_overshoot_is_paid_back_before_anyone_sends_again() -> None:
    planner: BurstPlanner[ScriptedFlow] = BurstPlanner(egress_rate=12_000.0, egress_burst=1200)
    big = _flow("big", 1, size=6000)  # one flush may exceed the budget: 4800 B of debt
    planner.wake(big)
    planner.wake(_flow("next", 1))
    plan = planner.tick(0.0)
    assert [f.name for f in plan.flushed] == ["big"]
    assert plan.next_tick_at == pytest.approx(0.4, abs=1e-3)
    assert _served(planner, 0.3) == []
    assert _served(planner, 0.41) == ["next"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"order": "lifo"}, "order must be one of edf, fifo, got 'lifo'"),
        ({"egress_rate": 0.0}, "egress_rate must be a positive number of bytes/s, got 0.0"),
        ({"egress_rate": math.nan}, "egress_rate must be a positive number of bytes/s, got nan"),
        ({"egress_burst": 100}, "egress_burst must be >= 1200 bytes, got 100"),
        ({"max_per_flow": 0}, "max_per_flow must be >= 1, got 0"),
    ],
)
def test_bad_options_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        BurstPlanner(**options)  # type: ignore[arg-type]


# -- on real sockets ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> CertificatePair:
    return generate_self_signed(Path(tmp_path_factory.mktemp("tls")))


async def _download(server: ServerEndpoint, size: int) -> int:
    """One client connection asks; the server answers `size` bytes; bytes received."""
    configuration = QuicConfiguration(is_client=True, alpn_protocols=["planner-test"])
    configuration.verify_mode = ssl.CERT_NONE
    endpoint = await open_client_endpoint(socket.AF_INET, "127.0.0.1")
    quic = QuicConnection(configuration=configuration)
    driver = ConnectionDriver(quic, endpoint.send_batch)
    endpoint.driver = driver
    received = 0
    done = asyncio.Event()

    def on_event(event: QuicEvent) -> None:
        nonlocal received
        if isinstance(event, HandshakeCompleted):
            quic.send_stream_data(0, b"get", end_stream=True)
            driver.schedule_transmit()
        elif isinstance(event, StreamDataReceived):
            received += len(event.data)
            if event.end_stream:
                done.set()

    driver.add_event_handler(on_event)
    quic.connect(server.local_address, now=driver.now())
    driver.transmit()
    try:
        async with asyncio.timeout(PATIENCE_S):
            await done.wait()
    finally:
        endpoint.close()
    return received


async def test_connections_of_an_endpoint_share_ticks_and_batches(
    certificate: CertificatePair,
) -> None:
    configuration = QuicConfiguration(is_client=False, alpn_protocols=["planner-test"])
    configuration.load_cert_chain(certificate.certificate, certificate.private_key)
    size = 512 * 1024
    drivers: list[ConnectionDriver] = []

    def on_connection(driver: ConnectionDriver) -> None:
        drivers.append(driver)

        def on_event(event: QuicEvent) -> None:
            if isinstance(event, StreamDataReceived) and event.end_stream:
                driver.quic.send_stream_data(event.stream_id, bytes(size), end_stream=True)
                driver.schedule_transmit()

        driver.add_event_handler(on_event)

    server = ServerEndpoint(configuration, on_connection)
    server.bind(socket.AF_INET, ("127.0.0.1", 0))
    try:
        got = await asyncio.gather(*(_download(server, size) for _ in range(3)))
        udp = server.udp_stats
        assert udp is not None
    finally:
        server.close()
    assert got == [size] * 3
    assert len({d.ticker for d in drivers}) == 1 and drivers[0].ticker is server.ticker
    planner = server.ticker.planner.stats
    assert planner.datagrams == sum(d.stats.datagrams_sent for d in drivers) == udp.datagrams_sent
    assert planner.bursts >= planner.batches
    # Pacer rounds of a tick leave together: far fewer syscalls than datagrams.
    assert udp.datagrams_sent >= 4 * udp.syscalls_send, udp


async def test_the_edge_exports_the_planner_metrics(tmp_path: Path) -> None:
    (tmp_path / "file.bin").write_bytes(bytes(100_000))
    service = ServiceConfig("files", (BackendConfig("disk", "static", root=tmp_path),))
    edge = EdgeServer(EdgeConfig(host="127.0.0.1", port=0, services=(service,)))
    before = edge.dispatcher.metrics.exposition().decode()
    assert "netsched_edge_send_datagrams_total" not in before  # not started: nothing to read
    await edge.start()
    try:
        async with connect("127.0.0.1", edge.port, ca_file=str(edge.ca_certificate)) as session:
            response = await session.request("files", meta={"path": "/file.bin"})
            assert len(response.body) == 100_000
        text = edge.dispatcher.metrics.exposition().decode()
    finally:
        await edge.close()
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("netsched_edge_send_")
    }
    # 100 kB left, in datagrams of at most 16383 B (the loopback PMTU cap)
    assert values["netsched_edge_send_bytes_total"] >= 100_000
    assert values["netsched_edge_send_datagrams_total"] >= 100_000 // 16383
    assert (
        values["netsched_edge_send_burst_datagrams_count"]
        == values["netsched_edge_send_bursts_total"]
    )
    assert (
        values["netsched_edge_send_burst_datagrams_sum"]
        == values["netsched_edge_send_datagrams_total"]
    )
    assert values["netsched_edge_send_datagrams_per_syscall"] > 1.0


async def test_edge_budget_comes_from_config() -> None:
    assert EdgeServer(EdgeConfig(egress_mbps=8.0))._planner.egress_rate == 1e6
    assert EdgeServer(EdgeConfig())._planner.egress_rate is None


def test_budget_counts_in_the_largest_datagrams_seen() -> None:
    """Once a path raised its datagram size (PMTU search), a tick's allowance is counted in
    those datagrams, not 1200-byte ones: no tick overdraws the bucket 13-fold."""
    planner: BurstPlanner[ScriptedFlow] = BurstPlanner(egress_rate=1e6, egress_burst=64_000)
    big = _flow("big", 500, size=16_000)
    planner.wake(big)
    planner.tick(0.0)  # the first sight of 16 kB datagrams
    before = planner.stats.bytes
    planner.wake(big)
    planner.tick(10.0)  # the bucket is full again
    assert planner.stats.bytes - before <= 64_000 + 16_000


def test_a_flow_that_raises_loses_only_its_own_datagrams(caplog: pytest.LogCaptureFixture) -> None:
    planner: BurstPlanner[ScriptedFlow] = BurstPlanner()
    good, bad = _flow("good", 3), _flow("bad", 3)

    def broken(now: float, limit: int) -> list[Datagram]:
        raise RuntimeError("a connection bug")

    bad.flush = broken  # type: ignore[method-assign]
    planner.wake(bad)
    planner.wake(good)
    plan = planner.tick(0.0)
    assert sum(len(batch) for batch in plan.batches) == 3  # the good flow's
    assert "a connection bug" in caplog.text
