"""Load-balancing policies: which backend serves the next request (sans-IO).

Driving contract: for each request the dispatcher calls ``choose(slots, key,
exclude)``; when it sends the request to the returned slot it calls
``record(slot, key)`` and keeps ``slot.in_flight`` current itself. A retry on
another backend passes the names already tried in ``exclude``. Policies never
read a clock or sockets, and all their randomness comes from the injected
``random.Random`` so that runs are reproducible.
"""

from __future__ import annotations

import hashlib
import math
import random
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import ClassVar, Final

# How many recent backends to remember per key: the warm list only needs to
# hold the few backends that may still have this key's state cached.
WARM_DEPTH: Final = 4


@dataclass(slots=True)
class BackendSlot:
    """The edge's live view of one backend (mutated by the dispatcher)."""

    name: str
    weight: float = 1.0
    in_flight: int = 0
    available: bool = True  # from health tracking

    def __post_init__(self) -> None:
        if not (self.weight > 0 and math.isfinite(self.weight)):
            raise ValueError(f"backend {self.name!r}: weight must be > 0, got {self.weight!r}")
        if self.in_flight < 0:
            raise ValueError(f"backend {self.name!r}: in_flight must be >= 0, got {self.in_flight}")

    @property
    def load(self) -> float:
        """Requests in flight per unit of weight: what the load-aware policies compare."""
        return self.in_flight / self.weight


def _eligible(slots: Sequence[BackendSlot], exclude: Collection[str]) -> list[BackendSlot]:
    return [s for s in slots if s.available and s.name not in exclude]


def _power_of_two(rng: random.Random, eligible: list[BackendSlot]) -> BackendSlot | None:
    """Two distinct slots sampled by weight; the less loaded wins, ties to the first sampled."""
    if len(eligible) <= 1:
        return eligible[0] if eligible else None
    first = rng.choices(eligible, weights=[s.weight for s in eligible])[0]
    rest = [s for s in eligible if s is not first]
    second = rng.choices(rest, weights=[s.weight for s in rest])[0]
    return second if second.load < first.load else first


def _least_loaded(rng: random.Random, eligible: list[BackendSlot]) -> BackendSlot | None:
    if not eligible:
        return None
    lowest = min(s.load for s in eligible)
    return rng.choice([s for s in eligible if s.load == lowest])


class Policy(ABC):
    name: ClassVar[str]

    @abstractmethod
    def choose(
        self, slots: Sequence[BackendSlot], key: str | None, exclude: Collection[str] = ()
    ) -> BackendSlot | None:
        """Pick among slots that are available and not in exclude; None when there is none."""

    def record(self, slot: BackendSlot, key: str | None) -> None:  # noqa: B027 - optional hook
        """The request keyed `key` was sent to `slot` (default: nothing)."""


class WarmFirst(Policy):
    """The warmest backend up to a load cap, otherwise power-of-two choices.

    Warmth is recency: the backends that served a key most recently are the
    likeliest to still hold its caches and connections (Cheetah, NSDI'20).
    Memory is bounded: at most `warm_keys` keys (least recently used forgotten
    first), each with at most WARM_DEPTH backend names.
    """

    name = "warm-first"

    def __init__(self, rng: random.Random, *, load_cap: int = 8, warm_keys: int = 4096) -> None:
        if load_cap < 1:
            raise ValueError(f"load_cap must be >= 1, got {load_cap}")
        if warm_keys < 1:
            raise ValueError(f"warm_keys must be >= 1, got {warm_keys}")
        self._rng = rng
        self._load_cap = load_cap
        self._warm_keys = warm_keys
        self._warm: OrderedDict[str, list[str]] = OrderedDict()

    def choose(
        self, slots: Sequence[BackendSlot], key: str | None, exclude: Collection[str] = ()
    ) -> BackendSlot | None:
        eligible = _eligible(slots, exclude)
        if key is not None and key in self._warm:
            by_name = {s.name: s for s in eligible}
            for name in self._warm[key]:
                slot = by_name.get(name)
                if slot is not None and slot.in_flight < self._load_cap:
                    return slot
        return _power_of_two(self._rng, eligible)

    def record(self, slot: BackendSlot, key: str | None) -> None:
        if key is None:
            return
        names = self._warm.pop(key, [])
        if slot.name in names:
            names.remove(slot.name)
        names.insert(0, slot.name)
        del names[WARM_DEPTH:]
        self._warm[key] = names
        if len(self._warm) > self._warm_keys:
            self._warm.popitem(last=False)

    def warmth(self, key: str) -> tuple[str, ...]:
        """The backends that served `key`, most recent first (for metrics and debugging)."""
        return tuple(self._warm.get(key, ()))

    @property
    def tracked_keys(self) -> int:
        return len(self._warm)


