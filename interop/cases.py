"""Test cases: the interop runner's names, files and pass rules (as far as the tap sees).

Each rule reads the tap's `Trace` and returns None (satisfied) or the reason it
failed, worded like the runner's log line. The downloaded files are checked by
hash for every case (`www.check_downloads`). Where the runner's rule needs
decrypted packets that the tap cannot read, the case says so in `weaker`, and
the results carry that note.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from netsched_lab.impairment import GilbertElliott, LinkSpec, PathProfile

from .keylog import (
    INITIAL_MAX_STREAMS_BIDI,
    _transport_parameters,
    key_phases,
    parse_keylog,
    server_cipher_suite,
    server_transport_parameters,
    varint_value,
)
from .programs.multipath import ABANDON_AT
from .tap import Address, Trace
from .wire import (
    CHACHA20_POLY1305_SHA256,
    QUIC_V1,
    QUIC_V2,
    PacketType,
    offered_cipher_suites,
    offered_transport_parameters,
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
class PathCut:
    """Blackhole one client IP for good once the server has sent `after_bytes` (mp-failover)."""

    client_ip: str
    after_bytes: int

    @property
    def label(self) -> str:
        """The name of the moment in the trace (`Trace.mark`)."""
        return f"blackhole {self.client_ip}"


@dataclass(frozen=True, slots=True)
class Scenario:
    """The runner's ns-3 link for a case, played by the path lab relay (netsched_lab).

    `blackout` = (on_s, off_s): the link works for on_s seconds, then drops
    everything for off_s seconds, and again, as the runner's blackhole scenario.
    `cut`: one path (client IP) goes dark mid-transfer and stays dark.
    """

    profile: PathProfile
    blackout: tuple[float, float] | None = None
    cut: PathCut | None = None
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
    client_locals: tuple[str, ...] = ()  # the client's local addresses (LOCALS), one path each
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
    parameters = _server_parameters(trace)
    if isinstance(parameters, str):
        return f"couldn't check stream limit: {parameters}"
    limit = varint_value(parameters.get(INITIAL_MAX_STREAMS_BIDI, b"\x00"))
    if limit is None or limit > 1000:
        return f"server set a stream limit > 1000 ({limit})"
    return None


def _server_parameters(trace: Trace) -> dict[int, bytes] | str:
    """The server's transport parameters (EncryptedExtensions, with the key log), or why not."""
    secrets = parse_keylog(trace.keylog)
    suite = _negotiated_suite(trace)
    if secrets.server_handshake is None or suite is None:
        return "no key log with handshake secrets"
    handshakes = trace.of(PacketType.HANDSHAKE, from_client=False)
    parameters = server_transport_parameters(handshakes, secrets.server_handshake, suite)
    return "server transport parameters not found" if parameters is None else parameters


# ---------------------------------------------------------------- multipath rules

INITIAL_MAX_PATH_ID = 0x3E  # draft-ietf-quic-multipath-21 §2.1
# "A real share": each path carries at least this part of what the server sent
# (256 KB of a 5 MB file), far above ACKs, PATH_CHALLENGE and other control
# traffic (a few kB). Not more: picoquic's own scheduler sometimes gives one
# path as little as 13 % (measured in its baseline), which is still real use.
MIN_PATH_SHARE = 0.05
# What the other path must carry after one went away (mp-failover, mp-abandon):
# most of the rest of the transfer, with room for what was in flight.
MIN_BYTES_AFTER = 1 * MB


def multipath_negotiated(trace: Trace) -> str | None:
    """Both sides sent initial_max_path_id (which is what negotiates multipath):
    the client in its ClientHello (public Initial keys), the server in its
    EncryptedExtensions (the key log's server handshake secret)."""
    client = offered_transport_parameters(trace.of(PacketType.INITIAL, from_client=True))
    if client is None:
        return "could not read the client's transport parameters from its Initial packets"
    if INITIAL_MAX_PATH_ID not in (_transport_parameters(client) or {}):
        return "the client did not offer multipath (no initial_max_path_id 0x3e in its ClientHello)"
    server = _server_parameters(trace)
    if isinstance(server, str):
        return f"couldn't check the server's initial_max_path_id: {server}"
    if INITIAL_MAX_PATH_ID not in server:
        return "the server did not accept multipath (no initial_max_path_id 0x3e)"
    return None


def data_on_two_paths(trace: Trace) -> str | None:
    """Two client addresses each carried a real share of the server's bytes."""
    total = trace.server_total
    shares = {a: p.server_bytes for a, p in trace.paths.items()}
    carrying = [a for a, sent in shares.items() if total and sent >= MIN_PATH_SHARE * total]
    if len(carrying) >= 2:
        return None
    return (
        f"expected server data on two paths, each at least {MIN_PATH_SHARE:.0%} of "
        f"{total} bytes; got {_by_path(shares)}"
    )


