"""Test cases: the interop runner's names, files and pass rules (as far as the tap sees).

Each rule reads the tap's `Trace` and returns None (satisfied) or the reason it
failed, worded like the runner's log line. The downloaded files are checked by
hash for every case (`www.check_downloads`). Where the runner's rule needs
decrypted packets that the tap cannot read, the case says so in `weaker`, and
the results carry that note.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from netsched_lab.impairment import GilbertElliott, LinkSpec, PathProfile

from .keylog import (
    INITIAL_MAX_STREAMS_BIDI,
    key_phases,
    parse_keylog,
    server_cipher_suite,
    server_transport_parameters,
    varint_value,
)
from .tap import Trace
from .wire import (
    CHACHA20_POLY1305_SHA256,
    QUIC_V1,
    QUIC_V2,
    PacketType,
    offered_cipher_suites,
)

KB = 1 << 10
MB = 1 << 20
HQ = "hq-interop"
H3 = "h3"


class Role(StrEnum):
    """The part NetSched plays in a test."""

    CLIENT = "client"  # our client against the peer's server
    SERVER = "server"  # the peer's client against our edge
    BASELINE = "baseline"  # the peer against itself: attributes a failure to the right side


class Side(StrEnum):
    CLIENT = "client"
    SERVER = "server"


class Feature(StrEnum):
    """What an endpoint can be told to do; a case runs only where both sides can."""

    RETRY = "retry"  # server: validate addresses with a Retry
    CHACHA20 = "chacha20"  # client: offer only TLS_CHACHA20_POLY1305_SHA256
    KEY_UPDATE = "keyupdate"  # client: update keys early in the connection
    V2 = "v2"  # client: offer QUIC v2 by compatible version negotiation; server: accept it
    MULTIPATH = "multipath"


Rule = Callable[[Trace], str | None]


@dataclass(frozen=True, slots=True)
class Scenario:
    """The runner's ns-3 link for a case, played by the path lab relay (netsched_lab).

    `blackout` = (on_s, off_s): the link works for on_s seconds, then drops
    everything for off_s seconds, and again, as the runner's blackhole scenario.
    """

    profile: PathProfile
    blackout: tuple[float, float] | None = None
    description: str = ""


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    abbreviation: str
    description: str
    file_sizes: tuple[int, ...]
    rules: tuple[Rule, ...]
    client_needs: frozenset[Feature] = frozenset()
    server_needs: frozenset[Feature] = frozenset()
    alpn: str = HQ  # the runner's protocol; h3 stands in for peers that speak only HTTP/3
    timeout_s: float = 60.0
    weaker: str = ""  # what of the runner's rule the tap cannot check
    pending: str = ""  # non-empty: the case cannot run yet, and why
    scenario: Scenario | None = None  # None: client and server meet through the tap only
    # TESTCASE as the runner names it to each endpoint (multiplexing is "transfer" to both).
    endpoint_names: dict[Side, str] = field(default_factory=dict)

    def endpoint_name(self, side: Side) -> str:
        return self.endpoint_names.get(side, self.name)

    def needs(self, side: Side) -> frozenset[Feature]:
        return self.client_needs if side is Side.CLIENT else self.server_needs


def check(case: Case, trace: Trace) -> list[str]:
    """Every rule of `case` that the trace breaks, as reasons (empty: all hold)."""
    return [reason for rule in case.rules if (reason := rule(trace)) is not None]


# ---------------------------------------------------------------- rules


def one_handshake(trace: Trace) -> str | None:
    count = trace.handshakes()
    return None if count == 1 else f"expected exactly 1 handshake, got {count}"


def handshakes(expected: int) -> Rule:
    def rule(trace: Trace) -> str | None:
        count = trace.handshakes()
        return None if count == expected else f"expected {expected} handshakes, got {count}"

    return rule


def version_v1(trace: Trace) -> str | None:
    versions = trace.versions(PacketType.INITIAL, from_client=False)
    if versions == {QUIC_V1}:
        return None
    return f"expected exactly one version (0x1) in server Initials, got {_hex(versions)}"


def no_retry(trace: Trace) -> str | None:
    if trace.of(PacketType.RETRY, from_client=False):
        return "did not expect a Retry to be sent"
    return None


def retry_token_used(trace: Trace) -> str | None:
    retries = trace.of(PacketType.RETRY, from_client=False)
    if not retries:
        return "didn't find any Retry packets"
    tokens = {p.token for p in retries}
    if b"" in tokens:
        return "Retry packet doesn't have a retry_token"
    if not any(p.token in tokens for p in trace.of(PacketType.INITIAL, from_client=True)):
        return "didn't find any Initial packet using a Retry token"
    return None


def only_chacha20_offered(trace: Trace) -> str | None:
    suites = offered_cipher_suites(trace.of(PacketType.INITIAL, from_client=True))
    if suites is None:
        return "could not read the ClientHello from the client's Initial packets"
    offered = {s for s in suites if s & 0x0F0F != 0x0A0A}  # GREASE values (RFC 8701) aside
    if offered != {CHACHA20_POLY1305_SHA256}:
        return f"expected only ChaCha20 to be offered, got {_hex(offered, width=6)}"
    return None


def v2_negotiated(trace: Trace) -> str | None:
    """The runner's v2 rule: client starts in v1, server Initials and all Handshakes in v2."""
    client_initial = trace.versions(PacketType.INITIAL, from_client=True)
    if QUIC_V1 not in client_initial:
        return f"wrong version in client Initial: expected 0x1, got {_hex(client_initial)}"
    server_initial = trace.versions(PacketType.INITIAL, from_client=False)
    if QUIC_V2 not in server_initial:
        return f"wrong version in server Initial: expected {QUIC_V2:#x}, got {_hex(server_initial)}"
    for from_client, who in ((True, "client"), (False, "server")):
        versions = trace.versions(PacketType.HANDSHAKE, from_client=from_client)
        if versions != {QUIC_V2}:
            return f"expected only {QUIC_V2:#x} in {who} Handshake packets, got {_hex(versions)}"
    return None


