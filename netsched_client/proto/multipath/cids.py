"""The peer's connection IDs for one path ID: what a new one does to the set.

RFC 9000 §5.1.1 and §19.15 rules, applied per path ID as draft-21 does (CIDs
from NEW_CONNECTION_ID belong to path ID 0, so path 0 gets them both ways; the
sequence numbers and active_connection_id_limit are per path ID). Pure: the
connection applies the result to the live path's aioquic state or to the pool
of a path ID not yet in use.

Order matters (§5.1.1): Retire Prior To is applied first, then the new CID is
added, then the active ones are counted against our limit; a peer that
replaces its CIDs with `retire_prior_to` is within the limit even when
old + new would exceed it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aioquic.quic.connection import QuicConnectionId


class CidLimitError(Exception):
    """More active CIDs than our active_connection_id_limit (CONNECTION_ID_LIMIT_ERROR)."""


class CidConflictError(Exception):
    """One sequence number, two CIDs (RFC 9000 §19.15: PROTOCOL_VIOLATION)."""


@dataclass(frozen=True, slots=True)
class PeerCids:
    """The peer's CIDs for one path ID."""

    current: QuicConnectionId | None  # the one in use; None on a path ID not in use yet
    available: tuple[QuicConnectionId, ...]  # spares, by sequence number
    retire_prior_to: int = 0

    @property
    def active(self) -> int:
        return len(self.available) + (self.current is not None)

    def held(self) -> Iterable[QuicConnectionId]:
        if self.current is not None:
            yield self.current
        yield from self.available


@dataclass(frozen=True, slots=True)
class PathCids:
    """One path ID's connection IDs at a moment (`MultipathConnection.path_cids`)."""

    host: tuple[bytes, ...]  # ours, oldest first: the peer may send to any of them
    host_in_use: bytes | None  # ours the peer last sent to; None on a path ID not in use yet
    peer_in_use: bytes | None  # the peer's we send to; None on a path ID not in use yet


@dataclass(frozen=True, slots=True)
class CidUpdate:
    cids: PeerCids
    retire: tuple[int, ...]  # sequence numbers to retire now (PATH_)RETIRE_CONNECTION_ID


def _seq(cid: QuicConnectionId) -> int:
    return cid.sequence_number or 0


def receive_cid(
    cids: PeerCids, new: QuicConnectionId, retire_prior_to: int, limit: int
) -> CidUpdate:
    """Apply one (PATH_)NEW_CONNECTION_ID; the frame decoder checked rpt ≤ sequence.

    A repeat of a held CID changes nothing; a CID below Retire Prior To (ours
    or an earlier frame's) is retired at once without being used (§19.15).
    """
    sequence = _seq(new)
    for held in cids.held():
        if _seq(held) == sequence:
            if held.cid != new.cid or held.stateless_reset_token != new.stateless_reset_token:
                raise CidConflictError(f"sequence number {sequence} was another CID")
            break
    rpt = max(cids.retire_prior_to, retire_prior_to)
    retire = [_seq(c) for c in cids.held() if _seq(c) < rpt]
    available = [c for c in cids.available if _seq(c) >= rpt]
    if sequence < rpt:
        if sequence not in retire and not any(_seq(c) == sequence for c in cids.held()):
            retire.append(sequence)
    elif all(_seq(c) != sequence for c in cids.held()):
        available.append(new)
    available.sort(key=_seq)
    current = cids.current
    if current is not None and _seq(current) < rpt:
        current = available.pop(0)  # rpt ≤ the new CID's sequence: one is always left
    result = PeerCids(current, tuple(available), rpt)
    if result.active > limit:
        raise CidLimitError(f"{result.active} active CIDs, our limit is {limit}")
    return CidUpdate(result, tuple(retire))
