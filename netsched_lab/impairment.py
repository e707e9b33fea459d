"""Sans-IO network impairment: what one direction of one path does to a packet.

`Link.submit(packet, now)` answers *when* (and whether, and how many times) the
packet comes out the other end; it never sleeps, sends or reads a clock, so the
same seed and the same inputs always give the same outcome.

A packet passes the stages in this order (each draws from the link's RNG only
when its feature is on, so turning one feature on does not reshuffle another):

1. blackhole, the packet's number is in `drop_packets`, or the packet is larger
   than the link's MTU allows (`mtu`, IP and UDP headers counted) → dropped,
   as a real link drops a datagram sent with DF set
2. independent random loss (`loss`) → dropped
3. bursty loss (Gilbert-Elliott chain, stepped once per packet reaching it) → dropped
4. token-bucket shaper (`rate_mbps`, `burst_bytes`) with a tail-drop queue
   (`queue_bytes`) → departure time, or dropped when the queue is full
5. corruption (`corrupt`, or a bursty chain `bursty_corrupt`): one random bit
   of the payload flipped
6. delay ± uniform jitter; FIFO (never earlier than the previous delivery) unless
   the packet is picked for reordering, which holds it back `reorder_ms` more
7. duplication: a second, identical delivery at the same time

Invariant: `packets_in + duplicated == delivered + dropped`.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field, replace

IP_UDP_HEADERS = 28  # IPv4 (20) + UDP (8): what the MTU counts beyond the payload

_MS = 1e-3
_BITS_PER_BYTE = 8


def _check_probability(name: str, value: float) -> None:
    # `not (0 <= v <= 1)` is also true for NaN, which a plain range test would let through.
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


def _check_non_negative(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_integer(name: str, value: int, *, minimum: int) -> None:
    if isinstance(value, bool) or not (isinstance(value, int) and value >= minimum):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True, slots=True)
class GilbertElliott:
    """Two-state bursty loss: a Markov chain stepped once per packet.

    In the good state a packet is lost with probability `loss_good`, in the bad
    state with `loss_bad`; the chain moves good→bad with `p_good_bad` and
    bad→good with `p_bad_good` before each packet.
    """

    p_good_bad: float
    p_bad_good: float
    loss_good: float = 0.0
    loss_bad: float = 1.0

    def __post_init__(self) -> None:
        for name in ("p_good_bad", "p_bad_good", "loss_good", "loss_bad"):
            _check_probability(name, getattr(self, name))

    @classmethod
    def from_loss_and_burst(cls, loss_rate: float, mean_burst: float) -> GilbertElliott:
        """The chain (lossless good state, always-lossy bad state) with this
        stationary loss rate and mean loss-burst length in packets."""
        if not 0.0 <= loss_rate < 1.0:
            raise ValueError(f"loss_rate must be in [0, 1), got {loss_rate!r}")
        if not (math.isfinite(mean_burst) and mean_burst >= 1.0):
            raise ValueError(f"mean_burst must be a finite number >= 1 packet, got {mean_burst!r}")
        p_bad_good = 1.0 / mean_burst
        # Stationary P(bad) = p_gb / (p_gb + p_bg) = loss_rate, solved for p_gb.
        p_good_bad = loss_rate * p_bad_good / (1.0 - loss_rate)
        if p_good_bad > 1.0:
            raise ValueError(
                f"loss_rate {loss_rate!r} with mean_burst {mean_burst!r} needs "
                f"p_good_bad {p_good_bad:.3f} > 1; use longer bursts or less loss"
            )
        return cls(p_good_bad=p_good_bad, p_bad_good=p_bad_good)

    @property
    def mean_burst_length(self) -> float:
        """Mean number of consecutive packets in the bad state (the mean loss
        burst when `loss_bad` is 1 and `loss_good` is 0); inf if bad is absorbing."""
        return math.inf if self.p_bad_good == 0.0 else 1.0 / self.p_bad_good

    @property
    def stationary_bad(self) -> float:
        """Long-run share of packets that see the bad state."""
        total = self.p_good_bad + self.p_bad_good
        # A chain that never moves stays in its initial (good) state.
        return 0.0 if total == 0.0 else self.p_good_bad / total

    @property
    def loss_rate(self) -> float:
        """Stationary loss rate."""
        bad = self.stationary_bad
        return bad * self.loss_bad + (1.0 - bad) * self.loss_good

    def step(self, bad: bool, rng: random.Random) -> tuple[bool, bool]:
        """Advance the chain by one packet: (new state is bad, packet lost)."""
        leave = self.p_bad_good if bad else self.p_good_bad
        if rng.random() < leave:
            bad = not bad
        return bad, rng.random() < (self.loss_bad if bad else self.loss_good)


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """One direction of one path. Times in milliseconds, rate in Mbit/s."""

    delay_ms: float = 0.0
    # Uniform in [-jitter_ms, +jitter_ms] around delay_ms (as netem), clamped at 0;
    # packets stay in order unless `reorder` picks them.
    jitter_ms: float = 0.0
    loss: float = 0.0  # independent random loss
    bursty: GilbertElliott | None = None
    reorder: float = 0.0  # share of packets held back an extra reorder_ms
    reorder_ms: float = 10.0
    duplicate: float = 0.0
    corrupt: float = 0.0  # share of packets with one random payload bit flipped
    # Corruption in bursts: a Gilbert-Elliott chain whose "lost" outcome flips a
    # bit instead (the interop runner's corrupt-rate scenario, rate and burst).
    bursty_corrupt: GilbertElliott | None = None
    rate_mbps: float | None = None  # token bucket; None = unlimited
    burst_bytes: int = 15_000
    queue_bytes: int = 64_000  # bytes waiting for tokens; tail drop beyond
    blackhole: bool = False
    # 1-based numbers of the packets entering this link to drop, counted over
    # the link's life (the interop runner's droplist scenario: "drop 2..7").
    drop_packets: frozenset[int] = frozenset()
    # IP MTU: a UDP payload above mtu - 28 (IPv4 and UDP headers) is dropped. Ethernet's
    # by default, so a path MTU search through the lab finds what it would on a LAN;
    # None: no limit (loopback itself carries 65,535 bytes).
    mtu: int | None = 1500

    def __post_init__(self) -> None:
        for name in ("delay_ms", "jitter_ms", "reorder_ms"):
            _check_non_negative(name, getattr(self, name))
        for name in ("loss", "reorder", "duplicate", "corrupt"):
            _check_probability(name, getattr(self, name))
        for name in ("bursty", "bursty_corrupt"):
            chain = getattr(self, name)
            if chain is not None and not isinstance(chain, GilbertElliott):
                raise ValueError(f"{name} must be a GilbertElliott or None, got {chain!r}")
        if not isinstance(self.drop_packets, frozenset) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in self.drop_packets
        ):
            raise ValueError(
                f"drop_packets must be a frozenset of integers >= 1, got {self.drop_packets!r}"
            )
        rate = self.rate_mbps
        if rate is not None and not (math.isfinite(rate) and rate > 0.0):
            raise ValueError(f"rate_mbps must be a finite number > 0 or None, got {rate!r}")
        _check_integer("burst_bytes", self.burst_bytes, minimum=1)
        if self.mtu is not None:
            _check_integer("mtu", self.mtu, minimum=IP_UDP_HEADERS + 1)
        _check_integer("queue_bytes", self.queue_bytes, minimum=0)
        if not isinstance(self.blackhole, bool):
            raise ValueError(f"blackhole must be a bool, got {self.blackhole!r}")


@dataclass(frozen=True, slots=True)
class PathProfile:
    """Both directions of one path; `up` is client → server."""

    up: LinkSpec = field(default_factory=LinkSpec)
    down: LinkSpec = field(default_factory=LinkSpec)


@dataclass(slots=True)
class LinkStats:
    """Counters of one link. Mutable because the link bumps them per packet;
    `Link.stats` hands out copies, so a reader's snapshot never moves."""

    packets_in: int = 0
    bytes_in: int = 0
    delivered: int = 0  # deliveries scheduled, duplicates included
    bytes_delivered: int = 0
    dropped_loss: int = 0
    dropped_burst: int = 0
    dropped_queue: int = 0
    dropped_blackhole: int = 0
    dropped_listed: int = 0  # by number (drop_packets)
    dropped_too_big: int = 0  # above the MTU
    duplicated: int = 0
    corrupted: int = 0
    reordered: int = 0

    @property
    def dropped(self) -> int:
        return (
            self.dropped_loss
            + self.dropped_burst
            + self.dropped_queue
            + self.dropped_blackhole
            + self.dropped_listed
            + self.dropped_too_big
        )

    def copy(self) -> LinkStats:
        return replace(self)