def _negotiated_suite(trace: Trace) -> int | None:
    client_dcids = [p.dcid for p in trace.of(PacketType.INITIAL, from_client=True)]
    return server_cipher_suite(trace.of(PacketType.INITIAL, from_client=False), client_dcids)


def key_updated(trace: Trace) -> str | None:
    """The runner's keyupdate rule: both sides sent 1-RTT packets in key phase 1."""
    secrets = parse_keylog(trace.keylog)
    client_initial = trace.first(PacketType.INITIAL, from_client=True)
    server_initial = trace.first(PacketType.INITIAL, from_client=False)
    if secrets.client_traffic is None or secrets.server_traffic is None:
        return "can't check key phases: no key log with 1-RTT traffic secrets"
    suite = _negotiated_suite(trace)
    if suite is None or client_initial is None or server_initial is None:
        return "could not read the ServerHello from the server's Initial packets"
    version = server_initial.version
    # Client packets carry the server's CID, and the other way round.
    client = key_phases(
        trace.short_headers[True], len(server_initial.scid), secrets.client_traffic, suite, version
    )
    server = key_phases(
        trace.short_headers[False], len(client_initial.scid), secrets.server_traffic, suite, version
    )
    if client[1] and server[1]:
        return None
    return (
        "expected packets with key phase 1 from both client and server; client sent "
        f"{client[0]}/{client[1]}, server {server[0]}/{server[1]} (phase 0/1)"
    )


def stream_limit_at_most_1000(trace: Trace) -> str | None:
    """The runner's multiplexing rule: the server's initial_max_streams_bidi is <= 1000."""
    secrets = parse_keylog(trace.keylog)
    suite = _negotiated_suite(trace)
    if secrets.server_handshake is None or suite is None:
        return "couldn't check stream limit: no key log with handshake secrets"
    handshakes = trace.of(PacketType.HANDSHAKE, from_client=False)
    parameters = server_transport_parameters(handshakes, secrets.server_handshake, suite)
    if parameters is None:
        return "couldn't check stream limit: server transport parameters not found"
    limit = varint_value(parameters.get(INITIAL_MAX_STREAMS_BIDI, b"\x00"))
    if limit is None or limit > 1000:
        return f"server set a stream limit > 1000 ({limit})"
    return None


def _hex(values: set[int], width: int = 10) -> str:
    return "{" + ", ".join(f"{v:#0{width}x}" for v in sorted(values)) + "}"


# ---------------------------------------------------------------- the cases

# NetSched's multipath has landed (issue #3); the multipath peer has not.
_MP_PENDING = "needs the picoquic multipath peer (C API via ctypes, DESIGN.md §2)"

_TRANSFER_SIZES = (2 * MB, 3 * MB, 5 * MB)


def _link(**spec: object) -> PathProfile:
    link = LinkSpec(**spec)  # type: ignore[arg-type]
    return PathProfile(up=link, down=link)


# The runner's drop-rate scenario: 15 ms each way, 2 % loss in bursts of up to
# 3 packets (mean 1.5 here); its 10 Mbit/s bottleneck is left out so a case
# stays a few seconds long on loopback.
_TRANSFER_LOSS = Scenario(
    _link(delay_ms=15.0, bursty=GilbertElliott.from_loss_and_burst(0.02, 1.5)),
    description="15 ms each way, 2 % bursty loss each way (no 10 Mbit/s bottleneck)",
)
# The runner's drop-rate scenario for the handshake: 30 % loss each way, bursts
# of up to 3 (mean 1.5 here), 15 ms each way.
_HANDSHAKE_LOSS = Scenario(
    _link(delay_ms=15.0, bursty=GilbertElliott.from_loss_and_burst(0.30, 1.5)),
    description="15 ms each way, 30 % bursty loss each way; 50 connections",
)
# The runner's blackhole scenario: 15 ms, 10 Mbit/s (so the 10 MB file takes
# about 8 s), the link on for 5 s then off for 2 s, repeatedly.
_BLACKHOLE = Scenario(
    _link(delay_ms=15.0, rate_mbps=10.0, queue_bytes=25 * 1500),
    blackout=(5.0, 2.0),
    description="15 ms, 10 Mbit/s, queue 25 packets; on 5 s / off 2 s",
)

