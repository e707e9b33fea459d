"""One multipath path and its tuples (draft-ietf-quic-multipath-21; picoquic's path/tuple split).

A `Path` owns what survives an address change: its path ID, its 1-RTT
packet-number space (the packets received and when an ACK is due, and the
sent packets in the stage-2 `Ledger`), RTT, congestion control and pacer
(`PathRecovery`), and its datagram size. Its `PathTuple`s own what an address
change replaces: the 4-tuple, the peer's and our connection IDs on it, and
its validation (PATH_CHALLENGE data out, the deadline). NAT rebinding or a
migration adds a tuple to the same path; the path's packet numbers and
congestion state carry on.

Path phases, by event (anything else raises `PathStateError`):

    VALIDATING --VALIDATED--> ACTIVE <--AVAILABLE / BACKUP--> STANDBY
    VALIDATING, ACTIVE, STANDBY --ABANDON--> CLOSING --DRAINED--> CLOSED

VALIDATED: the first tuple's PATH_RESPONSE. BACKUP / AVAILABLE: the peer's
PATH_STATUS_BACKUP / PATH_STATUS_AVAILABLE (draft-21 §3.3), applied in
path-status sequence order; one that arrives while validating is kept for
when validation ends. ABANDON: a PATH_ABANDON sent or received, or the
validation failed (draft-21 §3.4: a failed validation consumes the path ID,
which is abandoned). DRAINED: three PTOs after the abandon (draft-21 §3.4),
when the path's state is dropped.

Time is always passed in; PATH_CHALLENGE data comes from the caller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from types import ModuleType

from netsched_client.core import ledger as ledger_facade
from netsched_client.core.errors import PacketError, PathStateError
from netsched_client.core.packet import RangeSet
from netsched_client.core.recovery import PathRecovery
from netsched_client.core.timers import TimerKind
from netsched_client.proto.cc.base import PathCongestionController


class PathPhase(Enum):
    VALIDATING = "validating"
    ACTIVE = "active"
    STANDBY = "standby"
    CLOSING = "closing"
    CLOSED = "closed"


class PathEvent(Enum):
    VALIDATED = "validated"
    BACKUP = "backup"
    AVAILABLE = "available"
    ABANDON = "abandon"
    DRAINED = "drained"


TRANSITIONS: dict[PathPhase, dict[PathEvent, PathPhase]] = {
    PathPhase.VALIDATING: {
        PathEvent.VALIDATED: PathPhase.ACTIVE,
        PathEvent.ABANDON: PathPhase.CLOSING,
    },
    PathPhase.ACTIVE: {PathEvent.BACKUP: PathPhase.STANDBY, PathEvent.ABANDON: PathPhase.CLOSING},
    PathPhase.STANDBY: {
        PathEvent.AVAILABLE: PathPhase.ACTIVE,
        PathEvent.ABANDON: PathPhase.CLOSING,
    },
    PathPhase.CLOSING: {PathEvent.DRAINED: PathPhase.CLOSED},
    PathPhase.CLOSED: {},
}


def next_phase(phase: PathPhase, event: PathEvent) -> PathPhase:
    """The phase `event` moves `phase` to; `PathStateError` when the table has no such move."""
    try:
        return TRANSITIONS[phase][event]
    except KeyError:
        raise PathStateError(f"{event.value} while {phase.value}") from None


# RFC 9000 §14: every path carries 1200-byte datagrams.
MIN_DATAGRAM_SIZE = 1200
# RFC 9000 §13.2.2: acknowledge at least every second ack-eliciting packet.
ACK_ELICITING_THRESHOLD = 2
# RFC 9000 §8.2.4, draft-21 §3.4: validation gives up, and a path closes, after 3 PTOs.
PTO_MULTIPLIER = 3
# Challenges outstanding on one tuple: a resent PATH_CHALLENGE carries new data and
# either answer validates; more than this and the oldest is forgotten.
MAX_CHALLENGES = 4
# Tuples one path probes at once (its current one and the candidates replacing it).
MAX_TUPLES = 4

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class PathConfig:
    max_datagram_size: int = MIN_DATAGRAM_SIZE
    initial_rtt: float = ledger_facade.INITIAL_RTT
    local_max_ack_delay: float = ledger_facade.MAX_ACK_DELAY  # what we promised the peer
    peer_max_ack_delay: float = ledger_facade.MAX_ACK_DELAY  # what the peer promised us


def new_recovery(
    controller: PathCongestionController,
    config: PathConfig = PathConfig(),
    backend: ModuleType = ledger_facade,
) -> PathRecovery:
    """A path's RTT estimator, 1-RTT ledger and pacer, from `backend` (a ledger module)."""
    rtt = backend.RttEstimator(config.initial_rtt, config.peer_max_ack_delay)
    return PathRecovery(controller, backend.Ledger(rtt), backend.Pacer(config.max_datagram_size))


