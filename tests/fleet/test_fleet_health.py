"""The front's health probe on the wire (no etcd): the probe an edge must answer, and
the parsing of the answer, which a peer controls."""

from __future__ import annotations

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
