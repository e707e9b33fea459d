"""Known bugs of peers: a failure that matches one is recorded as the peer's, with evidence.

Add an entry only with evidence a reader can check (the peer's source, its
issue tracker, or our log line that shows the peer at fault), and only for a
failure reproduced here. A matching failure becomes verdict `known-issue`; a
pass where an issue is listed is noted, so stale entries get noticed.
"""

from __future__ import annotations

from dataclasses import dataclass

from .cases import Role


@dataclass(frozen=True, slots=True)
class KnownIssue:
    peer: str
    case: str
    roles: frozenset[Role]
    summary: str
    evidence: str

    def describe(self) -> str:
        return f"{self.summary} (evidence: {self.evidence})"


KNOWN_ISSUES: tuple[KnownIssue, ...] = (
    KnownIssue(
        "qh3",
        "handshakeloss",
        frozenset({Role.CLIENT}),
        "qh3 2.1.0's server fails a connection when it must retransmit handshake data",
        "server.log: QuicConnectionError 'packet builder capacity exhausted' from "
        "qh3/quic/connection.py _call_core after the relay dropped packets; qh3 1.9.4 "
        "passes handshakeloss in all three roles with the same program",
    ),
    KnownIssue(
        "qh3",
        "handshakeloss",
        frozenset({Role.SERVER, Role.BASELINE}),
        "qh3 2.1.0's client gives up handshakes under loss",
        "client.log: 'qh3 endpoint: ConnectionError' before the 50 connections are done, "
        "against the NetSched edge and against a qh3 2.1.0 server alike (baseline); qh3 "
        "1.9.4 passes handshakeloss in all three roles with the same program",
    ),
    KnownIssue(
        "qh3",
        "v2",
        frozenset({Role.CLIENT}),
        "qh3 2.1.0's server, with v2 enabled, fails when a client offers v2",
        "server.log: QuicConnectionError 'packet builder capacity exhausted' from "
        "qh3/quic/connection.py _call_core, and no server Initial on the wire; qh3 1.9.4 "
        "serves the same client with the same program",
    ),
    KnownIssue(
        "qh3",
        "v2",
        frozenset({Role.SERVER, Role.BASELINE}),
        "qh3 2.1.0's client does not follow a server that moves to v2",
        "the server answers with v2 Initial and Handshake packets and the client keeps "
        "sending v1 Initials until its idle timeout (trace.json: client Initials only, no "
        "client Handshake); qh3 1.9.4 completes the same exchange with the same servers",
    ),
    KnownIssue(
        "quinn",
        "chacha20",
        frozenset({Role.SERVER, Role.BASELINE}),
        "quinn's client (rustls 0.20.8) offers TLS_EMPTY_RENEGOTIATION_INFO_SCSV (0x00ff) "
        "beside the one suite it is configured with, so never ChaCha20 alone",
        "rustls-0.20.8 src/client/hs.rs:338 pushes TLS_EMPTY_RENEGOTIATION_INFO_SCSV onto "
        "every ClientHello's cipher suites, unconditionally; the rule's reason 'got {0x00ff, "
        "0x1303}' with programs/quinn configured for TLS13_CHACHA20_POLY1305_SHA256 only, "
        "and the files transferred intact (the hash check runs before the rules)",
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
    ),
    KnownIssue(
        "qh3",
        "amplificationlimit",
        frozenset({Role.SERVER, Role.BASELINE}),
        "qh3 2.1.0's client refuses the runner's 9-certificate chain",
        "its Handshake packets, decrypted with the key log, carry CONNECTION_CLOSE 0x12a "
        "(TLS bad_certificate) 'the server certificate is unacceptable', against the edge "
        "and against a qh3 server alike (baseline); other clients accept the same chain",
    ),
    KnownIssue(
        "qh3-1",
        "amplificationlimit",
        frozenset({Role.SERVER, Role.BASELINE}),
        "qh3 1.9.4's client refuses the runner's 9-certificate chain",
        "its Handshake packets, decrypted with the key log, carry CONNECTION_CLOSE 0x12a "
        "(TLS bad_certificate) 'the server certificate is unacceptable', against the edge "
        "and against a qh3 server alike (baseline); other clients accept the same chain",
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
        )
        for case in ("rebind-port", "connectionmigration")
    ),
)


def find(
    peer: str, case: str, role: Role, issues: tuple[KnownIssue, ...] = KNOWN_ISSUES
) -> KnownIssue | None:
    return next(
        (i for i in issues if i.peer == peer and i.case == case and role in i.roles),
        None,
    )