CASES: tuple[Case, ...] = (
    Case(
        "handshake",
        "H",
        "Handshake completes successfully.",
        (1 * KB,),
        (version_v1, no_retry, one_handshake),
    ),
    Case(
        "transfer",
        "DC",
        "Stream data is being sent and received correctly (2+3+5 MB, flow control).",
        _TRANSFER_SIZES,
        (one_handshake, version_v1),
    ),
    Case(
        "multiplexing",
        "M",
        "Thousands of files are transferred over a single connection.",
        (32,) * 1999,
        (one_handshake, version_v1, stream_limit_at_most_1000),
        endpoint_names={Side.CLIENT: "transfer", Side.SERVER: "transfer"},
        timeout_s=120.0,
    ),
    Case(
        "retry",
        "S",
        "Server sends a Retry, and a subsequent connection using the Retry token completes.",
        (10 * KB,),
        (one_handshake, version_v1, retry_token_used),
        server_needs=frozenset({Feature.RETRY}),
        weaker="the client's packet numbers after the Retry are not checked (protected)",
    ),
    Case(
        "http3",
        "3",
        "An H3 transaction succeeded.",
        (5 * KB, 10 * KB, 500 * KB),
        (one_handshake, version_v1),
        alpn=H3,
    ),
    Case(
        "chacha20",
        "C20",
        "Handshake completes using ChaCha20.",
        (3 * MB,),
        (one_handshake, only_chacha20_offered, version_v1),
        client_needs=frozenset({Feature.CHACHA20}),
    ),
    Case(
        "v2",
        "V2",
        "Server selects QUIC v2 in compatible version negotiation.",
        (1 * KB,),
        (v2_negotiated,),
        client_needs=frozenset({Feature.V2}),
        server_needs=frozenset({Feature.V2}),
    ),
    Case(
        "keyupdate",
        "U",
        "One of the two endpoints updates keys and the peer responds correctly.",
        (3 * MB,),
        (one_handshake, version_v1, key_updated),
        client_needs=frozenset({Feature.KEY_UPDATE}),
        endpoint_names={Side.SERVER: "transfer"},
    ),
    Case(
        "transferloss",
        "L2",
        "Transfer completes under moderate packet loss.",
        (2 * MB,),
        (one_handshake, version_v1),
        endpoint_names={Side.CLIENT: "transfer", Side.SERVER: "transfer"},
        scenario=_TRANSFER_LOSS,
    ),
    Case(
        "handshakeloss",
        "L1",
        "Handshake completes under extreme packet loss.",
        (1 * KB,) * 50,
        (handshakes(50), version_v1),
        endpoint_names={Side.CLIENT: "multiconnect", Side.SERVER: "multiconnect"},
        timeout_s=300.0,
        scenario=_HANDSHAKE_LOSS,
    ),
    Case(
        "blackhole",
        "B",
        "Transfer succeeds despite the network blacking out for a few seconds.",
        (10 * MB,),
        (one_handshake, version_v1),
        endpoint_names={Side.CLIENT: "transfer", Side.SERVER: "transfer"},
        scenario=_BLACKHOLE,
    ),
    Case(
        "mp-handshake",
        "MH",
        "Multipath (0x3e) is negotiated.",
        (1 * KB,),
        (one_handshake,),
        client_needs=frozenset({Feature.MULTIPATH}),
        server_needs=frozenset({Feature.MULTIPATH}),
        pending=_MP_PENDING,
    ),
    Case(
        "mp-transfer",
        "MT",
        "A transfer uses two paths.",
        (5 * MB,),
        (one_handshake,),
        client_needs=frozenset({Feature.MULTIPATH}),
        server_needs=frozenset({Feature.MULTIPATH}),
        pending=_MP_PENDING,
    ),
    Case(
        "mp-failover",
        "MF",
        "One path is blackholed mid-transfer; the transfer completes on the other.",
        (5 * MB,),
        (one_handshake,),
        client_needs=frozenset({Feature.MULTIPATH}),
        server_needs=frozenset({Feature.MULTIPATH}),
        pending=_MP_PENDING,
    ),
    Case(
        "mp-abandon",
        "MA",
        "A path is abandoned and the connection goes on.",
        (1 * MB,),
        (one_handshake,),
        client_needs=frozenset({Feature.MULTIPATH}),
        server_needs=frozenset({Feature.MULTIPATH}),
        pending=_MP_PENDING,
    ),
)

CASES_BY_NAME = {case.name: case for case in CASES}
CI_CASES = ("handshake", "transfer", "retry")


def select(names: list[str] | None) -> tuple[Case, ...]:
    """The named cases in suite order (all when None); ValueError names an unknown one."""
    if not names:
        return CASES
    unknown = [n for n in names if n not in CASES_BY_NAME]
    if unknown:
        raise ValueError(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES_BY_NAME)}")
    return tuple(c for c in CASES if c.name in names)