class LeastInFlight(Policy):
    """The lowest in_flight/weight; ties broken at random so no backend is favoured."""

    name = "least-in-flight"

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def choose(
        self, slots: Sequence[BackendSlot], key: str | None, exclude: Collection[str] = ()
    ) -> BackendSlot | None:
        return _least_loaded(self._rng, _eligible(slots, exclude))


class RoundRobin(Policy):
    """Smooth weighted round robin, as nginx does it.

    Each pick adds every eligible backend's weight to its running score, takes
    the highest score and subtracts the total weight from it, which spreads a
    heavy backend's turns evenly instead of in a block.
    """

    name = "round-robin"

    def __init__(self) -> None:
        self._score: dict[str, float] = {}

    def choose(
        self, slots: Sequence[BackendSlot], key: str | None, exclude: Collection[str] = ()
    ) -> BackendSlot | None:
        self._forget_removed(slots)
        best: BackendSlot | None = None
        total = 0.0
        for slot in _eligible(slots, exclude):
            self._score[slot.name] = self._score.get(slot.name, 0.0) + slot.weight
            total += slot.weight
            if best is None or self._score[slot.name] > self._score[best.name]:
                best = slot
        if best is not None:
            self._score[best.name] -= total
        return best

    def _forget_removed(self, slots: Sequence[BackendSlot]) -> None:
        # Backends leave the configuration; their scores must not pile up.
        if len(self._score) > len(slots):
            present = {s.name for s in slots}
            self._score = {n: v for n, v in self._score.items() if n in present}


def _rendezvous_score(key: str, slot: BackendSlot) -> float:
    """Weighted rendezvous (HRW) score: weight / -ln(u) with u uniform in (0, 1) from the hash.

    blake2b, not hash(): Python's string hash is salted per process, and every
    edge worker must map a key to the same backend.
    """
    digest = hashlib.blake2b(f"{key}\0{slot.name}".encode(), digest_size=8).digest()
    # 52 bits so that (x + 0.5) / 2**52 is exact and strictly inside (0, 1).
    unit = ((int.from_bytes(digest, "big") >> 12) + 0.5) / 2**52
    return slot.weight / -math.log(unit)


class ConsistentHash(Policy):
    """Weighted rendezvous hashing on the key.

    Removing a backend moves only the keys it held (about 1/N of them); an
    unavailable or excluded first choice falls to the key's next backend in
    score order. Requests without a key go to the least loaded backend.
    """

    name = "consistent-hash"

    def __init__(self, rng: random.Random) -> None:
        self._keyless = LeastInFlight(rng)

    def choose(
        self, slots: Sequence[BackendSlot], key: str | None, exclude: Collection[str] = ()
    ) -> BackendSlot | None:
        if key is None:
            return self._keyless.choose(slots, None, exclude)
        eligible = _eligible(slots, exclude)
        # Name as the tie-breaker keeps the order total and identical on every worker.
        return max(eligible, key=lambda s: (_rendezvous_score(key, s), s.name), default=None)


_FACTORIES: Final[dict[str, Callable[[random.Random, int], Policy]]] = {
    WarmFirst.name: lambda rng, load_cap: WarmFirst(rng, load_cap=load_cap),
    LeastInFlight.name: lambda rng, _: LeastInFlight(rng),
    RoundRobin.name: lambda _rng, _cap: RoundRobin(),
    ConsistentHash.name: lambda rng, _: ConsistentHash(rng),
}

POLICY_NAMES: tuple[str, ...] = tuple(_FACTORIES)


def make_policy(name: str, *, rng: random.Random, load_cap: int = 8) -> Policy:
    """The policy called `name`; `load_cap` applies to warm-first only."""
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ValueError(f"policy: unknown name {name!r}; valid names: {', '.join(POLICY_NAMES)}")
    return factory(rng, load_cap)
