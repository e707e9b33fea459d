"""The core's per-path recovery driving a congestion controller (#16 stage 2).

The calls a controller sees follow proto/cc/base.py's contract; BBR and a
NewReno-like controller plug in unchanged; a sender over a lossy, queued
link with a virtual clock feeds BBR to a sane estimate of the link.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest
from core_backends import backends

from netsched_client.core import ledger, packet
from netsched_client.core.recovery import PathRecovery
from netsched_client.proto.cc.base import PathCongestionController, RateSample, SentState
from netsched_client.proto.cc.bbr import Bbr

SIZE = 1200


m = backends(ledger)


class Recorder:
    """A fixed-window controller that writes down every call it gets."""

    def __init__(self, window: int = 100 * SIZE, rate: float | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.congestion_window = window
        self.pacing_rate = rate
        self.max_datagram_size = SIZE

    def on_sent(self, size: int, now: float, state: SentState) -> None:
        self.calls.append(("sent", size, state.tx_in_flight))

    def on_ack(self, sample: RateSample, now: float) -> None:
        self.calls.append(("ack", sample.newly_acked, sample.newly_lost, sample.bytes_in_flight))

    def on_loss(self, size: int, now: float, state: SentState, bytes_in_flight: int) -> None:
        self.calls.append(("loss", size, bytes_in_flight))

    def on_persistent_congestion(self, now: float) -> None:
        self.calls.append(("persistent",))


class NewReno:
    """RFC 9002 §7.3's NewReno, the textbook one, as a second controller to plug in."""

    def __init__(self) -> None:
        self.max_datagram_size = SIZE
        self.congestion_window = 10 * SIZE
        self.ssthresh = float("inf")
        self.recovery_start = -1.0
        self.pacing_rate: float | None = None

    def on_sent(self, size: int, now: float, state: SentState) -> None:
        pass

    def on_ack(self, sample: RateSample, now: float) -> None:
        if now - sample.rtt <= self.recovery_start:
            return  # acknowledges a packet sent before recovery began
        if self.congestion_window < self.ssthresh:
            self.congestion_window += sample.newly_acked
        else:
            self.congestion_window += SIZE * sample.newly_acked // self.congestion_window

    def on_loss(self, size: int, now: float, state: SentState, bytes_in_flight: int) -> None:
        if state.sent_time <= self.recovery_start:
            return
        self.recovery_start = now
        self.congestion_window = max(self.congestion_window // 2, 2 * SIZE)
        self.ssthresh = self.congestion_window

    def on_persistent_congestion(self, now: float) -> None:
        self.congestion_window = 2 * SIZE


def make(m: ModuleType, controller: PathCongestionController, rtt: float = 0.1) -> PathRecovery:
    return PathRecovery(controller, m.Ledger(m.RttEstimator(rtt)), m.Pacer(SIZE))


def test_the_controller_sees_sends_then_losses_before_the_ack(m: ModuleType) -> None:
    cc = Recorder()
    path = make(m, cc)
    for pn in range(5):
        path.on_sent(pn, SIZE, 0.0)
    path.on_sent(5, 50, 0.0, flags=0)  # an ACK-only packet: not the controller's business
    assert cc.calls == [("sent", SIZE, (pn + 1) * SIZE) for pn in range(5)]
    cc.calls.clear()
    path.on_ack([(4, 6)], 0.0, 0.1)  # 0 to 2 are lost by the packet threshold (5 - 3); 3 waits
    losses = [("loss", SIZE, SIZE)] * 3
    assert cc.calls == [*losses, ("ack", SIZE, 3 * SIZE, SIZE)]
    assert path.sampler.delivered == SIZE and path.sampler.lost == 3 * SIZE


def test_a_lost_pmtu_probe_is_no_congestion_signal(m: ModuleType) -> None:
    cc = Recorder()
    path = make(m, cc)
    path.on_sent(0, 1500, 0.0, flags=ledger.FLAG_ACK_ELICITING | ledger.FLAG_IN_FLIGHT | 4)
    for pn in range(1, 5):
        path.on_sent(pn, SIZE, 0.0)
    cc.calls.clear()
    _, lost = path.on_ack([(1, 5)], 0.0, 0.1)
    assert list(lost.pns) == [0] and path.bytes_in_flight == 0
    assert [call[0] for call in cc.calls] == ["ack"]


def test_the_loss_timer_then_the_pto_and_its_backoff(m: ModuleType) -> None:
    cc = Recorder()
    path = make(m, cc, rtt=0.1)
    path.on_sent(0, SIZE, 0.0)
    path.on_sent(1, SIZE, 0.01)
    path.on_sent(2, SIZE, 0.02)
    path.on_ack([(1, 2)], 0.0, 0.11)  # RTT 100 ms: 0 is lost at 0.1125
    assert path.timer() == pytest.approx(0.1125)
    assert not path.on_timeout(0.1125)
    assert cc.calls[-1] == ("loss", SIZE, SIZE)
    deadline = path.timer()  # the PTO of packet 2 now
    assert deadline == pytest.approx(0.02 + 0.1 + 4 * 0.05 + 0.025)
    assert not path.on_timeout(deadline - 0.001)
    assert path.on_timeout(deadline)
    assert path.timer() == pytest.approx(0.02 + 2 * (deadline - 0.02))
    path.on_ack([(2, 3)], 0.0, 1.0)
    assert path.ledger.rtt.pto_count == 0 and path.timer() == float("inf")


def test_persistent_congestion_reaches_the_controller(m: ModuleType) -> None:
    cc = NewReno()
    path = make(m, cc, rtt=0.1)
    path.on_sent(0, SIZE, 0.0)
    path.on_ack([(0, 1)], 0.0, 0.1)
    for pn in range(1, 20):
        path.on_sent(pn, SIZE, 0.1 + 0.1 * pn)
    path.on_ack([(19, 20)], 0.0, 2.1)
    assert cc.congestion_window == 2 * SIZE


def test_the_pacer_follows_the_controller_rate_or_the_window(m: ModuleType) -> None:
    paced = make(m, Recorder(window=40 * SIZE, rate=SIZE * 100.0))
    assert paced.pacer.rate == SIZE * 100.0
    assert paced.pacer.burst == 10 * SIZE  # a quarter window
    windowed = make(m, Recorder(window=100 * SIZE), rtt=0.1)
    assert windowed.pacer.rate == pytest.approx(1.25 * 100 * SIZE / 0.1)
    assert windowed.pacer.burst == 16 * SIZE


def test_the_window_gates_sending(m: ModuleType) -> None:
    path = make(m, Recorder(window=3 * SIZE))
    for pn in range(3):
        assert path.can_send(SIZE)
        path.on_sent(pn, SIZE, 0.0)
    assert not path.can_send(SIZE)
    path.on_ack([(0, 1)], 0.0, 0.1)
    assert path.can_send(SIZE)


# -- a sender over a lossy link, virtual clock ---------------------------------------------------


@dataclass
class Link:
    """A bottleneck of `rate` bytes/s with a drop-tail queue of `queue` seconds, `delay`
    each way, and random loss."""

    rate: float
    delay: float
    loss: float
    queue: float
    rng: random.Random
    free_at: float = 0.0
    dropped: int = 0

    def arrival(self, now: float) -> float | None:
        """When a packet sent now reaches the receiver (None: lost)."""
        start = max(now, self.free_at)
        if start - now > self.queue or self.rng.random() < self.loss:
            self.dropped += 1
            return None
        self.free_at = start + SIZE / self.rate
        return self.free_at + self.delay


@dataclass
class Simulation:
    path: PathRecovery
    link: Link
    now: float = 0.0
    next_pn: int = 0
    received: Any = field(default_factory=lambda: packet.RangeSet(max_ranges=32))
    delivered: int = 0
    events: list[tuple[float, int, str, Any]] = field(default_factory=list)
    seq: int = 0

    def run(self, until: float) -> None:
        while self.now < until:
            self._send()
            self.now = self._next_time()
            if self.path.timer() <= self.now and self.path.on_timeout(self.now):
                self._transmit()  # a PTO probe may exceed the window (§7.5)
            while self.events and self.events[0][0] <= self.now:
                _, _, kind, value = heapq.heappop(self.events)
                if kind == "arrive":
                    self.received.add_packet(value)
                    self.delivered += SIZE
                    self._at(self.now + self.link.delay, "ack", list(self.received))
                else:
                    self.path.on_ack(value, 0.0, self.now)

    def _send(self) -> None:
        path = self.path
        while path.can_send(SIZE) and path.next_send_time(self.now) <= self.now:
            self._transmit()

    def _transmit(self) -> None:
        self.path.on_sent(self.next_pn, SIZE, self.now)
        arrival = self.link.arrival(self.now)
        if arrival is not None:
            self._at(arrival, "arrive", self.next_pn)
        self.next_pn += 1

    def _next_time(self) -> float:
        candidates = [self.path.timer()]
        if self.events:
            candidates.append(self.events[0][0])
        if self.path.can_send(SIZE):
            candidates.append(self.path.next_send_time(self.now))
        return max(min(candidates), self.now)

    def _at(self, when: float, kind: str, value: Any) -> None:
        self.seq += 1
        heapq.heappush(self.events, (when, self.seq, kind, value))


@pytest.mark.parametrize("seed", [1, 2])
def test_bbr_over_a_lossy_link_converges_to_the_link(m: ModuleType, seed: int) -> None:
    rate = 1_250_000.0  # 10 Mbit/s
    link = Link(rate=rate, delay=0.02, loss=0.01, queue=0.04, rng=random.Random(seed))
    bbr = Bbr(max_datagram_size=SIZE, rng=random.Random(seed))
    sim = Simulation(make(m, bbr), link)
    sim.run(4.0)
    start = sim.delivered
    sim.run(10.0)
    goodput = (sim.delivered - start) / 6.0
    assert 0.9 * rate <= goodput <= rate  # the link, once Startup is over
    assert bbr.max_bw == pytest.approx(rate, rel=0.1)
    rtt = sim.path.ledger.rtt
    assert rtt.min_rtt == pytest.approx(0.04 + SIZE / rate, rel=0.05)
    assert rtt.smoothed_rtt < 0.04 + link.queue  # BBR keeps the queue short of full
    assert sim.path.sampler.lost < 0.03 * sim.next_pn * SIZE  # about the link's 1 %