def failed_over(cut: PathCut) -> Rule:
    """The cut path was in use before the blackhole, the other path carried the rest."""

    def rule(trace: Trace) -> str | None:
        mark = next((m for m in trace.marks if m.label == cut.label), None)
        if mark is None:
            return f"the path was never cut: the server sent {trace.server_total} bytes in all"
        before = sum(mark.server_bytes.values())
        cut_before = sum(n for a, n in mark.server_bytes.items() if a[0] == cut.client_ip)
        if cut_before < MIN_PATH_SHARE * before:
            return (
                f"the cut path {cut.client_ip} was not in use: {cut_before} of the {before} "
                f"server bytes before the cut ({_by_path(mark.server_bytes)})"
            )
        after = sum(
            p.server_bytes - mark.server_bytes.get(a, 0)
            for a, p in trace.paths.items()
            if a[0] != cut.client_ip
        )
        if after < MIN_BYTES_AFTER:
            return f"the other paths carried only {after} server bytes after the cut"
        return None

    return rule


def abandoned_and_went_on(trace: Trace) -> str | None:
    """The client reported a PATH_ABANDON; after the path's last server datagram the
    server went on over the other path (client report + trace)."""
    report = next((r for r in trace.client_reports if r.get("event") == "abandon"), None)
    if report is None:
        return "the client reported no abandoned path"
    if report.get("ret", 0) != 0:
        return f"the client could not abandon the path: {report}"
    local = report.get("local")
    gone = [p for a, p in trace.paths.items() if a[0] == local]
    if not gone or sum(p.server_bytes for p in gone) < MIN_PATH_SHARE * ABANDON_AT:
        return f"the abandoned path ({local}) was not in use: {_by_path(_server_bytes(trace))}"
    after = trace.server_total - max(p.server_total_at_last for p in gone)
    if after < MIN_BYTES_AFTER:
        return (
            f"the server sent only {after} bytes after its last datagram on the abandoned "
            f"path {local} ({_by_path(_server_bytes(trace))})"
        )
    return None


def _server_bytes(trace: Trace) -> dict[Address, int]:
    return {a: p.server_bytes for a, p in trace.paths.items()}


def _by_path(server_bytes: Mapping[Address, int]) -> str:
    return ", ".join(f"{h}:{p} {n}" for (h, p), n in server_bytes.items()) or "no paths"


def _hex(values: set[int], width: int = 10) -> str:
    return "{" + ", ".join(f"{v:#0{width}x}" for v in sorted(values)) + "}"


# ---------------------------------------------------------------- the cases

# The client's paths in the mp-* cases: two loopback IPs, as issue #4's demo.
MULTIPATH_LOCALS = ("127.0.0.1", "127.0.0.2")
_MULTIPATH = frozenset({Feature.MULTIPATH})
_MP_FILE = 5 * MB
# mp-failover: the path that goes dark, once a fifth of the file is through.
_CUT = PathCut(MULTIPATH_LOCALS[0], after_bytes=_MP_FILE // 5)
_FAILOVER = Scenario(
    PathProfile(),
    cut=_CUT,
    description=f"no impairment; {_CUT.client_ip} blackholed for good after "
    f"{_CUT.after_bytes} server bytes",
)

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


def _multipath_case(
    name: str,
    abbreviation: str,
    description: str,
    *rules: Rule,
    size: int = _MP_FILE,
    locals_: tuple[str, ...] = MULTIPATH_LOCALS,
    scenario: Scenario | None = None,
) -> Case:
    """An mp-* case: both sides must do multipath, and every such case checks it was negotiated."""
    return Case(
        name,
        abbreviation,
        description,
        (size,),
        (one_handshake, version_v1, multipath_negotiated, *rules),
        client_needs=_MULTIPATH,
        server_needs=_MULTIPATH,
        scenario=scenario,
        client_locals=locals_,
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
    _multipath_case(
        "mp-handshake",
        "MH",
        "Multipath is negotiated: initial_max_path_id (0x3e) in the client's ClientHello "
        "(public Initial keys) and the server's EncryptedExtensions (key log).",
        size=1 * KB,
        locals_=MULTIPATH_LOCALS[:1],
    ),
    _multipath_case(
        "mp-transfer",
        "MT",
        "A 5 MB transfer over two paths (127.0.0.1, 127.0.0.2): the tap sees each carry at "
        f"least {MIN_PATH_SHARE:.0%} of the server's bytes.",
        data_on_two_paths,
    ),
    _multipath_case(
        "mp-failover",
        "MF",
        "One of two paths is blackholed (relay) after 1 MB; the transfer completes on the "
        "other: the tap sees the cut path in use before and 1 MB on the other after.",
        failed_over(_CUT),
        scenario=_FAILOVER,
    ),
    _multipath_case(
        "mp-abandon",
        "MA",
        "The client abandons its first path (PATH_ABANDON) after 1 MB and the transfer goes "
        "on: the client's report names the path; the tap sees 1 MB more on the other after "
        "the abandoned path's last server datagram.",
        abandoned_and_went_on,
    ),
)

CASES_BY_NAME = {case.name: case for case in CASES}
# mp-handshake and mp-transfer run only with picoquic among the CI peers (4 tests, ~5 s).
CI_CASES = ("handshake", "transfer", "retry", "mp-handshake", "mp-transfer")


def select(names: list[str] | None) -> tuple[Case, ...]:
    """The named cases in suite order (all when None); ValueError names an unknown one."""
    if not names:
        return CASES
    unknown = [n for n in names if n not in CASES_BY_NAME]
    if unknown:
        raise ValueError(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES_BY_NAME)}")
    return tuple(c for c in CASES if c.name in names)
