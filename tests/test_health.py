"""Health tracking: every transition of the state machine, driven by a fake clock."""

from __future__ import annotations

import pytest

from netsched_edge.balancing.health import Health, HealthTracker

H, E, P = Health.HEALTHY, Health.EJECTED, Health.PROBING


def ejected_tracker(now: float = 0.0) -> HealthTracker:
    """A tracker (defaults: 3 failures eject, 2 successes restore, 5 s) ejected at `now`."""
    tracker = HealthTracker()
    for _ in range(3):
        tracker.on_failure(now)
    assert tracker.state is E
    return tracker


def probing_tracker() -> HealthTracker:
    """Ejected at 0 s for 5 s, then moved to PROBING by a good check at 5 s (1 success so far)."""
    tracker = ejected_tracker()
    tracker.on_check(True, 5.0)
    assert tracker.state is P
    return tracker


def test_starts_healthy_and_available() -> None:
    tracker = HealthTracker()
    assert tracker.state is H
    assert tracker.available(0.0)
    assert not tracker.transitions


@pytest.mark.parametrize("field", ["unhealthy_after", "healthy_after", "ejection_s"])
def test_rejects_bad_settings(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        HealthTracker(**{field: 0})


def test_rejects_non_finite_ejection() -> None:
    with pytest.raises(ValueError, match="ejection_s"):
        HealthTracker(ejection_s=float("inf"))


# --- HEALTHY --------------------------------------------------------------------------


def test_healthy_to_ejected_after_consecutive_failures_of_both_kinds() -> None:
    tracker = HealthTracker()
    tracker.on_failure(1.0)
    tracker.on_check(False, 2.0)
    assert tracker.state is H
    tracker.on_failure(3.0)
    assert tracker.state is E
    assert not tracker.available(3.0)
    assert tracker.transitions == {(H, E): 1}


def test_healthy_success_breaks_the_failure_streak() -> None:
    tracker = HealthTracker()
    for now in range(20):
        tracker.on_failure(now)
        tracker.on_failure(now)
        if now % 2:
            tracker.on_success(now)
        else:
            tracker.on_check(True, now)
    assert tracker.state is H
    assert not tracker.transitions


def test_unhealthy_after_one_ejects_on_first_failure() -> None:
    tracker = HealthTracker(unhealthy_after=1)
    tracker.on_check(False, 0.0)
    assert tracker.state is E


# --- EJECTED --------------------------------------------------------------------------


def test_ejected_becomes_available_exactly_when_ejection_expires() -> None:
    tracker = ejected_tracker(now=10.0)
    assert not tracker.available(14.999)
    assert tracker.available(15.0)
    assert tracker.state is E  # available() is pure: the state moves on the next input


def test_ejected_expiry_moves_to_probing_on_next_input() -> None:
    tracker = ejected_tracker()
    tracker.on_success(7.0)
    assert tracker.state is P
    assert tracker.transitions == {(H, E): 1, (E, P): 1}


def test_ejected_ignores_passive_outcomes_of_earlier_requests() -> None:
    tracker = ejected_tracker()
    for _ in range(10):
        tracker.on_success(1.0)
        tracker.on_failure(2.0)
    tracker.on_success(3.0)
    tracker.on_success(3.0)
    assert tracker.state is E
    assert not tracker.available(4.9)  # failures while ejected do not extend the ejection
    assert tracker.available(5.0)


def test_ejected_restored_early_by_good_active_checks() -> None:
    tracker = ejected_tracker()
    tracker.on_check(True, 1.0)
    assert tracker.state is E
    tracker.on_check(True, 2.0)
    assert tracker.state is H
    assert tracker.available(2.0)
    assert tracker.transitions == {(H, E): 1, (E, H): 1}


def test_ejected_failed_check_breaks_the_success_streak() -> None:
    tracker = ejected_tracker()
    tracker.on_check(True, 1.0)
    tracker.on_check(False, 2.0)
    tracker.on_check(True, 3.0)
    assert tracker.state is E
    tracker.on_check(True, 4.0)
    assert tracker.state is H


def test_good_checks_while_ejected_count_toward_restoration_in_probing() -> None:
    tracker = ejected_tracker()
    tracker.on_check(True, 4.0)  # one good check while ejected
    tracker.on_success(6.0)  # expired -> probing, and the second success restores
    assert tracker.state is H
    assert tracker.transitions == {(H, E): 1, (E, P): 1, (P, H): 1}


def test_failed_check_at_expiry_reejects_from_probing() -> None:
    tracker = ejected_tracker()
    tracker.on_check(False, 5.0)  # expired first, then the failure hits PROBING
    assert tracker.state is E
    assert tracker.transitions == {(H, E): 1, (E, P): 1, (P, E): 1}
    assert not tracker.available(14.999)  # doubled: 5 s -> 10 s
    assert tracker.available(15.0)


# --- PROBING --------------------------------------------------------------------------


def test_probing_is_available_for_real_traffic() -> None:
    tracker = probing_tracker()
    assert tracker.available(5.0)


def test_probing_restored_by_passive_successes() -> None:
    tracker = probing_tracker()
    tracker.on_success(5.5)
    assert tracker.state is H


def test_probing_restored_by_active_checks() -> None:
    tracker = ejected_tracker()
    tracker.on_success(6.0)  # -> probing; passive success while probing counts
    assert tracker.state is P
    tracker.on_check(True, 7.0)
    assert tracker.state is H


def test_probing_single_failure_reejects_with_doubled_time() -> None:
    tracker = probing_tracker()
    tracker.on_failure(6.0)
    assert tracker.state is E
    assert not tracker.available(15.999)
    assert tracker.available(16.0)
    assert tracker.transitions[P, E] == 1


def test_reejection_time_doubles_up_to_eight_times() -> None:
    tracker = ejected_tracker()
    now = 0.0
    for duration in [5.0, 10.0, 20.0, 40.0, 40.0, 40.0]:
        assert not tracker.available(now + duration - 0.001)
        assert tracker.available(now + duration)
        now += duration
        tracker.on_failure(now)  # expiry -> probing -> failure -> ejected again
        assert tracker.state is E
    assert tracker.transitions == {(H, E): 1, (E, P): 6, (P, E): 6}


def test_full_recovery_resets_the_ejection_time() -> None:
    tracker = probing_tracker()
    tracker.on_failure(5.0)  # re-ejected for 10 s, until 15 s
    tracker.on_check(True, 16.0)
    tracker.on_check(True, 17.0)
    assert tracker.state is H
    for _ in range(3):
        tracker.on_failure(20.0)
    assert tracker.state is E
    assert not tracker.available(24.999)
    assert tracker.available(25.0)  # base 5 s again, not 20 s


def test_probing_without_full_recovery_keeps_the_backoff() -> None:
    tracker = HealthTracker(healthy_after=3)
    for _ in range(3):
        tracker.on_failure(0.0)
    tracker.on_success(5.0)  # probing, 1 of 3
    tracker.on_success(6.0)  # 2 of 3
    tracker.on_failure(7.0)  # not recovered: the next ejection is doubled
    assert tracker.state is E
    assert not tracker.available(16.999)
    assert tracker.available(17.0)
