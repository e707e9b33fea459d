"""Per-request redundancy decision (issue #5, "Control"): pure functions and small dataclasses.

Rules, in order (docs/FEC.md §8):

1. An override (per session, then per request) may turn FEC off, force it on,
   or lower the overhead cap. Off, a zero cap, or a peer decoder that holds no
   symbols: no repairs at all.
2. Retransmission meets the deadline when the slack (time left beyond what a
   loss-free delivery needs) is at least `retransmit_rtts` RTTs, or when there
   is no deadline. Then FEC is off, except for 1..`max_tail_repairs` repairs
   after a short response: its last packets have no later ones to reveal their
   loss, so they would wait for a probe timeout, longer than 1.25 RTT.
3. Otherwise a repair must arrive within the slack, so the coding window is
   what the sender emits meanwhile, `rate * slack` in symbols, bounded by the
   policy, the peer's decoder and the rest of the response. It gets the fewest
   repairs that keep P(the window is unrecoverable) within the request's loss
   tolerance, at most `max_overhead` of the window (short responses may always
   have their tail repairs). When the cap binds, the decision says `capped` so
   that the app can be told (event + metric).

Loss model: a two-state Gilbert-Elliott chain fitted to the measured loss rate
and mean burst length (`loss.LossEstimator`). A window of w source symbols and
r repair symbols, sent back to back, is unrecoverable iff more than r of those
w + r packets are lost (RLC is MDS up to a negligible chance of a singular
system, and more than r losses must include a source symbol). The probability
is computed exactly by dynamic programming over the chain, not by a binomial
approximation that ignores bursts.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, TypeGuard

from netsched_client.fec.params import DEFAULT_SYMBOL_SIZE
from netsched_client.fec.rlc import MAX_SYMBOL_SIZE, MAX_WINDOW, MIN_SYMBOL_SIZE

_FIRST_REPAIR_LIMIT: Final = 8  # DP size tried first; doubled until the answer is in range


def _problem(owner: str, name: str, rule: str, value: object) -> ValueError:
    return ValueError(f"{owner}.{name}: must be {rule} (got {value!r})")


def _number(value: object) -> TypeGuard[float]:
    """A finite int or float; bools are not numbers here."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_fraction(owner: str, name: str, value: object) -> None:
    if not (_number(value) and 0.0 <= value <= 1.0):
        raise _problem(owner, name, "a number in 0.0..1.0", value)


def _check_int(owner: str, name: str, value: object, low: int, high: int) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    if not ok:
        raise _problem(owner, name, f"an int in {low}..{high}", value)


# -- loss model ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GilbertElliott:
    """Two-state Markov loss chain; one transition before every packet after the first."""

    p_enter_bad: float  # P(good -> bad)
    p_leave_bad: float  # P(bad -> good)
    loss_good: float = 0.0  # P(loss) in the good state
    loss_bad: float = 1.0  # P(loss) in the bad state

    def __post_init__(self) -> None:
        for name in ("p_enter_bad", "p_leave_bad", "loss_good", "loss_bad"):
            _check_fraction("GilbertElliott", name, getattr(self, name))
        if self.p_enter_bad + self.p_leave_bad == 0:
            raise _problem("GilbertElliott", "p_enter_bad + p_leave_bad", "> 0", 0.0)

    @classmethod
    def fit(cls, loss_rate: float, mean_burst: float) -> GilbertElliott:
        """The Gilbert chain (loss iff bad) with this loss rate and mean loss-burst length.

        A measured pair no chain produces (bursts too short for the rate) gets
        the nearest chain, which always enters the bad state from the good one.
        """
        _check_fraction("GilbertElliott.fit", "loss_rate", loss_rate)
        if not (_number(mean_burst) and mean_burst >= 1.0):
            raise _problem("GilbertElliott.fit", "mean_burst", "a finite number >= 1.0", mean_burst)
        if loss_rate == 0.0:
            return cls(0.0, 1.0)
        if loss_rate == 1.0:
            return cls(1.0, 0.0)
        leave = 1.0 / mean_burst
        return cls(min(1.0, leave * loss_rate / (1.0 - loss_rate)), leave)

    @property
    def bad_share(self) -> float:
        """Stationary probability of the bad state."""
        return self.p_enter_bad / (self.p_enter_bad + self.p_leave_bad)

    @property
    def loss_rate(self) -> float:
        bad = self.bad_share
        return (1.0 - bad) * self.loss_good + bad * self.loss_bad


