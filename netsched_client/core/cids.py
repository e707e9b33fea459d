"""Connection-ID bookkeeping, per path ID (RFC 9000 §5.1; draft-ietf-quic-multipath-21).

With multipath, every connection ID belongs to one path ID and sequence
numbers, Retire Prior To and active_connection_id_limit count per path ID
(path 0 is the handshake's, and what NEW_CONNECTION_ID and
RETIRE_CONNECTION_ID address; PATH_NEW_CONNECTION_ID and
PATH_RETIRE_CONNECTION_ID name the path).

`LocalCids`: the IDs we issued (sequence, stateless-reset token), at most the
peer's limit active per path, and the peer's RETIRE frames for them.
`PeerCids`: the IDs the peer issued to us, the one in use on each tuple, and
the retirements we owe it. Both keep memory bounded by the limits: a peer
past them gets `ConnectionIdLimitError`, one breaking §19.15/§19.16's rules
`ProtocolViolation`, a malformed field `FrameError`.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from netsched_client.core.errors import ConnectionIdLimitError, FrameError, ProtocolViolation
from netsched_client.core.packet import MAX_CID_LENGTH, MAX_PATH_ID, RangeSet

RESET_TOKEN_LENGTH = 16
# RFC 9000 §18.2: active_connection_id_limit is at least 2.
MIN_ACTIVE_CONNECTION_ID_LIMIT = 2
# RFC 9000 §5.1.2: track at least twice the limit in retirements not yet acknowledged.
PENDING_RETIREMENTS_FACTOR = 2
# Retired sequence numbers and closed path IDs, kept as ranges: both go mostly in
# order, so few ranges hold them; past this many the oldest are forgotten.
RETIRED_RANGES = 16


@dataclass(frozen=True, slots=True)
class ConnectionId:
    path_id: int
    sequence: int
    cid: bytes
    reset_token: bytes


@dataclass(slots=True)
class _LocalPath:
    next_sequence: int = 0
    active: dict[int, ConnectionId] = field(default_factory=dict)


class LocalCids:
    """The connection IDs we issued, per path ID."""

    def __init__(self, peer_limit: int = MIN_ACTIVE_CONNECTION_ID_LIMIT) -> None:
        self.peer_limit = max(peer_limit, MIN_ACTIVE_CONNECTION_ID_LIMIT)
        self._paths: dict[int, _LocalPath] = {}
        self._by_cid: dict[bytes, ConnectionId] = {}

    def room(self, path_id: int) -> int:
        """How many more IDs the peer's limit lets us issue for `path_id` now."""
        path = self._paths.get(path_id)
        return self.peer_limit - (len(path.active) if path else 0)

    def issue(self, path_id: int, cid: bytes, reset_token: bytes) -> ConnectionId:
        """Records `cid` as `path_id`'s next sequence number, for a (PATH_)NEW_CONNECTION_ID."""
        _check_cid(path_id, cid, reset_token)
        if cid in self._by_cid:
            raise ValueError(f"connection ID {cid.hex()} issued twice")
        if self.room(path_id) <= 0:
            raise ConnectionIdLimitError(f"path {path_id}: the peer's limit is {self.peer_limit}")
        path = self._paths.setdefault(path_id, _LocalPath())
        issued = ConnectionId(path_id, path.next_sequence, cid, reset_token)
        path.next_sequence += 1
        path.active[issued.sequence] = issued
        self._by_cid[cid] = issued
        return issued

    def lookup(self, cid: bytes) -> ConnectionId | None:
        """The active issued ID `cid` (a packet's DCID), None if not ours or retired."""
        return self._by_cid.get(cid)

    def active(self, path_id: int) -> list[ConnectionId]:
        path = self._paths.get(path_id)
        return sorted(path.active.values(), key=_sequence) if path else []

    def on_retire(self, path_id: int, sequence: int, packet_dcid: bytes) -> ConnectionId | None:
        """The peer's (PATH_)RETIRE_CONNECTION_ID, in a packet sent to `packet_dcid`.

        Returns the ID retired (the caller stops routing it and may issue
        another), None for a repeat. §19.16: a sequence never issued, or the
        ID the frame's own packet was sent to, is a PROTOCOL_VIOLATION.
        """
        path = self._paths.get(path_id)
        if path is None or sequence >= path.next_sequence:
            raise ProtocolViolation(f"path {path_id}: retiring unissued sequence {sequence}")
        retired = path.active.get(sequence)
        if retired is None:
            return None
        if retired.cid == packet_dcid:
            raise ProtocolViolation(f"path {path_id}: retiring the packet's own DCID")
        del path.active[sequence]
        del self._by_cid[retired.cid]
        return retired

    def remove_path(self, path_id: int) -> list[ConnectionId]:
        """Forgets a closed path's IDs; returns them for the caller's routing table."""
        path = self._paths.pop(path_id, None)
        dropped = sorted(path.active.values(), key=_sequence) if path else []
        for issued in dropped:
            del self._by_cid[issued.cid]
        return dropped


