"""BBR and the delivery-rate sampler on a simulated bottleneck, in virtual time.

The path here is a packet-level model: a FIFO bottleneck of `rate` bytes/s, a
one-way delay each way, a seeded random loss, an ACK per packet; the sender
sends whenever the window and the pacer allow. Nothing of QUIC is involved:
these are the controller's own properties (tests/test_cc_e2e.py has the QUIC ones).
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import statistics
from dataclasses import dataclass, field

import pytest

from netsched_client.proto.cc import Bbr, DeliveryRateSampler, RateSample, SentState, State
from netsched_client.proto.cc.bbr import PROBE_BW_STATES, PROBE_RTT_INTERVAL_S

MSS = 1200
RATE = 20e6 / 8  # 20 Mbit/s in bytes/s
DELAY = 0.025  # each way


@dataclass
class SimPath:
    bbr: Bbr
    loss: float = 0.0
    rate: float = RATE
    delay: float = DELAY
    seed: int = 1
    app_rate: float | None = None  # bytes/s the application offers; None: always data
    now: float = 0.0
    inflight: int = 0
    delivered: int = 0
    lost_packets: int = 0
    sampler: DeliveryRateSampler = field(default_factory=DeliveryRateSampler)
    states: list[tuple[float, State]] = field(default_factory=list)
    rtts: list[float] = field(default_factory=list)
    _events: list[tuple[float, int, bool, SentState]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _link_free: float = 0.0
    _next_send: float = 0.0
    _app_sent: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            self._send_what_is_allowed()
            at = self._events[0][0] if self._events else math.inf
            if self.bbr.congestion_window >= self.inflight + MSS:
                at = min(at, max(self._next_send, self._data_at()))
            self.now = min(max(at, self.now), end)
            while self._events and self._events[0][0] <= self.now:
                self._deliver(heapq.heappop(self._events))

    def _send_what_is_allowed(self) -> None:
        while self.inflight + MSS <= self.bbr.congestion_window and self._next_send <= self.now:
            if self._data_at() > self.now:
                self.sampler.mark_app_limited(self.inflight)
                return
            state = self.sampler.on_sent(MSS, self.now, self.inflight)
            self._app_sent += MSS
            self.inflight += MSS
            self.bbr.on_sent(MSS, self.now, state)
            self._next_send = max(self._next_send, self.now - 0.001) + MSS / self.bbr.pacing_rate
            departure = max(self.now, self._link_free) + MSS / self.rate
            self._link_free = departure
            lost = self._rng.random() < self.loss
            # A loss is noticed about when its ACK would have come (a later packet's ACK).
            at = departure + 2 * self.delay + (0.001 if lost else 0.0)
            heapq.heappush(self._events, (at, next(self._seq), lost, state))

    def _data_at(self) -> float:
        """When the application has the next packet's data."""
        return 0.0 if self.app_rate is None else (self._app_sent + MSS) / self.app_rate

    def _deliver(self, event: tuple[float, int, bool, SentState]) -> None:
        _, _, lost, state = event
        self.inflight -= state.size
        if lost:
            self.lost_packets += 1
            self.sampler.on_lost(state.size)
            self.bbr.on_loss(state.size, self.now, state, self.inflight)
            return
        self.delivered += state.size
        self.sampler.on_acked(state, self.now)
        sample = self.sampler.sample(self.now, self.inflight)
        assert sample is not None
        self.rtts.append(sample.rtt)
        self.bbr.on_ack(sample, self.now)
        if not self.states or self.states[-1][1] is not self.bbr.state:
            self.states.append((self.now, self.bbr.state))

    def goodput_over(self, seconds: float) -> float:
        """Bytes per second delivered over the next `seconds`."""
        before = self.delivered
        self.run(seconds)
        return (self.delivered - before) / seconds


def _path(loss: float = 0.0, **kwargs: float) -> SimPath:
    return SimPath(Bbr(max_datagram_size=MSS, rng=random.Random(7)), loss=loss, **kwargs)  # type: ignore[arg-type]


def _acked(sampler: DeliveryRateSampler, stamp: SentState, at: float, left: int) -> RateSample:
    sampler.on_acked(stamp, at)
    sample = sampler.sample(at, left)
    assert sample is not None
    return sample


