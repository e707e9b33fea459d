"""The core's Path and its tuples (#16 stage 4): phases as a table, validation per tuple,
NAT rebinding keeping the path's state, the 1-RTT ACK state, the PMTU hook."""

from __future__ import annotations

import math
from types import ModuleType

import pytest
from core_backends import backends
from hypothesis import given, settings
from hypothesis import strategies as st

from netsched_client.core import ledger
from netsched_client.core.errors import PacketError, PathStateError
from netsched_client.core.path import (
    ACK_ELICITING_THRESHOLD,
    MAX_CHALLENGES,
    MAX_TUPLES,
    TRANSITIONS,
    AckState,
    Path,
    PathConfig,
    PathEvent,
    PathPhase,
    PathTuple,
    new_recovery,
    next_phase,
)
from netsched_client.core.timers import TimerKind, Timers
from netsched_client.proto.cc.base import RateSample, SentState

m = backends(ledger)

CHALLENGE = b"\x01" * 8
# RFC 9002 §6.2.1 before any sample: 333 ms + 4 x 166.5 ms + 25 ms max_ack_delay.
INITIAL_PTO = 0.333 + 4 * 0.1665 + 0.025


class FixedWindow:
    """A congestion controller with a fixed window (the path only reads and sets it)."""

    def __init__(self) -> None:
        self.congestion_window = 100 * 1200
        self.pacing_rate: float | None = None
        self.max_datagram_size = 1200

    def on_sent(self, size: int, now: float, state: SentState) -> None:
        pass

    def on_ack(self, sample: RateSample, now: float) -> None:
        pass

    def on_loss(self, size: int, now: float, state: SentState, bytes_in_flight: int) -> None:
        pass

    def on_persistent_congestion(self, now: float) -> None:
        pass


def phase(path: Path) -> PathPhase:
    """The path's phase, read afresh: mypy keeps an attribute narrowed across calls."""
    return path.phase


def first_tuple(remote: tuple[str, int] = ("192.0.2.1", 443)) -> PathTuple:
    return PathTuple(("198.51.100.7", 50000), remote, local_cid=b"L0", peer_cid=b"P0")


def make_path(backend: ModuleType = ledger, path_id: int = 0) -> Path:
    return Path(path_id, first_tuple(), new_recovery(FixedWindow(), backend=backend))


def validated_path(backend: ModuleType = ledger) -> Path:
    path = make_path(backend)
    path.probe(path.tuple, CHALLENGE, now=0.0)
    assert path.on_path_response(CHALLENGE) is path.tuple
    return path


# -- the table -----------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", list(PathPhase))
@pytest.mark.parametrize("event", list(PathEvent))
def test_every_phase_and_event_moves_by_the_table_or_raises(
    phase: PathPhase, event: PathEvent
) -> None:
    if event in TRANSITIONS[phase]:
        assert next_phase(phase, event) is TRANSITIONS[phase][event]
    else:
        with pytest.raises(PathStateError):
            next_phase(phase, event)


def test_the_table_covers_every_phase_and_closed_is_final() -> None:
    assert set(TRANSITIONS) == set(PathPhase)
    assert TRANSITIONS[PathPhase.CLOSED] == {}
    reachable = {target for moves in TRANSITIONS.values() for target in moves.values()}
    assert reachable == set(PathPhase) - {PathPhase.VALIDATING}


# -- phases through the path's own calls ---------------------------------------------------------


def test_a_path_starts_validating_and_its_first_response_activates_it(m: ModuleType) -> None:
    path = make_path(m)
    assert phase(path) is PathPhase.VALIDATING
    path.probe(path.tuple, CHALLENGE, now=1.0)
    assert path.validation_deadline() == pytest.approx(1.0 + 3 * INITIAL_PTO)
    assert path.on_path_response(b"\x02" * 8) is None
    assert phase(path) is PathPhase.VALIDATING
    assert path.on_path_response(CHALLENGE) is path.tuple
    assert phase(path) is PathPhase.ACTIVE
    assert path.tuple.validated
    assert path.validation_deadline() == math.inf