@dataclass(slots=True)
class _PeerPath:
    retire_prior_to: int = 0
    active: dict[int, ConnectionId] = field(default_factory=dict)
    in_use: set[int] = field(default_factory=set)
    retired: RangeSet = field(default_factory=lambda: RangeSet(max_ranges=RETIRED_RANGES))
    pending: set[int] = field(default_factory=set)  # retired, RETIRE frame not yet acknowledged


class PeerCids:
    """The connection IDs the peer issued to us, per path ID."""

    def __init__(self, limit: int = MIN_ACTIVE_CONNECTION_ID_LIMIT, max_path_id: int = 0) -> None:
        self.limit = max(limit, MIN_ACTIVE_CONNECTION_ID_LIMIT)  # our active_connection_id_limit
        self.max_path_id = max_path_id  # the highest path ID we allowed (MAX_PATH_ID)
        self._paths: dict[int, _PeerPath] = {}
        self._by_cid: dict[bytes, ConnectionId] = {}
        self._closed = RangeSet(max_ranges=RETIRED_RANGES)

    def on_new_cid(
        self, path_id: int, sequence: int, cid: bytes, reset_token: bytes, retire_prior_to: int
    ) -> list[int]:
        """A (PATH_)NEW_CONNECTION_ID frame; returns the sequence numbers to retire
        (one RETIRE frame each), ascending (RFC 9000 §5.1.2, §19.15)."""
        _check_cid(path_id, cid, reset_token)
        if retire_prior_to > sequence:
            raise FrameError(f"Retire Prior To {retire_prior_to} above sequence {sequence}")
        if path_id > self.max_path_id:
            raise ProtocolViolation(f"path ID {path_id} above our maximum {self.max_path_id}")
        if path_id in self._closed:
            return []  # a late frame for an abandoned path: its IDs went with it
        known = self._by_cid.get(cid)
        if known is not None and (known.path_id, known.sequence) != (path_id, sequence):
            raise ProtocolViolation(f"connection ID {cid.hex()} given twice")
        path = self._paths.setdefault(path_id, _PeerPath())
        issued = ConnectionId(path_id, sequence, cid, reset_token)
        previous = path.active.get(sequence)
        if previous is not None and previous != issued:
            raise ProtocolViolation(f"path {path_id}: sequence {sequence} changed")
        to_retire = self._retire_below(path, retire_prior_to)
        if sequence < path.retire_prior_to:
            # §5.1.2: an ID already covered by Retire Prior To is retired unused.
            if sequence not in path.retired:
                self._mark_retired(path, sequence)
                to_retire.append(sequence)
        elif previous is None and sequence not in path.retired:
            path.active[sequence] = issued
            self._by_cid[cid] = issued
        if len(path.active) > self.limit:
            raise ConnectionIdLimitError(f"path {path_id}: more than {self.limit} IDs")
        self._check_pending(path_id, path)
        return sorted(to_retire)

    def choose(self, path_id: int) -> ConnectionId | None:
        """An unused ID of `path_id` (the lowest sequence) for a new tuple; marks it in use."""
        path = self._paths.get(path_id)
        if path is None:
            return None
        unused = [seq for seq in sorted(path.active) if seq not in path.in_use]
        if not unused:
            return None
        path.in_use.add(unused[0])
        return path.active[unused[0]]

    def in_use(self, path_id: int) -> list[ConnectionId]:
        path = self._paths.get(path_id)
        return [path.active[seq] for seq in sorted(path.in_use)] if path else []

    def active(self, path_id: int) -> list[ConnectionId]:
        path = self._paths.get(path_id)
        return sorted(path.active.values(), key=_sequence) if path else []

    def retire(self, path_id: int, sequence: int) -> None:
        """We stop using an ID (a migration left it): send its RETIRE frame."""
        path = self._paths.get(path_id)
        if path is None or sequence not in path.active:
            raise ValueError(f"path {path_id}: no active sequence {sequence}")
        self._mark_retired(path, sequence)
        self._check_pending(path_id, path)

    def pending_retirements(self, path_id: int) -> list[int]:
        """Retired sequence numbers whose RETIRE frame is not yet acknowledged."""
        path = self._paths.get(path_id)
        return sorted(path.pending) if path else []

    def on_retire_acked(self, path_id: int, sequence: int) -> None:
        path = self._paths.get(path_id)
        if path is not None:
            path.pending.discard(sequence)

    def is_stateless_reset(self, token: bytes) -> bool:
        """Whether a packet's last 16 bytes are the token of an ID we use (RFC 9000 §10.3.1),
        compared in constant time."""
        return any(
            hmac.compare_digest(token, path.active[seq].reset_token)
            for path in self._paths.values()
            for seq in path.in_use
        )

    def remove_path(self, path_id: int) -> None:
        """Forgets a closed path's IDs: after PATH_ABANDON the path ID is retired whole,
        and later IDs for it are ignored."""
        self._closed.add_packet(path_id)
        path = self._paths.pop(path_id, None)
        for issued in path.active.values() if path else ():
            del self._by_cid[issued.cid]

    def _retire_below(self, path: _PeerPath, retire_prior_to: int) -> list[int]:
        if retire_prior_to <= path.retire_prior_to:
            return []
        path.retire_prior_to = retire_prior_to
        below = [seq for seq in sorted(path.active) if seq < retire_prior_to]
        for seq in below:
            self._mark_retired(path, seq)
        return below

    def _mark_retired(self, path: _PeerPath, sequence: int) -> None:
        issued = path.active.pop(sequence, None)
        if issued is not None:
            del self._by_cid[issued.cid]
        path.in_use.discard(sequence)
        path.retired.add_packet(sequence)
        path.pending.add(sequence)

    def _check_pending(self, path_id: int, path: _PeerPath) -> None:
        if len(path.pending) > PENDING_RETIREMENTS_FACTOR * self.limit:
            raise ConnectionIdLimitError(f"path {path_id}: too many retirements pending")


def _check_cid(path_id: int, cid: bytes, reset_token: bytes) -> None:
    """§19.15: an ID of 1 to 20 bytes, a 16-byte token; path IDs are 32-bit (draft-21)."""
    if not 1 <= len(cid) <= MAX_CID_LENGTH or len(reset_token) != RESET_TOKEN_LENGTH:
        raise FrameError(f"connection ID of {len(cid)} bytes, token of {len(reset_token)}")
    if not 0 <= path_id <= MAX_PATH_ID:
        raise FrameError(f"path ID {path_id}")


def _sequence(issued: ConnectionId) -> int:
    return issued.sequence
