"""The deadline scheduler's hand-out of queued data to paths (sans-IO, no connection)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from netsched_client.proto.multipath.completion import QUANTUM, Backlog, PathView, assign
from netsched_client.proto.send_order import StreamPriority

NOW = 100.0
RETRANSMIT_RTTS = 1.75
MTU = 1452


def wifi(**changes: object) -> PathView:
    """8 ms RTT, a 64 kB window: 8 MB/s."""
    fields = {"path_id": 0, "rtt": 0.008, "cwnd": 64_000, "in_flight": 0, "datagram_size": MTU}
    return PathView(**{**fields, **changes})  # type: ignore[arg-type]


def cellular(**changes: object) -> PathView:
    """30 ms RTT, a 45 kB window: 1.5 MB/s."""
    fields = {"path_id": 1, "rtt": 0.030, "cwnd": 45_000, "in_flight": 0, "datagram_size": MTU}
    return PathView(**{**fields, **changes})  # type: ignore[arg-type]


def urgent(stream_id: int, size: int = 1_000, deadline_in: float = 0.040) -> Backlog:
    return Backlog(stream_id, size, StreamPriority(NOW + deadline_in, 1))


def bulk(stream_id: int, size: int) -> Backlog:
    return Backlog(stream_id, size, StreamPriority(None, 6))


def hand_out(paths: list[PathView], backlog: list[Backlog]):  # type: ignore[no-untyped-def]
    return assign(paths, backlog, NOW, retransmit_rtts=RETRANSMIT_RTTS)


def test_urgent_data_waits_for_a_full_fast_path_rather_than_ride_the_slow_one() -> None:
    # Wi-Fi's window is full (its next ACK frees room in about a packet's time); cellular
    # has room but is 11 ms further away: the request goes to Wi-Fi, on purpose.
    out = hand_out([wifi(in_flight=64_000), cellular()], [urgent(4)])
    assert out.streams == {0: {4}, 1: set()}
    assert out.reasons[(0, "wait-for-fast")] == 1
    held = out.held_back(1, [urgent(4)])
    assert held == {4}  # cellular leaves it alone this round


def test_bulk_spreads_over_both_paths_and_its_tail_stays_on_the_fast_one() -> None:
    big = hand_out([wifi(), cellular()], [bulk(8, 2_000_000)])
    assert big.queued[1] > 0 and big.queued[0] > big.queued[1]  # both carry, by rate
    small = hand_out([wifi(), cellular()], [bulk(8, 30_000)])
    assert small.queued == {0: 30_000, 1: 0}  # Wi-Fi ends it before cellular's first byte


def test_a_deadline_only_the_slow_path_meets_goes_there() -> None:
    # Wi-Fi has 400 kB over its window already: 50 ms before anything new leaves.
    out = hand_out([wifi(in_flight=464_000), cellular()], [urgent(4, deadline_in=0.030)])
    assert out.streams[1] == {4}
    assert out.reasons[(1, "deadline-only-path")] == 1


def test_data_no_path_can_deliver_in_time_stays_with_the_fastest_path() -> None:
    out = hand_out([wifi(), cellular()], [urgent(4, deadline_in=0.001)])
    assert out.streams[0] == {4}
    assert out.reasons[(0, "no-path-in-time")] == 1


def test_a_lossy_path_loses_urgent_data_to_a_clean_one_of_similar_delay() -> None:
    lossy, clean = wifi(loss=0.3), cellular(rtt=0.010)
    out = hand_out([lossy, clean], [urgent(4)])
    assert out.streams[1] == {4}  # 30 % loss costs a retransmission RTT in expectation


def test_a_recovering_or_unmeasured_path_gets_no_deadline_data_but_bulk() -> None:
    for shaky in (wifi(recovering=True), wifi(measured=False)):
        out = hand_out([shaky, cellular()], [urgent(4), bulk(8, 2_000_000)])
        assert 4 in out.streams[1] and 4 not in out.streams[0]
        assert 8 in out.streams[0]


def test_a_window_that_never_fills_is_no_measure_of_capacity() -> None:
    # A huge window over a path that delivers 1 MB/s: its measured rate decides.
    fat = wifi(cwnd=10_000_000, delivery_rate=1_000_000.0)
    out = hand_out([fat, cellular()], [bulk(8, 1_000_000)])
    assert out.queued[1] > 100_000, out.queued


def test_the_hand_out_stops_once_every_window_is_full() -> None:
    backlog = [bulk(n, 200_000) for n in range(0, 40, 4)]
    out = hand_out([wifi(), cellular()], backlog)
    assert out.unassigned  # the rest cannot leave this round anyway
    assert all(out.budget(p.path_id, p) is None for p in (wifi(), cellular()))


def test_the_budget_covers_the_data_handed_out_in_whole_datagrams() -> None:
    out = hand_out([wifi(), cellular()], [urgent(4, size=3_000)])
    budget = out.budget(0, wifi())
    assert budget is not None and budget % MTU == 0 and budget >= 3_000


paths_strategy = st.lists(
    st.builds(
        PathView,
        path_id=st.integers(0, 3),
        rtt=st.floats(0.001, 0.5),
        cwnd=st.integers(0, 2_000_000),
        in_flight=st.integers(0, 2_000_000),
        datagram_size=st.sampled_from([1200, 1452, 16_000]),
        loss=st.floats(0.0, 1.0),
        recovering=st.booleans(),
        delivery_rate=st.none() | st.floats(1.0, 1e9),
        measured=st.booleans(),
    ),
    min_size=1,
    max_size=4,
    unique_by=lambda p: p.path_id,
)
backlog_strategy = st.lists(
    st.builds(
        Backlog,
        stream_id=st.integers(0, 10_000),
        size=st.integers(0, 3_000_000),
        priority=st.builds(
            StreamPriority, st.none() | st.floats(NOW - 1, NOW + 1), st.integers(0, 7)
        ),
    ),
    max_size=12,
    unique_by=lambda b: b.stream_id,
)


@given(paths_strategy, backlog_strategy)
def test_every_stream_is_handed_out_or_left_to_any_path(
    paths: list[PathView], backlog: list[Backlog]
) -> None:
    out = hand_out(paths, backlog)
    assigned = set().union(*out.streams.values())
    assert {b.stream_id for b in backlog} == assigned | out.unassigned
    # Nothing lost, nothing counted twice: every stream handed out is queued whole, but
    # the last one when the windows filled inside it.
    handed = [max(b.size, 1) for b in backlog if b.stream_id not in out.unassigned]
    queued = sum(out.queued.values())
    assert sum(handed[:-1]) < queued <= sum(handed) or queued == sum(handed) == 0
    for path in paths:
        budget = out.budget(path.path_id, path)
        assert budget is None or budget >= out.queued[path.path_id]


def test_a_near_path_left_unused_gets_bulk_to_grow_its_window() -> None:
    # Equal RTTs; path 1's window grew while path 0 carried nothing (its window is the
    # initial one). By arrival alone path 1 takes it all, round after round; the near
    # unused path gets a quantum first, so its window grows too (picoquic mp-transfer).
    grown = wifi(path_id=1, cwnd=3_000_000)
    small = wifi(cwnd=13_600)
    out = hand_out([small, grown], [bulk(8, 1_000_000)])
    assert out.queued[0] > 0 and out.reasons[(0, "explore")] == 1
    # A path four times further away is not explored: a small transfer stays near.
    far = cellular(rtt=0.032)
    out = hand_out([wifi(), far], [bulk(8, 30_000)])
    assert out.queued[1] == 0


def test_capped_paths_take_bulk_only_up_to_their_short_queue() -> None:
    # Deadline data is about: each path takes deadline-free data only up to its cap (a
    # few ms of queue at the bottleneck); the rest waits, nobody takes it this round.
    paths = [wifi(bulk_cap=20_000), cellular(bulk_cap=10_000)]
    backlog = [bulk(8, 1_000_000)]
    out = hand_out(paths, backlog)
    assert out.queued == {0: 20_000, 1: 10_000}
    assert not out.unassigned
    assert out.held_back(0, backlog) == set()  # budget, not stream, stops it
    assert out.budget(0, paths[0]) is not None


def test_a_cap_never_holds_back_deadline_data() -> None:
    paths = [wifi(bulk_cap=5_000, in_flight=5_000), cellular(bulk_cap=5_000, in_flight=5_000)]
    out = hand_out(paths, [urgent(4, size=3_000), bulk(8, 100_000)])
    assert 4 in out.streams[0]  # the fast path, over its cap
    assert out.queued[0] == 3_000 and out.queued[1] == 0  # and no bulk at all


def test_a_path_without_a_measured_rate_is_not_capped() -> None:
    out = hand_out([wifi(bulk_cap=10_000), cellular()], [bulk(8, 300_000)])
    assert out.queued[0] <= 10_000 + 16_384
    assert out.queued[1] > 45_000  # beyond its window: its arrival counts the wait


def test_a_huge_stream_is_handed_out_only_as_far_as_the_windows_reach() -> None:
    # One 40 MB response over two paths: the round hands out what the windows have room
    # for and stops; the rest waits on the same paths. Before, every round handed all
    # 2,442 quanta out, and a bulk download over two real paths crawled at 3.5 Mbit/s on
    # the CPU this cost (bench_cc's pairs).
    paths = [wifi(), cellular()]
    out = hand_out(paths, [bulk(4, 40_000_000), bulk(8, 1_000)])
    # Until the slower path's window is full too, the faster one takes what it would
    # deliver sooner even from a queue: a few dozen quanta, not thousands.
    assert sum(out.reasons.values()) <= 2 * sum(p.room() for p in paths) // QUANTUM * 4
    assert out.unassigned == {8}  # the next stream: any path, after the rest
    assert all(out.queued[p.path_id] >= p.room() for p in paths)
    assert all(4 in out.streams[p.path_id] for p in paths)  # the big one spread, as before