def test_backup_and_available_move_between_active_and_standby(m: ModuleType) -> None:
    path = validated_path(m)
    assert path.on_peer_status(1, backup=True)
    assert phase(path) is PathPhase.STANDBY
    assert path.on_peer_status(2, backup=True)  # already standby: stays
    assert phase(path) is PathPhase.STANDBY
    assert path.on_peer_status(3, backup=False)
    assert phase(path) is PathPhase.ACTIVE


def test_an_older_status_is_ignored() -> None:
    """draft-21 §3.3: status frames share one sequence space; a late one changes nothing."""
    path = validated_path()
    assert path.on_peer_status(5, backup=True)
    assert not path.on_peer_status(4, backup=False)
    assert not path.on_peer_status(5, backup=False)
    assert phase(path) is PathPhase.STANDBY


def test_a_backup_status_during_validation_applies_when_validated() -> None:
    path = make_path()
    path.probe(path.tuple, CHALLENGE, now=0.0)
    assert path.on_peer_status(0, backup=True)
    assert phase(path) is PathPhase.VALIDATING
    path.on_path_response(CHALLENGE)
    assert phase(path) is PathPhase.STANDBY


@pytest.mark.parametrize("backup", [False, True])
def test_abandon_closes_after_three_ptos(m: ModuleType, backup: bool) -> None:
    path = validated_path(m)
    path.on_peer_status(0, backup=backup)
    path.abandon(now=10.0)
    assert phase(path) is PathPhase.CLOSING
    assert path.close_deadline == pytest.approx(10.0 + 3 * INITIAL_PTO)
    assert not path.on_close_timeout(10.0 + 3 * INITIAL_PTO - 0.001)
    assert path.on_close_timeout(path.close_deadline)
    assert phase(path) is PathPhase.CLOSED
    assert path.close_deadline == math.inf
    assert not path.on_close_timeout(100.0)


def test_a_closing_path_ignores_status_and_refuses_abandon_and_probes() -> None:
    path = validated_path()
    path.abandon(now=0.0)
    assert not path.on_peer_status(9, backup=True)
    with pytest.raises(PathStateError):
        path.abandon(now=1.0)
    with pytest.raises(PathStateError):
        path.probe(first_tuple(("203.0.113.9", 443)), CHALLENGE, now=1.0)
    path.on_close_timeout(path.close_deadline)
    with pytest.raises(PathStateError):
        path.abandon(now=50.0)


def test_an_abandoned_validating_path_stops_validating() -> None:
    path = make_path()
    path.probe(path.tuple, CHALLENGE, now=0.0)
    path.abandon(now=0.5)
    assert phase(path) is PathPhase.CLOSING
    assert path.validation_deadline() == math.inf
    assert path.on_path_response(CHALLENGE) is path.tuple  # late, validates nothing more
    assert phase(path) is PathPhase.CLOSING


def test_a_failed_first_validation_abandons_the_path() -> None:
    """draft-21 §3.4: a failed validation consumes the path ID (PATH_ABANDON)."""
    path = make_path()
    path.probe(path.tuple, CHALLENGE, now=0.0)
    deadline = path.validation_deadline()
    assert path.on_validation_timeout(deadline - 0.001) == []
    assert path.on_validation_timeout(deadline) == [path.tuple]
    assert phase(path) is PathPhase.CLOSING
    assert path.close_deadline == pytest.approx(deadline + 3 * INITIAL_PTO)


# -- tuples --------------------------------------------------------------------------------------


def test_nat_rebinding_changes_the_tuple_not_the_path(m: ModuleType) -> None:
    path = validated_path(m)
    for pn in range(3):
        path.recovery.on_sent(pn, 1200, now=0.1 * pn)
    recovery = path.recovery
    old = path.tuple
    rebound = PathTuple(old.local, ("192.0.2.1", 61000), old.local_cid, peer_cid=b"P1")
    path.probe(rebound, b"\x03" * 8, now=1.0)
    assert path.tuple is old  # still sending on the old one
    assert path.on_path_response(b"\x03" * 8) is rebound
    assert path.tuples == [rebound]
    assert phase(path) is PathPhase.ACTIVE
    assert path.recovery is recovery
    assert recovery.ledger.next_pn == 3
    assert recovery.bytes_in_flight == 3 * 1200


