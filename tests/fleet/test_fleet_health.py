"""The front's health probe on the wire (no etcd): the probe an edge must answer, and
the parsing of the answer, which a peer controls."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aioquic.buffer import Buffer
from aioquic.quic.packet import encode_quic_version_negotiation, pull_quic_header
from fleet_support import probe_answer
from hypothesis import given
from hypothesis import strategies as st

from netsched_edge.fleet.health import (
    PROBE_SIZE,
    PROBE_VERSION,
    HealthSettings,
    WorkerProber,
    probe_datagram,
    version_negotiation_cids,
)


def test_the_probe_is_a_long_header_of_a_reserved_version_padded_to_1200() -> None:
    probe = probe_datagram(b"d" * 8, b"s" * 8)
    assert len(probe) == PROBE_SIZE
    header = pull_quic_header(Buffer(data=probe), host_cid_length=8)
    assert (header.version, header.destination_cid, header.source_cid) == (
        PROBE_VERSION, b"d" * 8, b"s" * 8,
    )  # fmt: skip
    assert PROBE_VERSION & 0x0F0F0F0F == 0x0A0A0A0A  # RFC 9000 §15: forces negotiation


def test_the_answer_swaps_the_probes_cids() -> None:
    answer = probe_answer(probe_datagram(b"d" * 8, b"s" * 8))
    assert answer is not None
    assert version_negotiation_cids(answer) == b"s" * 8 + b"d" * 8


@given(st.binary(max_size=64))
def test_anything_else_is_no_answer_or_parses_within_bounds(data: bytes) -> None:
    cids = version_negotiation_cids(data)
    assert cids is None or len(cids) <= len(data)
    for cut in range(len(data)):
        version_negotiation_cids(data[:cut])  # truncated: never raises


def test_a_version_negotiation_with_other_cids_is_not_the_answer() -> None:
    other = encode_quic_version_negotiation(
        source_cid=b"x" * 8, destination_cid=b"s" * 8, supported_versions=[1]
    )
    assert version_negotiation_cids(other) != b"s" * 8 + b"d" * 8
    assert version_negotiation_cids(probe_datagram(b"d" * 8, b"s" * 8)) is None


@pytest.mark.parametrize(
    "bad",
    [
        {"interval_s": 0},
        {"interval_s": float("inf")},
        {"max_probes_per_s": float("nan")},
        {"down_after": 0},
        {"up_after": 0},
        {"panic_threshold": -0.1},
        {"panic_threshold": 1.5},
        {"panic_threshold": float("nan")},
    ],
)
def test_bad_settings_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        HealthSettings(**bad)  # type: ignore[arg-type]


def test_the_probe_budget_stretches_the_round() -> None:
    settings = HealthSettings(interval_s=0.5, max_probes_per_s=100)
    assert settings.period(10) == 0.5
    assert settings.period(1000) == 10.0  # 1000 workers at 100 probes a second


@pytest.mark.parametrize(
    ("up", "judged", "threshold", "panic"),
    [
        (1, 2, 0.5, False),  # exactly half up: no panic (Envoy: below the threshold only)
        (0, 2, 0.5, True),
        (0, 1, 0.5, True),  # a fleet of one: it is routed to anyway
        (1, 3, 0.5, True),
        (2, 3, 0.5, False),
        (3, 10, 0.3, False),  # 3/10 is the threshold as written, not a hair below it
        (0, 3, 0.0, False),  # 0: never
        (0, 0, 0.5, False),  # nobody probed yet
    ],
)
def test_panic_is_a_share_up_below_the_threshold(
    up: int, judged: int, threshold: float, panic: bool
) -> None:
    assert HealthSettings(panic_threshold=threshold).panics(up, judged) is panic


class Worker(asyncio.DatagramProtocol):
    """Answers the front's probes as an edge does, except the next `drop` of them."""

    def __init__(self) -> None:
        self.drop = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        answer = probe_answer(data)
        if self.drop:
            self.drop -= 1
        elif answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)