class _Shaper:
    """Token bucket in front of a FIFO byte queue with tail drop.

    Departures are computed, not simulated: a packet leaves at the first instant
    after the previous departure at which the bucket holds its size. A packet
    larger than the bucket waits for the missing tokens instead of being stuck.
    """

    def __init__(self) -> None:
        self._tokens = 0.0
        self._tokens_at: float | None = None  # None: bucket not used yet, so full
        self._free_at = -math.inf  # departure time of the previous packet
        self._queue: deque[tuple[float, int]] = deque()  # (departure, size) still waiting
        self._queued_bytes = 0

    def departure(self, size: int, now: float, spec: LinkSpec) -> float | None:
        """When a packet of `size` bytes arriving at `now` leaves, or None if tail-dropped."""
        assert spec.rate_mbps is not None
        rate = spec.rate_mbps * 1e6 / _BITS_PER_BYTE  # bytes per second
        self._forget_departed(now)
        start = max(now, self._free_at)
        if self._tokens_at is None:
            tokens = float(spec.burst_bytes)
        else:
            tokens = min(float(spec.burst_bytes), self._tokens + (start - self._tokens_at) * rate)
        depart = start if tokens >= size else start + (size - tokens) / rate
        waits = depart > now
        if waits and self._queued_bytes + size > spec.queue_bytes:
            return None
        self._tokens = max(tokens - size, 0.0)
        self._tokens_at = depart
        self._free_at = depart
        if waits:
            self._queue.append((depart, size))
            self._queued_bytes += size
        return depart

    def _forget_departed(self, now: float) -> None:
        while self._queue and self._queue[0][0] <= now:
            self._queued_bytes -= self._queue.popleft()[1]


