"""The core's loss recovery (#16 stage 2): sent-packet ledger, RFC 9002 loss detection
and PTO, RTT estimator, pacer.

Every test runs on both backends (the Cython module and its pure-Python
reference); the property test also checks that both give the same answers.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import pytest
from core_backends import backends, compiled_check
from hypothesis import given, settings
from hypothesis import strategies as st

from netsched_client.core import ledger, packet
from netsched_client.core.errors import PacketError

BACKENDS = list(ledger.BACKENDS.values())
FLAGS = ledger.FLAG_ACK_ELICITING | ledger.FLAG_IN_FLIGHT
SIZE = 1200


m = backends(ledger)


test_the_compiled_backend_is_built_here = compiled_check(ledger)


def make(m: ModuleType, *, application_data: bool = True, **rtt: float) -> Any:
    return m.Ledger(m.RttEstimator(**rtt), application_data)


def send(book: Any, pns: range | list[int], now: float, flags: int = FLAGS) -> None:
    for pn in pns:
        book.on_sent(pn, now, SIZE, flags, 1000 + pn)


# -- RTT (RFC 9002 §5) ----------------------------------------------------------------------------


def test_rtt_before_any_sample_is_the_initial_rtt(m: ModuleType) -> None:
    rtt = m.RttEstimator(initial_rtt=0.1)
    assert (rtt.smoothed_rtt, rtt.rttvar, rtt.min_rtt, rtt.has_sample) == (
        0.1,
        0.05,
        math.inf,
        False,
    )


def test_first_rtt_sample_sets_everything_and_ignores_ack_delay(m: ModuleType) -> None:
    rtt = m.RttEstimator()
    rtt.update(0.08, 0.02, 5.0)
    assert (rtt.latest_rtt, rtt.smoothed_rtt, rtt.rttvar, rtt.min_rtt) == (0.08, 0.08, 0.04, 0.08)
    assert rtt.first_sample_time == 5.0


def test_ack_delay_is_capped_at_max_ack_delay(m: ModuleType) -> None:
    rtt = m.RttEstimator(max_ack_delay=0.025)
    rtt.update(0.1, 0.0, 0.0)
    rtt.update(0.2, 0.5, 1.0)  # the peer claims 500 ms; only 25 ms come off
    assert rtt.smoothed_rtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.175)
    assert rtt.rttvar == pytest.approx(0.75 * 0.05 + 0.25 * 0.075)


def test_ack_delay_never_takes_a_sample_below_min_rtt(m: ModuleType) -> None:
    rtt = m.RttEstimator()
    rtt.update(0.1, 0.0, 0.0)
    rtt.update(0.11, 0.02, 1.0)  # 0.11 < min 0.1 + 0.02: the delay is not subtracted
    assert rtt.smoothed_rtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.11)


def test_min_rtt_is_the_raw_minimum_without_ack_delay(m: ModuleType) -> None:
    rtt = m.RttEstimator()
    for latest, delay in [(0.1, 0.0), (0.07, 0.02), (0.09, 0.02)]:
        rtt.update(latest, delay, 0.0)
    assert rtt.min_rtt == 0.07
    assert rtt.latest_rtt == 0.09


def test_an_ack_takes_an_rtt_sample_from_the_largest_newly_acked(m: ModuleType) -> None:
    book = make(m)
    send(book, range(3), 1.0)
    book.on_sent(3, 1.05, SIZE, FLAGS, 7)
    result = book.on_ack([(0, 4)], 0.0, 1.25)
    assert result.rtt_updated and result.largest_newly_acked == 3
    assert result.largest_sent_time == 1.05
    assert book.rtt.latest_rtt == pytest.approx(0.2)
    assert list(result.pns) == [0, 1, 2, 3]
    assert list(result.handles) == [1000, 1001, 1002, 7]
    assert result.bytes_acked == 4 * SIZE


def test_no_rtt_sample_when_the_largest_was_acked_before(m: ModuleType) -> None:
    book = make(m)
    send(book, range(4), 1.0)
    book.on_ack([(3, 4)], 0.0, 1.1)
    result = book.on_ack([(0, 4)], 0.0, 1.5)  # newly acks 0-2, but 3 is old news
    assert not result.rtt_updated
    assert book.rtt.latest_rtt == pytest.approx(0.1)


def test_no_rtt_sample_from_only_non_ack_eliciting_packets(m: ModuleType) -> None:
    book = make(m)
    send(book, range(2), 1.0, flags=0)  # ACK-only packets: not in flight either
    result = book.on_ack([(0, 2)], 0.0, 1.1)
    assert not result.rtt_updated and result.bytes_acked == 0
    assert list(result.pns) == [0, 1]


# -- loss detection (RFC 9002 §6.1) --------------------------------------------------------------


def test_packet_threshold_is_three(m: ModuleType) -> None:
    book = make(m)
    send(book, range(5), 1.0)
    book.on_ack([(3, 4)], 0.0, 1.1)
    lost = book.detect_lost(1.1)
    assert list(lost.pns) == [0]  # 3 - 0 >= 3; 1 and 2 are only 2 and 1 behind
    assert lost.bytes_lost == SIZE
    book.on_ack([(4, 5)], 0.0, 1.1)
    assert list(book.detect_lost(1.1).pns) == [1]


def test_time_threshold_is_nine_eighths_of_the_rtt(m: ModuleType) -> None:
    book = make(m)
    book.on_sent(0, 1.0, SIZE, FLAGS, 0)
    book.on_sent(1, 1.005, SIZE, FLAGS, 1)
    book.on_ack([(1, 2)], 0.0, 1.085)  # RTT 80 ms: loss delay 90 ms
    assert len(book.detect_lost(1.085).pns) == 0
    assert book.loss_time == pytest.approx(1.09)
    assert len(book.detect_lost(1.0899).pns) == 0
    lost = book.detect_lost(1.0900001)
    assert list(lost.pns) == [0] and book.loss_time == math.inf


def test_a_packet_is_lost_at_exactly_its_loss_time(m: ModuleType) -> None:
    """The timer is armed at `sent + delay`; at that instant `sent <= now - delay` can
    round the other way (0.912 + 0.09 - 0.09 < 0.912) and the packet stayed, its timer
    re-armed at `now`, forever (found by the core connection's seeded loss runs)."""
    book = make(m)
    sent = 0.9119999999999999
    book.on_sent(0, sent, SIZE, FLAGS, 0)
    book.on_sent(1, sent + 0.005, SIZE, FLAGS, 1)
    book.on_ack([(1, 2)], 0.0, sent + 0.085)
    assert len(book.detect_lost(sent + 0.085).pns) == 0
    lost = book.detect_lost(book.loss_time)
    assert list(lost.pns) == [0] and book.loss_time == math.inf


def test_loss_delay_uses_the_larger_of_latest_and_smoothed_and_granularity(m: ModuleType) -> None:
    rtt = m.RttEstimator()
    rtt.update(0.0001, 0.0, 0.0)
    assert rtt.loss_delay() == m.GRANULARITY
    rtt.update(0.2, 0.0, 0.0)  # latest above smoothed
    assert rtt.loss_delay() == pytest.approx(1.125 * 0.2)


def test_packets_above_the_largest_acked_are_never_lost(m: ModuleType) -> None:
    book = make(m)
    send(book, range(6), 1.0)
    book.on_ack([(2, 3)], 0.0, 1.1)
    lost = book.detect_lost(100.0)
    assert list(lost.pns) == [0, 1]
    assert len(book) == 3 and book.bytes_in_flight == 3 * SIZE


def test_a_late_ack_of_a_lost_packet_is_ignored(m: ModuleType) -> None:
    book = make(m)
    send(book, range(5), 1.0)
    book.on_ack([(4, 5)], 0.0, 1.1)
    book.detect_lost(1.1)
    result = book.on_ack([(0, 2)], 0.0, 1.2)
    assert len(result.pns) == 0 and book.bytes_in_flight == 2 * SIZE


# -- PTO (RFC 9002 §6.2) -------------------------------------------------------------------------


def test_pto_deadline_backs_off_and_an_ack_resets_it(m: ModuleType) -> None:
    book = make(m, initial_rtt=0.1, max_ack_delay=0.025)
    send(book, range(2), 2.0)
    period = 0.1 + 4 * 0.05 + 0.025
    assert book.pto_deadline() == pytest.approx(2.0 + period)
    book.rtt.pto_count = 2
    assert book.pto_deadline() == pytest.approx(2.0 + 4 * period)
    book.on_ack([(0, 1)], 0.0, 2.1)
    assert book.rtt.pto_count == 0
    assert book.pto_deadline() == pytest.approx(2.0 + 0.1 + 4 * 0.05 + 0.025)


def test_pto_leaves_out_max_ack_delay_outside_application_data(m: ModuleType) -> None:
    book = make(m, application_data=False, initial_rtt=0.1, max_ack_delay=0.025)
    send(book, [0], 0.0)
    assert book.pto_deadline() == pytest.approx(0.1 + 4 * 0.05)


def test_no_pto_without_ack_eliciting_packets_in_flight(m: ModuleType) -> None:
    book = make(m)
    assert book.pto_deadline() == math.inf
    send(book, [0], 0.0, flags=ledger.FLAG_IN_FLIGHT)  # e.g. padding only
    assert book.pto_deadline() == math.inf
    send(book, [1], 0.5)
    assert book.pto_deadline() > 0.5
    book.on_ack([(1, 2)], 0.0, 0.6)
    assert book.pto_deadline() == math.inf


def test_pto_starts_from_the_last_ack_eliciting_packet(m: ModuleType) -> None:
    book = make(m, initial_rtt=0.1)
    send(book, [0], 1.0)
    send(book, [1], 1.5, flags=ledger.FLAG_IN_FLIGHT)
    assert book.pto_deadline() == pytest.approx(1.0 + book.rtt.pto_period(book.rtt.max_ack_delay))


# -- persistent congestion (RFC 9002 §7.6) -------------------------------------------------------


def persistent_setup(m: ModuleType) -> Any:
    """An RTT sample of 100 ms at t=1: PTO period 0.1 + 4 x 0.05 + 0.025, x 3 = 0.975 s."""
    book = make(m, max_ack_delay=0.025)
    send(book, [0], 0.9)
    book.on_ack([(0, 1)], 0.0, 1.0)
    return book


def test_losses_spanning_three_ptos_are_persistent_congestion(m: ModuleType) -> None:
    book = persistent_setup(m)
    for i, pn in enumerate(range(1, 12)):
        book.on_sent(pn, 1.1 + 0.1 * i, SIZE, FLAGS, pn)  # 1.1 .. 2.1: a 1.0 s span
    book.on_sent(12, 2.2, SIZE, FLAGS, 12)
    book.on_ack([(12, 13)], 0.0, 2.3)
    lost = book.detect_lost(2.3)
    assert list(lost.pns) == list(range(1, 12))
    assert lost.persistent_congestion


def test_a_shorter_span_is_not_persistent_congestion(m: ModuleType) -> None:
    book = persistent_setup(m)
    for i, pn in enumerate(range(1, 10)):
        book.on_sent(pn, 1.1 + 0.1 * i, SIZE, FLAGS, pn)  # 0.8 s span
    book.on_sent(10, 2.2, SIZE, FLAGS, 10)
    book.on_ack([(10, 11)], 0.0, 2.3)
    lost = book.detect_lost(2.3)
    assert len(lost.pns) == 9 and not lost.persistent_congestion


def test_an_acknowledged_packet_between_the_losses_breaks_the_run(m: ModuleType) -> None:
    book = persistent_setup(m)
    for i, pn in enumerate(range(1, 12)):
        book.on_sent(pn, 1.1 + 0.1 * i, SIZE, FLAGS, pn)
    book.on_sent(12, 2.2, SIZE, FLAGS, 12)
    book.on_ack([(6, 7), (12, 13)], 0.0, 2.3)
    lost = book.detect_lost(2.3)
    assert len(lost.pns) == 10 and not lost.persistent_congestion


def test_losses_before_the_first_rtt_sample_are_not_persistent_congestion(m: ModuleType) -> None:
    book = make(m)
    for pn in range(12):
        book.on_sent(pn, 0.1 * pn, SIZE, FLAGS, pn)
    book.on_ack([(11, 12)], 0.0, 1.2)  # the first sample arrives with the losses
    lost = book.detect_lost(1.2)
    assert len(lost.pns) == 11 and not lost.persistent_congestion


# -- the ring, errors, inputs -------------------------------------------------------------------


def test_skipped_packet_numbers_and_a_rangeset_input(m: ModuleType) -> None:
    book = make(m)
    for pn in [0, 1, 5, 6, 200]:
        book.on_sent(pn, 0.0, SIZE, FLAGS, pn)
    ranges = packet.RangeSet([(0, 2), (5, 201)])
    result = book.on_ack(ranges, 0.0, 0.1)
    assert list(result.pns) == [0, 1, 5, 6, 200]
    assert len(book) == 0 and book.bytes_in_flight == 0 and book.next_pn == 201


def test_the_ring_grows_past_its_capacity_with_an_old_packet_outstanding(m: ModuleType) -> None:
    book = make(m)
    send(book, range(1000), 0.0)
    book.on_ack([(1, 1000)], 0.0, 0.01)  # 0 stays: the ring keeps 1000 slots
    send(book, range(1000, 1100), 0.02)
    assert len(book) == 101
    result = book.on_ack([(0, 1), (1050, 1100)], 0.0, 0.03)
    assert list(result.pns) == [0, *range(1050, 1100)]
    assert book.bytes_in_flight == 50 * SIZE


@pytest.mark.parametrize(
    ("sent", "ranges"),
    [([0, 1], [(0, 3)]), ([0], [(1, 1)]), ([0], [(-1, 1)]), ([], [(0, 1)])],
)
def test_acks_of_packets_never_sent_or_bad_ranges_raise(
    m: ModuleType, sent: list[int], ranges: list[tuple[int, int]]
) -> None:
    book = make(m)
    send(book, sent, 0.0)
    with pytest.raises(PacketError):
        book.on_ack(ranges, 0.0, 1.0)


def test_packet_numbers_must_rise_within_a_bounded_gap(m: ModuleType) -> None:
    book = make(m)
    send(book, [5], 0.0)
    for pn in (5, 4, 6 + m.MAX_PN_GAP + 1):
        with pytest.raises(PacketError):
            book.on_sent(pn, 0.0, SIZE, FLAGS, 0)
    with pytest.raises(PacketError):
        book.on_sent(7, 0.0, -1, FLAGS, 0)
    book.on_ack([(5, 6)], 0.0, 0.1)
    book.on_sent(1 << 40, 0.2, SIZE, FLAGS, 0)  # nothing outstanding: any jump is fine
    assert book.next_pn == (1 << 40) + 1


def test_flags_come_back_with_the_packets(m: ModuleType) -> None:
    book = make(m)
    book.on_sent(0, 0.0, SIZE, FLAGS | ledger.FLAG_FEC_REPAIR, 0)
    book.on_sent(1, 0.0, SIZE, FLAGS | ledger.FLAG_PMTU_PROBE, 0)
    send(book, range(2, 5), 0.0)
    book.on_ack([(2, 5)], 0.0, 0.1)
    lost = book.detect_lost(0.1)
    assert list(lost.flags) == [FLAGS | ledger.FLAG_FEC_REPAIR, FLAGS | ledger.FLAG_PMTU_PROBE]


# -- pacer ---------------------------------------------------------------------------------------


def test_pacer_without_a_rate_sends_at_once(m: ModuleType) -> None:
    pacer = m.Pacer(SIZE)
    pacer.on_sent(SIZE, 0.0)
    assert pacer.next_send_time(0.0) == 0.0


def test_pacer_lets_a_burst_out_then_spaces_packets_at_its_rate(m: ModuleType) -> None:
    pacer = m.Pacer(SIZE)
    pacer.set_rate(SIZE * 1000.0, 4 * SIZE)  # a packet a millisecond, bursts of 4
    for _ in range(4):  # a new pacer's bucket is full
        assert pacer.next_send_time(0.0) == 0.0
        pacer.on_sent(SIZE, 0.0)
    assert pacer.next_send_time(0.0) == pytest.approx(0.001)
    for _ in range(4):
        assert pacer.next_send_time(1.0) == 1.0
        pacer.on_sent(SIZE, 1.0)
    assert pacer.next_send_time(1.0) == pytest.approx(1.001)
    assert pacer.next_send_time(1.0) == pytest.approx(1.001)  # pure: asking twice changes nothing
    pacer.on_sent(SIZE, 1.001)
    assert pacer.next_send_time(1.001) == pytest.approx(1.002)


def test_pacer_debt_is_paid_back_and_a_smaller_burst_caps_the_tokens(m: ModuleType) -> None:
    pacer = m.Pacer(SIZE)
    pacer.set_rate(SIZE * 1000.0, 10 * SIZE)
    pacer.on_sent(11 * SIZE, 0.0)  # past the full bucket: a packet's debt
    assert pacer.next_send_time(0.0) == pytest.approx(0.002)
    pacer.set_rate(SIZE * 1000.0, 2 * SIZE)
    assert pacer.next_send_time(10.0) == 10.0
    pacer.on_sent(3 * SIZE, 10.0)  # bucket held 2 packets at most
    assert pacer.next_send_time(10.0) == pytest.approx(10.002)
    with pytest.raises(ValueError):
        pacer.set_rate(-1.0, SIZE)


# -- both backends agree -------------------------------------------------------------------------


def _snapshot(book: Any, result: Any) -> tuple[object, ...]:
    fields = [
        name
        for name in (
            "pns",
            "handles",
            "flags",
            "bytes_acked",
            "bytes_lost",
            "largest_newly_acked",
            "largest_sent_time",
            "rtt_updated",
            "persistent_congestion",
        )
        if hasattr(result, name)
    ]
    rtt = book.rtt
    return (
        tuple(
            (name, list(v) if name in ("pns", "handles", "flags") else v)
            for name in fields
            for v in [getattr(result, name)]
        ),
        len(book),
        book.next_pn,
        book.largest_acked,
        book.bytes_in_flight,
        book.ack_eliciting_in_flight,
        book.loss_time,
        book.pto_deadline(),
        (rtt.latest_rtt, rtt.smoothed_rtt, rtt.rttvar, rtt.min_rtt, rtt.pto_count),
    )


_OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("send"),
            st.integers(1, 8),  # packets in a row
            st.integers(0, 1500),
            st.sampled_from([0, 1, 2, 3, 3, 3, 7, 11]),
        ),
        st.tuples(
            st.just("ack"),
            # (distance below the newest packet, length) of each range
            st.lists(st.tuples(st.integers(0, 24), st.integers(1, 8)), min_size=1, max_size=4),
            st.sampled_from([0.0, 0.005, 0.1]),
            st.none(),
        ),
        st.tuples(st.just("lose"), st.none(), st.none(), st.none()),
        st.tuples(st.just("pto"), st.none(), st.none(), st.none()),
    ),
    min_size=10,
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(
    ops=_OPS,
    steps=st.lists(st.sampled_from([0.0, 0.001, 0.01, 0.05, 0.4]), min_size=80, max_size=80),
)
def test_both_backends_agree_on_random_send_ack_loss_sequences(
    ops: list[tuple[Any, ...]], steps: list[float]
) -> None:
    books = [make(m, initial_rtt=0.05) for m in BACKENDS]
    model: dict[int, int] = {}  # live in-flight packets' sizes: bytes_in_flight's truth
    now = 0.0
    for (op, a, b, c), step in zip(ops, steps, strict=False):
        now += step
        outcomes = [_apply(book, op, a, b, c, now) for book in books]
        assert all(outcome == outcomes[0] for outcome in outcomes), op
        snapshot = outcomes[0]
        if op == "send" and c & ledger.FLAG_IN_FLIGHT:
            model.update((pn, b) for pn in range(books[0].next_pn - a, books[0].next_pn))
        elif isinstance(snapshot, tuple) and snapshot[0]:
            for pn in dict(snapshot[0])["pns"]:
                model.pop(pn, None)
        assert books[0].bytes_in_flight == sum(model.values())


