"""One multipath path: its ID, lifecycle, status and the aioquic state it owns.

The path is picoquic's unit (packet numbers, ACK state, recovery, pacing,
CIDs); its 4-tuples are aioquic's `QuicNetworkPath` objects in the path's own
`_network_paths`. While a path is not the one aioquic is working on, the
aioquic attributes it owns are parked in `parked` (see `connection.py`).

Lifecycle (the whole state machine):

    VALIDATING --PATH_RESPONSE--> ACTIVE --PATH_ABANDON sent/received--> CLOSING
    VALIDATING --deadline / abandon--> CLOSING --3 x PTO--> (forgotten)

A server-side path starts ACTIVE (the client opened it; aioquic validates the
new 4-tuple like a migration, under the 3x anti-amplification limit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from aioquic.quic.connection import NetworkAddress


class PathState(Enum):
    VALIDATING = "validating"
    ACTIVE = "active"
    CLOSING = "closing"


@dataclass(slots=True)
class PathStats:
    """Counters that outlive the path (kept in `MultipathConnection.closed_stats`)."""

    bytes_sent: int = 0
    bytes_received: int = 0
    packets_sent: int = 0
    packets_received: int = 0
    packets_lost: int = 0
    packets_reinjected: int = 0  # resent on another path when this one stalled
    # Bytes of STREAM frames sent (retransmissions and copies included), by the stream's
    # RFC 9218 urgency: which class of data rode the path.
    stream_bytes: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True)
class Path:
    path_id: int
    state: PathState
    local_addr: NetworkAddress | None = None  # client: the local address the path is bound to
    # The aioquic attributes of this path while another path is live.
    parked: dict[str, Any] = field(default_factory=dict)
    # Bumped whenever its aioquic state may change (swapped in, or written while parked):
    # aioquic's timer for a parked path is recomputed only then (`timer_key`, `timer_at`).
    version: int = 0
    timer_key: tuple[object, ...] = ()
    timer_at: float | None = None
    # Status: ours (sent to the peer) and the peer's preference for this path.
    backup: bool = False
    status_seq_sent: int = 0
    status_pending: bool = False
    peer_backup: bool | None = None
    peer_status_seq: int = -1
    # Abandonment.
    abandon_pending: bool = False
    abandon_sent: bool = False
    abandon_received: bool = False
    abandon_error: int = 0
    closing_until: float | None = None
    reinjected_pto: int = 0  # the PTO count at the last re-injection (once per stall)
    stalled_since: float | None = None  # send time of the oldest packet overdue when it stalled
    stalled_at: float | None = None  # when it stalled: an ACK for a later packet ends it
    silence_at: float | None = None  # when it counts as silent (scheduler, once per flush)
    recovering_until: float | None = None  # back from a stall: no deadline data until then
    stalls: int = 0  # recent stalls (each one lengthens the next recovery: hysteresis)
    last_stall_end: float | None = None
    last_sent_at: float | None = None  # last ack-eliciting send on this path
    keepalive_pending: bool = False  # its next ack-eliciting send is a keep-alive PING
    # CIDs for this path ID: ours not yet announced, and retirements to send.
    cids_to_announce: list[int] = field(default_factory=list)  # sequence numbers
    retire_pending: list[int] = field(default_factory=list)
    next_peer_cid_seq: int = 0  # highest PATH_NEW_CONNECTION_ID sequence seen + 1
    stats: PathStats = field(default_factory=PathStats)

    def recovering(self, now: float) -> bool:
        """Back from a stall, and not yet trusted with deadline data."""
        return self.recovering_until is not None and now < self.recovering_until

    @property
    def usable(self) -> bool:
        """May carry application data."""
        return self.state is PathState.ACTIVE and not self.abandon_pending


class UsedPathIds:
    """The path IDs a connection has used, which it must never use again (draft-21 §2).

    Kept as "every ID below `floor`" plus the used IDs above it, so a long
    connection that opens and closes many paths holds a few integers, not one
    per path it ever used. IDs are taken in order; one the peer leaves unused
    while `MAX_ABOVE` later ones get used counts as used from then on.
    """

    MAX_ABOVE = 64

    def __init__(self) -> None:
        self._floor = 0
        self._above: set[int] = set()

    def add(self, path_id: int) -> None:
        if path_id in self:
            return
        self._above.add(path_id)
        if len(self._above) > self.MAX_ABOVE:
            self._floor = min(self._above)
        while self._floor in self._above:
            self._above.remove(self._floor)
            self._floor += 1

    def __contains__(self, path_id: object) -> bool:
        return isinstance(path_id, int) and (path_id < self._floor or path_id in self._above)

    def __len__(self) -> int:
        return self._floor + len(self._above)
