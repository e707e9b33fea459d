"""BBR for one path, after draft-ietf-ccwg-bbr (BBRv3, as in Linux and picoquic).

The model: the path's bottleneck bandwidth (a max over the last two ProbeBW cycles
of the delivery rate) and its round-trip propagation delay (a min over 10 s).
The sender paces at a gain times that bandwidth and keeps a gain times that BDP
in flight. Loss over LOSS_THRESH in a round trip sets bounds on the model: the
short-term ones (`bw_lo`, `inflight_lo`, outside probing) and the long-term one
(`inflight_hi`, when a bandwidth probe meets loss) cap the window.

One deviation from the draft, for the radio links NetSched serves (Wi-Fi,
cellular: random loss that is not congestion): loss counts only when it comes
with a queue, i.e. when the latest RTT is at least QUEUE_EVIDENCE over the
min RTT. A drop-tail queue that overflows has first filled, and a full queue
shows in the RTT; loss on an empty queue is the medium's. The draft's BBRv3
reads every lossy round outside probing as congestion, and at 1-5 % random loss
its bounds then ratchet the rate down a few percent per round until the next
probe (BBRv1 ignored loss altogether).

A second one, for the standing queue: the max-filtered delivery rate runs high
behind a token bucket or an aggregating link (a sample that starts with the
bucket's burst credit), and pacing at it keeps a queue as long as the window
allows, up to 2 BDPs. When a whole cruising round never saw the RTT come down
to within QUEUE_EVIDENCE of the min RTT, the queue stood all along, so the
round's delivered rate is the bottleneck's: `inflight_lo` (reset at each probe,
like the draft's lower bounds) then caps the window at that rate's BDP plus
STANDING_QUEUE_ALLOWANCE.

Two for ProbeRTT. A sample equal to the min RTT refreshes it (the draft: only a
lower one), since it shows that no queue stands. And ProbeRTT comes only to a flow
that was window-limited (a sample not app-limited) since the min RTT was last
refreshed: an app-limited flow keeps no queue of its own, so draining to half a BDP
finds nothing to drain and only holds its data back (a deadline stream's messages).
Its expired min RTT is replaced by its latest sample, as on entering ProbeRTT.

States and transitions (the rules; `_enter` is the only writer of `state`):

    STARTUP  -> DRAIN       the pipe is full: 3 rounds without 25 % more bandwidth,
                            or a round with >= 6 losses over LOSS_THRESH
    DRAIN    -> DOWN        in flight <= the BDP
    DOWN     -> CRUISE      in flight <= the BDP (with headroom under inflight_hi)
    DOWN, CRUISE -> REFILL  time to probe: 2-3 s, or a Reno flow's BDP in rounds
    REFILL   -> UP          one round (the window refilled to inflight_hi)
    UP       -> DOWN        in flight > 1.25 BDP after a min RTT, bandwidth stopped
                            growing for 3 rounds, or the probe met too much loss
    any but PROBE_RTT -> PROBE_RTT   no new min RTT for 5 s
    PROBE_RTT -> CRUISE     200 ms and a round at half the BDP (STARTUP if the pipe
                            was never filled)

Left out on purpose, with the reason: ACK-aggregation compensation (extra_acked:
aioquic acknowledges every other packet within max_ack_delay, and the cwnd gain
of 2 covers that), packet conservation in recovery (the bounds above react once
per round, which is what BBRv3 relies on too), and idle restart.
"""

from __future__ import annotations

import math
import random
from enum import Enum

from .base import RateSample, SentState
from .filters import WindowedMax

