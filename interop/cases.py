"""Test cases: the interop runner's names, files and pass rules (as far as the tap sees).

Each rule reads the tap's `Trace` and returns None (satisfied) or the reason it
failed, worded like the runner's log line. The downloaded files are checked by
hash for every case (`www.check_downloads`). Where the runner's rule needs
what the tap cannot read, the case says so in `weaker`; where it needs
decrypted packets and the key log does not open them, a rule falls back to a
weaker check and says so (`Weaker`). The results carry those notes.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TypeVar

from netsched_lab.impairment import GilbertElliott, LinkSpec, PathProfile

from .keylog import (
    CERTIFICATE,
    ENCRYPTED_EXTENSIONS,
    INITIAL_MAX_STREAMS_BIDI,
    Secrets,
    handshake_crypto_frames,
    handshake_message_types,
    key_phases,
    open_long_header,
    open_short_header,
    parse_keylog,
    parse_keylog_connections,
    server_cipher_suite,
    server_transport_parameters,
    transport_parameters,
    varint_value,
)
from .programs.multipath import ABANDON_AT
from .tap import LOOPBACK, LOOPBACK6, Address, Captured, Rebind, Trace
from .wire import (
    CHACHA20_POLY1305_SHA256,
    PATH_CHALLENGE,
    PATH_RESPONSE,
    QUIC_V1,
    QUIC_V2,
    Packet,
    PacketType,
    client_hello_sends,
    frame_types,
    offered_cipher_suites,
    offered_transport_parameters,
    path_frames,
    reassemble,
    stream_data_bytes,
)
from .www import NAME_LENGTH

P = TypeVar("P")  # a packet as some rule keeps it (wire.Packet, or bytes)
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
    # client: a second connection resumes the first's session with its ticket;
    # server: issues session tickets and resumes sessions from them
    RESUMPTION = "resumption"
    # client: the second connection sends its requests in 0-RTT; server: accepts 0-RTT
    ZERO_RTT = "zerortt"
    IPV6 = "ipv6"  # listens on / connects to HOST ::1
    # server: follows a client whose address changes (NAT rebinding, migration),
    # validating the new path
    MIGRATION = "migration"
    # client: moves the connection to a new local address mid-transfer, with a new DCID
    ACTIVE_MIGRATION = "active-migration"


@dataclass(frozen=True, slots=True)
class Weaker:
    """A rule's finding made without what the runner's check reads (the key log did not
    open the packets): `note` says how it checked instead; `problem` None: the rule held."""

    note: str
    problem: str | None = None


# A rule: None (satisfied), the reason it failed, or a finding of a weaker check.
Rule = Callable[[Trace], str | Weaker | None]


@dataclass(frozen=True, slots=True)
class Findings:
    """What a case's rules found: reasons they failed, and notes on weaker checks made."""

    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Measurement:
    value: float
    unit: str

    def __str__(self) -> str:
        return f"{self.value:.1f} {self.unit}"


# A measurement case's figure from the trace, or why there is none.
Measure = Callable[[Trace], Measurement | str]


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
class Rebinding:
    """The tap rebinds the client's NAT mapping at `first_s`, then every `every_s` seconds.

    `new_address`: a new loopback IP each time (rebind-addr), else only a new port.
    """

    first_s: float
    every_s: float
    new_address: bool = False