@dataclass(slots=True, eq=False)  # a tuple is itself: compared by identity
class PathTuple:
    """A 4-tuple of a path with the connection IDs on it and its validation state."""

    local: Address
    remote: Address
    local_cid: bytes
    peer_cid: bytes
    validated: bool = False
    challenges: list[bytes] = field(default_factory=list)  # sent, answer awaited
    deadline: float = math.inf  # validation gives up then

    def challenge(self, data: bytes, deadline: float) -> None:
        """A PATH_CHALLENGE with `data` went out on this tuple."""
        if len(data) != 8:
            raise ValueError("PATH_CHALLENGE data is 8 bytes")
        self.challenges = [*self.challenges, data][-MAX_CHALLENGES:]
        self.deadline = min(self.deadline, deadline)

    def on_response(self, data: bytes) -> bool:
        """A PATH_RESPONSE: True when it answers one of our challenges (now validated)."""
        if data not in self.challenges:
            return False
        self.validated = True
        self.challenges = []
        self.deadline = math.inf
        return True


class AckState:
    """The packets received in a path's 1-RTT space and when an ACK for them is due."""

    def __init__(self, max_ack_delay: float) -> None:
        self.max_ack_delay = max_ack_delay
        self.received = RangeSet()
        self.ack_eliciting = 0  # received since the last ACK sent
        self.ack_due = math.inf
        self.floor = 0  # packets below were pruned from `received` (the peer has their ACK)

    def on_received(self, pn: int, ack_eliciting: bool, now: float) -> bool:
        """Records a packet; False for a duplicate (to drop it, RFC 9000 §12.3)."""
        if self._seen(pn):
            return False
        # §13.2.1: a packet out of order (below the largest, or past a gap) is acked now.
        out_of_order = bool(self.received) and pn != self.received.largest() + 1
        self.received.add_packet(pn)
        if not ack_eliciting:
            return True
        self.ack_eliciting += 1
        # An ACK already due stays due at its time: a later packet never postpones it.
        due = now if out_of_order or self.ack_eliciting >= ACK_ELICITING_THRESHOLD else math.inf
        self.ack_due = min(self.ack_due, due, now + self.max_ack_delay)
        return True

    def on_ack_sent(self) -> None:
        self.ack_eliciting = 0
        self.ack_due = math.inf

    def on_ack_acked(self, largest_acked: int) -> None:
        """The peer has our ACK up to `largest_acked`: stop reporting up to it (§13.2.4)."""
        self.floor = max(self.floor, largest_acked + 1)
        self.received.remove_below(self.floor)

    def _seen(self, pn: int) -> bool:
        # Below the floor, or below a full RangeSet (it has dropped its lowest ranges), a
        # packet is too old to tell apart from a duplicate, and is treated as one.
        full = len(self.received) == self.received.max_ranges
        return pn < self.floor or pn in self.received or (full and pn < self.received.smallest())


