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
)


def find(
    peer: str, case: str, role: Role, issues: tuple[KnownIssue, ...] = KNOWN_ISSUES
) -> KnownIssue | None:
    return next(
        (i for i in issues if i.peer == peer and i.case == case and role in i.roles),
        None,
    )