def _emit(dist: list[float], loss: float) -> list[float]:
    """Loss-count distribution after one packet in a state that loses with `loss`.

    The last entry stands for "that many losses or more", so it keeps its mass.
    """
    if loss == 0.0:
        return dist
    shifted = [0.0, *dist[:-1]]
    shifted[-1] += dist[-1]
    if loss == 1.0:
        return shifted
    keep = 1.0 - loss
    return [keep * stay + loss * moved for stay, moved in zip(dist, shifted, strict=True)]


def unrecoverable_probabilities(
    model: GilbertElliott, window: int, max_repairs: int
) -> tuple[float, ...]:
    """Entry r, for r in 0..max_repairs: P(more than r of window + r packets are lost).

    The chain starts in its stationary distribution: a window begins at a random time.
    """
    _check_int("unrecoverable_probabilities", "window", window, 1, MAX_WINDOW)
    _check_int("unrecoverable_probabilities", "max_repairs", max_repairs, 0, MAX_WINDOW)
    # good[k] / bad[k]: P(state of the current packet, k losses before it); the
    # last index collects max_repairs + 1 losses or more, all we need to tell apart.
    good = [1.0 - model.bad_share] + [0.0] * (max_repairs + 1)
    bad = [model.bad_share] + [0.0] * (max_repairs + 1)
    stay_good, stay_bad = 1.0 - model.p_enter_bad, 1.0 - model.p_leave_bad
    enter, leave = model.p_enter_bad, model.p_leave_bad
    tails: list[float] = []
    for packet in range(1, window + max_repairs + 1):
        good, bad = _emit(good, model.loss_good), _emit(bad, model.loss_bad)
        repairs = packet - window
        if repairs >= 0:
            tails.append(math.fsum(good[repairs + 1 :]) + math.fsum(bad[repairs + 1 :]))
        good, bad = (
            [g * stay_good + b * leave for g, b in zip(good, bad, strict=True)],
            [g * enter + b * stay_bad for g, b in zip(good, bad, strict=True)],
        )
    return tuple(tails)


def repairs_needed(
    model: GilbertElliott, window: int, tolerance: float, max_repairs: int
) -> tuple[int, float]:
    """(repairs, P(unrecoverable) with them): the fewest repairs within `tolerance`.

    When even `max_repairs` is not enough, returns it with its probability, which
    then exceeds `tolerance`. P(unrecoverable) never grows with r, so the first
    r that fits is the answer; the DP runs for a few r first and grows if needed.
    """
    _check_fraction("repairs_needed", "tolerance", tolerance)
    limit = min(max_repairs, _FIRST_REPAIR_LIMIT)
    while True:
        tails = unrecoverable_probabilities(model, window, limit)
        for repairs, residual in enumerate(tails):
            if residual <= tolerance:
                return repairs, residual
        if limit >= max_repairs:
            return limit, tails[-1]
        limit = min(2 * limit, max_repairs)


# -- inputs, knobs, overrides ---------------------------------------------------


class FecMode(StrEnum):
    AUTO = "auto"  # the rules above
    ON = "on"  # protect even when retransmission would meet the deadline
    OFF = "off"  # never send repairs, not even tail repairs


@dataclass(frozen=True, slots=True)
class FecOverride:
    """A session's or request's say over FEC; None fields defer to the level below."""

    mode: FecMode | None = None
    max_overhead: float | None = None  # repairs per source symbol; only ever lowers the cap

    def __post_init__(self) -> None:
        if self.mode is not None and not isinstance(self.mode, FecMode):
            raise _problem("FecOverride", "mode", "a FecMode or None", self.mode)
        if self.max_overhead is not None:
            _check_fraction("FecOverride", "max_overhead", self.max_overhead)

    def merged(self, request: FecOverride) -> FecOverride:
        """This (session) override with every field `request` sets taking precedence."""
        return FecOverride(
            self.mode if request.mode is None else request.mode,
            self.max_overhead if request.max_overhead is None else request.max_overhead,
        )