def test_a_failed_candidate_is_dropped_and_the_path_carries_on() -> None:
    path = validated_path()
    candidate = first_tuple(("203.0.113.9", 443))
    path.probe(candidate, b"\x04" * 8, now=2.0)
    assert path.on_validation_timeout(path.validation_deadline()) == [candidate]
    assert path.tuples == [path.tuple]
    assert path.tuple is not candidate
    assert phase(path) is PathPhase.ACTIVE


def test_a_failed_revalidation_of_the_tuple_in_use_keeps_it() -> None:
    path = validated_path()
    path.probe(path.tuple, b"\x05" * 8, now=3.0)
    current = path.tuple
    assert path.on_validation_timeout(path.validation_deadline()) == [current]
    assert path.tuples == [current]
    assert current.challenges == []
    assert path.validation_deadline() == math.inf
    assert phase(path) is PathPhase.ACTIVE


def test_any_outstanding_challenge_validates_and_old_ones_are_forgotten() -> None:
    candidate = first_tuple()
    datas = [bytes([n]) * 8 for n in range(MAX_CHALLENGES + 1)]
    for n, data in enumerate(datas):
        candidate.challenge(data, deadline=10.0 + n)
    assert candidate.deadline == 10.0  # a resend keeps the first attempt's deadline
    assert not candidate.on_response(datas[0])
    assert candidate.on_response(datas[1])
    assert candidate.validated
    with pytest.raises(ValueError):
        candidate.challenge(b"short", deadline=1.0)


def test_a_path_probes_at_most_max_tuples() -> None:
    path = validated_path()
    for n in range(MAX_TUPLES - 1):
        assert path.probe(first_tuple(("203.0.113.9", 1000 + n)), CHALLENGE, now=0.0)
    extra = first_tuple(("203.0.113.9", 2000))
    assert not path.probe(extra, CHALLENGE, now=0.0)
    assert extra.challenges == []
    assert len(path.tuples) == MAX_TUPLES
    assert path.probe(path.tuples[1], b"\x06" * 8, now=1.0)  # one it holds: a resend


def test_validation_waits_for_the_larger_of_the_paths_pto_and_the_initial_one(
    m: ModuleType,
) -> None:
    """RFC 9000 §8.2.4: 3 x max(PTO, PTO at kInitialRtt)."""
    path = validated_path(m)
    path.recovery.on_sent(0, 1200, now=0.0)
    path.recovery.on_ack([(0, 1)], 0.0, now=2.0)  # a 2 s RTT: PTO 2 + 4 x 1 + 0.025
    assert path.validation_timeout() == pytest.approx(3 * (2.0 + 4.0 + 0.025))
    fast = validated_path(m)
    fast.recovery.on_sent(0, 1200, now=0.0)
    fast.recovery.on_ack([(0, 1)], 0.0, now=0.01)
    assert fast.validation_timeout() == pytest.approx(3 * INITIAL_PTO)


# -- timers --------------------------------------------------------------------------------------


def test_a_paths_deadlines_feed_the_timer_table(m: ModuleType) -> None:
    path = validated_path(m)
    timers = Timers()
    timers.arm_path(path.path_id, path.deadlines())
    assert timers.next_timer() is None  # nothing sent, nothing received, nothing probed
    path.recovery.on_sent(0, 1200, now=1.0)
    path.acks.on_received(0, ack_eliciting=True, now=1.0)
    timers.arm_path(path.path_id, path.deadlines())
    assert timers.deadline(TimerKind.PTO, 0) == pytest.approx(1.0 + INITIAL_PTO)
    assert timers.deadline(TimerKind.ACK_DELAY, 0) == pytest.approx(1.025)
    assert timers.fire(1.025) == [(TimerKind.ACK_DELAY, 0)]
    path.abandon(now=2.0)
    timers.arm_path(path.path_id, path.deadlines())
    assert timers.deadline(TimerKind.PATH_CLOSE, 0) == path.close_deadline


