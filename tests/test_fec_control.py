"""The redundancy controller: the Gilbert-Elliott DP against brute force, and the decision rules."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from netsched_client.fec.control import (
    DEFAULT_POLICY,
    FecDecision,
    FecInputs,
    FecMode,
    FecOverride,
    FecPolicy,
    FecReason,
    GilbertElliott,
    decide,
    repairs_needed,
    unrecoverable_probabilities,
)

fuzz = settings(deadline=None, max_examples=60)
probabilities = st.floats(0.0, 1.0)

# -- the DP -------------------------------------------------------------------------


def brute_force(model: GilbertElliott, packets: int) -> list[list[float]]:
    """[k][j] = P(j of the first k packets are lost), summed over every state and loss path."""
    table = [[0.0] * (packets + 1) for _ in range(packets + 1)]
    table[0][0] = 1.0
    start_bad = model.p_enter_bad / (model.p_enter_bad + model.p_leave_bad)
    for states in itertools.product((False, True), repeat=packets):  # True: bad
        p_states = start_bad if states[0] else 1.0 - start_bad
        for before, after in itertools.pairwise(states):
            move = model.p_leave_bad if before else model.p_enter_bad
            p_states *= move if before != after else 1.0 - move
        for losses in itertools.product((False, True), repeat=packets):
            p = p_states
            for bad, lost in zip(states, losses, strict=True):
                loss = model.loss_bad if bad else model.loss_good
                p *= loss if lost else 1.0 - loss
            count = 0
            for k, lost in enumerate(losses, start=1):
                count += lost
                table[k][count] += p
    return table


models = (
    st.tuples(probabilities, probabilities, probabilities, probabilities)
    .filter(lambda p: p[0] + p[1] > 0)  # a chain that never moves has no stationary start
    .map(lambda p: GilbertElliott(*p))
)


@given(models, st.integers(1, 4), st.integers(0, 2))
@settings(deadline=None, max_examples=25)
def test_dp_equals_brute_force(model: GilbertElliott, window: int, max_repairs: int) -> None:
    table = brute_force(model, window + max_repairs)
    expected = [sum(table[window + r][r + 1 :]) for r in range(max_repairs + 1)]
    got = unrecoverable_probabilities(model, window, max_repairs)
    assert got == pytest.approx(expected, abs=1e-12)


def test_dp_equals_brute_force_on_a_bursty_chain() -> None:
    model = GilbertElliott(0.1, 0.3, 0.05, 0.7)
    table = brute_force(model, 7)
    got = unrecoverable_probabilities(model, 4, 3)
    assert got == pytest.approx([sum(table[4 + r][r + 1 :]) for r in range(4)], rel=1e-12)


@pytest.mark.parametrize("rate", [0.01, 0.05, 0.3])
def test_random_loss_gives_the_binomial_tail(rate: float) -> None:
    model = GilbertElliott.fit(rate, 1 / (1 - rate))
    window = 40
    got = unrecoverable_probabilities(model, window, 12)
    for r, value in enumerate(got):
        n = window + r
        tail = math.fsum(
            math.comb(n, k) * rate**k * (1 - rate) ** (n - k) for k in range(r + 1, n + 1)
        )
        assert value == pytest.approx(tail, rel=1e-9, abs=1e-300)


def test_bursts_need_more_repairs_than_random_loss_at_the_same_rate() -> None:
    random_loss = GilbertElliott.fit(0.05, 1 / 0.95)
    bursty = GilbertElliott.fit(0.05, 4.0)
    needed = repairs_needed(bursty, 50, 1e-3, 50)[0]
    assert needed > 2 * repairs_needed(random_loss, 50, 1e-3, 50)[0]


@given(models, st.integers(1, 60), st.integers(0, 30))
@fuzz
def test_tails_never_grow_with_repairs(model: GilbertElliott, window: int, repairs: int) -> None:
    tails = unrecoverable_probabilities(model, window, repairs)
    assert len(tails) == repairs + 1
    assert all(0.0 <= t <= 1.0 + 1e-12 for t in tails)
    assert all(later <= earlier + 1e-12 for earlier, later in itertools.pairwise(tails))


@given(models, st.integers(1, 80), st.floats(0.0, 0.2), st.integers(0, 40))
@fuzz
def test_repairs_needed_is_the_fewest(
    model: GilbertElliott, window: int, tolerance: float, max_repairs: int
) -> None:
    repairs, residual = repairs_needed(model, window, tolerance, max_repairs)
    tails = unrecoverable_probabilities(model, window, max_repairs)
    assert residual == pytest.approx(tails[repairs], rel=1e-12, abs=1e-300)
    if residual <= tolerance:
        assert all(t > tolerance for t in tails[:repairs])
    else:
        assert repairs == max_repairs


# -- the model fit -------------------------------------------------------------------


@given(st.floats(0.001, 0.9), st.floats(1.0, 50.0))
@fuzz
def test_fit_reproduces_rate_and_burst(rate: float, burst: float) -> None:
    assume(burst >= rate / (1 - rate))  # what any two-state chain can produce
    model = GilbertElliott.fit(rate, burst)
    assert model.loss_rate == pytest.approx(rate)
    assert 1 / model.p_leave_bad == pytest.approx(burst)


def test_fit_edges() -> None:
    assert GilbertElliott.fit(0.0, 3.0).loss_rate == 0.0
    assert GilbertElliott.fit(1.0, 1.0).loss_rate == 1.0
    clamped = GilbertElliott.fit(0.9, 1.0)  # bursts of 1 cannot make 90 % loss
    assert clamped.p_enter_bad == 1.0 and clamped.loss_rate == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: GilbertElliott(1.5, 0.5), r"^GilbertElliott\.p_enter_bad: must be a number in"),
        (lambda: GilbertElliott(0.1, math.nan), r"^GilbertElliott\.p_leave_bad: "),
        (lambda: GilbertElliott(0.1, 0.1, loss_bad=True), r"^GilbertElliott\.loss_bad: "),
        (lambda: GilbertElliott(0.0, 0.0), r"p_enter_bad \+ p_leave_bad: must be > 0"),
        (lambda: GilbertElliott.fit(-0.1, 1.0), r"^GilbertElliott\.fit\.loss_rate: "),
        (lambda: GilbertElliott.fit(0.1, 0.5), r"^GilbertElliott\.fit\.mean_burst: .*\(got 0\.5\)"),
        (
            lambda: unrecoverable_probabilities(GilbertElliott(0.1, 0.1), 0, 1),
            r"^unrecoverable_probabilities\.window: must be an int in 1\.\.4095 \(got 0\)$",
        ),
        (
            lambda: unrecoverable_probabilities(GilbertElliott(0.1, 0.1), 1, -1),
            r"^unrecoverable_probabilities\.max_repairs: ",
        ),
        (
            lambda: repairs_needed(GilbertElliott(0.1, 0.1), 1, 2.0, 1),
            r"^repairs_needed\.tolerance: ",
        ),
    ],
)
def test_model_checks(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


# -- decisions -----------------------------------------------------------------------

RTT = 0.1
# 1 MB/s of 1120-byte symbols: 892 symbols/s, 44 in 50 ms of slack.
URGENT = FecInputs(
    loss_tolerance=1e-3, loss_rate=0.05, mean_burst=1 / 0.95, rtt=RTT, rate=1e6, slack=0.05
)


def inputs(**changes: Any) -> FecInputs:
    fields = {name: getattr(URGENT, name) for name in URGENT.__dataclass_fields__}
    return FecInputs(**{**fields, **changes})


def test_estimates_within_their_precision_share_one_chain_computation() -> None:
    from netsched_client.fec import control

    first = decide(inputs(loss_rate=0.0500013, mean_burst=1.2341))
    hits = control._repairs_for.cache_info().hits
    second = decide(inputs(loss_rate=0.0500049, mean_burst=1.2338))
    assert control._repairs_for.cache_info().hits == hits + 1
    assert second == first


def test_urgent_request_on_random_loss() -> None:
    decision = decide(URGENT)
    assert (decision.reason, decision.window, decision.capped) == (FecReason.PROTECT, 44, False)
    assert decision.enabled and 0.1 < decision.overhead <= 0.25  # DESIGN: 5 % loss, ~25 %
    assert decision.residual is not None and decision.residual <= 1e-3
    model = GilbertElliott.fit(0.05, 1 / 0.95)
    # The decision's model is the estimates rounded to their precision (1.0526 -> 1.05).
    exact = unrecoverable_probabilities(model, 44, decision.repairs)[-1]
    assert decision.residual == pytest.approx(exact, rel=0.05)


def test_bursty_loss_hits_the_cap_and_says_so() -> None:
    decision = decide(inputs(loss_rate=0.2, mean_burst=8.0, loss_tolerance=1e-4))
    assert decision.reason is FecReason.PROTECT and decision.capped
    assert decision.repairs == 22 and decision.overhead == pytest.approx(0.5)
    assert decision.residual is not None and decision.residual > 1e-4


def test_retransmission_in_time_turns_fec_off() -> None:
    assert decide(inputs(slack=1.25 * RTT)) == FecDecision(FecReason.RETRANSMIT)
    assert decide(inputs(slack=10.0, remaining_packets=17)) == FecDecision(FecReason.RETRANSMIT)
    assert decide(inputs(slack=None)) == FecDecision(FecReason.NO_DEADLINE)
    assert decide(inputs(slack=None, remaining_packets=2)) == FecDecision(FecReason.NO_DEADLINE)


def test_short_responses_still_get_tail_repairs() -> None:
    clean = decide(inputs(slack=1.0, remaining_packets=3, loss_rate=0.0, mean_burst=1.0))
    assert (clean.reason, clean.window, clean.repairs, clean.residual) == (
        FecReason.TAIL,
        3,
        1,
        0.0,
    )
    lossy = decide(inputs(slack=1.0, remaining_packets=1, loss_rate=0.1, mean_burst=3.0))
    assert (lossy.reason, lossy.window, lossy.repairs, lossy.capped) == (
        FecReason.TAIL,
        1,
        2,
        False,
    )  # 200 % of one packet: the tail allowance, not the ratio cap
    easy = decide(inputs(slack=1.0, remaining_packets=16, loss_rate=0.001, loss_tolerance=0.01))
    assert easy.repairs == 1


def test_an_overrides_cap_binds_tail_repairs() -> None:
    capped = FecOverride(max_overhead=0.25)
    assert decide(inputs(slack=1.0, remaining_packets=3), override=capped) == FecDecision(
        FecReason.RETRANSMIT
    )
    assert decide(inputs(slack=1.0, remaining_packets=8), override=capped).repairs == 2
    urgent_one = decide(inputs(remaining_packets=1), override=capped)
    assert (urgent_one.reason, urgent_one.repairs, urgent_one.capped) == (
        FecReason.PROTECT,
        0,
        True,
    )


def test_short_urgent_response_gets_at_least_one_repair() -> None:
    decision = decide(inputs(remaining_packets=2, loss_rate=0.0, mean_burst=1.0))
    assert (decision.reason, decision.window, decision.repairs) == (FecReason.PROTECT, 2, 1)


@pytest.mark.parametrize(
    ("changes", "policy", "window"),
    [
        ({"slack": 0.0}, DEFAULT_POLICY, 1),
        ({"slack": -1.0}, DEFAULT_POLICY, 1),  # already late: repair every packet if allowed
        ({"rate": 0.0}, DEFAULT_POLICY, 1),
        ({"slack": 0.1}, DEFAULT_POLICY, 89),
        ({"rate": 1e9}, DEFAULT_POLICY, 256),
        ({"rate": 1e9}, FecPolicy(max_window=100), 100),
        ({"rate": 1e9, "decoder_window": 30}, DEFAULT_POLICY, 30),
        ({"remaining_packets": 20}, DEFAULT_POLICY, 20),
        ({"symbol_size": 500}, DEFAULT_POLICY, 100),
    ],
)
def test_window_is_what_the_slack_lets_through(
    changes: dict[str, Any], policy: FecPolicy, window: int
) -> None:
    assert decide(inputs(**changes), policy).window == window


def test_overrides() -> None:
    assert decide(URGENT, override=FecOverride(FecMode.OFF)) == FecDecision(FecReason.DISABLED)
    assert decide(URGENT, override=FecOverride(max_overhead=0.0)).reason is FecReason.DISABLED
    assert decide(inputs(decoder_window=0)).reason is FecReason.DISABLED
    assert decide(URGENT, FecPolicy(max_overhead=0.0)).reason is FecReason.DISABLED
    forced = decide(inputs(slack=10.0), override=FecOverride(FecMode.ON))
    assert forced.reason is FecReason.PROTECT and forced.window == 256 and forced.enabled
    no_deadline = decide(inputs(slack=None), override=FecOverride(FecMode.ON))
    assert no_deadline.window == 256 and no_deadline.enabled
    bounded = decide(URGENT, override=FecOverride(max_overhead=0.1))
    assert bounded.repairs == 4 and bounded.capped
    # An override never raises the operator's cap.
    assert decide(URGENT, override=FecOverride(max_overhead=1.0)) == decide(URGENT)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: FecOverride("on"), r"^FecOverride\.mode: must be a FecMode or None \(got 'on'\)$"),
        (lambda: FecOverride(max_overhead=1.5), r"^FecOverride\.max_overhead: "),
        (lambda: FecPolicy(retransmit_rtts=0.0), r"^FecPolicy\.retransmit_rtts: "),
        (lambda: FecPolicy(max_overhead=-0.1), r"^FecPolicy\.max_overhead: "),
        (lambda: FecPolicy(max_window=0), r"^FecPolicy\.max_window: must be an int in 1\.\.4095"),
        (lambda: FecPolicy(max_window=4096), r"^FecPolicy\.max_window: "),
        (lambda: FecPolicy(short_response_packets=-1), r"^FecPolicy\.short_response_packets: "),
        (lambda: FecPolicy(max_tail_repairs=1.0), r"^FecPolicy\.max_tail_repairs: "),
        (lambda: inputs(loss_tolerance=-0.01), r"^FecInputs\.loss_tolerance: "),
        (lambda: inputs(loss_rate=math.nan), r"^FecInputs\.loss_rate: .*\(got nan\)$"),
        (lambda: inputs(mean_burst=0.9), r"^FecInputs\.mean_burst: must be a finite number >= 1"),
        (lambda: inputs(rtt=0.0), r"^FecInputs\.rtt: must be a finite number of seconds > 0"),
        (lambda: inputs(rate=-1.0), r"^FecInputs\.rate: "),
        (lambda: inputs(rate=math.inf), r"^FecInputs\.rate: "),
        (lambda: inputs(slack=math.inf), r"^FecInputs\.slack: "),
        (lambda: inputs(slack=True), r"^FecInputs\.slack: "),
        (lambda: inputs(symbol_size=2), r"^FecInputs\.symbol_size: must be an int in 3\.\.65535"),
        (lambda: inputs(remaining_packets=0), r"^FecInputs\.remaining_packets: "),
        (lambda: inputs(decoder_window=4096), r"^FecInputs\.decoder_window: "),
    ],
)
def test_knobs_and_inputs_are_checked(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_request_override_wins_field_by_field() -> None:
    session = FecOverride(FecMode.OFF, 0.2)
    assert session.merged(FecOverride()) == session
    assert session.merged(FecOverride(FecMode.ON)) == FecOverride(FecMode.ON, 0.2)
    assert session.merged(FecOverride(max_overhead=0.3)) == FecOverride(FecMode.OFF, 0.3)
    assert FecOverride().merged(FecOverride(FecMode.AUTO)).mode is FecMode.AUTO


# -- properties ------------------------------------------------------------------------

urgent_inputs = st.builds(
    FecInputs,
    loss_tolerance=st.floats(0.0, 0.1),
    loss_rate=st.floats(0.0, 0.5),
    mean_burst=st.floats(1.0, 10.0),
    rtt=st.floats(0.01, 0.3),
    rate=st.floats(0.0, 5e6),
    slack=st.floats(-0.05, 0.5),
    remaining_packets=st.none() | st.integers(1, 500),
)
overrides = st.builds(
    FecOverride, st.none() | st.sampled_from(FecMode), st.none() | st.floats(0.0, 1.0)
)


def with_(base: FecInputs, **changes: Any) -> FecInputs:
    fields = {name: getattr(base, name) for name in base.__dataclass_fields__}
    return FecInputs(**{**fields, **changes})


@given(urgent_inputs, st.floats(0.0, 0.5))
@fuzz
def test_more_loss_never_means_fewer_repairs(base: FecInputs, more: float) -> None:
    worse = with_(base, loss_rate=min(1.0, base.loss_rate + more))
    assert decide(worse).repairs >= decide(base).repairs


@given(urgent_inputs, st.floats(0.0, 1.0))
@fuzz
def test_tighter_tolerance_never_means_fewer_repairs(base: FecInputs, factor: float) -> None:
    tighter = with_(base, loss_tolerance=base.loss_tolerance * factor)
    assert decide(tighter).repairs >= decide(base).repairs


@given(urgent_inputs, st.floats(1.25, 100.0))
@fuzz
def test_enough_slack_turns_fec_off(base: FecInputs, rtts: float) -> None:
    relaxed = decide(with_(base, slack=rtts * base.rtt))
    if base.remaining_packets is not None and base.remaining_packets <= 16:
        assert relaxed.reason is FecReason.TAIL and 1 <= relaxed.repairs <= 2
    else:
        assert relaxed == FecDecision(FecReason.RETRANSMIT)


@given(urgent_inputs, overrides)
@fuzz
def test_never_above_the_cap(base: FecInputs, override: FecOverride) -> None:
    decision = decide(base, override=override)
    cap = DEFAULT_POLICY.max_overhead
    if override.max_overhead is not None:
        cap = min(cap, override.max_overhead)
    short = base.remaining_packets is not None and base.remaining_packets <= 16
    if override.max_overhead is None and short:
        assert decision.repairs <= max(2, math.floor(cap * decision.window + 1e-9))
    else:
        assert decision.overhead <= cap + 1e-9
    if decision.reason is FecReason.PROTECT:
        assert decision.residual is not None
        assert decision.capped == (decision.residual > base.loss_tolerance)
    else:
        assert not decision.capped