def test_sampler_rate_is_delivered_bytes_over_the_longer_interval() -> None:
    sampler = DeliveryRateSampler()
    first = sampler.on_sent(1000, 0.0, 0)
    assert _acked(sampler, first, 0.100, 0).delivery_rate == pytest.approx(1000 / 0.100)
    # Ten packets 1 ms apart after that ACK; their ACKs come 0.1 ms apart (compressed).
    stamps = [sampler.on_sent(1000, 0.100 + 0.001 * i, 1000 * i) for i in range(1, 11)]
    samples = [_acked(sampler, s, 0.200 + 0.0001 * i, 0) for i, s in enumerate(stamps, 1)]
    last = samples[-1]
    assert last.delivered == 10_000  # since the stamp: the ten, not the first packet
    # max(send 0.110 s since the first packet's send, ACK 0.101 s since its ACK): the
    # sender's pace bounds the rate, not the compressed ACKs'.
    assert last.interval == pytest.approx(0.110)
    assert last.rtt == pytest.approx(0.201 - 0.110)
    assert last.newly_acked == 1000 and not last.app_limited


def test_sampler_marks_app_limited_until_the_flight_is_delivered() -> None:
    sampler = DeliveryRateSampler()
    first = sampler.on_sent(1000, 0.0, 0)
    sampler.mark_app_limited(1000)
    second = sampler.on_sent(1000, 0.01, 1000)
    assert not first.app_limited and second.app_limited
    _acked(sampler, first, 0.05, 1000)
    assert _acked(sampler, second, 0.06, 0).app_limited
    third = sampler.on_sent(1000, 0.07, 0)
    assert not third.app_limited  # 2000 delivered > 1000: the stretch is over


def test_startup_drain_probe_bw_on_a_clean_path() -> None:
    path = _path()
    path.run(2.0)
    visited = [state for _, state in path.states]
    assert visited[:2] == [State.STARTUP, State.DRAIN]
    assert path.bbr.state in PROBE_BW_STATES
    assert path.bbr.filled_pipe
    assert path.bbr.max_bw == pytest.approx(RATE, rel=0.05)
    assert path.bbr.min_rtt == pytest.approx(2 * DELAY, abs=0.002)
    assert path.goodput_over(3.0) > 0.93 * RATE
    # Pacing near the bottleneck keeps the queue short: the RTT stays near its base.
    recent = path.rtts[-2000:]
    assert sum(recent) / len(recent) < 2 * DELAY * 1.25


def test_pacing_rate_follows_the_gain_of_the_phase() -> None:
    path = _path()
    path.run(2.0)
    seen: dict[State, float] = {}
    for _ in range(4000):
        path.run(0.002)
        seen.setdefault(path.bbr.state, path.bbr.pacing_rate / path.bbr.bw)
    assert seen[State.CRUISE] == pytest.approx(0.99, abs=0.01)
    assert seen[State.UP] == pytest.approx(1.25 * 0.99, abs=0.01)
    assert seen[State.DOWN] == pytest.approx(0.90 * 0.99, abs=0.01)


@pytest.mark.parametrize("loss", [0.01, 0.05])
def test_random_loss_does_not_collapse_the_model(loss: float) -> None:
    path = _path(loss)
    path.run(3.0)
    goodput = path.goodput_over(5.0)
    assert path.lost_packets > 0
    # Under the 2 % threshold the model is untouched; above it the bounds hold the
    # window near the BDP rather than halving it per loss as Reno does.
    assert goodput > (0.90 if loss < 0.02 else 0.75) * RATE * (1 - loss)
    assert path.bbr.max_bw > 0.85 * RATE * (1 - loss)


def test_loss_under_the_threshold_keeps_the_bounds_unset() -> None:
    path = _path(0.005)
    path.run(6.0)
    assert path.lost_packets > 10
    assert math.isinf(path.bbr.bw_lo)


def test_heavy_loss_while_probing_sets_inflight_hi() -> None:
    path = _path(0.25)
    path.run(6.0)
    assert math.isfinite(path.bbr.inflight_hi)
    assert path.bbr.congestion_window < 2 * RATE * 2 * DELAY