def test_an_armed_loss_timer_holds_the_pto_back(m: ModuleType) -> None:
    path = validated_path(m)
    for pn in range(2):
        path.recovery.on_sent(pn, 1200, now=0.0)
    path.recovery.on_ack([(1, 2)], 0.0, now=0.1)  # 0 is below the largest acked, not yet lost
    deadlines = path.deadlines()
    assert deadlines[TimerKind.LOSS] == path.recovery.ledger.loss_time < math.inf
    assert deadlines[TimerKind.PTO] == math.inf


# -- PMTU ----------------------------------------------------------------------------------------


def test_the_pmtu_hook_sets_the_paths_and_the_controllers_size() -> None:
    path = make_path()
    path.set_max_datagram_size(1452)
    assert path.max_datagram_size == 1452
    assert path.recovery.controller.max_datagram_size == 1452
    with pytest.raises(PacketError):
        path.set_max_datagram_size(1199)


def test_the_config_sizes_the_pacer_and_the_rtt(m: ModuleType) -> None:
    config = PathConfig(max_datagram_size=1350, initial_rtt=0.1, peer_max_ack_delay=0.01)
    recovery = new_recovery(FixedWindow(), config, backend=m)
    assert recovery.pacer.packet_size == 1350
    assert recovery.ledger.rtt.smoothed_rtt == 0.1
    assert recovery.ledger.rtt.max_ack_delay == 0.01


# -- ACK state -----------------------------------------------------------------------------------


def test_an_ack_is_due_after_max_ack_delay_or_at_the_second_packet() -> None:
    acks = AckState(max_ack_delay=0.025)
    assert acks.on_received(0, ack_eliciting=True, now=1.0)
    assert acks.ack_due == 1.025
    assert acks.on_received(1, ack_eliciting=True, now=1.01)
    assert acks.ack_eliciting == ACK_ELICITING_THRESHOLD
    assert acks.ack_due == 1.01
    acks.on_ack_sent()
    assert (acks.ack_eliciting, acks.ack_due) == (0, math.inf)
    assert list(acks.received) == [(0, 2)]


def test_non_eliciting_packets_are_recorded_but_arm_nothing() -> None:
    acks = AckState(max_ack_delay=0.025)
    assert acks.on_received(0, ack_eliciting=False, now=1.0)
    assert acks.on_received(5, ack_eliciting=False, now=1.0)
    assert acks.ack_due == math.inf
    assert list(acks.received) == [(0, 1), (5, 6)]


@pytest.mark.parametrize("pn", [3, 10])
def test_a_packet_out_of_order_is_acked_at_once(pn: int) -> None:
    acks = AckState(max_ack_delay=0.025)
    for n in (4, 5):
        acks.on_received(n, ack_eliciting=False, now=1.0)
    acks.on_received(pn, ack_eliciting=True, now=2.0)
    assert acks.ack_due == 2.0


def test_duplicates_are_refused() -> None:
    acks = AckState(max_ack_delay=0.025)
    assert acks.on_received(7, ack_eliciting=True, now=1.0)
    assert not acks.on_received(7, ack_eliciting=True, now=1.1)
    assert acks.ack_eliciting == 1


def test_below_a_full_range_set_counts_as_a_duplicate() -> None:
    acks = AckState(max_ack_delay=0.025)
    limit = acks.received.max_ranges
    for n in range(limit + 1):
        acks.on_received(2 * n, ack_eliciting=False, now=0.0)
    assert acks.received.smallest() == 2
    assert not acks.on_received(1, ack_eliciting=True, now=0.0)
    assert acks.on_received(3, ack_eliciting=True, now=0.0)


