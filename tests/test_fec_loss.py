"""The loss estimator: send-order reassembly, and accuracy on simulated loss (seeded)."""

from __future__ import annotations

import math
import random

import pytest

from netsched_client.fec.loss import LossEstimator, LossStats

RTT = 0.1
SEND_INTERVAL = 0.001  # one packet per ms: 100 packets per RTT


def bernoulli(rng: random.Random, rate: float, count: int) -> list[bool]:
    return [rng.random() < rate for _ in range(count)]


def gilbert_elliott(
    rng: random.Random,
    count: int,
    enter: float,
    leave: float,
    loss_good: float = 0.0,
    loss_bad: float = 1.0,
) -> list[bool]:
    """Losses of a two-state chain started in its stationary distribution."""
    bad = rng.random() < enter / (enter + leave)
    outcomes = []
    for _ in range(count):
        outcomes.append(rng.random() < (loss_bad if bad else loss_good))
        bad = rng.random() >= leave if bad else rng.random() < enter
    return outcomes


def empirical(outcomes: list[bool]) -> tuple[float, float]:
    """(loss rate, mean run of consecutive losses) of a whole sequence."""
    losses = sum(outcomes)
    runs = sum(1 for i, lost in enumerate(outcomes) if lost and (i == 0 or not outcomes[i - 1]))
    return losses / len(outcomes), (losses / runs if runs else 1.0)


def feed_in_order(estimator: LossEstimator, outcomes: list[bool]) -> LossStats:
    for pn, lost in enumerate(outcomes):
        now = pn * SEND_INTERVAL
        (estimator.on_lost if lost else estimator.on_acked)(pn, now)
        estimator.settle(now, RTT)
    return estimator.stats


def feed_like_recovery(estimator: LossEstimator, outcomes: list[bool]) -> LossStats:
    """Acks arrive one RTT after sending, losses are declared 9/8 RTT after: out of order."""
    events = []
    for pn, lost in enumerate(outcomes):
        sent = pn * SEND_INTERVAL
        events.append((sent + (RTT * 9 / 8 if lost else RTT), pn, lost))
    events.sort()
    for at, pn, lost in events:
        (estimator.on_lost if lost else estimator.on_acked)(pn, at)
        estimator.settle(at, RTT)
    estimator.settle(events[-1][0] + 10 * RTT, RTT)
    return estimator.stats


# -- reassembly in send order -------------------------------------------------------


def test_exact_before_memory_fills() -> None:
    outcomes = [False, True, True, False, True, False, False, True, True, True]
    stats = feed_in_order(LossEstimator(memory=100), outcomes)
    assert stats.samples == 10
    assert math.isclose(stats.loss_rate, 0.6)
    assert math.isclose(stats.mean_burst, 2.0)  # runs of 2, 1, 3


def test_no_loss_and_all_loss() -> None:
    assert feed_in_order(LossEstimator(), [False] * 50) == LossStats(0.0, 1.0, 50)
    stats = feed_in_order(LossEstimator(memory=100), [True] * 50)
    assert stats.loss_rate == 1.0 and stats.mean_burst == pytest.approx(50.0)
    assert LossEstimator().stats == LossStats(0.0, 1.0, 0)


def test_out_of_order_reports_count_in_send_order() -> None:
    outcomes = gilbert_elliott(random.Random(7), 5000, 0.02, 0.3)
    in_order = feed_in_order(LossEstimator(memory=1000), outcomes)
    reordered = feed_like_recovery(LossEstimator(memory=1000), outcomes)
    assert reordered == in_order  # the same outcomes in the same order: the same floats
    assert in_order.samples == 5000


def test_outcomes_wait_for_an_earlier_packet() -> None:
    estimator = LossEstimator(memory=100)
    estimator.on_acked(1, 1.0)
    estimator.on_acked(2, 1.0)
    estimator.settle(1.0, RTT)
    assert estimator.stats.samples == 0  # packet 0 may still be declared lost
    estimator.on_lost(0, 1.05)
    estimator.settle(1.05, RTT)
    stats = estimator.stats
    assert (stats.samples, stats.mean_burst) == (3, 1.0)
    assert stats.loss_rate == pytest.approx(1 / 3)


def test_a_packet_never_reported_is_given_up_after_the_reorder_time() -> None:
    estimator = LossEstimator(memory=100, reorder_rtts=2.0)
    rtt = 0.125  # exact in binary, so that the boundary is too
    estimator.on_lost(0, 1.0)
    estimator.on_lost(2, 1.0)  # 1 never gets an outcome (skipped or untracked)
    estimator.on_acked(3, 1.0)
    estimator.settle(1.0 + 2 * rtt - 1e-6, rtt)
    assert estimator.stats.samples == 1
    estimator.settle(1.0 + 2 * rtt, rtt)
    stats = estimator.stats
    assert stats.samples == 3
    # Nothing is known about 1, so 0 and 2 form one run of 2 losses.
    assert math.isclose(stats.mean_burst, 2.0)


