"""Known bugs of peers: a failure that matches one is recorded as the peer's, with evidence.

Add an entry only with evidence a reader can check (the peer's source, its
issue tracker, or our log line that shows the peer at fault), and only for a
failure reproduced here. An entry names its signs: what the failure must show
(a pattern in its reason, a log or the trace summary) to be this bug, so that
another failure of the same peer, case and role stays a failure. A matching
failure becomes verdict `known-issue`; a pass where an issue is listed is
noted, so stale entries get noticed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from .cases import Role


class Source(StrEnum):
    """Where a sign is looked for: the failure's reason, or a file of the test's log folder."""

    REASON = "reason"  # the rules' reasons, or the exit status and last log line
    CLIENT_LOG = "client.log"
    SERVER_LOG = "server.log"
    TRACE = "trace.json"  # the tap's summary (packet counts by type, versions)


# The text of a source for the failure at hand ("" when there is none).
Evidence = Callable[[Source], str]


@dataclass(frozen=True, slots=True)
class Sign:
    """A regular expression the failure's `source` shows (or, `absent`, does not show)."""

    pattern: str
    source: Source = Source.REASON
    absent: bool = False

    def holds(self, evidence: Evidence) -> bool:
        found = re.search(self.pattern, evidence(self.source)) is not None
        return found != self.absent

    def __str__(self) -> str:
        return f"{self.source} {'without' if self.absent else 'with'} /{self.pattern}/"


@dataclass(frozen=True, slots=True)
class KnownIssue:
    peer: str
    case: str
    roles: frozenset[Role]
    summary: str
    evidence: str
    signs: tuple[Sign, ...]  # all hold for a failure that is this issue

    def __post_init__(self) -> None:
        if not self.signs:
            raise ValueError(f"{self.peer} {self.case}: a known issue needs a sign to match")

    def describe(self) -> str:
        return f"{self.summary} (evidence: {self.evidence})"

    def matches(self, evidence: Evidence) -> bool:
        return all(sign.holds(evidence) for sign in self.signs)

    def mismatch(self, evidence: Evidence) -> str:
        """Why a failure is not this issue: what of the signs it lacks."""
        return ", ".join(str(s) for s in self.signs if not s.holds(evidence))


# What qh3 2.1.0's server raises when it must retransmit handshake data.
_QH3_CAPACITY = Sign("packet builder capacity exhausted", Source.SERVER_LOG)
# How programs/qh3_peer.py's client reports a connection that ended without its files.
_QH3_CLIENT_GAVE_UP = Sign("last log line: qh3 endpoint: ConnectionError")
# The client closed during the handshake: not one 1-RTT packet from it (trace summary).
_NO_CLIENT_ONE_RTT = Sign(r'"one_rtt_packets": \{\s*"client": 0,', Source.TRACE)