def test_an_acked_ack_prunes_the_ranges() -> None:
    acks = AckState(max_ack_delay=0.025)
    for n in (0, 1, 2, 4, 5):
        acks.on_received(n, ack_eliciting=True, now=0.0)
    acks.on_ack_acked(2)
    assert list(acks.received) == [(4, 6)]
    assert not acks.on_received(1, ack_eliciting=True, now=0.0)  # pruned, still a duplicate
    assert acks.on_received(3, ack_eliciting=True, now=0.0)


# -- random sequences ----------------------------------------------------------------------------

_path_ops = st.lists(
    st.one_of(
        st.tuples(st.just("probe"), st.integers(0, 5)),
        st.tuples(st.just("response"), st.integers(0, 5)),
        st.tuples(st.just("status"), st.integers(0, 8)),
        st.tuples(st.just("validation_timeout"), st.integers(0, 5)),
        st.tuples(st.just("abandon"), st.integers(0, 0)),
        st.tuples(st.just("close_timeout"), st.integers(0, 0)),
        st.tuples(st.just("tick"), st.integers(1, 20)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(_path_ops)
def test_random_path_events_keep_the_invariants(operations: list[tuple[str, int]]) -> None:
    """Every phase change is a table move; an active or standby path sends on a
    validated tuple; tuples stay between 1 and MAX_TUPLES; a closing path has no
    validation pending; a closed one stays closed; illegal moves raise PathStateError."""
    path = make_path()
    candidates = [first_tuple(("203.0.113.9", port)) for port in range(6)]
    candidates[0] = path.tuple
    now = 0.0
    for name, value in operations:
        before = path.phase
        try:
            if name == "probe":
                path.probe(candidates[value], bytes([value]) * 8, now)
            elif name == "response":
                path.on_path_response(bytes([value]) * 8)
            elif name == "status":
                path.on_peer_status(value, backup=value % 2 == 1)
            elif name == "validation_timeout":
                path.on_validation_timeout(now + value)
            elif name == "abandon":
                path.abandon(now)
            elif name == "close_timeout":
                path.on_close_timeout(now)
            else:
                now += value
        except PathStateError:
            assert path.phase is before
            continue
        moved = path.phase is not before
        assert not moved or path.phase in _reachable(before)
        assert 1 <= len(path.tuples) <= MAX_TUPLES
        if path.phase in (PathPhase.ACTIVE, PathPhase.STANDBY):
            assert path.tuple.validated
        if path.phase in (PathPhase.CLOSING, PathPhase.CLOSED):
            assert path.validation_deadline() == math.inf
        assert before is not PathPhase.CLOSED or path.phase is PathPhase.CLOSED


def _reachable(phase: PathPhase) -> set[PathPhase]:
    """The phases one call can reach: one table move, or two (validated, then backup)."""
    one = set(TRANSITIONS[phase].values())
    return one | {target for step in one for target in TRANSITIONS[step].values()}


_ack_ops = st.lists(st.tuples(st.integers(0, 40), st.booleans(), st.floats(0, 0.05)), max_size=80)


@settings(max_examples=300, deadline=None)
@given(_ack_ops)
def test_random_arrivals_keep_the_ack_state(arrivals: list[tuple[int, bool, float]]) -> None:
    """Every new packet is recorded once; an ACK is due within max_ack_delay of the
    first unacknowledged ack-eliciting packet, and only when there is one."""
    acks = AckState(max_ack_delay=0.025)
    seen: set[int] = set()
    now = 0.0
    first_pending = math.inf
    for pn, eliciting, step in arrivals:
        now += step
        assert acks.on_received(pn, eliciting, now) is (pn not in seen)
        if pn not in seen and eliciting:
            first_pending = min(first_pending, now)
        seen.add(pn)
        assert all(n in acks.received for n in seen)
        if acks.ack_eliciting:
            assert acks.ack_due <= first_pending + acks.max_ack_delay
        else:
            assert acks.ack_due == math.inf
        if acks.ack_due <= now:
            acks.on_ack_sent()
            first_pending = math.inf
