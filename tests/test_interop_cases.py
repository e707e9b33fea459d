"""Pass rules on synthetic traces, and which cases run between which endpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from interop.cases import (
    CASES,
    CASES_BY_NAME,
    H3,
    HQ,
    Feature,
    Role,
    check,
    select,
)
from interop.peers import NETSCHED, registry
from interop.peers.base import Peer
from interop.runner import pairings, plan
from interop.tap import Observed, Trace
from interop.wire import QUIC_V1, QUIC_V2, Packet, PacketType


def trace(*packets: tuple[bool, Packet]) -> Trace:
    t = Trace()
    t.packets = [Observed(from_client, packet) for from_client, packet in packets]
    return t


def initial(scid: bytes, *, version: int = QUIC_V1, token: bytes = b"") -> Packet:
    return Packet(PacketType.INITIAL, 1200, version, b"d" * 8, scid, token)


def handshake(version: int) -> Packet:
    return Packet(PacketType.HANDSHAKE, 100, version, b"d" * 8, b"s" * 8)


def retry(token: bytes) -> Packet:
    return Packet(PacketType.RETRY, 60, QUIC_V1, b"c" * 8, b"r" * 8, token)


CLEAN = trace((True, initial(b"c" * 8)), (False, initial(b"s" * 8)))


def test_handshake_rules() -> None:
    case = CASES_BY_NAME["handshake"]
    assert check(case, CLEAN) == []
    two = trace((False, initial(b"s1")), (False, initial(b"s2")))
    assert check(case, two) == ["expected exactly 1 handshake, got 2"]
    with_retry = trace((False, retry(b"t")), (False, initial(b"s")))
    assert check(case, with_retry) == ["did not expect a Retry to be sent"]
    v2 = trace((False, initial(b"s", version=QUIC_V2)))
    assert "expected exactly one version" in check(case, v2)[0]


def test_retry_rule_wants_the_token_echoed() -> None:
    case = CASES_BY_NAME["retry"]
    used = trace(
        (True, initial(b"c")),
        (False, retry(b"tok")),
        (True, initial(b"c", token=b"tok")),
        (False, initial(b"s")),
    )
    assert check(case, used) == []
    ignored = trace((True, initial(b"c")), (False, retry(b"tok")), (False, initial(b"s")))
    assert check(case, ignored) == ["didn't find any Initial packet using a Retry token"]
    assert check(case, CLEAN) == ["didn't find any Retry packets"]


def test_v2_rule() -> None:
    case = CASES_BY_NAME["v2"]
    good = trace(
        (True, initial(b"c", version=QUIC_V1)),
        (False, initial(b"s", version=QUIC_V2)),
        (True, handshake(QUIC_V2)),
        (False, handshake(QUIC_V2)),
    )
    assert check(case, good) == []
    stayed_v1 = trace((True, initial(b"c")), (False, initial(b"s")))
    assert "wrong version in server Initial" in check(case, stayed_v1)[0]
    mixed = trace(
        (True, initial(b"c")),
        (False, initial(b"s", version=QUIC_V2)),
        (True, handshake(QUIC_V1)),
        (False, handshake(QUIC_V2)),
    )
    assert "client Handshake" in check(case, mixed)[0]


def test_chacha20_rule_needs_a_readable_client_hello() -> None:
    reasons = check(CASES_BY_NAME["chacha20"], CLEAN)
    assert reasons == ["could not read the ClientHello from the client's Initial packets"]


def test_case_table() -> None:
    assert [c.name for c in CASES][:4] == ["handshake", "transfer", "multiplexing", "retry"]
    assert CASES_BY_NAME["transfer"].file_sizes == (2 << 20, 3 << 20, 5 << 20)
    assert all(c.pending for c in CASES if c.name.startswith("mp-"))
    assert CASES_BY_NAME["http3"].alpn == H3
    assert [c.name for c in select(["retry", "handshake"])] == ["handshake", "retry"]
    with pytest.raises(ValueError, match="unknown case"):
        select(["handshak"])


@pytest.fixture
def peers(tmp_path: Path) -> dict[str, Peer]:
    return registry(tmp_path)


def test_plan_falls_back_to_h3_for_an_h3_only_peer(peers: dict[str, Peer]) -> None:
    decided = plan(CASES_BY_NAME["handshake"], peers[NETSCHED], peers["ngtcp2"])
    assert decided.verdict is None and decided.alpn == H3
    assert decided.notes == ("run over h3: ngtcp2 speaks no hq-interop",)
    assert plan(CASES_BY_NAME["handshake"], peers["picoquic"], peers["aioquic"]).alpn == HQ


def test_plan_refuses_what_an_endpoint_cannot_do(peers: dict[str, Peer]) -> None:
    no_h3 = plan(CASES_BY_NAME["http3"], peers[NETSCHED], peers["picoquic"])
    assert no_h3.verdict == "unsupported" and "no common ALPN" in no_h3.reason
    no_alpn = plan(CASES_BY_NAME["handshake"], peers["picoquic"], peers["ngtcp2"])
    assert no_alpn.verdict == "unsupported"
    v2 = plan(CASES_BY_NAME["v2"], peers[NETSCHED], peers["ngtcp2"])
    assert v2.verdict == "unsupported" and "0x709a50c4" in v2.reason
    key_update = plan(CASES_BY_NAME["keyupdate"], peers[NETSCHED], peers["aioquic"])
    assert key_update.verdict == "unsupported" and Feature.KEY_UPDATE in key_update.reason
    pending = plan(CASES_BY_NAME["mp-transfer"], peers["picoquic"], peers["picoquic"])
    assert pending.verdict == "pending" and "multipath peer" in pending.reason


def test_pairings_put_netsched_on_the_right_side(peers: dict[str, Peer]) -> None:
    ours, aioquic = peers[NETSCHED], peers["aioquic"]
    pairs = {p.role: (p.client.name, p.server.name) for p in pairings(aioquic, ours, list(Role))}
    assert pairs == {
        Role.CLIENT: (NETSCHED, "aioquic"),
        Role.SERVER: ("aioquic", NETSCHED),
        Role.BASELINE: ("aioquic", "aioquic"),
    }
    assert [p.role for p in pairings(ours, ours, list(Role))] == [Role.BASELINE]


def test_plan_notes_the_impaired_link(peers: dict[str, Peer]) -> None:
    decided = plan(CASES_BY_NAME["transferloss"], peers[NETSCHED], peers["ngtcp2"])
    assert decided.alpn == H3
    assert decided.notes[0] == "run over h3: ngtcp2 speaks no hq-interop"
    assert decided.notes[1].startswith("15 ms each way, 2 % bursty loss")
    scenario = CASES_BY_NAME["blackhole"].scenario
    assert scenario is not None and scenario.blackout == (5.0, 2.0)
    assert scenario.profile.up.rate_mbps == 10.0