@dataclass(frozen=True, slots=True)
class FecPolicy:
    """The operator's knobs."""

    retransmit_rtts: float = 1.25  # slack that lets a retransmission arrive in time
    max_overhead: float = 0.5  # the cap: repairs per source symbol
    max_window: int = 256  # also bounds the DP's cost: O(window * repairs)
    short_response_packets: int = 16  # responses this short get tail repairs
    max_tail_repairs: int = 2

    def __post_init__(self) -> None:
        if not (_number(self.retransmit_rtts) and self.retransmit_rtts > 0):
            raise _problem(
                "FecPolicy", "retransmit_rtts", "a finite number > 0", self.retransmit_rtts
            )
        _check_fraction("FecPolicy", "max_overhead", self.max_overhead)
        _check_int("FecPolicy", "max_window", self.max_window, 1, MAX_WINDOW)
        _check_int(
            "FecPolicy", "short_response_packets", self.short_response_packets, 0, MAX_WINDOW
        )
        _check_int("FecPolicy", "max_tail_repairs", self.max_tail_repairs, 0, MAX_WINDOW)


@dataclass(frozen=True, slots=True)
class FecInputs:
    """What one decision needs: the request's SLO and what the connection measures."""

    loss_tolerance: float  # SLO: share of data that may be lost or late
    loss_rate: float  # LossStats.loss_rate of the path
    mean_burst: float  # LossStats.mean_burst of the path
    rtt: float  # seconds (smoothed RTT of the path)
    rate: float  # bytes per second the request is sent at
    slack: float | None  # seconds left beyond a loss-free delivery; None: no deadline
    symbol_size: int = DEFAULT_SYMBOL_SIZE  # NegotiatedFec.symbol_size
    remaining_packets: int | None = None  # packets left in the response; None: unknown
    decoder_window: int = MAX_WINDOW  # NegotiatedFec.send_window, or the peer's FEC_WINDOW

    def __post_init__(self) -> None:
        _check_fraction("FecInputs", "loss_tolerance", self.loss_tolerance)
        _check_fraction("FecInputs", "loss_rate", self.loss_rate)
        if not (_number(self.mean_burst) and self.mean_burst >= 1.0):
            raise _problem("FecInputs", "mean_burst", "a finite number >= 1.0", self.mean_burst)
        if not (_number(self.rtt) and self.rtt > 0):
            raise _problem("FecInputs", "rtt", "a finite number of seconds > 0", self.rtt)
        if not (_number(self.rate) and self.rate >= 0):
            raise _problem("FecInputs", "rate", "a finite number of bytes/s >= 0", self.rate)
        if self.slack is not None and not _number(self.slack):
            raise _problem("FecInputs", "slack", "a finite number of seconds or None", self.slack)
        _check_int("FecInputs", "symbol_size", self.symbol_size, MIN_SYMBOL_SIZE, MAX_SYMBOL_SIZE)
        if self.remaining_packets is not None:
            _check_int("FecInputs", "remaining_packets", self.remaining_packets, 1, 2**62)
        _check_int("FecInputs", "decoder_window", self.decoder_window, 0, MAX_WINDOW)


# -- the decision ---------------------------------------------------------------


class FecReason(StrEnum):
    DISABLED = "disabled"  # override off, zero cap, or the peer's decoder holds nothing
    NO_DEADLINE = "no-deadline"  # nothing to hurry for
    RETRANSMIT = "retransmit"  # retransmission meets the deadline
    TAIL = "tail"  # retransmission meets it, but a short response's tail is repaired
    PROTECT = "protect"  # repairs per window sized by the loss model


@dataclass(frozen=True, slots=True)
class FecDecision:
    reason: FecReason
    window: int = 0  # source symbols per coding window
    repairs: int = 0  # repair symbols per window
    residual: float | None = None  # P(window unrecoverable) with these repairs; None: FEC off
    capped: bool = False  # the cap kept the residual above the loss tolerance

    @property
    def enabled(self) -> bool:
        return self.repairs > 0

    @property
    def overhead(self) -> float:
        """Repair symbols per source symbol."""
        return self.repairs / self.window if self.window else 0.0