@dataclass(frozen=True, slots=True)
class Scenario:
    """The runner's ns-3 link for a case, played by the path lab relay (netsched_lab).

    `blackout` = (on_s, off_s): the link works for on_s seconds, then drops
    everything for off_s seconds, and again, as the runner's blackhole scenario.
    `cut`: one path (client IP) goes dark mid-transfer and stays dark.
    `tap_at_server`: the tap records beside the server (client → relay → tap →
    server), where the runner takes the trace its rule reads: what the server
    received after the link (corruption) and sent before it (amplification).
    `rebinding`: the tap, as the client's NAT, changes the client's address.
    `client_moves`: the client changes its address itself; the tap records each
    new client address after the first as a move (`Trace.rebinds`).
    """

    profile: PathProfile
    blackout: tuple[float, float] | None = None
    cut: PathCut | None = None
    tap_at_server: bool = False
    rebinding: Rebinding | None = None
    client_moves: bool = False
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
    host: str = LOOPBACK  # where the server listens and the tap (both sides of it) runs
    name_length: int = NAME_LENGTH  # of the random file names (zerortt: 250, as the runner)
    cert_chain: int = 0  # the runner's certificate chain of this many certificates; 0: CA + leaf
    measure: Measure | None = None  # a measurement (goodput): its figure goes into the result
    # TESTCASE as the runner names it to each endpoint (multiplexing is "transfer" to both).
    endpoint_names: dict[Side, str] = field(default_factory=dict)

    def endpoint_name(self, side: Side) -> str:
        return self.endpoint_names.get(side, self.name)

    def needs(self, side: Side) -> frozenset[Feature]:
        return self.client_needs if side is Side.CLIENT else self.server_needs


def check(case: Case, trace: Trace) -> Findings:
    """Every rule of `case` that the trace breaks, as reasons (none: all hold), and the
    notes of rules that could check only less than the runner's."""
    problems: list[str] = []
    notes: list[str] = []
    for rule in case.rules:
        found = rule(trace)
        if isinstance(found, Weaker):
            notes.append(found.note)
            found = found.problem
        if found is not None:
            problems.append(found)
    return Findings(tuple(problems), tuple(notes))


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


EMPTY_RENEGOTIATION_INFO_SCSV = 0x00FF


def only_chacha20_offered(trace: Trace) -> str | None:
    suites = offered_cipher_suites(trace.of(PacketType.INITIAL, from_client=True))
    if suites is None:
        return "could not read the ClientHello from the client's Initial packets"
    # GREASE values (RFC 8701) aside, and the renegotiation SCSV, which is no cipher suite
    # (RFC 5746 §3.3) and which rustls puts in every ClientHello, TLS 1.3 only or not.
    offered = {s for s in suites if s & 0x0F0F != 0x0A0A and s != EMPTY_RENEGOTIATION_INFO_SCSV}
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
    if INITIAL_MAX_PATH_ID not in (transport_parameters(client) or {}):
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


# ---------------------------------------------------------------- more of the runner's rules

# amplificationlimit: the server must have sent its long chain (runner: 7500 bytes of
# Handshake CRYPTO data), and no more than 3x (4x with the runner's tolerance) of what
# the client sent before the client's first Handshake packet.
MIN_CHAIN_CRYPTO = 7500
AMPLIFICATION = 3
AMPLIFICATION_TOLERATED = 4
# zerortt: the runner's limit on what the client sends in 1-RTT packets.
ZERO_RTT_FILES = 40
ZERO_RTT_NAME_LENGTH = 250
MAX_ONE_RTT_CLIENT_PAYLOAD = ZERO_RTT_NAME_LENGTH * ZERO_RTT_FILES // 2
# Packets with one DCID that no key log secret opened, after which it is given up on.
MAX_UNOPENED_TRIES = 8
GOODPUT_FILE = 10 * MB
AEAD_TAG = 16


def client_hello_retransmitted(trace: Trace) -> str | None:
    """The runner's longrtt rule: at least 2 ClientHellos (the client retransmitted it)."""
    count = client_hello_sends(trace.of(PacketType.INITIAL, from_client=True))
    return None if count >= 2 else f"expected at least 2 ClientHellos, got {count}"


def resumed_without_certificate(trace: Trace) -> str | None:
    """The runner's resumption rule: the server's first handshake has a Certificate
    message, its second none (key log: both connections' handshake secrets)."""
    messages = _server_handshake_messages(trace)
    if isinstance(messages, str):
        return f"can't check resumption: {messages}"
    if len(messages) != 2:
        return f"expected server Handshake packets of 2 connections, got {len(messages)}"
    first, second = messages
    if CERTIFICATE not in first:
        return "didn't find a Certificate message in the first handshake"
    if CERTIFICATE in second:
        return "server sent a Certificate message in the second handshake"
    return None


