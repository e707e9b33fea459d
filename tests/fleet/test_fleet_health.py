"""The front's health probe on the wire (no etcd): the probe an edge must answer, and
the parsing of the answer, which a peer controls."""

from __future__ import annotations

import asyncio

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
    ],
)
def test_bad_settings_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        HealthSettings(**bad)  # type: ignore[arg-type]


def test_the_probe_budget_stretches_the_round() -> None:
    settings = HealthSettings(interval_s=0.5, max_probes_per_s=100)
    assert settings.period(10) == 0.5
    assert settings.period(1000) == 10.0  # 1000 workers at 100 probes a second


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
        return address not in prober.down

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
        assert prober.workers == {} and prober.down == frozenset()
    finally:
        prober.close()
        transport.close()