async def test_one_lost_probe_changes_nothing_three_mark_down_two_answers_up() -> None:
    loop = asyncio.get_running_loop()
    transport, worker = await loop.create_datagram_endpoint(Worker, local_addr=("127.0.0.1", 0))
    address = transport.get_extra_info("sockname")[:2]
    verdicts: list[bool] = []
    prober = WorkerProber(HealthSettings(down_after=3, up_after=2), lambda: verdicts.append(up()))
    prober.track([address])

    def up() -> bool:
        return address not in prober.silent

    async def rounds(count: int) -> None:
        for _ in range(count):
            prober.round()
            await asyncio.sleep(0.05)  # the answer is in the socket by the next round

    try:
        await rounds(2)
        worker.drop = 2  # two in a row lost: still up
        await rounds(4)
        assert verdicts == [] and prober.counters.missed == 2
        worker.drop = 3  # the third in a row: down, at the round that finds it unanswered
        await rounds(3)
        assert verdicts == [] and up()
        await rounds(1)  # the third miss: down; the probe this round sends is answered
        assert verdicts == [False] and not up()  # one answer: still down
        await rounds(1)  # the second answer in a row: up
        assert verdicts == [False, True] and up()
        prober.track([])  # the member left: nothing is kept, nothing probed
        assert prober.workers == {} and prober.silent == frozenset()
    finally:
        prober.close()
        transport.close()


Workers = Callable[[int], Awaitable[list[tuple[tuple[str, int], Worker]]]]


@pytest.fixture
async def workers() -> AsyncIterator[Workers]:
    """Workers on loopback ports that answer probes (each closed after the test)."""
    transports: list[asyncio.DatagramTransport] = []

    async def start(count: int) -> list[tuple[tuple[str, int], Worker]]:
        started = []
        for _ in range(count):
            transport, worker = await asyncio.get_running_loop().create_datagram_endpoint(
                Worker, local_addr=("127.0.0.1", 0)
            )
            transports.append(transport)
            started.append((transport.get_extra_info("sockname")[:2], worker))
        return started

    try:
        yield start
    finally:
        for transport in transports:
            transport.close()


async def probe_rounds(prober: WorkerProber, count: int) -> None:
    for _ in range(count):
        prober.round()
        await asyncio.sleep(0.05)  # the answers are in the socket by the next round


QUICK_DOWN = HealthSettings(down_after=2, up_after=1)
MUTE = 10**6  # probes a worker leaves unanswered: all of them


async def test_too_few_up_is_panic_where_no_worker_is_routed_around(
    workers: Workers, caplog: pytest.LogCaptureFixture
) -> None:
    """3 workers: one silent is routed around; two silent (1 of 3 up) is panic, nobody
    is; a silent one that leaves (its lease ran out) ends it: 1 of 2 up."""
    caplog.set_level(logging.WARNING, "netsched.edge.fleet")
    (a, worker_a), (b, worker_b), (c, _) = await workers(3)
    prober = WorkerProber(QUICK_DOWN, lambda: None)
    prober.track([a, b, c])
    try:
        await probe_rounds(prober, 2)  # every one answered: judged up
        worker_a.drop = MUTE
        await probe_rounds(prober, 3)
        assert prober.silent == prober.down == {a} and not prober.panic
        worker_b.drop = MUTE
        await probe_rounds(prober, 3)
        assert prober.silent == {a, b} and prober.down == frozenset() and prober.panic
        prober.track([a, c])  # b left
        assert prober.silent == prober.down == {a} and not prober.panic
        assert prober.counters.panics == 1
        panic_logs = [r.getMessage() for r in caplog.records if "panic" in r.getMessage()]
        assert len(panic_logs) == 2
        assert "only 1 of 3 workers probed answer" in panic_logs[0]
        assert "1 of 2 workers probed answer: panic over" in panic_logs[1]
    finally:
        prober.close()


async def test_a_worker_joining_unheard_does_not_end_a_panic(workers: Workers) -> None:
    """The front hears nobody (1 of 1 silent: panic); a worker that joins then counts
    only once it has a verdict of its own, so it cannot end the panic for the rounds
    before it, too, is found silent."""
    (old, worker_old), (new, worker_new) = await workers(2)
    worker_old.drop = worker_new.drop = MUTE
    prober = WorkerProber(QUICK_DOWN, lambda: None)
    prober.track([old])
    try:
        await probe_rounds(prober, 3)
        assert prober.panic and prober.silent == {old}
        prober.track([old, new])
        for _ in range(QUICK_DOWN.down_after + 1):
            assert prober.panic and prober.down == frozenset()
            await probe_rounds(prober, 1)
        assert prober.silent == {old, new} and prober.counters.panics == 1
        worker_old.drop = worker_new.drop = 0  # the front hears them again
        await probe_rounds(prober, 2)
        assert not prober.panic and prober.silent == frozenset()
    finally:
        prober.close()