def _server_handshake_messages(trace: Trace) -> list[list[int]] | str:
    """The TLS message types of each connection's server Handshake packets (by server SCID)."""
    connections = [c for c in parse_keylog_connections(trace.keylog) if c.server_handshake]
    suite = _negotiated_suite(trace)
    if not connections or suite is None:
        return "no key log with handshake secrets"
    groups: dict[bytes, list[Packet]] = {}
    for packet in trace.of(PacketType.HANDSHAKE, from_client=False):
        groups.setdefault(packet.scid, []).append(packet)
    found = []
    for packets in groups.values():
        messages = next(
            (m for c in connections if (m := _messages(packets, c, suite))),
            None,
        )
        if messages is None:
            return f"no key log secret opens the handshake of server CID {packets[0].scid.hex()}"
        found.append(messages)
    return found


def _messages(packets: list[Packet], secrets: Secrets, suite: int) -> list[int]:
    assert secrets.server_handshake is not None
    chunks = handshake_crypto_frames(packets, secrets.server_handshake, suite)
    types = handshake_message_types(reassemble(chunks))
    return types if types[:1] == [ENCRYPTED_EXTENSIONS] else []


def sent_zero_rtt(trace: Trace) -> str | Weaker | None:
    """The runner's zerortt rule: the client sent 0-RTT data, and little in 1-RTT packets.

    The runner's limit, half of what the file names take, is on requests sent
    late. What counts here is STREAM data, read from the client's 0-RTT and
    1-RTT packets with the key log (each connection's secrets): ACKs and other
    control frames are no request (the runner counts the packets' whole
    payload). Without the keys, a 1-RTT packet counts with its size less header
    and tag, and the result notes the weaker check.
    """
    early = trace.of(PacketType.ZERO_RTT, from_client=True)
    if not early:
        return "client didn't send any 0-RTT data"
    keys = _ClientKeys.of(trace)
    notes = []
    early_stream = [stream_data_bytes(p) for p in keys.open_early(early) if p is not None]
    if not early_stream:
        notes.append("the client's 0-RTT packets were not decrypted (key log)")
    elif not sum(early_stream):
        return "client's 0-RTT packets carry no STREAM data"
    sent = _one_rtt_sent(trace, keys)
    if sent.estimated_packets:
        notes.append(
            f"{sent.estimated_packets} of {trace.one_rtt[True]} client 1-RTT packets not "
            "decrypted (key log): their size less first byte, DCID, a 1-byte packet number "
            "and the AEAD tag counted as STREAM data"
        )
    problem = None
    if sent.total > MAX_ONE_RTT_CLIENT_PAYLOAD:
        problem = (
            f"client sent too much data in 1-RTT packets ({sent.describe()}, "
            f"at most {MAX_ONE_RTT_CLIENT_PAYLOAD})"
        )
    return Weaker("; ".join(notes), problem) if notes else problem


@dataclass(frozen=True, slots=True)
class _ClientKeys:
    """What opens the client's 0-RTT and 1-RTT packets of every connection in the key log."""

    early: tuple[bytes, ...]  # CLIENT_EARLY_TRAFFIC_SECRET of each connection that has one
    traffic: tuple[bytes, ...]  # CLIENT_TRAFFIC_SECRET_0 of each connection
    suite: int | None  # None: no ServerHello read, nothing opens
    version: int
    dcid_length: int  # of the server's CIDs, which the client's 1-RTT packets carry

    @classmethod
    def of(cls, trace: Trace) -> _ClientKeys:
        connections = parse_keylog_connections(trace.keylog)
        server_initial = trace.first(PacketType.INITIAL, from_client=False)
        return cls(
            tuple(c.client_early for c in connections if c.client_early),
            tuple(c.client_traffic for c in connections if c.client_traffic),
            _negotiated_suite(trace),
            server_initial.version if server_initial else QUIC_V1,
            len(server_initial.scid) if server_initial else 0,
        )

    def open_early(self, packets: Sequence[Packet]) -> list[bytes | None]:
        suite = self.suite
        if suite is None:
            return [None] * len(packets)
        return _open_by_dcid(
            packets,
            lambda p: p.dcid,
            self.early,
            lambda p, secret, expected: open_long_header(p, secret, suite, expected),
        )

    def open_one_rtt(self, packets: Sequence[bytes]) -> list[bytes | None]:
        suite, length = self.suite, self.dcid_length
        if suite is None:
            return [None] * len(packets)
        return _open_by_dcid(
            packets,
            lambda data: data[1 : 1 + length],
            self.traffic,
            lambda data, secret, expected: open_short_header(
                data, length, secret, suite, self.version, expected
            ),
        )