class Path:
    """One path: phase, tuples, 1-RTT ACK state, recovery and pacer, datagram size."""

    def __init__(
        self,
        path_id: int,
        first: PathTuple,
        recovery: PathRecovery,
        config: PathConfig = PathConfig(),
    ) -> None:
        self.path_id = path_id
        self.phase = PathPhase.VALIDATING
        self.tuples = [first]  # the first is the one we send on
        self.recovery = recovery
        self.acks = AckState(config.local_max_ack_delay)
        self.peer_max_ack_delay = config.peer_max_ack_delay
        self.max_datagram_size = config.max_datagram_size
        self.peer_backup = False  # the peer's last status: BACKUP (True) or AVAILABLE
        self.status_sequence = -1  # the last path-status sequence number applied
        self.close_deadline = math.inf

    @property
    def tuple(self) -> PathTuple:
        """The tuple packets go out on."""
        return self.tuples[0]

    def pto_period(self) -> float:
        return self.recovery.ledger.rtt.pto_period(self.peer_max_ack_delay)

    def validation_timeout(self) -> float:
        """RFC 9000 §8.2.4: 3 x the larger of this path's PTO and one at kInitialRtt."""
        initial = ledger_facade.RttEstimator(ledger_facade.INITIAL_RTT)
        longest = max(self.pto_period(), initial.pto_period(self.peer_max_ack_delay))
        return PTO_MULTIPLIER * longest

    def validation_deadline(self) -> float:
        """When the earliest tuple validation gives up (inf: none pending)."""
        return min(candidate.deadline for candidate in self.tuples)

    def deadlines(self) -> dict[TimerKind, float]:
        """This path's timers for the connection's table (inf: disarmed); pure. The loss
        timer holds the PTO back (RFC 9002 §6.2.1). Pacing is the connection's to arm:
        it depends on whether anything waits to be sent."""
        ledger = self.recovery.ledger
        loss_time = ledger.loss_time
        return {
            TimerKind.LOSS: loss_time,
            TimerKind.PTO: ledger.pto_deadline() if loss_time == math.inf else math.inf,
            TimerKind.ACK_DELAY: self.acks.ack_due,
            TimerKind.PATH_VALIDATION: self.validation_deadline(),
            TimerKind.PATH_CLOSE: self.close_deadline,
        }

    def probe(self, candidate: PathTuple, data: bytes, now: float) -> bool:
        """Starts validating `candidate` (a new 4-tuple or new CIDs: migration, NAT
        rebinding) with a PATH_CHALLENGE carrying `data`; the current tuple stays in
        use until it validates. False, and nothing sent, when the path already probes
        MAX_TUPLES: a peer showing ever new addresses must not grow the path's state
        (RFC 9000 §9.3 lets an endpoint leave an address unvalidated)."""
        self._check_live()
        if candidate not in self.tuples:
            if len(self.tuples) >= MAX_TUPLES:
                return False
            self.tuples.append(candidate)
        candidate.challenge(data, now + self.validation_timeout())
        return True

    def on_path_response(self, data: bytes) -> PathTuple | None:
        """A PATH_RESPONSE: the tuple it validates (now the one in use), or None. The
        tuple it replaces leaves the path: read `tuple` before, to retire its peer CID
        when the new tuple uses another."""
        validated = next((t for t in self.tuples if t.on_response(data)), None)
        if validated is None:
            return None
        # A validated candidate replaces the tuple in use; candidates still probing stay.
        self.tuples = [validated, *(t for t in self.tuples[1:] if t is not validated)]
        if self.phase is PathPhase.VALIDATING:
            self._apply(PathEvent.VALIDATED)
            if self.peer_backup:
                self._apply(PathEvent.BACKUP)
        return validated

    def on_validation_timeout(self, now: float) -> list[PathTuple]:
        """Drops the tuples whose validation gave up by `now` and returns them. When
        the path's first tuple fails, the path is abandoned (`close_deadline` set)."""
        failed = [t for t in self.tuples if t.deadline <= now]
        if not failed:
            return []
        current = self.tuple
        if self.phase is PathPhase.VALIDATING and current in failed:
            self.abandon(now)
        # The tuple in use stays even when its re-validation failed (nothing replaces it),
        # its challenge given up.
        self.tuples = [current, *(t for t in self.tuples[1:] if t not in failed)]
        if current in failed:
            current.challenges = []
            current.deadline = math.inf
        return failed

    def on_peer_status(self, sequence: int, backup: bool) -> bool:
        """PATH_STATUS_BACKUP (`backup`) or PATH_STATUS_AVAILABLE with its sequence number;
        False when older than one applied, or the path is closing (both are ignored)."""
        if sequence <= self.status_sequence or self.phase in (PathPhase.CLOSING, PathPhase.CLOSED):
            return False
        self.status_sequence = sequence
        self.peer_backup = backup
        wanted = PathEvent.BACKUP if backup else PathEvent.AVAILABLE
        if wanted in TRANSITIONS[self.phase]:
            self._apply(wanted)
        return True

    def abandon(self, now: float) -> None:
        """PATH_ABANDON sent or received: the path closes 3 PTOs from `now` (draft-21 §3.4)."""
        self._apply(PathEvent.ABANDON)
        self.close_deadline = now + PTO_MULTIPLIER * self.pto_period()
        for candidate in self.tuples:
            candidate.deadline = math.inf

    def on_close_timeout(self, now: float) -> bool:
        """True when the close deadline passed and the path is now CLOSED."""
        if self.phase is not PathPhase.CLOSING or now < self.close_deadline:
            return False
        self._apply(PathEvent.DRAINED)
        self.close_deadline = math.inf
        return True

    def set_max_datagram_size(self, size: int) -> None:
        """The PMTU hook: the search (or a PMTU-lowering event) sets the path's size."""
        if size < MIN_DATAGRAM_SIZE:
            raise PacketError(f"datagram size {size} below {MIN_DATAGRAM_SIZE}")
        self.max_datagram_size = size
        self.recovery.controller.max_datagram_size = size

    def _check_live(self) -> None:
        if self.phase in (PathPhase.CLOSING, PathPhase.CLOSED):
            raise PathStateError(f"path {self.path_id} is {self.phase.value}")

    def _apply(self, event: PathEvent) -> None:
        self.phase = next_phase(self.phase, event)