def test_probe_rtt_at_most_every_five_seconds_at_half_the_bdp() -> None:
    path = _path()
    path.run(1.0)
    path.delay += 0.0005  # no sample reaches the minimum again: it must be probed
    bdp = RATE * 2 * (DELAY + 0.0005)
    windows: list[int] = []
    for _ in range(12_000):  # 12 s in 1 ms steps
        path.run(0.001)
        if path.bbr.state is State.PROBE_RTT:
            windows.append(path.bbr.congestion_window)
    entries = [at for at, state in path.states if state is State.PROBE_RTT]
    # Once 5 s passed without a new min RTT, and never twice within 5 s.
    assert entries
    assert all(b - a >= PROBE_RTT_INTERVAL_S for a, b in itertools.pairwise(entries))
    assert windows and min(windows) <= 0.5 * bdp + 3 * MSS + 0.001 * RATE * 3
    # ... and it leaves for ProbeBW's cruise, with the window back.
    after = next(state for at, state in path.states if at > entries[0])
    assert after is State.CRUISE
    assert path.bbr.congestion_window > bdp


def test_samples_at_the_minimum_rtt_spare_a_steady_path_probe_rtt() -> None:
    # Every sample at the base RTT shows no queue stands: no 200 ms at half a BDP every
    # 5 s (every deadline message sent then was late: bench_fec --goals under BBR).
    path = _path()
    path.run(12.0)
    assert State.PROBE_RTT not in {state for _, state in path.states}


def test_an_app_limited_flow_is_spared_probe_rtt_a_window_limited_one_is_not() -> None:
    # A 1 Mbit/s stream on the 20 Mbit/s path never fills its window: it has no queue of
    # its own, so ProbeRTT would only hold its data back (half the BDP for 200 ms: the
    # late messages of bench_fec --goals' 10 ms row under BBR). The same RTT rise on a
    # bulk flow is still probed.
    entered = {}
    for name, app_rate in (("app-limited", 1e6 / 8), ("bulk", None)):
        path = _path(app_rate=app_rate)
        path.run(1.0)
        path.delay += 0.0005  # no sample reaches the minimum again
        path.run(12.0)
        entered[name] = State.PROBE_RTT in {state for _, state in path.states}
    assert entered == {"app-limited": False, "bulk": True}


def test_persistent_congestion_restarts_from_the_minimum_window() -> None:
    path = _path()
    path.run(2.0)
    path.bbr.on_persistent_congestion(path.now)
    assert path.bbr.congestion_window == 4 * MSS
    path.run(1.0)  # the model is intact: the window comes back within rounds
    assert path.bbr.congestion_window > RATE * 2 * DELAY


def test_datagram_size_moves_the_minimum_window() -> None:
    bbr = Bbr(max_datagram_size=1200)
    bbr.max_datagram_size = 1452
    bbr.on_persistent_congestion(0.0)
    assert bbr.congestion_window == 4 * 1452


def test_a_queue_that_outlasts_the_bound_is_another_flows_and_lifts_it() -> None:
    # 30 ms more RTT that no window of this flow drains (a Cubic flow keeping the
    # bottleneck full looks the same): held at its delivered rate's BDP plus 20 %, the
    # window would carry 60 ms of the 80 ms round trip and shrink with what it delivers
    # (BBR took 19-31 % of a link against Cubic). A few rounds at the bound show the
    # queue is not its own, and the bound goes until the next probe.
    path = _path()
    path.run(2.0)
    path.delay += 0.015
    path.run(1.0)
    assert path.goodput_over(1.0) > 0.9 * RATE
    assert path.bbr.min_rtt < 2 * 0.025 + 0.002  # the base RTT is remembered: not a new path


def test_a_standing_queue_is_capped_when_the_path_slows_down() -> None:
    path = _path()
    path.run(2.0)
    path.rate = 0.8 * RATE  # the bandwidth filter remembers the old rate for 2 cycles
    path.run(1.0)
    settled = len(path.rtts)
    goodput = path.goodput_over(1.0)
    recent = path.rtts[settled:]
    assert path.bbr.max_bw > 0.95 * RATE  # still the old estimate: pacing runs too fast
    assert goodput > 0.95 * 0.8 * RATE
    # The window, capped at the delivered rate's BDP plus 20 %, bounds the queue (the
    # median: a bandwidth probe may fall in this second).
    assert statistics.median(recent) < 2 * DELAY * 1.3