@dataclass(frozen=True, slots=True)
class _OneRttSent:
    """What the client sent in 1-RTT packets: STREAM data of those the key log opened,
    and the estimated payload of those it did not."""

    stream: int
    estimated: int
    estimated_packets: int

    @property
    def total(self) -> int:
        return self.stream + self.estimated

    def describe(self) -> str:
        if not self.estimated_packets:
            return f"{self.stream} bytes of STREAM data"
        return (
            f"{self.total} bytes: {self.stream} of STREAM data decrypted, {self.estimated} "
            f"estimated from the size of {self.estimated_packets} packets not decrypted"
        )


def _one_rtt_sent(trace: Trace, keys: _ClientKeys) -> _OneRttSent:
    captured = [c.data for c in trace.client_one_rtt]
    payloads = keys.open_one_rtt(captured)
    stream = sum(stream_data_bytes(p) for p in payloads if p is not None)
    unopened = [data for data, p in zip(captured, payloads, strict=True) if p is None]
    # Packets past what the tap kept whole are known by count and size only.
    count = len(unopened) + trace.one_rtt[True] - len(captured)
    size = sum(map(len, unopened)) + trace.one_rtt_bytes[True] - sum(map(len, captured))
    # First byte, DCID, packet number (at least 1 byte) and the AEAD tag are no payload.
    overhead = 1 + keys.dcid_length + 1 + AEAD_TAG
    return _OneRttSent(stream, max(0, size - overhead * count), count)


def _open_by_dcid(
    packets: Sequence[P],
    dcid_of: Callable[[P], bytes],
    secrets: Sequence[bytes],
    opener: Callable[[P, bytes, int], bytes | None],
) -> list[bytes | None]:
    """Each packet's payload (None: no secret opens it), trying each connection's secret.

    Packets with one DCID belong to one connection: once a secret opened one of
    them, only it is tried for the rest. A DCID none opened is given up after
    MAX_UNOPENED_TRIES packets (each failed try costs many AEAD checks). A
    packet's expected number is how many packets with its DCID came before it.
    """
    chosen: dict[bytes, bytes] = {}  # DCID -> the secret that opened one of its packets
    seen: Counter[bytes] = Counter()
    payloads: list[bytes | None] = []
    for packet in packets:
        dcid = dcid_of(packet)
        expected = seen[dcid]
        seen[dcid] += 1
        if dcid in chosen:
            candidates: Sequence[bytes] = (chosen[dcid],)
        else:
            candidates = secrets if expected < MAX_UNOPENED_TRIES else ()
        opened = ((s, p) for s in candidates if (p := opener(packet, s, expected)) is not None)
        secret, payload = next(opened, (None, None))
        if secret is not None:
            chosen[dcid] = secret
        payloads.append(payload)
    return payloads


def only_ipv6(trace: Trace) -> str | None:
    """The runner's ipv6 rule: no IPv4 on the wire (the tap's client addresses)."""
    ipv4 = sorted(h for h, _ in trace.paths if ":" not in h)
    return f"the tap saw IPv4 client addresses: {', '.join(ipv4)}" if ipv4 else None