KNOWN_ISSUES: tuple[KnownIssue, ...] = (
    KnownIssue(
        "qh3",
        "handshakeloss",
        frozenset({Role.CLIENT}),
        "qh3 2.1.0's server fails a connection when it must retransmit handshake data",
        "server.log: QuicConnectionError 'packet builder capacity exhausted' from "
        "qh3/quic/connection.py _call_core after the relay dropped packets; qh3 1.9.4 "
        "passes handshakeloss in all three roles with the same program",
        (_QH3_CAPACITY,),
    ),
    KnownIssue(
        "qh3",
        "handshakeloss",
        frozenset({Role.SERVER, Role.BASELINE}),
        "qh3 2.1.0's client gives up handshakes under loss",
        "client.log: 'qh3 endpoint: ConnectionError' before the 50 connections are done, "
        "against the NetSched edge and against a qh3 2.1.0 server alike (baseline); qh3 "
        "1.9.4 passes handshakeloss in all three roles with the same program",
        (_QH3_CLIENT_GAVE_UP,),
    ),
    KnownIssue(
        "qh3",
        "v2",
        frozenset({Role.CLIENT}),
        "qh3 2.1.0's server, with v2 enabled, fails when a client offers v2",
        "server.log: QuicConnectionError 'packet builder capacity exhausted' from "
        "qh3/quic/connection.py _call_core, and no server Initial on the wire; qh3 1.9.4 "
        "serves the same client with the same program",
        (_QH3_CAPACITY,),
    ),
    KnownIssue(
        "qh3",
        "v2",
        frozenset({Role.SERVER, Role.BASELINE}),
        "qh3 2.1.0's client does not follow a server that moves to v2",
        "the server answers with v2 Initial and Handshake packets and the client keeps "
        "sending v1 Initials until its idle timeout (trace.json: client Initials only, no "
        "client Handshake); qh3 1.9.4 completes the same exchange with the same servers",
        (
            _QH3_CLIENT_GAVE_UP,
            Sign('"0x6b3343cf"', Source.TRACE),
            Sign('"server handshake"', Source.TRACE),
            Sign('"client handshake"', Source.TRACE, absent=True),
        ),
    ),
    KnownIssue(
        "quinn",
        "amplificationlimit",
        frozenset({Role.SERVER, Role.BASELINE}),
        "quinn's client (webpki 0.22.0) rejects a chain with more than 6 intermediates, "
        "and the case's 9-certificate chain has 8",
        "webpki-0.22.0 src/verify_cert.rs build_chain: MAX_SUB_CA_COUNT = 6, past it "
        "Error::UnknownIssuer; client.log: 'invalid peer certificate: UnknownIssuer' against "
        "the NetSched edge and the quinn server alike, whose chain NetSched's client accepts "
        "(role client passes)",
        (Sign("invalid peer certificate: UnknownIssuer", Source.CLIENT_LOG),),
    ),
    KnownIssue(
        "quinn",
        "handshakecorruption",
        frozenset({Role.CLIENT}),
        "quinn's server closes a handshaking connection when one client packet arrives with "
        "its long-header type bits flipped to Retry, instead of discarding it",
        "quinn-proto-0.9.2 src/connection/mod.rs:2077 returns PROTOCOL_VIOLATION 'client "
        "sent Retry' for any Retry-typed packet in the Handshake state (a client Handshake "
        "packet, type 0b10, is one bit from Retry, 0b11, and a Retry carries no AEAD); "
        "server.log: 'handshake failed: ... client sent Retry', client.log: 'ConnectionLost: "
        "connection closed: client sent Retry'",
        (Sign("client sent Retry", Source.SERVER_LOG), Sign("closed: client sent Retry")),
    ),
    *(
        KnownIssue(
            peer,
            "amplificationlimit",
            frozenset({Role.SERVER, Role.BASELINE}),
            f"qh3 {version}'s client refuses the runner's 9-certificate chain",
            "its Handshake packets, decrypted with the key log, carry CONNECTION_CLOSE 0x12a "
            "(TLS bad_certificate) 'the server certificate is unacceptable', against the edge "
            "and against a qh3 server alike (baseline); other clients accept the same chain; "
            "client.log: 'qh3 endpoint: ConnectionError' and no client 1-RTT packet",
            (_QH3_CLIENT_GAVE_UP, _NO_CLIENT_ONE_RTT),
        )
        for peer, version in (("qh3", "2.1.0"), ("qh3-1", "1.9.4"))
    ),
    *(
        KnownIssue(
            "qh3",
            case,
            frozenset({Role.CLIENT}),
            "qh3 2.1.0's server fails a connection when it must retransmit handshake data",
            "server.log: QuicConnectionError 'packet builder capacity exhausted' from "
            "qh3/quic/connection.py _call_core during the handshake (the case's delayed or "
            "corrupting link makes the server retransmit), and no server packet after it",
            (_QH3_CAPACITY,),
        )
        for case in ("amplificationlimit", "rebind-port", "rebind-addr", "handshakecorruption")
    ),
    *(
        KnownIssue(
            "ngtcp2",
            case,
            frozenset({Role.CLIENT, Role.BASELINE}),
            "ngtcp2 0.12.1's server may send its first packet to a client's new address "
            "without a PATH_CHALLENGE",
            "the rule's reason 'first server packet on new path ... (frames 0x2)': that "
            "packet, decrypted with the key log, holds only an ACK; seen against its own "
            "client (rebind-port baseline in each run, connectionmigration baseline) and "
            "against ours (rebind-port, some runs); the runner wants the challenge in it",
            (Sign(r"did not contain a PATH_CHALLENGE frame \(frames 0x2\)"),),
        )
        for case in ("rebind-port", "connectionmigration")
    ),
    *(
        KnownIssue(
            "aioquic",
            case,
            frozenset({Role.CLIENT}),
            "aioquic 1.7.2's server may send its first packet to a client's new address "
            "without a PATH_CHALLENGE",
            "the rule's reason 'first server packet on new path ... (frames 0x2)': an "
            "ACK-only packet. aioquic writes the challenge after the ACK and only within the "
            "congestion window, which is still full of packets sent to the old address: the "
            "ACK goes alone (the same code was NetSched's edge bug, fixed in "
            "MultipathConnection._challenge_new_address; aioquic's own server keeps it)",
            (Sign(r"did not contain a PATH_CHALLENGE frame \(frames 0x2\)"),),
        )
        for case in ("rebind-port", "rebind-addr", "connectionmigration")
    ),
)


def listed(
    peer: str, case: str, role: Role, issues: tuple[KnownIssue, ...] = KNOWN_ISSUES
) -> list[KnownIssue]:
    """The issues listed for a peer, case and role, whatever the failure."""
    return [i for i in issues if i.peer == peer and i.case == case and role in i.roles]


def find(
    peer: str,
    case: str,
    role: Role,
    evidence: Evidence,
    issues: tuple[KnownIssue, ...] = KNOWN_ISSUES,
) -> KnownIssue | None:
    """The listed issue whose signs the failure shows (`evidence`), if any."""
    return next((i for i in listed(peer, case, role, issues) if i.matches(evidence)), None)