DEFAULT_POLICY: Final = FecPolicy()
NO_OVERRIDE: Final = FecOverride()


def _budget(window: int, cap: float, allowance: int) -> int:
    """Repairs allowed per window: the cap's share (1e-9: 0.29 * 100 is 28.999...)."""
    return max(math.floor(cap * window + 1e-9), allowance)


def _coding_window(inputs: FecInputs, policy: FecPolicy) -> int:
    bound = min(policy.max_window, inputs.decoder_window)
    if inputs.slack is None:  # forced on without a deadline: the largest window
        window = bound
    else:
        symbols = inputs.rate / inputs.symbol_size * max(inputs.slack, 0.0)
        window = max(1, min(bound, math.floor(symbols)))
    if inputs.remaining_packets is not None:
        window = min(window, inputs.remaining_packets)
    return window


def _repairs(inputs: FecInputs, window: int, budget: int, short: bool) -> tuple[int, float]:
    """(repairs, residual) for the window, at most `budget` repairs.

    The loss estimates are rounded to three significant digits (burst length to a
    hundredth), well inside their own noise, so that the Markov-chain DP, the costliest
    step of an edge's flush, runs once per distinct answer rather than per decision."""
    return _repairs_for(
        float(f"{inputs.loss_rate:.3g}"),
        round(inputs.mean_burst, 2),
        inputs.loss_tolerance,
        window,
        budget,
        short,
    )


@functools.lru_cache(maxsize=1024)
def _repairs_for(
    loss_rate: float, mean_burst: float, tolerance: float, window: int, budget: int, short: bool
) -> tuple[int, float]:
    model = GilbertElliott.fit(loss_rate, mean_burst)
    repairs, residual = repairs_needed(model, window, tolerance, budget)
    if short and repairs == 0 and budget > 0:
        # A short response's tail gets a repair even when the model says none is needed.
        return 1, unrecoverable_probabilities(model, window, 1)[1]
    return repairs, residual


def _tail(
    inputs: FecInputs, policy: FecPolicy, remaining: int, cap: float, allowance: int
) -> FecDecision:
    """Retransmission is in time, but the last packets of a short response get repairs."""
    window = min(remaining, policy.max_window, inputs.decoder_window)
    budget = min(policy.max_tail_repairs, _budget(window, cap, allowance))
    if budget == 0:
        return FecDecision(FecReason.RETRANSMIT)
    repairs, residual = _repairs(inputs, window, budget, short=True)
    return FecDecision(FecReason.TAIL, window, repairs, residual)


def decide(
    inputs: FecInputs, policy: FecPolicy = DEFAULT_POLICY, override: FecOverride = NO_OVERRIDE
) -> FecDecision:
    """How much redundancy this request gets now; call again as slack and estimates change."""
    mode = override.mode or FecMode.AUTO
    cap = policy.max_overhead
    if override.max_overhead is not None:
        cap = min(cap, override.max_overhead)
    if mode is FecMode.OFF or cap == 0.0 or inputs.decoder_window == 0:
        return FecDecision(FecReason.DISABLED)
    remaining = inputs.remaining_packets
    short = remaining is not None and remaining <= policy.short_response_packets
    # Tail repairs are bounded in number rather than by the policy's ratio cap;
    # a cap the session or request set itself still binds them.
    allowance = policy.max_tail_repairs if short and override.max_overhead is None else 0
    if mode is FecMode.AUTO:
        if inputs.slack is None:
            return FecDecision(FecReason.NO_DEADLINE)
        if inputs.slack >= policy.retransmit_rtts * inputs.rtt:
            if remaining is None or not short:
                return FecDecision(FecReason.RETRANSMIT)
            return _tail(inputs, policy, remaining, cap, allowance)
    window = _coding_window(inputs, policy)
    repairs, residual = _repairs(inputs, window, _budget(window, cap, allowance), short)
    return FecDecision(
        FecReason.PROTECT, window, repairs, residual, residual > inputs.loss_tolerance
    )