def used_certificate_chain(trace: Trace) -> str | None:
    """The server sent the long chain: >= 7500 bytes of Handshake CRYPTO data (key log)."""
    secrets = parse_keylog(trace.keylog)
    suite = _negotiated_suite(trace)
    if secrets.server_handshake is None or suite is None:
        return "can't check the certificate chain: no key log with handshake secrets"
    chunks = handshake_crypto_frames(
        trace.of(PacketType.HANDSHAKE, from_client=False), secrets.server_handshake, suite
    )
    sent = max((at + len(data) for at, data in chunks), default=0)
    if sent < MIN_CHAIN_CRYPTO:
        return f"server sent too little Handshake CRYPTO data ({sent} bytes): not the given chain?"
    return None


def within_amplification_limit(trace: Trace) -> str | None:
    """The runner's rule, datagram by datagram as the server sent and received them, up
    to the client's first Handshake packet: the server sent < 4x what the client sent."""
    allowed = tolerated = 0
    for datagram in trace.datagrams_in_order:
        if PacketType.VERSION_NEGOTIATION in datagram.kinds:
            return "didn't expect a Version Negotiation packet"
        if datagram.from_client:
            if PacketType.HANDSHAKE in datagram.kinds:
                return None
            if PacketType.INITIAL in datagram.kinds:
                allowed += AMPLIFICATION * datagram.size
                tolerated += AMPLIFICATION_TOLERATED * datagram.size
            continue
        if datagram.size >= tolerated:
            return (
                f"server violated the amplification limit: a {datagram.size} byte datagram "
                f"with {tolerated} bytes left of {AMPLIFICATION_TOLERATED}x what the client sent"
            )
        allowed -= datagram.size
        tolerated -= datagram.size
    return "the client never sent a Handshake packet (address not validated)"


def path_validated(trace: Trace) -> str | None:
    """The runner's rebinding rule: the server's first packet to each new client address
    carries a PATH_CHALLENGE, and the client answers each with a PATH_RESPONSE (key log)."""
    answered = [r for r in trace.rebinds if r.first_server is not None]
    if not answered:
        return (
            f"the server never sent to a rebound client address ({len(trace.rebinds)} "
            "rebindings): server saw only a single path"
        )
    keys = _one_rtt_keys(trace)
    if isinstance(keys, str):
        return f"can't check path validation: {keys}"
    for rebind in answered:
        problem = _validated(rebind, keys)
        if problem is not None:
            return problem
    return None


def _validated(rebind: Rebind, keys: _OneRttKeys) -> str | None:
    assert rebind.first_server is not None
    where = f"{rebind.local[0]}:{rebind.local[1]}" if rebind.local else "the new address"
    payload = keys.open(rebind.first_server, from_client=False)
    if payload is None:
        return f"could not decrypt the server's first packet to {where}"
    challenges = path_frames(payload, PATH_CHALLENGE)
    if not challenges:
        return (
            f"first server packet on new path {where} did not contain a PATH_CHALLENGE frame "
            f"(frames {_frame_list(frame_types(payload))})"
        )
    responses = {
        data
        for packet in rebind.client_after
        if (opened := keys.open(packet, from_client=True)) is not None
        for data in path_frames(opened, PATH_RESPONSE)
    }
    missing = [c.hex() for c in challenges if c not in responses]
    return f"PATH_CHALLENGE without a PATH_RESPONSE: {missing}" if missing else None


def _frame_list(types: list[int]) -> str:
    """Frame types in order, a run of one type as one entry ("0x2, 0x0 x1150")."""
    runs = [(kind, len(list(group))) for kind, group in itertools.groupby(types)]
    return ", ".join(f"{kind:#x}" + (f" x{n}" if n > 1 else "") for kind, n in runs) or "none"


@dataclass(frozen=True, slots=True)
class _OneRttKeys:
    """What it takes to open either side's 1-RTT packets: secrets, suite, version, CID lengths."""

    client_secret: bytes
    server_secret: bytes
    suite: int
    version: int
    client_cid_length: int  # of the client's CIDs, which the server's packets carry
    server_cid_length: int

    def open(self, packet: Captured, *, from_client: bool) -> bytes | None:
        return open_short_header(
            packet.data,
            self.server_cid_length if from_client else self.client_cid_length,
            self.client_secret if from_client else self.server_secret,
            self.suite,
            self.version,
            packet.seen_before,
        )


