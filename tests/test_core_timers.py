"""The connection's timer table (#16 stage 4): named kinds, a pure minimum, a firing order."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netsched_client.core.timers import (
    CONNECTION,
    CONNECTION_KINDS,
    Deadline,
    TimerKind,
    Timers,
)

PATH_KINDS = [kind for kind in TimerKind if kind not in CONNECTION_KINDS]


def test_an_empty_table_has_no_next_timer_and_fires_nothing() -> None:
    timers = Timers()
    assert timers.next_timer() is None
    assert timers.fire(1e9) == []


def test_next_timer_is_the_earliest_and_changes_nothing() -> None:
    timers = Timers()
    timers.arm(TimerKind.IDLE, 30.0)
    timers.arm(TimerKind.PTO, 1.5, path_id=2)
    timers.arm(TimerKind.ACK_DELAY, 1.025, path_id=0)
    assert timers.next_timer() == Deadline(1.025, TimerKind.ACK_DELAY, 0)
    assert timers.next_timer() == Deadline(1.025, TimerKind.ACK_DELAY, 0)
    assert len(timers) == 3


def test_arming_again_moves_the_deadline_and_inf_disarms() -> None:
    timers = Timers()
    timers.arm(TimerKind.LOSS, 2.0, path_id=1)
    timers.arm(TimerKind.LOSS, 3.0, path_id=1)
    assert timers.deadline(TimerKind.LOSS, 1) == 3.0
    timers.arm(TimerKind.LOSS, math.inf, path_id=1)
    assert timers.deadline(TimerKind.LOSS, 1) == math.inf
    assert timers.next_timer() is None


def test_fire_returns_the_due_timers_in_order_and_disarms_them() -> None:
    timers = Timers()
    timers.arm(TimerKind.PACING, 1.0, path_id=0)
    timers.arm(TimerKind.PTO, 1.0, path_id=1)
    timers.arm(TimerKind.LOSS, 1.0, path_id=1)
    timers.arm(TimerKind.PTO, 1.0, path_id=0)
    timers.arm(TimerKind.IDLE, 1.0)
    timers.arm(TimerKind.ACK_DELAY, 0.5, path_id=3)
    timers.arm(TimerKind.KEY_DISCARD, 1.0001)
    assert timers.fire(1.0) == [
        (TimerKind.ACK_DELAY, 3),
        (TimerKind.IDLE, CONNECTION),
        (TimerKind.LOSS, 1),
        (TimerKind.PTO, 0),
        (TimerKind.PTO, 1),
        (TimerKind.PACING, 0),
    ]
    assert timers.fire(1.0) == []
    assert timers.next_timer() == Deadline(1.0001, TimerKind.KEY_DISCARD, CONNECTION)


def test_every_kind_has_its_scope() -> None:
    timers = Timers()
    for kind in CONNECTION_KINDS:
        timers.arm(kind, 1.0)
        with pytest.raises(ValueError):
            timers.arm(kind, 1.0, path_id=0)
    for kind in PATH_KINDS:
        timers.arm(kind, 1.0, path_id=0)
        with pytest.raises(ValueError):
            timers.arm(kind, 1.0)
        with pytest.raises(ValueError):
            timers.deadline(kind, -2)
    assert len(timers) == len(TimerKind)


def test_remove_path_drops_only_that_paths_timers() -> None:
    timers = Timers()
    for kind in PATH_KINDS:
        timers.arm(kind, 5.0, path_id=1)
        timers.arm(kind, 6.0, path_id=2)
    timers.arm(TimerKind.IDLE, 7.0)
    timers.remove_path(1)
    assert timers.next_timer() == Deadline(6.0, PATH_KINDS[0], 2)
    assert len(timers) == len(PATH_KINDS) + 1
    timers.disarm(TimerKind.IDLE)
    assert timers.deadline(TimerKind.IDLE) == math.inf


_slot = st.one_of(
    st.tuples(st.sampled_from(sorted(CONNECTION_KINDS)), st.just(CONNECTION)),
    st.tuples(st.sampled_from(PATH_KINDS), st.integers(0, 3)),
)
_operations = st.lists(
    st.one_of(
        st.tuples(st.just("arm"), _slot, st.floats(0, 100) | st.just(math.inf)),
        st.tuples(st.just("disarm"), _slot, st.just(0.0)),
        st.tuples(st.just("fire"), _slot, st.floats(0, 100)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(_operations)
def test_the_table_matches_a_model(
    operations: list[tuple[str, tuple[TimerKind, int], float]],
) -> None:
    """Random arm / disarm / fire sequences: next_timer is always the minimum of what is
    armed, and fire returns exactly the due ones, sorted, and leaves the rest."""
    timers = Timers()
    model: dict[tuple[TimerKind, int], float] = {}
    for name, (kind, path_id), value in operations:
        if name == "arm":
            timers.arm(kind, value, path_id)
            if value == math.inf:
                model.pop((kind, path_id), None)
            else:
                model[(kind, path_id)] = value
        elif name == "disarm":
            timers.disarm(kind, path_id)
            model.pop((kind, path_id), None)
        else:
            due = sorted((when, k, p) for (k, p), when in model.items() if when <= value)
            assert timers.fire(value) == [(k, p) for _, k, p in due]
            model = {key: when for key, when in model.items() if when > value}
        expected = min(((when, k, p) for (k, p), when in model.items()), default=None)
        found = timers.next_timer()
        assert ((found.when, found.kind, found.path_id) if found else None) == expected
        assert len(timers) == len(model)
