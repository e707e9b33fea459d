"""Load-balancing policies: properties over many seeded choices, not single picks."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import pytest

from netsched_edge.balancing.policy import (
    POLICY_NAMES,
    WARM_DEPTH,
    BackendSlot,
    ConsistentHash,
    LeastInFlight,
    Policy,
    RoundRobin,
    WarmFirst,
    make_policy,
)


def make_slots(count: int, weights: Sequence[float] | None = None) -> list[BackendSlot]:
    weights = weights or [1.0] * count
    return [BackendSlot(f"b{i}", weight=w) for i, w in enumerate(weights)]


def pick(policy: Policy, slots: Sequence[BackendSlot], key: str | None = None) -> BackendSlot:
    slot = policy.choose(slots, key)
    assert slot is not None
    return slot


def fill(policy: Policy, slots: list[BackendSlot], requests: int, key: str | None = None) -> None:
    """Send `requests` requests that never complete: in_flight only grows."""
    for _ in range(requests):
        slot = pick(policy, slots, key)
        policy.record(slot, key)
        slot.in_flight += 1


# --- construction -----------------------------------------------------------------


def test_make_policy_builds_every_named_policy() -> None:
    assert POLICY_NAMES[0] == "warm-first"  # the default comes first
    for name in POLICY_NAMES:
        policy = make_policy(name, rng=random.Random(1))
        assert policy.name == name


def test_make_policy_passes_load_cap_to_warm_first() -> None:
    policy = make_policy("warm-first", rng=random.Random(1), load_cap=2)
    slots = make_slots(4)
    fill(policy, slots, 2, key="k")
    assert max(s.in_flight for s in slots) == 2
    fill(policy, slots, 1, key="k")
    assert max(s.in_flight for s in slots) == 2  # the third spilled


def test_make_policy_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="'fastest'") as info:
        make_policy("fastest", rng=random.Random(1))
    for name in POLICY_NAMES:
        assert name in str(info.value)


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan"), float("inf")])
def test_backend_slot_rejects_bad_weight(weight: float) -> None:
    with pytest.raises(ValueError, match=r"'b'.*weight"):
        BackendSlot("b", weight=weight)


def test_backend_slot_rejects_negative_in_flight() -> None:
    with pytest.raises(ValueError, match="in_flight"):
        BackendSlot("b", in_flight=-1)


@pytest.mark.parametrize(
    ("load_cap", "warm_keys", "field"), [(0, 10, "load_cap"), (1, 0, "warm_keys")]
)
def test_warm_first_rejects_bad_limits(load_cap: int, warm_keys: int, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        WarmFirst(random.Random(1), load_cap=load_cap, warm_keys=warm_keys)


# --- exclude and available, for every policy -------------------------------------


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_policy_honours_exclude_and_available(name: str) -> None:
    policy = make_policy(name, rng=random.Random(7), load_cap=2)
    slots = make_slots(6)
    slots[1].available = False
    slots[4].available = False
    exclude = {"b0", "b3"}
    rng = random.Random(8)
    chosen: Counter[str] = Counter()
    for i in range(2000):
        key = None if i % 5 == 0 else f"key{rng.randrange(50)}"
        slot = policy.choose(slots, key, exclude)
        assert slot is not None
        policy.record(slot, key)
        slot.in_flight += 1
        chosen[slot.name] += 1
        if i % 3 == 0:  # some requests complete, so warm backends come back under the cap
            done = rng.choice([s for s in slots if s.in_flight])
            done.in_flight -= 1
    assert set(chosen) == {"b2", "b5"}


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_policy_returns_none_without_eligible_backend(name: str) -> None:
    policy = make_policy(name, rng=random.Random(7))
    slots = make_slots(3)
    slots[0].available = False
    for key in (None, "k"):
        assert policy.choose([], key) is None
        assert policy.choose(slots, key, exclude=("b1", "b2")) is None
        assert policy.choose(slots, key, exclude=["b1"]) is slots[2]


# --- power-of-two choices (warm-first without warmth) ------------------------------


def test_p2c_max_load_is_far_lower_than_random() -> None:
    requests, backends = 10_000, 100
    mean = requests / backends

    p2c_slots = make_slots(backends)
    fill(WarmFirst(random.Random(3)), p2c_slots, requests)
    rng = random.Random(3)
    random_loads = Counter(rng.randrange(backends) for _ in range(requests))

    p2c_excess = max(s.in_flight for s in p2c_slots) - mean
    random_excess = max(random_loads.values()) - mean
    # Theory: random's excess grows like sqrt(mean * ln n) (~25 here); P2C's like ln ln n / ln 2.
    assert p2c_excess <= 4
    assert random_excess >= 15
    assert random_excess >= 4 * p2c_excess
    assert sum(s.in_flight for s in p2c_slots) == requests


def test_p2c_respects_weights_statistically() -> None:
    weights = [1.0, 2.0, 3.0, 4.0]
    slots = make_slots(4, weights)
    fill(WarmFirst(random.Random(5)), slots, 10_000)
    for slot in slots:
        expected = 10_000 * slot.weight / sum(weights)
        assert abs(slot.in_flight - expected) <= 0.03 * expected, (slot, expected)


def test_p2c_samples_by_weight() -> None:
    # Idle backends tie, so every pick is the first sample: its distribution is the weights'.
    slots = make_slots(3, [1.0, 1.0, 6.0])
    policy = WarmFirst(random.Random(6))
    chosen = Counter(pick(policy, slots).name for _ in range(10_000))
    assert abs(chosen["b2"] / 10_000 - 0.75) < 0.02
    assert abs(chosen["b0"] / 10_000 - 0.125) < 0.02


def test_p2c_picks_the_less_loaded_of_two() -> None:
    slots = make_slots(2)
    slots[0].in_flight = 5
    policy = WarmFirst(random.Random(9))
    # With two eligible slots both are always sampled, so the lighter one always wins.
    assert all(policy.choose(slots, None) is slots[1] for _ in range(100))


# --- warm-first ---------------------------------------------------------------------


def test_warm_first_sticks_to_the_warm_backend_until_load_cap_then_spills() -> None:
    slots = make_slots(5)
    policy = WarmFirst(random.Random(11), load_cap=3)
    picks = []
    for _ in range(6):
        slot = policy.choose(slots, "k")
        assert slot is not None
        policy.record(slot, "k")
        slot.in_flight += 1
        picks.append(slot.name)
    first, spill = picks[0], picks[3]
    assert picks == [first] * 3 + [spill] * 3
    assert spill != first
    assert policy.warmth("k") == (spill, first)


def test_warm_first_prefers_warmth_over_lower_load_below_the_cap() -> None:
    slots = make_slots(3)
    policy = WarmFirst(random.Random(12), load_cap=8)
    policy.record(slots[2], "k")
    slots[2].in_flight = 7  # far busier than the others, still under the cap
    assert all(policy.choose(slots, "k") is slots[2] for _ in range(50))
    slots[2].in_flight = 8
    assert all(policy.choose(slots, "k") is not slots[2] for _ in range(50))


def test_warm_first_walks_the_warm_list_most_recent_first() -> None:
    slots = make_slots(4)
    policy = WarmFirst(random.Random(13), load_cap=1)
    for index in (0, 1, 2):
        policy.record(slots[index], "k")
    assert policy.warmth("k") == ("b2", "b1", "b0")
    assert policy.choose(slots, "k") is slots[2]
    slots[2].in_flight = 1  # at the cap
    assert policy.choose(slots, "k") is slots[1]
    slots[1].available = False
    assert policy.choose(slots, "k") is slots[0]
    assert policy.choose(slots, "k", exclude={"b0"}) is slots[3]  # nothing warm left: P2C
    policy.record(slots[0], "k")  # record moves an existing entry to the front
    assert policy.warmth("k") == ("b0", "b2", "b1")


def test_warm_first_warm_list_is_short() -> None:
    slots = make_slots(WARM_DEPTH + 3)
    policy = WarmFirst(random.Random(14))
    for slot in slots:
        policy.record(slot, "k")
    expected = tuple(s.name for s in reversed(slots))[:WARM_DEPTH]
    assert policy.warmth("k") == expected


def test_warm_first_memory_is_bounded_by_warm_keys_lru() -> None:
    slots = make_slots(4)
    policy = WarmFirst(random.Random(15), warm_keys=16)
    for i in range(1000):
        policy.record(slots[i % 4], f"key{i}")
        policy.record(slots[0], "hot")  # used constantly, so never the least recent
    assert policy.tracked_keys == 16
    assert policy.warmth("hot") == ("b0",)
    assert policy.warmth("key999") == ("b3",)
    assert policy.warmth("key0") == ()  # forgotten: its next request is plain P2C


def test_warm_first_ignores_keyless_requests() -> None:
    slots = make_slots(2)
    policy = WarmFirst(random.Random(16))
    policy.record(slots[0], None)
    assert policy.tracked_keys == 0


# --- least in flight ----------------------------------------------------------------


def test_least_in_flight_picks_lowest_load_per_weight() -> None:
    slots = make_slots(3, [1.0, 4.0, 2.0])
    slots[0].in_flight, slots[1].in_flight, slots[2].in_flight = 2, 6, 3
    # loads: 2.0, 1.5, 1.5 -> b1 or b2, and the rng breaks the tie both ways
    policy = LeastInFlight(random.Random(17))
    chosen = Counter(pick(policy, slots).name for _ in range(400))
    assert set(chosen) == {"b1", "b2"}
    assert min(chosen.values()) > 150


def test_least_in_flight_balances_exactly_when_nothing_completes() -> None:
    slots = make_slots(3, [1.0, 2.0, 3.0])
    fill(LeastInFlight(random.Random(18)), slots, 600)
    assert [s.in_flight for s in slots] == [100, 200, 300]


# --- round robin --------------------------------------------------------------------


def test_round_robin_is_smooth_like_nginx() -> None:
    slots = make_slots(3, [5.0, 1.0, 1.0])
    policy = RoundRobin()
    picks = [pick(policy, slots).name for _ in range(7)]
    assert picks == ["b0", "b0", "b1", "b0", "b2", "b0", "b0"]


def test_round_robin_respects_weights_exactly() -> None:
    slots = make_slots(4, [1.0, 2.0, 3.0, 4.0])
    policy = RoundRobin()
    chosen = Counter(pick(policy, slots).name for _ in range(1000))
    assert chosen == {"b0": 100, "b1": 200, "b2": 300, "b3": 400}


def test_round_robin_shares_exactly_among_remaining_backends() -> None:
    slots = make_slots(3, [1.0, 1.0, 2.0])
    slots[2].available = False
    policy = RoundRobin()
    chosen = Counter(pick(policy, slots).name for _ in range(100))
    assert chosen == {"b0": 50, "b1": 50}
    slots[2].available = True
    chosen = Counter(pick(policy, slots).name for _ in range(400))
    assert chosen == {"b0": 100, "b1": 100, "b2": 200}


def test_round_robin_copes_with_removed_backends() -> None:
    slots = make_slots(3)
    policy = RoundRobin()
    for _ in range(5):
        policy.choose(slots, None)
    remaining = slots[:2]
    chosen = Counter(pick(policy, remaining).name for _ in range(100))
    assert chosen == {"b0": 50, "b1": 50}


# --- consistent hash ----------------------------------------------------------------


def owners(policy: Policy, slots: list[BackendSlot], keys: list[str]) -> dict[str, str]:
    return {k: pick(policy, slots, k).name for k in keys}


EXPECTED_OWNERS = {"user-1": "b0", "user-2": "b2", "user-3": "b1"}


def test_consistent_hash_is_stable_across_processes() -> None:
    # Hard-coded expectations: a salted hash() would change them between interpreter runs.
    slots = make_slots(5)
    policy = ConsistentHash(random.Random(0))
    assert owners(policy, slots, ["user-1", "user-2", "user-3"]) == EXPECTED_OWNERS
    # ...and the rng plays no part for keyed requests.
    assert owners(ConsistentHash(random.Random(99)), slots, list(EXPECTED_OWNERS)) == (
        EXPECTED_OWNERS
    )


def test_consistent_hash_removal_moves_only_about_one_nth_of_keys() -> None:
    backends = 10
    slots = make_slots(backends)
    keys = [f"key-{i}" for i in range(10_000)]
    policy = ConsistentHash(random.Random(0))
    before = owners(policy, slots, keys)
    after = owners(policy, slots[1:], keys)  # b0 leaves
    moved = [k for k in keys if before[k] != after[k]]
    # Exactly the keys b0 held move, and they are about 1/N of all keys.
    assert set(moved) == {k for k in keys if before[k] == "b0"}
    assert abs(len(moved) / len(keys) - 1 / backends) < 0.02
    # The moved keys spread over the survivors instead of landing on one neighbour.
    assert len({after[k] for k in moved}) == backends - 1


def test_consistent_hash_falls_to_next_in_key_order_when_first_is_ineligible() -> None:
    slots = make_slots(6)
    policy = ConsistentHash(random.Random(0))
    for i in range(200):
        key = f"key-{i}"
        first = policy.choose(slots, key)
        assert first is not None
        without_first = [s for s in slots if s is not first]
        second = policy.choose(without_first, key)
        assert policy.choose(slots, key, exclude={first.name}) is second
        first.available = False
        assert policy.choose(slots, key) is second
        first.available = True


def test_consistent_hash_respects_weights_statistically() -> None:
    slots = make_slots(3, [1.0, 1.0, 2.0])
    keys = [f"key-{i}" for i in range(20_000)]
    share = Counter(owners(ConsistentHash(random.Random(0)), slots, keys).values())
    assert abs(share["b2"] / len(keys) - 0.5) < 0.02
    assert abs(share["b0"] / len(keys) - 0.25) < 0.02


def test_consistent_hash_without_key_is_least_in_flight() -> None:
    slots = make_slots(3)
    slots[0].in_flight, slots[1].in_flight, slots[2].in_flight = 3, 1, 2
    policy = ConsistentHash(random.Random(0))
    assert all(policy.choose(slots, None) is slots[1] for _ in range(20))