def _one_rtt_keys(trace: Trace) -> _OneRttKeys | str:
    secrets = parse_keylog(trace.keylog)
    client_initial = trace.first(PacketType.INITIAL, from_client=True)
    server_initial = trace.first(PacketType.INITIAL, from_client=False)
    suite = _negotiated_suite(trace)
    if secrets.client_traffic is None or secrets.server_traffic is None:
        return "no key log with 1-RTT traffic secrets"
    if suite is None or client_initial is None or server_initial is None:
        return "could not read the ServerHello from the server's Initial packets"
    return _OneRttKeys(
        secrets.client_traffic,
        secrets.server_traffic,
        suite,
        server_initial.version,
        len(client_initial.scid),
        len(server_initial.scid),
    )


def new_connection_id(trace: Trace) -> str | None:
    """The runner's connectionmigration rule: the client's first packet from each new
    address carries a DCID it did not use before the move (RFC 9000 §9.5)."""
    server_initial = trace.first(PacketType.INITIAL, from_client=False)
    if server_initial is None:
        return "no server Initial: the server's connection ID length is unknown"
    length = len(server_initial.scid)
    moves = [r for r in trace.rebinds if r.client_first is not None]
    if not moves:
        return "the client never moved to a new address"
    for move in moves:
        assert move.client_first is not None
        dcid = move.client_first.data[1 : 1 + length]
        if dcid == move.client_before[1 : 1 + length]:
            return (
                f"first client packet during active migration to {move.client[0]}:"
                f"{move.client[1]} used the previous DCID {dcid.hex()}"
            )
    return None


def address_changed(trace: Trace) -> str | None:
    """The runner's rebind-addr rule: the server saw more than one client IP."""
    first = {h for h, _ in trace.paths}
    moved = {r.local[0] for r in trace.rebinds if r.local and r.first_server} - first
    return None if moved else "server saw only a single client IP address in use"


def goodput(trace: Trace) -> Measurement | str:
    """The runner's goodput: the file's bits over the time from the server's first to its
    last 1-RTT datagram (as the tap passed them)."""
    span = trace.server_one_rtt_span
    if span is None or span[1] <= span[0]:
        return "no server 1-RTT packets to time"
    return Measurement(8 * GOODPUT_FILE / (span[1] - span[0]) / 1e6, "Mbit/s")


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