class Link:
    """One direction of one path, driven by `submit`; `spec` may be replaced at
    any time and applies to packets submitted afterwards."""

    def __init__(self, spec: LinkSpec, rng: random.Random) -> None:
        self._rng = rng
        self._stats = LinkStats()
        self._bad = False  # Gilbert-Elliott state of `bursty`
        self._corrupt_bad = False  # and of `bursty_corrupt`
        self._shaper = _Shaper()
        self._last_delivery = -math.inf  # FIFO horizon
        self.spec = spec

    @property
    def spec(self) -> LinkSpec:
        return self._spec

    @spec.setter
    def spec(self, spec: LinkSpec) -> None:
        if not isinstance(spec, LinkSpec):
            raise TypeError(f"spec must be a LinkSpec, got {type(spec).__name__}")
        self._spec = spec
        if spec.bursty is None:
            self._bad = False
        if spec.bursty_corrupt is None:
            self._corrupt_bad = False

    @property
    def stats(self) -> LinkStats:
        return self._stats.copy()

    def submit(self, packet: bytes, now: float) -> list[tuple[float, bytes]]:
        """The deliveries of `packet` sent at `now`: (deliver_at, bytes), zero to two."""
        spec, stats = self._spec, self._stats
        stats.packets_in += 1
        stats.bytes_in += len(packet)
        depart = self._admit(len(packet), now)
        if depart is None:
            return []
        if packet and self._corrupts():
            packet = self._flip_one_bit(packet)
            stats.corrupted += 1
        deliveries = [(self._delivery_time(depart), packet)]
        if spec.duplicate and self._rng.random() < spec.duplicate:
            deliveries.append(deliveries[0])
            stats.duplicated += 1
        stats.delivered += len(deliveries)
        stats.bytes_delivered += len(packet) * len(deliveries)
        return deliveries

    def _admit(self, size: int, now: float) -> float | None:
        """Departure time after the drop stages and the shaper, or None if dropped."""
        spec, stats, rng = self._spec, self._stats, self._rng
        if spec.blackhole:
            stats.dropped_blackhole += 1
            return None
        if stats.packets_in in spec.drop_packets:
            stats.dropped_listed += 1
            return None
        if spec.mtu is not None and size + IP_UDP_HEADERS > spec.mtu:
            stats.dropped_too_big += 1
            return None
        if spec.loss and rng.random() < spec.loss:
            stats.dropped_loss += 1
            return None
        if spec.bursty is not None:
            self._bad, lost = spec.bursty.step(self._bad, rng)
            if lost:
                stats.dropped_burst += 1
                return None
        if spec.rate_mbps is None:
            return now
        depart = self._shaper.departure(size, now, spec)
        if depart is None:
            stats.dropped_queue += 1
        return depart

    def _corrupts(self) -> bool:
        """Whether this packet gets a bit flipped (each chain drawn only when on)."""
        spec = self._spec
        flip = bool(spec.corrupt) and self._rng.random() < spec.corrupt
        if spec.bursty_corrupt is not None:
            self._corrupt_bad, burst = spec.bursty_corrupt.step(self._corrupt_bad, self._rng)
            flip = flip or burst
        return flip

    def _delivery_time(self, depart: float) -> float:
        spec = self._spec
        delay = spec.delay_ms
        if spec.jitter_ms:
            delay = max(0.0, delay + self._rng.uniform(-spec.jitter_ms, spec.jitter_ms))
        deliver_at = max(self._last_delivery, depart + delay * _MS)
        if spec.reorder and self._rng.random() < spec.reorder:
            # Held back without moving the FIFO horizon, so later packets overtake it.
            self._stats.reordered += 1
            return deliver_at + spec.reorder_ms * _MS
        self._last_delivery = deliver_at
        return deliver_at

    def _flip_one_bit(self, packet: bytes) -> bytes:
        bit = self._rng.randrange(len(packet) * _BITS_PER_BYTE)
        flipped = bytearray(packet)
        flipped[bit // _BITS_PER_BYTE] ^= 1 << (bit % _BITS_PER_BYTE)
        return bytes(flipped)