def test_pending_outcomes_are_bounded() -> None:
    estimator = LossEstimator(memory=100, max_pending=10)
    for pn in range(1, 12):  # 0 is never reported and settle() is never called
        estimator.on_acked(pn, 0.0)
    assert estimator.stats.samples == 1  # the 11th forced the oldest out
    estimator.on_lost(0, 0.0)  # now older than everything settled: ignored
    assert estimator.stats == LossStats(0.0, 1.0, 1)


def test_a_later_report_corrects_a_pending_one_but_not_a_settled_one() -> None:
    estimator = LossEstimator(memory=100)
    estimator.on_acked(1, 0.0)
    estimator.on_lost(1, 0.0)  # spurious ack? the latest report wins while pending
    estimator.on_acked(0, 0.0)
    estimator.settle(0.0, RTT)
    assert estimator.stats.loss_rate == pytest.approx(0.5)
    estimator.on_acked(1, 0.1)  # settled already
    estimator.settle(0.1, RTT)
    assert estimator.stats.samples == 2 and estimator.stats.loss_rate == pytest.approx(0.5)


def test_first_packet_number() -> None:
    estimator = LossEstimator(first_packet_number=100)
    estimator.on_lost(5, 0.0)  # below the first: ignored
    estimator.on_acked(100, 0.0)
    estimator.settle(0.0, RTT)
    assert estimator.stats == LossStats(0.0, 1.0, 1)


# -- accuracy on simulated loss ----------------------------------------------------


@pytest.mark.parametrize("rate", [0.01, 0.05, 0.2])
def test_bernoulli_loss(rate: float) -> None:
    stats = feed_like_recovery(
        LossEstimator(memory=10_000), bernoulli(random.Random(1), rate, 40_000)
    )
    assert stats.loss_rate == pytest.approx(rate, abs=0.25 * rate)
    assert stats.mean_burst == pytest.approx(1 / (1 - rate), abs=0.1)


@pytest.mark.parametrize(("enter", "leave"), [(0.01, 0.25), (0.005, 0.5), (0.03, 0.1)])
def test_gilbert_loss(enter: float, leave: float) -> None:
    outcomes = gilbert_elliott(random.Random(2), 60_000, enter, leave)
    stats = feed_like_recovery(LossEstimator(memory=30_000), outcomes)
    rate = enter / (enter + leave)
    assert stats.loss_rate == pytest.approx(rate, rel=0.3)
    assert stats.mean_burst == pytest.approx(1 / leave, rel=0.3)


def test_gilbert_elliott_with_loss_in_both_states_matches_the_sequence() -> None:
    outcomes = gilbert_elliott(random.Random(3), 20_000, 0.02, 0.2, loss_good=0.01, loss_bad=0.6)
    stats = feed_like_recovery(LossEstimator(memory=20_000), outcomes)
    rate, burst = empirical(outcomes)
    assert stats.loss_rate == pytest.approx(rate)
    assert stats.mean_burst == pytest.approx(burst)
    assert stats.mean_burst > 1.5 > 1 / (1 - rate)  # burstier than random loss at that rate


def test_the_estimate_follows_a_change() -> None:
    rng = random.Random(4)
    outcomes = bernoulli(rng, 0.01, 20_000) + gilbert_elliott(rng, 5_000, 0.05, 0.4)
    stats = feed_in_order(LossEstimator(memory=512), outcomes)
    assert stats.loss_rate == pytest.approx(0.05 / 0.45, abs=0.05)
    assert stats.mean_burst == pytest.approx(2.5, abs=1.0)


# -- bad input -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"memory": 0}, r"^LossEstimator\.memory: must be an int >= 1 \(got 0\)$"),
        ({"reorder_rtts": 0.0}, r"^LossEstimator\.reorder_rtts: "),
        ({"reorder_rtts": math.inf}, r"^LossEstimator\.reorder_rtts: "),
        ({"max_pending": 0}, r"^LossEstimator\.max_pending: "),
        ({"first_packet_number": -1}, r"^LossEstimator\.first_packet_number: "),
    ],
)
def test_constructor_checks(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LossEstimator(**kwargs)  # type: ignore[arg-type]


def test_report_and_settle_checks() -> None:
    estimator = LossEstimator()
    with pytest.raises(ValueError, match=r"^LossEstimator\.packet_number: .*\(got -1\)$"):
        estimator.on_acked(-1, 0.0)
    with pytest.raises(ValueError, match=r"^LossEstimator\.now: .*\(got nan\)$"):
        estimator.on_lost(0, math.nan)
    for rtt in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match=r"^LossEstimator\.rtt: must be a finite number"):
            estimator.settle(0.0, rtt)
    assert estimator.stats.samples == 0
