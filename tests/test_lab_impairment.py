"""The sans-IO link model, on a fake clock: time is whatever `now` the test passes."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netsched_lab.impairment import GilbertElliott, Link, LinkSpec, LinkStats

MS = 1e-3


def link(seed: int = 1, **spec: object) -> Link:
    return Link(LinkSpec(**spec), random.Random(seed))  # type: ignore[arg-type]


def send_every(lk: Link, count: int, gap_s: float, size: int = 1200) -> list[list[float]]:
    """Submit `count` packets `gap_s` apart; the delivery times of each."""
    return [[at for at, _ in lk.submit(bytes(size), i * gap_s)] for i in range(count)]


# -- validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("delay_ms", -1.0),
        ("delay_ms", math.inf),
        ("jitter_ms", math.nan),
        ("loss", 1.5),
        ("loss", math.nan),
        ("reorder", -0.1),
        ("reorder_ms", -5.0),
        ("duplicate", 2.0),
        ("corrupt", -1.0),
        ("rate_mbps", 0.0),
        ("rate_mbps", math.inf),
        ("burst_bytes", 0),
        ("burst_bytes", 1.5),
        ("queue_bytes", -1),
        ("queue_bytes", True),
        ("blackhole", 1),
        ("bursty", 0.1),
        ("mtu", 28),
        ("mtu", 1500.5),
    ],
)
def test_link_spec_rejects_out_of_range_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        LinkSpec(**{field: value})  # type: ignore[arg-type]


def test_gilbert_elliott_validates_and_refuses_impossible_targets() -> None:
    with pytest.raises(ValueError, match="p_bad_good"):
        GilbertElliott(p_good_bad=0.1, p_bad_good=1.1)
    with pytest.raises(ValueError, match="mean_burst"):
        GilbertElliott.from_loss_and_burst(0.1, 0.5)
    with pytest.raises(ValueError, match="loss_rate"):
        GilbertElliott.from_loss_and_burst(1.0, 3)
    with pytest.raises(ValueError, match="p_good_bad"):  # 60 % loss in bursts of one
        GilbertElliott.from_loss_and_burst(0.6, 1)


def test_gilbert_elliott_theory_helpers() -> None:
    chain = GilbertElliott.from_loss_and_burst(0.05, 4)
    assert chain.mean_burst_length == pytest.approx(4)
    assert chain.loss_rate == pytest.approx(0.05)
    assert GilbertElliott(0.0, 0.0).loss_rate == 0.0  # never leaves the good state
    assert GilbertElliott(0.1, 0.0).mean_burst_length == math.inf
    partial = GilbertElliott(0.1, 0.3, loss_good=0.01, loss_bad=0.5)
    assert partial.loss_rate == pytest.approx(0.25 * 0.5 + 0.75 * 0.01)


def test_link_spec_must_be_a_link_spec() -> None:
    with pytest.raises(TypeError, match="LinkSpec"):
        link().spec = {"delay_ms": 1}  # type: ignore[assignment]


# -- determinism and accounting ---------------------------------------------------

EVERYTHING = {
    "delay_ms": 20.0,
    "jitter_ms": 5.0,
    "loss": 0.05,
    "bursty": GilbertElliott.from_loss_and_burst(0.05, 3),
    "reorder": 0.1,
    "duplicate": 0.05,
    "corrupt": 0.05,
    "rate_mbps": 50.0,
    "queue_bytes": 20_000,
}


def run(seed: int) -> tuple[list[tuple[float, bytes]], LinkStats]:
    lk = link(seed, **EVERYTHING)
    out = [d for i in range(2000) for d in lk.submit(i.to_bytes(4, "big") * 300, i * 0.1 * MS)]
    return out, lk.stats


def test_same_seed_same_outcome_other_seed_other_outcome() -> None:
    first, first_stats = run(7)
    again, again_stats = run(7)
    other, _ = run(8)
    assert first == again
    assert first_stats == again_stats
    assert first != other
    # Every stage fired, so the comparison covered all of them.
    s = first_stats
    assert min(s.dropped_loss, s.dropped_burst, s.dropped_queue, s.reordered) > 0
    assert min(s.duplicated, s.corrupted) > 0


def test_stats_are_a_snapshot() -> None:
    lk = link()
    lk.submit(b"abc", 0.0)
    snapshot = lk.stats
    lk.submit(b"abcd", 0.0)
    assert (snapshot.packets_in, snapshot.bytes_in) == (1, 3)
    assert (lk.stats.packets_in, lk.stats.bytes_in, lk.stats.bytes_delivered) == (2, 7, 7)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    loss=st.floats(0, 1),
    duplicate=st.floats(0, 1),
    rate=st.one_of(st.none(), st.floats(0.1, 100)),
    queue=st.integers(0, 50_000),
    sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=80),
)
def test_every_packet_is_accounted_for(
    seed: int, loss: float, duplicate: float, rate: float | None, queue: int, sizes: list[int]
) -> None:
    lk = link(seed, loss=loss, duplicate=duplicate, rate_mbps=rate, queue_bytes=queue)
    deliveries = [d for i, n in enumerate(sizes) for d in lk.submit(bytes(n), i * MS)]
    s = lk.stats
    assert s.packets_in == len(sizes)
    assert s.delivered == len(deliveries)
    assert s.packets_in + s.duplicated == s.delivered + s.dropped
    assert s.bytes_delivered == sum(len(data) for _, data in deliveries)


# -- loss ---------------------------------------------------------------------------


def test_random_loss_rate_within_statistical_bounds() -> None:
    lk = link(3, loss=0.1)
    delivered = sum(len(d) for d in send_every(lk, 20_000, MS))
    measured = 1 - delivered / 20_000
    sigma = math.sqrt(0.1 * 0.9 / 20_000)
    assert abs(measured - 0.1) < 5 * sigma
    assert lk.stats.dropped_loss == 20_000 - delivered


def loss_runs(lost: list[bool]) -> list[int]:
    runs, current = [], 0
    for flag in lost:
        if flag:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    return runs


def test_gilbert_elliott_burst_length_and_loss_rate_match_theory() -> None:
    chain = GilbertElliott(p_good_bad=0.01, p_bad_good=0.25)  # bursts of 4, loss ~3.85 %
    lk = link(5, bursty=chain)
    lost = [not d for d in send_every(lk, 100_000, MS)]
    runs = loss_runs(lost)
    assert sum(lost) / len(lost) == pytest.approx(chain.loss_rate, abs=0.008)
    assert sum(runs) / len(runs) == pytest.approx(chain.mean_burst_length, abs=0.5)
    assert lk.stats.dropped_burst == sum(lost)
    # Bursty, not independent: independent loss at 3.85 % would average ~1.04 per run.
    assert max(runs) >= 10


# -- rate and queue -----------------------------------------------------------------


def test_token_bucket_delivers_the_configured_rate_at_saturation() -> None:
    lk = link(rate_mbps=10.0)  # 1.25 MB/s = 1000 packets of 1250 B per second
    sent = [(i * 0.5 * MS, at) for i in range(10_000) for at in send_at(lk, i * 0.5 * MS)]
    window = [at for _, at in sent if 1.0 <= at < 5.0]
    rate_mbps = len(window) * 1250 * 8 / 4.0 / 1e6
    assert rate_mbps == pytest.approx(10.0, rel=0.05)
    assert lk.stats.dropped_queue > 4000  # offered twice the rate
    # The queue bounds the wait: 64 kB at 1.25 MB/s, plus one packet short of tokens.
    waits = [at - now for now, at in sent]
    assert 0.04 < max(waits) <= (64_000 + 1250) / 1.25e6 + 1e-9


def send_at(lk: Link, now: float) -> list[float]:
    return [at for at, _ in lk.submit(bytes(1250), now)]


def test_queue_tail_drops_then_drains() -> None:
    lk = link(rate_mbps=1.0, burst_bytes=1000, queue_bytes=3000)  # 125 kB/s: 8 ms per 1000 B
    first = [lk.submit(bytes(1000), 0.0) for _ in range(10)]
    departures = [ds[0][0] for ds in first if ds]
    assert departures == pytest.approx([0.0, 0.008, 0.016, 0.024])
    assert lk.stats.dropped_queue == 6
    # Once drained and refilled, a packet leaves at once again.
    assert lk.submit(bytes(1000), 1.0) == [(1.0, bytes(1000))]


def test_packet_larger_than_the_bucket_waits_for_missing_tokens() -> None:
    lk = link(rate_mbps=1.0, burst_bytes=500, queue_bytes=10_000, mtu=None)
    ((at, _),) = lk.submit(bytes(1500), 0.0)
    assert at == pytest.approx(1000 / 125_000)


# -- delay, jitter, reordering ------------------------------------------------------


def test_delay_and_jitter_bounds() -> None:
    lk = link(delay_ms=50.0, jitter_ms=10.0)
    delays = [ds[0] - i * 0.1 for i, ds in enumerate(send_every(lk, 2000, 0.1))]
    assert all(0.040 - 1e-9 <= d <= 0.060 + 1e-9 for d in delays)
    assert min(delays) < 0.042 and max(delays) > 0.058  # the whole range is used


def test_jitter_larger_than_delay_never_goes_negative() -> None:
    lk = link(delay_ms=2.0, jitter_ms=10.0)
    assert all(ds[0] >= i * 0.1 for i, ds in enumerate(send_every(lk, 500, 0.1)))


def test_jitter_keeps_fifo_order_without_reorder() -> None:
    lk = link(delay_ms=20.0, jitter_ms=10.0)  # packets 1 ms apart, jitter ±10 ms
    times = [ds[0] for ds in send_every(lk, 2000, MS)]
    assert times == sorted(times)
    assert lk.stats.reordered == 0


def test_reorder_holds_packets_back_so_later_ones_overtake() -> None:
    lk = link(delay_ms=5.0, reorder=0.2, reorder_ms=10.0)
    times = [ds[0] for ds in send_every(lk, 5000, MS)]
    late = [i for i, at in enumerate(times) if at > i * MS + 0.005 + 1e-9]
    assert all(times[i] == pytest.approx(i * MS + 0.015) for i in late)
    assert len(late) == lk.stats.reordered
    assert lk.stats.reordered == pytest.approx(1000, rel=0.15)
    held = set(late)
    followed_by_on_time = [i for i in late if i + 1 < len(times) and i + 1 not in held]
    assert len(followed_by_on_time) > 500
    assert all(times[i + 1] < times[i] for i in followed_by_on_time)


# -- duplicate, corrupt, blackhole, live changes ----------------------------------------


def test_duplicate_delivers_two_identical_copies() -> None:
    lk = link(delay_ms=3.0, duplicate=1.0)
    deliveries = lk.submit(b"payload", 1.0)
    assert deliveries == [(1.003, b"payload"), (1.003, b"payload")]
    assert (lk.stats.duplicated, lk.stats.delivered) == (1, 2)


@settings(max_examples=100, deadline=None)
@given(payload=st.binary(min_size=1, max_size=1500), seed=st.integers(0, 2**32))
def test_corruption_flips_exactly_one_bit(payload: bytes, seed: int) -> None:
    lk = link(seed, corrupt=1.0)
    ((_, out),) = lk.submit(payload, 0.0)
    assert len(out) == len(payload)
    assert sum(bin(a ^ b).count("1") for a, b in zip(out, payload, strict=True)) == 1
    assert lk.stats.corrupted == 1


def test_empty_packet_is_delivered_uncorrupted() -> None:
    lk = link(corrupt=1.0)
    assert lk.submit(b"", 0.0) == [(0.0, b"")]
    assert lk.stats.corrupted == 0


def test_blackhole_on_and_off_live() -> None:
    lk = link()
    assert lk.submit(b"a", 0.0)
    lk.spec = LinkSpec(blackhole=True)
    assert lk.submit(b"b", 1.0) == []
    assert lk.submit(b"c", 2.0) == []
    lk.spec = LinkSpec()
    assert lk.submit(b"d", 3.0) == [(3.0, b"d")]
    assert (lk.stats.dropped_blackhole, lk.stats.delivered) == (2, 2)


def test_spec_change_applies_to_later_packets_only() -> None:
    lk = link(delay_ms=100.0)
    (early,) = lk.submit(b"a", 0.0)
    lk.spec = LinkSpec(delay_ms=10.0)
    (late,) = lk.submit(b"b", 0.2)
    assert early[0] == pytest.approx(0.1)
    assert late[0] == pytest.approx(0.21)


# -- drop list and bursty corruption (the interop runner's droplist and corrupt-rate) ----


def test_drop_packets_drops_exactly_the_listed_numbers() -> None:
    lk = link(drop_packets=frozenset({2, 3, 7}))
    delivered = [bool(lk.submit(bytes(100), i * MS)) for i in range(10)]
    assert delivered == [True, False, False, True, True, True, False, True, True, True]
    stats = lk.stats
    assert stats.dropped_listed == 3 and stats.dropped == 3
    assert stats.packets_in + stats.duplicated == stats.delivered + stats.dropped


@pytest.mark.parametrize("value", [frozenset({0}), frozenset({-1}), {2, 3}, frozenset({True})])
def test_drop_packets_must_be_positive_numbers(value: object) -> None:
    with pytest.raises(ValueError, match="drop_packets"):
        LinkSpec(drop_packets=value)  # type: ignore[arg-type]


def test_bursty_corruption_rate_and_bursts() -> None:
    chain = GilbertElliott.from_loss_and_burst(0.30, 1.5)
    lk = link(seed=3, bursty_corrupt=chain)
    payload = bytes(64)
    flipped = [lk.submit(payload, i * MS)[0][1] != payload for i in range(20_000)]
    rate = sum(flipped) / len(flipped)
    assert abs(rate - 0.30) < 0.02
    runs = [len(r) for r in "".join("x" if f else " " for f in flipped).split()]
    assert abs(sum(runs) / len(runs) - 1.5) < 0.1
    assert lk.stats.corrupted == sum(flipped) and lk.stats.dropped == 0
    with pytest.raises(ValueError, match="bursty_corrupt"):
        LinkSpec(bursty_corrupt=0.3)  # type: ignore[arg-type]


def test_datagrams_above_the_mtu_are_dropped_as_with_df() -> None:
    link = Link(LinkSpec(mtu=1500), random.Random(1))
    assert link.submit(bytes(1472), 0.0)  # 1472 + 28 = 1500: fits
    assert not link.submit(bytes(1473), 0.0)
    assert link.stats.dropped_too_big == 1
    assert link.stats.packets_in == link.stats.delivered + link.stats.dropped
    unlimited = Link(LinkSpec(mtu=None), random.Random(1))
    assert unlimited.submit(bytes(60_000), 0.0)
