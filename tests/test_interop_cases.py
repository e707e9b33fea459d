"""Pass rules on synthetic traces, and which cases run between which endpoints."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from aioquic.buffer import encode_uint_var
from aioquic.quic.crypto import CryptoPair

from interop.cases import (
    CASES,
    CASES_BY_NAME,
    CI_CASES,
    H3,
    HQ,
    MULTIPATH_LOCALS,
    Feature,
    PathCut,
    Role,
    abandoned_and_went_on,
    check,
    data_on_two_paths,
    failed_over,
    multipath_negotiated,
    only_chacha20_offered,
    select,
)
from interop.peers import NETSCHED, registry
from interop.peers.base import Peer
from interop.programs.multipath import ABANDON_AT
from interop.runner import pairings, plan
from interop.tap import Observed, Trace
from interop.wire import QUIC_V1, QUIC_V2, Packet, PacketType, parse_datagram


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
    assert check(case, CLEAN).problems == ()
    two = trace((False, initial(b"s1")), (False, initial(b"s2")))
    assert check(case, two).problems == ("expected exactly 1 handshake, got 2",)
    with_retry = trace((False, retry(b"t")), (False, initial(b"s")))
    assert check(case, with_retry).problems == ("did not expect a Retry to be sent",)
    v2 = trace((False, initial(b"s", version=QUIC_V2)))
    assert "expected exactly one version" in check(case, v2).problems[0]


def test_retry_rule_wants_the_token_echoed() -> None:
    case = CASES_BY_NAME["retry"]
    used = trace(
        (True, initial(b"c")),
        (False, retry(b"tok")),
        (True, initial(b"c", token=b"tok")),
        (False, initial(b"s")),
    )
    assert check(case, used).problems == ()
    ignored = trace((True, initial(b"c")), (False, retry(b"tok")), (False, initial(b"s")))
    assert check(case, ignored).problems == ("didn't find any Initial packet using a Retry token",)
    assert check(case, CLEAN).problems == ("didn't find any Retry packets",)


def test_v2_rule() -> None:
    case = CASES_BY_NAME["v2"]
    good = trace(
        (True, initial(b"c", version=QUIC_V1)),
        (False, initial(b"s", version=QUIC_V2)),
        (True, handshake(QUIC_V2)),
        (False, handshake(QUIC_V2)),
    )
    assert check(case, good).problems == ()
    stayed_v1 = trace((True, initial(b"c")), (False, initial(b"s")))
    assert "wrong version in server Initial" in check(case, stayed_v1).problems[0]
    mixed = trace(
        (True, initial(b"c")),
        (False, initial(b"s", version=QUIC_V2)),
        (True, handshake(QUIC_V1)),
        (False, handshake(QUIC_V2)),
    )
    assert "client Handshake" in check(case, mixed).problems[0]


def test_chacha20_rule_needs_a_readable_client_hello() -> None:
    reasons = check(CASES_BY_NAME["chacha20"], CLEAN).problems
    assert reasons == ("could not read the ClientHello from the client's Initial packets",)


def offering(*suites: int) -> Trace:
    """The trace of one client Initial whose ClientHello offers `suites` (any code points,
    which aioquic's client cannot be told to offer), protected with the Initial keys."""
    listed = b"".join(suite.to_bytes(2, "big") for suite in suites)
    # legacy_version, random, no session ID, cipher_suites, null compression, no extensions
    body = b"\x03\x03" + bytes(32) + b"\x00" + len(listed).to_bytes(2, "big") + listed
    body += b"\x01\x00" + b"\x00\x00"
    hello = b"\x01" + len(body).to_bytes(3, "big") + body
    payload = b"\x06\x00" + encode_uint_var(len(hello)) + hello + bytes(1100)  # CRYPTO, PADDING
    cid = bytes(8)
    length = (0x4000 | (2 + len(payload) + 16)).to_bytes(2, "big")  # packet number, tag
    header = b"\xc1" + QUIC_V1.to_bytes(4, "big") + b"\x08" + cid + b"\x08" + cid + b"\x00"
    pair = CryptoPair()
    pair.setup_initial(cid=cid, is_client=True, version=QUIC_V1)
    datagram = pair.encrypt_packet(header + length + bytes(2), payload, 0)
    return trace(*((True, packet) for packet in parse_datagram(datagram)))


def test_chacha20_rule_ignores_the_renegotiation_scsv() -> None:
    assert only_chacha20_offered(offering(0x1303)) is None
    # rustls (quinn) puts the SCSV into every ClientHello: it is no cipher suite.
    assert only_chacha20_offered(offering(0x1303, 0x00FF)) is None
    assert only_chacha20_offered(offering(0x1A1A, 0x1303, 0x1301, 0x00FF)) == (
        "expected only ChaCha20 to be offered, got {0x1301, 0x1303}"
    )
    assert only_chacha20_offered(offering(0x00FF)) == "expected only ChaCha20 to be offered, got {}"


def test_case_table() -> None:
    assert [c.name for c in CASES][:4] == ["handshake", "transfer", "multiplexing", "retry"]
    assert CASES_BY_NAME["transfer"].file_sizes == (2 << 20, 3 << 20, 5 << 20)
    multipath = [c for c in CASES if c.name.startswith("mp-")]
    assert [c.name for c in multipath] == [
        "mp-handshake",
        "mp-transfer",
        "mp-failover",
        "mp-abandon",
    ]
    assert all(not c.pending and multipath_negotiated in c.rules for c in multipath)
    assert all(c.client_needs == c.server_needs == {Feature.MULTIPATH} for c in multipath)
    assert CASES_BY_NAME["mp-transfer"].client_locals == MULTIPATH_LOCALS
    assert {"mp-handshake", "mp-transfer", "mp-failover", "mp-abandon"} <= set(CI_CASES)
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
    moving = plan(CASES_BY_NAME["connectionmigration"], peers["aioquic"], peers["picoquic"])
    assert moving.verdict == "unsupported" and Feature.ACTIVE_MIGRATION in moving.reason
    waiting = replace(CASES_BY_NAME["handshake"], pending="needs a thing")
    pending = plan(waiting, peers["picoquic"], peers["picoquic"])
    assert (pending.verdict, pending.reason) == ("pending", "needs a thing")


def test_multipath_runs_only_where_both_sides_do_it(peers: dict[str, Peer]) -> None:
    case = CASES_BY_NAME["mp-transfer"]
    for client, server in (
        (NETSCHED, "picoquic"),
        ("picoquic", NETSCHED),
        ("picoquic", "picoquic"),
    ):
        assert plan(case, peers[client], peers[server]).alpn == HQ
    refused = plan(case, peers[NETSCHED], peers["aioquic"])
    assert refused.verdict == "unsupported" and "aioquic server" in refused.reason


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


# ---------------------------------------------------------------- multipath rules

MB = 1 << 20
A, B = ("127.0.0.1", 5000), ("127.0.0.2", 6000)


def traffic(*steps: tuple[tuple[str, int], int]) -> Trace:
    """A trace of server datagrams of `size` bytes to each client address, in order."""
    t = Trace()
    for client, size in steps:
        t.record(b"\x40" + bytes(size - 1), from_client=False, client=client)
    return t


def test_two_paths_rule_wants_a_real_share_on_each() -> None:
    assert data_on_two_paths(traffic((A, 3 * MB), (B, 2 * MB))) is None
    lopsided = data_on_two_paths(traffic((A, 5 * MB), (B, 100_000)))  # under 5 %
    assert lopsided is not None and "127.0.0.2:6000 100000" in lopsided
    assert data_on_two_paths(Trace()) == (
        "expected server data on two paths, each at least 5% of 0 bytes; got no paths"
    )


def test_failover_rule_reads_the_cut_against_the_bytes() -> None:
    cut = PathCut("127.0.0.1", after_bytes=MB)
    rule = failed_over(cut)
    t = traffic((A, MB // 2), (B, MB // 2))
    assert rule(t) == f"the path was never cut: the server sent {MB} bytes in all"
    t.mark(cut.label)
    t.record(bytes(4 * MB), from_client=False, client=B)
    assert rule(t) is None
    idle = traffic((B, MB))
    idle.mark(cut.label)
    idle.record(bytes(4 * MB), from_client=False, client=B)
    assert (reason := rule(idle)) is not None and "was not in use" in reason
    stalled = traffic((A, MB // 2), (B, MB // 2))
    stalled.mark(cut.label)
    stalled.record(bytes(MB // 2), from_client=False, client=B)
    assert rule(stalled) == f"the other paths carried only {MB // 2} server bytes after the cut"


def test_abandon_rule_wants_the_report_and_the_rest_on_the_other_path() -> None:
    went_on = traffic((A, MB // 2), (B, MB // 2), (A, 1000), (B, 3 * MB))
    assert abandoned_and_went_on(went_on) == "the client reported no abandoned path"
    went_on.client_reports = [{"event": "abandon", "local": "127.0.0.1", "at": ABANDON_AT}]
    assert abandoned_and_went_on(went_on) is None
    kept_on = traffic((A, MB // 2), (B, MB // 2), (B, 3 * MB), (A, 1000))
    kept_on.client_reports = went_on.client_reports
    reason = abandoned_and_went_on(kept_on)
    assert reason is not None and reason.startswith("the server sent only 0 bytes after")
    failed = traffic((A, MB))
    failed.client_reports = [{"event": "abandon", "local": "127.0.0.1", "ret": 0x401}]
    assert (reason := abandoned_and_went_on(failed)) and "could not abandon" in reason


def test_multipath_negotiation_needs_readable_transport_parameters() -> None:
    assert multipath_negotiated(CLEAN) == (
        "could not read the client's transport parameters from its Initial packets"
    )