def _apply(book: Any, op: str, a: Any, b: Any, c: Any, now: float) -> object:
    if op == "send":
        for skip in range(a):  # every third run skips a packet number
            book.on_sent(book.next_pn + (skip == 0 and a % 3 == 0), now, b, c, book.next_pn * 7)
        return _snapshot(book, None)
    if op == "ack":
        ranges = [(max(0, book.next_pn - s - n), max(0, book.next_pn - s)) for s, n in a]
        try:
            return _snapshot(book, book.on_ack([r for r in ranges if r[0] < r[1]], b, now))
        except PacketError as exc:
            return str(exc)
    if op == "lose":
        return _snapshot(book, book.detect_lost(now))
    if book.pto_deadline() <= now:
        book.rtt.pto_count += 1
    return _snapshot(book, None)


@settings(max_examples=100, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["rate", "sent", "sent", "sent"]),
            st.floats(0.0, 0.01),  # time step
            st.floats(0.0, 1e7),  # rate (bytes/s) or, for a send, a size
            st.integers(0, 40),  # burst in packets
        ),
        max_size=60,
    )
)
def test_both_pacers_agree(ops: list[tuple[str, float, float, int]]) -> None:
    pacers = [m.Pacer(SIZE) for m in BACKENDS]
    now = 0.0
    for op, step, value, burst in ops:
        now += step
        for pacer in pacers:
            if op == "rate":
                pacer.set_rate(value, burst * SIZE)
            else:
                pacer.on_sent(int(value) % 1500, now)
        times = [pacer.next_send_time(now) for pacer in pacers]
        assert times[0] >= now
        assert all(t == times[0] for t in times)
