"""Health of one backend from passive outcomes and active checks (sans-IO).

Rules (the table below is the whole state machine):

- Inputs are passive outcomes of real requests (``on_success``/``on_failure``),
  active check results (``on_check``) and time (``now`` on every call).
- Successes and failures are counted *consecutively*: each resets the other.
- HEALTHY: ``unhealthy_after`` consecutive failures (passive or active) eject.
- EJECTED: no real traffic until the ejection time has passed, then PROBING.
  Passive outcomes are ignored (they belong to requests sent before the
  ejection); active checks count, and ``healthy_after`` consecutive good checks
  restore HEALTHY early.
- PROBING: real traffic flows again. One failure ejects again at once, for twice
  the previous time (capped at 8x ``ejection_s``); ``healthy_after``
  consecutive successes, passive or active (including good checks made while
  ejected), restore HEALTHY.
- Entering HEALTHY is a full recovery: the next ejection lasts ``ejection_s``.
- Time is applied before each input, so an input that arrives after the
  ejection expired is handled in PROBING.
- A passive failure may eject only when the service allows one more ejection
  (``on_failure(now, may_eject=...)``, the ceiling below); a held-back backend
  keeps its failure count, so its next failure asks again. Failed active checks
  always eject: the edge saw the backend fail itself, not a client's request.

The ceiling (Envoy's ``max_ejection_percent``, ``ejection_allowed``): passive
outcomes never take more than that share of a service's backends out of
rotation, counting every backend already out (by checks or outcomes). Failures
that hit every backend at once are more likely the clients' or the edge's than
the backends'; at the default 50 % a one-backend service is never ejected by
outcomes alone, and at least one backend stays in rotation unless active
checks fail it.

The panic threshold (Envoy's ``healthy_panic_threshold``, ``panic``): when fewer
than that share of a service's backends are available, by checks or outcomes,
the service routes to all of them as if healthy, instead of answering 503 or
piling everything onto the few left. Trackers keep their state meanwhile: the
backends leave panic as their checks recover.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Final


class Health(Enum):
    HEALTHY = "healthy"
    EJECTED = "ejected"
    PROBING = "probing"


class _Trigger(Enum):
    FAILED = "failed"  # consecutive failures reached the state's budget
    RECOVERED = "recovered"  # consecutive successes reached healthy_after
    EXPIRED = "expired"  # the ejection time has passed


_TRANSITIONS: Final[dict[tuple[Health, _Trigger], Health]] = {
    (Health.HEALTHY, _Trigger.FAILED): Health.EJECTED,
    (Health.EJECTED, _Trigger.RECOVERED): Health.HEALTHY,
    (Health.EJECTED, _Trigger.EXPIRED): Health.PROBING,
    (Health.PROBING, _Trigger.FAILED): Health.EJECTED,
    (Health.PROBING, _Trigger.RECOVERED): Health.HEALTHY,
}

# Re-ejections double the ejection time up to 2**3 = 8x.
_MAX_BACKOFF_LEVEL: Final = 3


@dataclass(slots=True)
class HealthTracker:
    unhealthy_after: int = 3  # consecutive failures (passive or active) that eject
    healthy_after: int = 2  # consecutive successes that restore an ejected backend
    ejection_s: float = 5.0  # base ejection time; doubles per re-ejection, capped at 8x
    # Transition counts for metrics, keyed (from, to); a counter, so a flapping backend
    # cannot grow it.
    transitions: Counter[tuple[Health, Health]] = field(default_factory=Counter, init=False)
    _state: Health = field(default=Health.HEALTHY, init=False, repr=False)
    _failures: int = field(default=0, init=False, repr=False)
    _successes: int = field(default=0, init=False, repr=False)
    _backoff_level: int = field(default=0, init=False, repr=False)
    _ejected_until: float = field(default=-math.inf, init=False, repr=False)
    # When the backend last succeeded, passively or in a check (-inf: never): evidence that
    # it is alive, which a client's unanswered datagrams cannot outweigh (udp_front.py).
    succeeded_at: float = field(default=-math.inf, init=False)
    held: int = field(default=0, init=False)  # passive ejections the ceiling held back
    # What the last ejection followed ("health checks" or "requests"), for operators.
    ejected_by: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.unhealthy_after < 1:
            raise ValueError(f"unhealthy_after must be >= 1, got {self.unhealthy_after}")
        if self.healthy_after < 1:
            raise ValueError(f"healthy_after must be >= 1, got {self.healthy_after}")
        if not (self.ejection_s > 0 and math.isfinite(self.ejection_s)):
            raise ValueError(f"ejection_s must be a positive number, got {self.ejection_s!r}")

    @property
    def state(self) -> Health:
        """The state as of the last input (an expired ejection shows once the next input comes)."""
        return self._state

    def available(self, now: float) -> bool:
        """Whether real traffic may go to the backend at `now`; no side effects."""
        return self._state is not Health.EJECTED or now >= self._ejected_until

    def describe(self, now: float) -> str:
        """The state at `now` in words (e.g. why /readyz says not ready)."""
        if self.available(now):
            return self._state.value if self._state is not Health.EJECTED else "probing"
        left = self._ejected_until - now
        return f"ejected after failed {self.ejected_by}, {left:.1f} s left"

    @property
    def ejections(self) -> int:
        """How often the backend was ejected (from healthy or probing)."""
        return sum(n for (_, to), n in self.transitions.items() if to is Health.EJECTED)

    def on_success(self, now: float) -> None:
        """A real request succeeded (passive)."""
        self._observe(ok=True, passive=True, now=now)

    def on_failure(self, now: float, *, may_eject: bool = True) -> None:
        """A real request failed to reach the backend (passive).

        `may_eject`: whether the service's ejection ceiling leaves room for one more.
        """
        self._observe(ok=False, passive=True, now=now, may_eject=may_eject)

    def on_check(self, ok: bool, now: float) -> None:
        """An active health check's result."""
        self._observe(ok=ok, passive=False, now=now)

    def _observe(self, *, ok: bool, passive: bool, now: float, may_eject: bool = True) -> None:
        if self._state is Health.EJECTED and now >= self._ejected_until:
            self._fire(_Trigger.EXPIRED, now)
        if passive and self._state is Health.EJECTED:
            return
        if ok:
            self.succeeded_at = now
            self._successes += 1
            self._failures = 0
            if self._successes >= self.healthy_after:
                self._fire(_Trigger.RECOVERED, now)
        else:
            self._failures += 1
            self._successes = 0
            if self._failures >= self._failure_budget():
                if may_eject:
                    self.ejected_by = "requests" if passive else "health checks"
                    self._fire(_Trigger.FAILED, now)
                else:
                    self.held += 1

    def _failure_budget(self) -> float:
        if self._state is Health.HEALTHY:
            return self.unhealthy_after
        if self._state is Health.PROBING:
            return 1
        return math.inf  # already ejected: failing checks only break the success streak

    def _fire(self, trigger: _Trigger, now: float) -> None:
        target = _TRANSITIONS.get((self._state, trigger))
        if target is None:
            return
        self.transitions[self._state, target] += 1
        if target is Health.EJECTED:
            self._eject(now)
        elif target is Health.HEALTHY:
            self._backoff_level = 0
            self._successes = 0
        self._failures = 0  # good checks made while ejected carry into PROBING
        self._state = target

    def _eject(self, now: float) -> None:
        if self._state is Health.PROBING:
            self._backoff_level = min(self._backoff_level + 1, _MAX_BACKOFF_LEVEL)
        self._ejected_until = now + self.ejection_s * 2**self._backoff_level
        self._successes = 0


def panic(available: int, total: int, threshold_percent: int) -> bool:
    """Whether a service routes to all its backends as if healthy: fewer than
    `threshold_percent` of its `total` backends are `available` (Envoy's
    healthy_panic_threshold; 0 never panics).

    When health tracking has taken most backends out, it is more likely wrong (checks
    starved of CPU, a network blip) than right: spreading over every backend serves
    what the backends can still answer, where holding to the few left would overload
    them and answering 503 would serve nothing.
    """
    if not 0 <= threshold_percent <= 100:
        raise ValueError(f"threshold_percent must be 0..100, got {threshold_percent!r}")
    return available * 100 < threshold_percent * total


def ejection_allowed(unavailable: int, total: int, max_percent: int) -> bool:
    """Whether a passive failure may take one more of `total` backends out of rotation
    while `unavailable` already are: Envoy's rule, (ejected + 1) / total <= max_percent."""
    if not 0 <= max_percent <= 100:
        raise ValueError(f"max_percent must be 0..100, got {max_percent!r}")
    return (unavailable + 1) * 100 <= max_percent * total