STARTUP_PACING_GAIN = 4 * math.log(2)  # 2.77: doubles the delivery rate each round
STARTUP_CWND_GAIN = 2.0
DRAIN_PACING_GAIN = 0.35  # ~1 / 2.77: drains Startup's queue within a round
CWND_GAIN = 2.0
PROBE_UP_CWND_GAIN = 2.25
PACING_MARGIN = 0.01  # pace 1 % under the estimate so no standing queue builds
LOSS_THRESH = 0.02  # per round trip; more than this is congestion, less is noise
BETA = 0.7  # the multiplicative cut of the bounds on congestion
HEADROOM = 0.15  # share of inflight_hi left free while cruising, for other flows
MIN_PIPE_PACKETS = 4
STARTUP_FULL_BW_ROUNDS = 3
STARTUP_FULL_BW_GROWTH = 1.25
STARTUP_FULL_LOSS_COUNT = 6  # losses in a round before loss may end Startup
MAX_BW_FILTER_CYCLES = 2
MIN_RTT_FILTER_S = 10.0
PROBE_RTT_INTERVAL_S = 5.0
PROBE_RTT_DURATION_S = 0.2
PROBE_RTT_CWND_GAIN = 0.5
# Queueing delay (share of the min RTT, and at least QUEUE_EVIDENCE_MIN_S) above which a
# round's loss is read as congestion; under it the loss is random (see the module doc).
QUEUE_EVIDENCE = 0.2
QUEUE_EVIDENCE_MIN_S = 0.002
# Queue kept when a standing one is found, as a share of the BDP (see the module doc).
STANDING_QUEUE_ALLOWANCE = 0.2
# Rounds held at that bound with the queue still standing: it is another flow's.
FOREIGN_QUEUE_ROUNDS = 3
MAX_RENO_ROUNDS = 63  # probe at least this often, as a Reno flow would regain its share
INITIAL_WINDOW_PACKETS = 10
NOMINAL_RTT_S = 0.001  # before any RTT sample: the initial window is sent unpaced


class State(Enum):
    STARTUP = "startup"
    DRAIN = "drain"
    DOWN = "probe_bw_down"
    CRUISE = "probe_bw_cruise"
    REFILL = "probe_bw_refill"
    UP = "probe_bw_up"
    PROBE_RTT = "probe_rtt"


PROBE_BW_STATES = frozenset({State.DOWN, State.CRUISE, State.REFILL, State.UP})
# (pacing gain, cwnd gain) per state.
GAINS: dict[State, tuple[float, float]] = {
    State.STARTUP: (STARTUP_PACING_GAIN, STARTUP_CWND_GAIN),
    State.DRAIN: (DRAIN_PACING_GAIN, CWND_GAIN),
    State.DOWN: (0.90, CWND_GAIN),
    State.CRUISE: (1.0, CWND_GAIN),
    State.REFILL: (1.0, CWND_GAIN),
    State.UP: (1.25, PROBE_UP_CWND_GAIN),
    State.PROBE_RTT: (1.0, PROBE_RTT_CWND_GAIN),
}


class AckPhase(Enum):
    """Which ACKs BBR is seeing relative to a bandwidth probe."""

    INIT = 0
    PROBE_STARTING = 1  # ACKs for packets sent before the probe
    PROBE_FEEDBACK = 2  # ACKs for the probe's packets
    PROBE_STOPPING = 3  # ACKs after the probe ended