# The runner's 15 ms, 10 Mbit/s, 25-packet-queue link (its default scenario).
_RUNNER_LINK = LinkSpec(delay_ms=15.0, rate_mbps=10.0, queue_bytes=25 * 1500)
# zerortt: the runner's default link. On bare loopback the handshake completes before
# a client has written its requests, which then go in 1-RTT: the 30 ms RTT gives
# 0-RTT the time it has in the runner.
_RUNNER_DEFAULT = Scenario(
    PathProfile(up=_RUNNER_LINK, down=_RUNNER_LINK),
    description="the runner's default link: 15 ms each way, 10 Mbit/s, queue 25 packets",
)
# connectionmigration: the runner's default link; the tap is client-side, so a client
# that moves shows up there as a new client address.
_MIGRATION = replace(
    _RUNNER_DEFAULT,
    client_moves=True,
    description="the runner's default link (15 ms, 10 Mbit/s, queue 25); the tap records "
    "each new client address as a move",
)
# longrtt: 750 ms each way, so the client's first PTO fires before the answer comes.
_LONG_RTT = Scenario(
    _link(delay_ms=750.0, rate_mbps=10.0, queue_bytes=25 * 1500),
    description="750 ms each way (1.5 s RTT), 10 Mbit/s, queue 25 packets",
)
# amplificationlimit: the ClientHello passes, the client's next packets 2-7 are dropped,
# so the server must wait for the client before sending the rest of its long chain.
_AMPLIFICATION = Scenario(
    PathProfile(up=replace(_RUNNER_LINK, drop_packets=frozenset(range(2, 8))), down=_RUNNER_LINK),
    tap_at_server=True,
    description="15 ms, 10 Mbit/s, queue 25; client packets 2-7 dropped (the runner's "
    "droplist); a 9-certificate chain; the tap records beside the server",
)
# The corruption scenarios: the loss ones with bits flipped instead of packets dropped,
# recorded beside the server as the runner's rules read them.
_HANDSHAKE_CORRUPTION = Scenario(
    _link(delay_ms=15.0, bursty_corrupt=GilbertElliott.from_loss_and_burst(0.30, 1.5)),
    tap_at_server=True,
    description="15 ms each way, 30 % of packets corrupted (one bit, in bursts) each way; "
    "50 connections; the tap records beside the server",
)
_TRANSFER_CORRUPTION = Scenario(
    _link(delay_ms=15.0, bursty_corrupt=GilbertElliott.from_loss_and_burst(0.02, 1.5)),
    tap_at_server=True,
    description="15 ms each way, 2 % of packets corrupted (one bit, in bursts) each way "
    "(no 10 Mbit/s bottleneck); the tap records beside the server",
)
# rebind-*: the runner's rebind scenario (first after 1 s, then every 5 s) on its
# 10 Mbit/s link, so the 10 MB transfer lasts long enough to be rebound twice. The
# runner's NAT translates packets as they leave the link, so the client's packets
# still on the link when it rebinds arrive from the new address: the tap (the NAT)
# sits at the server's end of the link for the same effect.
_REBIND_PORT = Scenario(
    PathProfile(up=_RUNNER_LINK, down=_RUNNER_LINK),
    tap_at_server=True,
    rebinding=Rebinding(first_s=1.0, every_s=5.0),
    description="15 ms, 10 Mbit/s, queue 25; the tap (beside the server) rebinds the "
    "client's port at 1 s, then every 5 s",
)
_REBIND_ADDR = replace(
    _REBIND_PORT,
    rebinding=Rebinding(first_s=1.0, every_s=5.0, new_address=True),
    description="15 ms, 10 Mbit/s, queue 25; the tap (beside the server) moves the client "
    "to a new loopback IP and port at 1 s, then every 5 s",
)
_REBIND_WEAKER = (
    "a path is a socket of the tap (the NAT): the server's first packet to each new one is "
    "checked; server packets already on the link when the NAT rebinds still reach the "
    "client (the runner's NAT drops them)"
)
# TESTCASE "transfer" to both endpoints, as the runner names these cases to them.
_TRANSFER = {Side.CLIENT: "transfer", Side.SERVER: "transfer"}


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
        "resumption",
        "R",
        "Connection is established using TLS Session Resumption: the second of two "
        "connections resumes the first's session (no Certificate in its handshake).",
        (5 * KB, 10 * KB),
        (handshakes(2), version_v1, resumed_without_certificate),
        client_needs=frozenset({Feature.RESUMPTION}),
        server_needs=frozenset({Feature.RESUMPTION}),
    ),
    Case(
        "zerortt",
        "Z",
        "0-RTT data is being sent and acted on: the second connection's requests go in 0-RTT.",
        (32,) * ZERO_RTT_FILES,
        (handshakes(2), version_v1, sent_zero_rtt),
        client_needs=frozenset({Feature.ZERO_RTT}),
        server_needs=frozenset({Feature.ZERO_RTT}),
        name_length=ZERO_RTT_NAME_LENGTH,
        scenario=_RUNNER_DEFAULT,
    ),
    Case(
        "ipv6",
        "6",
        "A transfer across an IPv6-only network (::1) succeeded.",
        (5 * KB, 10 * KB),
        (one_handshake, version_v1, only_ipv6),
        client_needs=frozenset({Feature.IPV6}),
        server_needs=frozenset({Feature.IPV6}),
        endpoint_names=_TRANSFER,
        host=LOOPBACK6,
    ),
    Case(
        "longrtt",
        "LR",
        "Handshake completes when RTT is long (1.5 s): the client retransmits its ClientHello.",
        (1 * KB,),
        (one_handshake, version_v1, client_hello_retransmitted),
        endpoint_names={Side.CLIENT: "handshake", Side.SERVER: "handshake"},
        scenario=_LONG_RTT,
    ),
    Case(
        "amplificationlimit",
        "A",
        "The server obeys the 3x amplification limit (a 9-certificate chain, client "
        "packets 2-7 dropped).",
        (5 * KB,),
        (one_handshake, version_v1, used_certificate_chain, within_amplification_limit),
        endpoint_names=_TRANSFER,
        scenario=_AMPLIFICATION,
        cert_chain=9,
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
        "handshakecorruption",
        "C1",
        "Handshake completes under extreme packet corruption.",
        (1 * KB,) * 50,
        (handshakes(50), version_v1),
        endpoint_names={Side.CLIENT: "multiconnect", Side.SERVER: "multiconnect"},
        timeout_s=300.0,
        scenario=_HANDSHAKE_CORRUPTION,
    ),
    Case(
        "transfercorruption",
        "C2",
        "Transfer completes under moderate packet corruption.",
        (2 * MB,),
        (one_handshake, version_v1),
        endpoint_names=_TRANSFER,
        scenario=_TRANSFER_CORRUPTION,
    ),
    Case(
        "rebind-port",
        "BP",
        "Transfer completes under frequent port rebindings on the client side; the server "
        "validates each new path (PATH_CHALLENGE answered by PATH_RESPONSE, key log).",
        (10 * MB,),
        (one_handshake, version_v1, path_validated),
        server_needs=frozenset({Feature.MIGRATION}),
        endpoint_names=_TRANSFER,
        scenario=_REBIND_PORT,
        weaker=_REBIND_WEAKER,
    ),
    Case(
        "rebind-addr",
        "BA",
        "Transfer completes under frequent IP address and port rebindings on the client "
        "side; the server validates each new path.",
        (10 * MB,),
        (one_handshake, version_v1, address_changed, path_validated),
        server_needs=frozenset({Feature.MIGRATION}),
        endpoint_names=_TRANSFER,
        scenario=_REBIND_ADDR,
        weaker=_REBIND_WEAKER,
    ),
    Case(
        "connectionmigration",
        "CM",
        "A transfer succeeded during which the client performed an active migration (to a "
        "new local address, with a new DCID); the server validated the new path.",
        (2 * MB,),
        (one_handshake, version_v1, new_connection_id, path_validated),
        client_needs=frozenset({Feature.ACTIVE_MIGRATION}),
        server_needs=frozenset({Feature.MIGRATION}),
        endpoint_names={Side.CLIENT: "connectionmigration", Side.SERVER: "transfer"},
        scenario=_MIGRATION,
        weaker="the client migrates on its own (TESTCASE connectionmigration to the client, "
        "transfer to the server), not to a server's preferred_address: a preferred address "
        "is a server socket the tap cannot stand in front of",
    ),
    Case(
        "goodput",
        "G",
        "Measures the goodput of one 10 MB transfer (Mbit/s, from the server's first to "
        "its last 1-RTT datagram).",
        (GOODPUT_FILE,),
        (one_handshake, version_v1),
        endpoint_names=_TRANSFER,
        measure=goodput,
        weaker="one run (the runner takes 5) over loopback and the tap, not a 10 Mbit/s "
        "link: it measures the stacks (and the tap), not how they fill a slow link",
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
# The multipath cases run only with picoquic among the CI peers (8 tests, ~12 s): issue #3
# asks for the handshake, a transfer on two paths and an abandoned path in CI.
CI_CASES = (
    "handshake",
    "transfer",
    "retry",
    "mp-handshake",
    "mp-transfer",
    "mp-failover",
    "mp-abandon",
)


def select(names: list[str] | None) -> tuple[Case, ...]:
    """The named cases in suite order (all when None); ValueError names an unknown one."""
    if not names:
        return CASES
    unknown = [n for n in names if n not in CASES_BY_NAME]
    if unknown:
        raise ValueError(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES_BY_NAME)}")
    return tuple(c for c in CASES if c.name in names)