class Bbr:
    """One path's BBR: feed it `on_sent`, `on_loss`, `on_ack`; read
    `congestion_window` and `pacing_rate` (see base.py's contract)."""

    def __init__(
        self,
        *,
        max_datagram_size: int = 1200,
        rng: random.Random | None = None,
        loss_thresh: float = LOSS_THRESH,
    ) -> None:
        self._mss = max_datagram_size
        self._rng = rng if rng is not None else random.Random()
        self.loss_thresh = loss_thresh
        self.state = State.STARTUP
        self.cwnd = INITIAL_WINDOW_PACKETS * max_datagram_size
        self._pacing_rate = STARTUP_PACING_GAIN * self.cwnd / NOMINAL_RTT_S
        self._pacing_from_rtt = False  # the initial rate was set again from a real RTT
        self._prior_cwnd = 0
        self._delivered = 0  # the path's delivery count, from the rate samples
        self._inflight = 0
        self._lost = 0  # bytes lost over the path's life (as the sampler counts them)
        # The model.
        self._max_bw_filter = WindowedMax(MAX_BW_FILTER_CYCLES)
        self.max_bw = 0.0
        self.bw = 0.0
        self.min_rtt = math.inf
        self._min_rtt_stamp = 0.0
        self._probe_rtt_min_delay = math.inf
        self._probe_rtt_min_stamp: float | None = None
        self._probe_rtt_expired = False
        # A sample since the stamp was not app-limited: the window, not the app, set
        # what was in flight, so a queue of this flow's own may stand.
        self._window_limited_since_stamp = False
        self.inflight_hi = math.inf
        self.inflight_lo = math.inf
        self.bw_lo = math.inf
        self._bw_latest = 0.0
        self._inflight_latest = 0
        # Rounds.
        self.round_count = 0
        self._round_start = False
        self._next_round_delivered = 0
        self._loss_round_start = False
        self._loss_round_delivered = 0
        self._rounds_since_bw_probe = 0
        # Loss within the current loss round.
        self._loss_in_round = False
        self._loss_events_in_round = 0
        self._lost_in_round = 0
        self._delivered_at_round_start = 0
        self._latest_rtt = 0.0  # the last sample's: what the queue holds now
        self._round_min_rtt = math.inf  # lowest RTT in this loss round
        self._round_start_time: float | None = None
        # The standing-queue bound (see the module doc): rounds held at it, and whether
        # the queue outlasted it (another flow's), until the next probe.
        self._rounds_at_bound = 0
        self._foreign_queue = False
        # Startup's end.
        self.filled_pipe = False
        self._full_bw = 0.0
        self._full_bw_count = 0
        # ProbeBW's cycle.
        self._cycle_stamp = 0.0
        self._bw_probe_wait = 0.0
        self._bw_probe_samples = False
        self._ack_phase = AckPhase.INIT
        self._probe_up_rounds = 0
        self._probe_up_acks = 0
        self._probe_up_cnt = math.inf
        self._up_full_bw = 0.0
        self._up_full_bw_count = 0
        # ProbeRTT.
        self._probe_rtt_done_stamp: float | None = None
        self._probe_rtt_round_done = False

    # ------------------------------------------------------------------ interface

    @property
    def congestion_window(self) -> int:
        return self.cwnd

    @property
    def pacing_rate(self) -> float:
        return self._pacing_rate

    @property
    def max_datagram_size(self) -> int:
        return self._mss

    @max_datagram_size.setter
    def max_datagram_size(self, size: int) -> None:
        self._mss = size

    def on_sent(self, size: int, now: float, state: SentState) -> None:
        self._inflight = state.tx_in_flight

    def on_loss(self, size: int, now: float, state: SentState, bytes_in_flight: int) -> None:
        self._inflight = bytes_in_flight
        self._lost += size
        self._loss_in_round = True
        self._loss_events_in_round += 1
        self._lost_in_round += size
        if not self._bw_probe_samples:
            return  # outside a probe, loss acts through the lower bounds once a round
        # The loss rate as this packet's own rate sample would show it (the draft's
        # BBRHandleLostPacket): bytes lost since it was sent, itself included.
        lost_since = self._lost - state.lost
        if lost_since > state.tx_in_flight * self.loss_thresh and self._queue_shows():
            tx_in_flight = self._inflight_hi_from_lost(state.tx_in_flight, lost_since, size)
            self._handle_inflight_too_high(tx_in_flight, state.app_limited, now)

    def on_ack(self, sample: RateSample, now: float) -> None:
        self._inflight = sample.bytes_in_flight
        self._delivered = sample.prior_delivered + sample.delivered
        if not self._pacing_from_rtt and sample.rtt > 0:
            # The draft's initial rate is the initial window over the SRTT, "1 ms if
            # none": a QUIC path has none when its controller is made, so Startup would
            # run unpaced until 2.77 x the bandwidth outgrew 1 ms's rate.
            initial = INITIAL_WINDOW_PACKETS * self._mss
            self._pacing_rate = STARTUP_PACING_GAIN * initial / sample.rtt
            self._pacing_from_rtt = True
        self._update_model_and_state(sample, now)
        self._set_pacing_rate()
        self._set_cwnd(sample)

    def on_persistent_congestion(self, now: float) -> None:
        """RFC 9002 §7.6: everything in flight for 3 PTOs was lost; restart from the
        minimum window (the model stays: it grows back within a round or two)."""
        self._save_cwnd()
        self.cwnd = self._min_pipe_cwnd

    # ------------------------------------------------------------- per-ACK update

    def _update_model_and_state(self, rs: RateSample, now: float) -> None:
        self._update_latest_delivery_signals(rs)
        self._update_congestion_signals(rs, now)
        self._check_full_bw_reached(rs)
        self._check_startup_done()
        self._check_drain_done(now)
        self._update_probe_bw_cycle_phase(rs, now)
        self._update_min_rtt(rs, now)
        self._check_probe_rtt(now)
        self._advance_latest_delivery_signals(rs)
        self.bw = min(self.max_bw, self.bw_lo)

    def _update_latest_delivery_signals(self, rs: RateSample) -> None:
        self._loss_round_start = False
        self._latest_rtt = rs.rtt
        self._round_min_rtt = min(self._round_min_rtt, rs.rtt)
        self._bw_latest = max(self._bw_latest, rs.delivery_rate)
        self._inflight_latest = max(self._inflight_latest, rs.delivered)
        if rs.prior_delivered >= self._loss_round_delivered:
            self._loss_round_delivered = self._delivered
            self._loss_round_start = True

    def _advance_latest_delivery_signals(self, rs: RateSample) -> None:
        if self._loss_round_start:
            self._bw_latest = rs.delivery_rate
            self._inflight_latest = rs.delivered

    def _update_round(self, rs: RateSample) -> None:
        self._round_start = rs.prior_delivered >= self._next_round_delivered
        if self._round_start:
            self._next_round_delivered = self._delivered
            self.round_count += 1
            self._rounds_since_bw_probe += 1

    def _update_congestion_signals(self, rs: RateSample, now: float) -> None:
        self._update_round(rs)
        if rs.delivery_rate > 0 and (rs.delivery_rate >= self.max_bw or not rs.app_limited):
            self._max_bw_filter.update(rs.delivery_rate)
            self.max_bw = self._max_bw_filter.value
        if not self._loss_round_start:
            return
        self._check_startup_high_loss()
        self._adapt_lower_bounds_from_congestion()
        self._bound_standing_queue(rs, now)
        self._loss_in_round = False
        self._loss_events_in_round = 0
        self._lost_in_round = 0
        self._delivered_at_round_start = self._delivered
        self._round_min_rtt = rs.rtt
        self._round_start_time = now

    def _adapt_lower_bounds_from_congestion(self) -> None:
        """Outside probing, a round with loss lowers the short-term bounds to what the
        last round delivered (never below BETA times their previous value)."""
        if self._is_probing_bw or self.state is State.DRAIN or not self._loss_in_round:
            return  # Drain's queue is Startup's own, already going; overflow ended Startup
        if not self._round_loss_over_thresh():
            return  # loss under the threshold: noise, not a full queue
        if math.isinf(self.bw_lo):
            self.bw_lo = self.max_bw
        if math.isinf(self.inflight_lo):
            self.inflight_lo = self.cwnd
        self.bw_lo = max(self._bw_latest, BETA * self.bw_lo)
        self.inflight_lo = max(self._inflight_latest, BETA * self.inflight_lo)

    def _bound_standing_queue(self, rs: RateSample, now: float) -> None:
        """A cruising round whose RTT never came down: cap the window at the round's
        delivered rate times the min RTT, plus STANDING_QUEUE_ALLOWANCE.

        A queue of its own drains within a round of that bound to what the bound allows.
        One still longer after FOREIGN_QUEUE_ROUNDS rounds held at it is another flow's
        (a loss-based one keeps the bottleneck full whatever this one does): holding
        back would only hand that flow the link, so the bound is lifted until the next
        bandwidth probe."""
        if self.state is not State.CRUISE or rs.app_limited or self._round_start_time is None:
            return
        if math.isinf(self.min_rtt) or self._round_min_rtt <= self.min_rtt + self._queue_margin():
            self._rounds_at_bound = 0  # the queue went: it was ours
            return
        elapsed = now - self._round_start_time
        if elapsed < self.min_rtt or self._foreign_queue:
            return  # a partial round (its rate is not the bottleneck's), or not ours
        allowed = self.min_rtt * (1 + STANDING_QUEUE_ALLOWANCE) + self._queue_margin()
        if self._rounds_at_bound >= FOREIGN_QUEUE_ROUNDS and self._round_min_rtt > allowed:
            self._foreign_queue = True
            self.inflight_lo = math.inf
            return
        rate = (self._delivered - self._delivered_at_round_start) / elapsed
        bound = rate * self.min_rtt * (1 + STANDING_QUEUE_ALLOWANCE) + 2 * self._mss
        self.inflight_lo = min(self.inflight_lo, max(bound, float(self._min_pipe_cwnd)))
        self._rounds_at_bound += 1

    def _queue_margin(self) -> float:
        return max(QUEUE_EVIDENCE * self.min_rtt, QUEUE_EVIDENCE_MIN_S)

    def _round_loss_over_thresh(self) -> bool:
        """The round lost more than LOSS_THRESH of what it sent, with a queue."""
        sent = self._delivered - self._delivered_at_round_start + self._lost_in_round
        over = sent > 0 and self._lost_in_round > self.loss_thresh * sent
        return over and self._queue_shows()

    def _queue_shows(self) -> bool:
        """The latest RTT is enough over the min RTT to say a queue stands now."""
        if math.isinf(self.min_rtt):
            return True  # no baseline yet: the draft's rule
        return self._latest_rtt > self.min_rtt + self._queue_margin()

    def _check_startup_high_loss(self) -> None:
        if self.state is not State.STARTUP or self.filled_pipe:
            return
        if self._loss_events_in_round < STARTUP_FULL_LOSS_COUNT:
            return
        if not self._round_loss_over_thresh():
            return
        self.filled_pipe = True
        self.inflight_hi = max(self._bdp_multiple(1.0), float(self._inflight_latest))

    def _check_full_bw_reached(self, rs: RateSample) -> None:
        if self.filled_pipe or not self._round_start or rs.app_limited:
            return
        if self.max_bw >= self._full_bw * STARTUP_FULL_BW_GROWTH:
            self._full_bw = self.max_bw
            self._full_bw_count = 0
            return
        self._full_bw_count += 1
        if self._full_bw_count >= STARTUP_FULL_BW_ROUNDS:
            self.filled_pipe = True

    def _check_startup_done(self) -> None:
        if self.state is State.STARTUP and self.filled_pipe:
            self._enter(State.DRAIN)

    def _check_drain_done(self, now: float) -> None:
        if self.state is State.DRAIN and self._inflight <= self._inflight_for(self.bw, 1.0):
            self._start_probe_bw_down(now)

    # ------------------------------------------------------------------ ProbeBW

    def _update_probe_bw_cycle_phase(self, rs: RateSample, now: float) -> None:
        if not self.filled_pipe:
            return
        self._adapt_upper_bounds(rs, now)
        if self.state is State.DOWN:
            if not self._time_to_probe_bw(now) and self._time_to_cruise():
                self._start_probe_bw_cruise()
        elif self.state is State.CRUISE:
            self._time_to_probe_bw(now)
        elif self.state is State.REFILL:
            if self._round_start:
                self._bw_probe_samples = True
                self._start_probe_bw_up(now)
        elif self.state is State.UP and self._time_to_go_down(rs, now):
            self._start_probe_bw_down(now)

    def _adapt_upper_bounds(self, rs: RateSample, now: float) -> None:
        if self._ack_phase is AckPhase.PROBE_STARTING and self._round_start:
            self._ack_phase = AckPhase.PROBE_FEEDBACK
        if self._ack_phase is AckPhase.PROBE_STOPPING and self._round_start:
            # The probe's own ACKs are over: a new cycle of the bandwidth filter.
            self._bw_probe_samples = False
            self._ack_phase = AckPhase.INIT
            if self.state in PROBE_BW_STATES and not rs.app_limited:
                self._max_bw_filter.advance()
        too_high = rs.lost > rs.tx_in_flight * self.loss_thresh and self._queue_shows()
        if self._bw_probe_samples and too_high:
            self._handle_inflight_too_high(rs.tx_in_flight, rs.app_limited, now)
            return
        if math.isinf(self.inflight_hi):
            return
        if rs.tx_in_flight > self.inflight_hi:
            self.inflight_hi = rs.tx_in_flight
        if self.state is State.UP:
            self._probe_inflight_hi_upward(rs)

    def _handle_inflight_too_high(self, tx_in_flight: float, app_limited: bool, now: float) -> None:
        """A bandwidth probe met more loss than LOSS_THRESH: what was in flight then is
        the most the path holds (never cut below BETA times the BDP at once)."""
        self._bw_probe_samples = False
        if not app_limited:
            self.inflight_hi = max(tx_in_flight, BETA * self._bdp_multiple(1.0))
        if self.state is State.UP:
            self._start_probe_bw_down(now)

    def _inflight_hi_from_lost(self, tx_in_flight: int, lost: int, size: int) -> float:
        """The in-flight volume at which the loss rate crossed LOSS_THRESH, interpolated
        within the packet whose loss crossed it."""
        inflight_prev = tx_in_flight - size
        lost_prev = lost - size
        lost_prefix = (self.loss_thresh * inflight_prev - lost_prev) / (1 - self.loss_thresh)
        return float(inflight_prev + max(lost_prefix, 0.0))

    def _probe_inflight_hi_upward(self, rs: RateSample) -> None:
        """While probing up and limited by inflight_hi, raise it: 1, 2, 4, ... packets per
        round, so a path that grew is found again within a few rounds."""
        if self._round_start:
            self._raise_inflight_hi_slope()
        if rs.tx_in_flight + self._mss < self.cwnd or self.cwnd < self.inflight_hi:
            return  # not limited by inflight_hi
        self._probe_up_acks += rs.newly_acked
        if self._probe_up_acks >= self._probe_up_cnt:
            delta = int(self._probe_up_acks // self._probe_up_cnt)
            self._probe_up_acks -= int(delta * self._probe_up_cnt)
            self.inflight_hi += delta * self._mss

    def _raise_inflight_hi_slope(self) -> None:
        growth = 1 << self._probe_up_rounds
        self._probe_up_rounds = min(self._probe_up_rounds + 1, 30)
        self._probe_up_cnt = max(self.cwnd // growth, 1)

    def _time_to_probe_bw(self, now: float) -> bool:
        if (
            now - self._cycle_stamp > self._bw_probe_wait
            or self._rounds_since_bw_probe >= self._reno_rounds()
        ):
            self._start_probe_bw_refill()
            return True
        return False

    def _reno_rounds(self) -> int:
        """Rounds a Reno flow with this BDP would take to regain a lost packet's worth."""
        return min(int(self._bdp_multiple(1.0) / self._mss), MAX_RENO_ROUNDS)

    def _time_to_cruise(self) -> bool:
        if self._inflight > self._inflight_with_headroom():
            return False
        return self._inflight <= self._inflight_for(self.max_bw, 1.0)

    def _time_to_go_down(self, rs: RateSample, now: float) -> bool:
        if self._round_start and not rs.app_limited:
            if self.max_bw >= self._up_full_bw * STARTUP_FULL_BW_GROWTH:
                self._up_full_bw, self._up_full_bw_count = self.max_bw, 0
            else:
                self._up_full_bw_count += 1
        if self._up_full_bw_count >= STARTUP_FULL_BW_ROUNDS:
            return True  # more in flight brought no more bandwidth
        elapsed = now - self._cycle_stamp > self.min_rtt
        return elapsed and self._inflight > self._inflight_for(self.max_bw, 1.25)

    def _start_probe_bw_down(self, now: float) -> None:
        self._reset_congestion_signals()
        self._probe_up_cnt = math.inf
        self._rounds_since_bw_probe = self._rng.randint(0, 1)
        self._bw_probe_wait = 2.0 + self._rng.random()  # s: desynchronises flows
        self._cycle_stamp = now
        self._ack_phase = AckPhase.PROBE_STOPPING
        self._start_round()
        self._enter(State.DOWN)

    def _start_probe_bw_cruise(self) -> None:
        self._enter(State.CRUISE)

    def _start_probe_bw_refill(self) -> None:
        self._reset_lower_bounds()
        self._probe_up_rounds = 0
        self._probe_up_acks = 0
        self._ack_phase = AckPhase.INIT
        self._start_round()
        self._enter(State.REFILL)

    def _start_probe_bw_up(self, now: float) -> None:
        self._ack_phase = AckPhase.PROBE_STARTING
        self._start_round()
        self._cycle_stamp = now
        self._up_full_bw, self._up_full_bw_count = self.max_bw, 0
        self._enter(State.UP)
        self._raise_inflight_hi_slope()

    # ----------------------------------------------------------------- ProbeRTT

    def _update_min_rtt(self, rs: RateSample, now: float) -> None:
        if self._probe_rtt_min_stamp is None:
            self._probe_rtt_min_stamp = now
        self._window_limited_since_stamp |= not rs.app_limited
        expired = now > self._probe_rtt_min_stamp + PROBE_RTT_INTERVAL_S
        # Read by _check_probe_rtt, before the refresh. A flow that stayed app-limited
        # since the stamp has no queue of its own to drain: its samples already show the
        # path, and ProbeRTT would only hold its data back (docs/CONGESTION.md, deviation 4).
        self._probe_rtt_expired = expired and self._window_limited_since_stamp
        # An equal sample refreshes too: it shows no queue stands (a steady path, where
        # every sample is the minimum, would otherwise drain for ProbeRTT every 5 s).
        if rs.rtt > 0 and (rs.rtt <= self._probe_rtt_min_delay or expired):
            self._probe_rtt_min_delay = rs.rtt
            self._stamp_probe_rtt(now)
        min_rtt_expired = now > self._min_rtt_stamp + MIN_RTT_FILTER_S
        if self._probe_rtt_min_delay < self.min_rtt or min_rtt_expired:
            self.min_rtt = self._probe_rtt_min_delay
            self._min_rtt_stamp = self._probe_rtt_min_stamp

    def _stamp_probe_rtt(self, now: float) -> None:
        self._probe_rtt_min_stamp = now
        self._window_limited_since_stamp = False

    def _check_probe_rtt(self, now: float) -> None:
        if self.state is not State.PROBE_RTT and self._probe_rtt_expired:
            self._save_cwnd()
            self._probe_rtt_done_stamp = None
            self._ack_phase = AckPhase.PROBE_STOPPING
            self._start_round()
            self._enter(State.PROBE_RTT)
        if self.state is State.PROBE_RTT:
            self._handle_probe_rtt(now)

    def _handle_probe_rtt(self, now: float) -> None:
        if self._probe_rtt_done_stamp is None:
            if self._inflight <= self._probe_rtt_cwnd():
                # The queue is drained: hold the low window 200 ms and a round.
                self._probe_rtt_done_stamp = now + PROBE_RTT_DURATION_S
                self._probe_rtt_round_done = False
                self._start_round()
            return
        if self._round_start:
            self._probe_rtt_round_done = True
        if self._probe_rtt_round_done and now > self._probe_rtt_done_stamp:
            self._stamp_probe_rtt(now)
            self.cwnd = max(self.cwnd, self._prior_cwnd)
            self._exit_probe_rtt(now)

    def _exit_probe_rtt(self, now: float) -> None:
        self._reset_lower_bounds()
        if self.filled_pipe:
            self._start_probe_bw_down(now)
            self._start_probe_bw_cruise()
        else:
            self._enter(State.STARTUP)

    def _probe_rtt_cwnd(self) -> int:
        return max(int(self._bdp_multiple(PROBE_RTT_CWND_GAIN)), self._min_pipe_cwnd)

    # ------------------------------------------------------------------ outputs

    def _set_pacing_rate(self) -> None:
        if self.bw <= 0:
            return  # no sample yet: keep the initial rate
        rate = GAINS[self.state][0] * self.bw * (1 - PACING_MARGIN)
        if self.filled_pipe or rate > self._pacing_rate:
            self._pacing_rate = rate

    def _set_cwnd(self, rs: RateSample) -> None:
        max_inflight = self._inflight_for(self.bw, GAINS[self.state][1])
        if self.filled_pipe:
            self.cwnd = min(self.cwnd + rs.newly_acked, max_inflight)
        elif self.cwnd < max_inflight or self._delivered < INITIAL_WINDOW_PACKETS * self._mss:
            self.cwnd += rs.newly_acked
        self.cwnd = max(self.cwnd, self._min_pipe_cwnd)
        if self.state is State.PROBE_RTT:
            self.cwnd = min(self.cwnd, self._probe_rtt_cwnd())
        self.cwnd = min(self.cwnd, self._model_cap())

    def _model_cap(self) -> int:
        """inflight_hi (with headroom while cruising or in ProbeRTT) and inflight_lo."""
        if self.state in PROBE_BW_STATES and self.state is not State.CRUISE:
            cap = self.inflight_hi
        else:
            cap = self._inflight_with_headroom()
        cap = min(cap, self.inflight_lo)
        return int(max(cap, self._min_pipe_cwnd)) if math.isfinite(cap) else self.cwnd

    def _inflight_with_headroom(self) -> float:
        if math.isinf(self.inflight_hi):
            return math.inf
        headroom = max(self._mss, HEADROOM * self.inflight_hi)
        return max(self.inflight_hi - headroom, self._min_pipe_cwnd)

    def _inflight_for(self, bw: float, gain: float) -> int:
        """`gain` BDPs at `bw`, plus what pacing in bursts keeps in flight."""
        if math.isinf(self.min_rtt) or bw <= 0:
            return INITIAL_WINDOW_PACKETS * self._mss
        inflight = gain * bw * self.min_rtt + 3 * self._send_quantum()
        if self.state is State.UP:
            inflight += 2 * self._mss
        return max(int(inflight), self._min_pipe_cwnd)

    def _bdp_multiple(self, gain: float) -> float:
        if math.isinf(self.min_rtt) or self.bw <= 0:
            return float(INITIAL_WINDOW_PACKETS * self._mss)
        return gain * self.bw * self.min_rtt

    def _send_quantum(self) -> int:
        """About 1 ms at the pacing rate, between 2 datagrams and 64 KB."""
        return int(min(max(self._pacing_rate * 0.001, 2 * self._mss), 65536))

    @property
    def _min_pipe_cwnd(self) -> int:
        return MIN_PIPE_PACKETS * self._mss

    # ------------------------------------------------------------------ helpers

    @property
    def _is_probing_bw(self) -> bool:
        return self.state in (State.STARTUP, State.REFILL, State.UP)

    def _enter(self, state: State) -> None:
        self.state = state

    def _start_round(self) -> None:
        self._next_round_delivered = self._delivered

    def _save_cwnd(self) -> None:
        if self.state is State.PROBE_RTT:
            self._prior_cwnd = max(self._prior_cwnd, self.cwnd)
        else:
            self._prior_cwnd = self.cwnd

    def _reset_congestion_signals(self) -> None:
        self._loss_in_round = False
        self._loss_events_in_round = 0
        self._lost_in_round = 0
        self._bw_latest = 0.0
        self._inflight_latest = 0

    def _reset_lower_bounds(self) -> None:
        self.bw_lo = math.inf
        self.inflight_lo = math.inf
        self._rounds_at_bound = 0
        self._foreign_queue = False
