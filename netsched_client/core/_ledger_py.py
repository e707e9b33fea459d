"""Loss recovery in pure Python: the reference `_ledger.pyx` is checked against.

Same API, same results, same exceptions as the compiled module (tests run
both); slower. See `ledger.py` for the API's description.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable

from netsched_client.core.errors import PacketError

__all__ = [
    "FLAG_ACK_ELICITING",
    "FLAG_FEC_REPAIR",
    "FLAG_IN_FLIGHT",
    "FLAG_PMTU_PROBE",
    "GRANULARITY",
    "INITIAL_RTT",
    "MAX_ACK_DELAY",
    "MAX_PN_GAP",
    "PACKET_THRESHOLD",
    "PERSISTENT_CONGESTION_THRESHOLD",
    "TIME_THRESHOLD",
    "AckResult",
    "Ledger",
    "LossResult",
    "Pacer",
    "RttEstimator",
]

FLAG_ACK_ELICITING = 1
FLAG_IN_FLIGHT = 2
FLAG_PMTU_PROBE = 4
FLAG_FEC_REPAIR = 8

# RFC 9002 §6.1.1, §6.1.2, §6.2.1, §7.6.1 and §6.2.2 (the recommended values).
PACKET_THRESHOLD = 3
TIME_THRESHOLD = 1.125  # 9/8, exact in binary: both backends compute the same delays
GRANULARITY = 0.001
PERSISTENT_CONGESTION_THRESHOLD = 3
INITIAL_RTT = 0.333
MAX_ACK_DELAY = 0.025  # the transport parameter's default (RFC 9000 §18.2)
# Packet numbers a sender may skip at once (RFC 9000 §21.4's optimistic-ACK defence
# skips a few): the ledger is indexed by packet number, so a skip costs slots.
MAX_PN_GAP = 1 << 16

_LIVE = 1  # sent, neither acknowledged nor declared lost
_ACKED = 2
_LOST = 3


class RttEstimator:
    """One path's RTT estimate (RFC 9002 §5) and PTO backoff (§6.2.1); a path's
    packet-number spaces share it."""

    __slots__ = (
        "first_sample_time",
        "has_sample",
        "latest_rtt",
        "max_ack_delay",
        "min_rtt",
        "pto_count",
        "rttvar",
        "smoothed_rtt",
    )

    def __init__(self, initial_rtt: float = INITIAL_RTT, max_ack_delay: float = MAX_ACK_DELAY):
        self.latest_rtt = 0.0
        self.smoothed_rtt = initial_rtt
        self.rttvar = initial_rtt / 2
        self.min_rtt = math.inf
        self.has_sample = False
        self.first_sample_time = math.inf
        # The peer's max_ack_delay (RFC 9000 §18.2): caps the ACK delays taken off RTT
        # samples and pads application-data PTOs. §5.3 lets Initial ACKs' delays be
        # ignored: the connection passes them as 0.
        self.max_ack_delay = max_ack_delay
        self.pto_count = 0

    def update(self, latest: float, ack_delay: float, now: float) -> None:
        """Takes one RTT sample (§5.3): the ACK delay the peer reports, capped at its
        max_ack_delay, comes off the sample unless that would go below min_rtt."""
        self.latest_rtt = latest
        if not self.has_sample:
            self.min_rtt = self.smoothed_rtt = latest
            self.rttvar = latest / 2
            self.has_sample = True
            self.first_sample_time = now
            return
        self.min_rtt = min(self.min_rtt, latest)
        delay = min(ack_delay, self.max_ack_delay)
        adjusted = latest - delay if latest >= self.min_rtt + delay else latest
        self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.smoothed_rtt - adjusted)
        self.smoothed_rtt = 0.875 * self.smoothed_rtt + 0.125 * adjusted

    def loss_delay(self) -> float:
        """How much later than a newer acknowledged packet one is lost (§6.1.2)."""
        return max(TIME_THRESHOLD * max(self.latest_rtt, self.smoothed_rtt), GRANULARITY)

    def pto_period(self, max_ack_delay: float) -> float:
        """The PTO without backoff (§6.2.1)."""
        return self.smoothed_rtt + max(4 * self.rttvar, GRANULARITY) + max_ack_delay


class AckResult:
    """What one ACK frame newly acknowledged in one packet-number space."""

    __slots__ = (
        "bytes_acked",
        "flags",
        "handles",
        "largest_newly_acked",
        "largest_sent_time",
        "pns",
        "rtt_updated",
    )

    def __init__(self) -> None:
        self.pns = array("q")
        self.handles = array("q")
        self.flags = array("q")
        self.bytes_acked = 0  # of packets that counted in flight
        self.largest_newly_acked = -1
        self.largest_sent_time = 0.0
        self.rtt_updated = False


class LossResult:
    """The packets one loss detection declared lost."""

    __slots__ = ("bytes_lost", "flags", "handles", "persistent_congestion", "pns")

    def __init__(self) -> None:
        self.pns = array("q")
        self.handles = array("q")
        self.flags = array("q")
        self.bytes_lost = 0  # of packets that counted in flight
        self.persistent_congestion = False


class Ledger:
    """The packets sent in one packet-number space (one per path for 1-RTT), in
    packet-number order, until acknowledged or declared lost."""

    def __init__(self, rtt: RttEstimator, application_data: bool = True) -> None:
        self.rtt = rtt
        self.application_data = application_data  # Initial/Handshake PTOs leave out ack delay
        # pn -> [sent_time, size, flags, handle, state]; acknowledged and lost packets
        # stay until no live packet precedes them (the persistent-congestion check and
        # the compiled ring see them there).
        self._packets: dict[int, list[float]] = {}
        self.next_pn = 0
        self.largest_acked = -1
        self.bytes_in_flight = 0
        self.ack_eliciting_in_flight = 0
        self.last_ack_eliciting_time = 0.0
        self.loss_time = math.inf

    def __len__(self) -> int:
        """Packets neither acknowledged nor declared lost."""
        return sum(1 for entry in self._packets.values() if entry[4] == _LIVE)

    def on_sent(self, pn: int, now: float, size: int, flags: int, handle: int) -> None:
        """Records a packet; packet numbers must rise (they may skip a few)."""
        _check_sent(pn, size, self.next_pn, bool(self._packets))
        self._packets[pn] = [now, size, flags, handle, _LIVE]
        self.next_pn = pn + 1
        if flags & FLAG_IN_FLIGHT:
            self.bytes_in_flight += size
        if flags & FLAG_ACK_ELICITING:
            self.ack_eliciting_in_flight += 1
            self.last_ack_eliciting_time = now

    def on_ack(self, ranges: Iterable[tuple[int, int]], ack_delay: float, now: float) -> AckResult:
        """Applies an ACK frame's ranges; takes an RTT sample when its largest packet
        is newly acknowledged and something ack-eliciting was (§5.1)."""
        spans = sorted(ranges)
        result = AckResult()
        if not spans:
            return result
        largest = _check_ack(spans, self.next_pn)
        eliciting = False
        for start, stop in spans:  # the result lists packets ascending
            for pn in _pns_in(self._packets, start, stop):
                entry = self._packets[pn]
                if entry[4] != _LIVE:
                    continue
                entry[4] = _ACKED
                self._record(result, pn, entry)
                result.bytes_acked += self._leave_flight(entry)
                eliciting = eliciting or bool(int(entry[2]) & FLAG_ACK_ELICITING)
        self.largest_acked = max(self.largest_acked, largest)
        if result.largest_newly_acked == largest and eliciting:
            self.rtt.update(now - result.largest_sent_time, ack_delay, now)
            result.rtt_updated = True
        if result.pns:
            self.rtt.pto_count = 0  # §6.2.1: an acknowledgement resets the backoff
        self._trim()
        return result

    def detect_lost(self, now: float) -> LossResult:
        """Declares lost what the packet or time threshold says (§6.1) and re-arms the
        loss timer; checks the lost run for persistent congestion (§7.6)."""
        result = LossResult()
        self.loss_time = math.inf
        delay = self.rtt.loss_delay()
        run = _Run(self.rtt)
        for pn, entry in self._packets.items():
            if pn > self.largest_acked:
                break
            state = entry[4]
            if state == _ACKED:
                run.reset()
            if state != _LIVE:
                continue
            sent_time = entry[0]
            # `sent + delay <= now`, the very sum the timer is armed at: `sent <= now -
            # delay` can round the other way at that instant and re-arm it there forever.
            if sent_time + delay <= now or pn + PACKET_THRESHOLD <= self.largest_acked:
                entry[4] = _LOST
                self._record(result, pn, entry)
                result.bytes_lost += self._leave_flight(entry)
                run.add(sent_time, int(entry[2]))
            else:
                self.loss_time = min(self.loss_time, sent_time + delay)
        result.persistent_congestion = run.found
        self._trim()
        return result

    def pto_deadline(self) -> float:
        """When the probe timer fires (§6.2.1, with backoff); inf with nothing
        ack-eliciting in flight."""
        if not self.ack_eliciting_in_flight:
            return math.inf
        max_ack_delay = self.rtt.max_ack_delay if self.application_data else 0.0
        period = math.ldexp(self.rtt.pto_period(max_ack_delay), self.rtt.pto_count)
        return self.last_ack_eliciting_time + period

    def _record(self, result: AckResult | LossResult, pn: int, entry: list[float]) -> None:
        result.pns.append(pn)
        result.handles.append(int(entry[3]))
        result.flags.append(int(entry[2]))
        if isinstance(result, AckResult) and result.largest_newly_acked < pn:
            result.largest_newly_acked = pn
            result.largest_sent_time = entry[0]

    def _leave_flight(self, entry: list[float]) -> int:
        """Takes a packet out of the in-flight counts; its bytes if it was in flight."""
        flags = int(entry[2])
        if flags & FLAG_ACK_ELICITING:
            self.ack_eliciting_in_flight -= 1
        if not flags & FLAG_IN_FLIGHT:
            return 0
        size = int(entry[1])
        self.bytes_in_flight -= size
        return size

    def _trim(self) -> None:
        """Drops the settled packets below the oldest live one."""
        packets = self._packets
        while packets:
            pn = next(iter(packets))
            if packets[pn][4] == _LIVE:
                return
            del packets[pn]


class _Run:
    """Lost ack-eliciting packets with no acknowledged one between them, sent after the
    first RTT sample: spanning the persistent-congestion duration, the path is
    congested (§7.6.2)."""

    __slots__ = ("duration", "first_sample_time", "found", "start")

    def __init__(self, rtt: RttEstimator) -> None:
        period = rtt.pto_period(rtt.max_ack_delay)
        self.duration = period * PERSISTENT_CONGESTION_THRESHOLD
        self.first_sample_time = rtt.first_sample_time
        self.start = math.inf
        self.found = False

    def reset(self) -> None:
        self.start = math.inf

    def add(self, sent_time: float, flags: int) -> None:
        if not flags & FLAG_ACK_ELICITING or sent_time <= self.first_sample_time:
            return
        self.start = min(self.start, sent_time)
        if sent_time - self.start >= self.duration:
            self.found = True


class Pacer:
    """A token bucket (RFC 9002 §7.7): `burst` bytes at most at once, refilled at
    `rate` bytes a second; rate 0 sends at once. A new pacer's bucket is full."""

    __slots__ = ("burst", "last", "packet_size", "rate", "tokens")

    def __init__(self, packet_size: int) -> None:
        self.packet_size = packet_size
        self.rate = 0.0
        self.burst = 0.0
        self.tokens = math.inf  # the first set_rate caps it to the burst
        self.last = 0.0

    def set_rate(self, rate: float, burst: float) -> None:
        """A new rate and bucket size; the tokens already earned stay, capped."""
        if rate < 0 or burst < 0:
            raise ValueError(f"pacing rate {rate}, burst {burst}")
        self.rate = rate
        self.burst = burst
        self.tokens = min(self.tokens, burst)

    def next_send_time(self, now: float) -> float:
        """When a packet of `packet_size` may leave (`now` or later)."""
        if self.rate <= 0:
            return now
        tokens = self._tokens_at(now)
        if tokens >= self.packet_size:
            return now
        return now + (self.packet_size - tokens) / self.rate

    def on_sent(self, size: int, now: float) -> None:
        """Spends `size` bytes of tokens (the bucket may go into debt: a packet that
        left early is paid back before the next one)."""
        self.tokens = self._tokens_at(now) - size
        self.last = max(self.last, now)

    def _tokens_at(self, now: float) -> float:
        elapsed = max(now - self.last, 0.0)
        return min(self.tokens + elapsed * self.rate, self.burst)


def _check_sent(pn: int, size: int, next_pn: int, occupied: bool) -> None:
    if pn < next_pn or size < 0:
        raise PacketError(f"packet {pn} of {size} bytes after {next_pn - 1}")
    if occupied and pn - next_pn > MAX_PN_GAP:
        raise PacketError(f"packet {pn} skips more than {MAX_PN_GAP} after {next_pn - 1}")


def _check_ack(spans: list[tuple[int, int]], next_pn: int) -> int:
    """The largest acknowledged packet number; PacketError for an ACK of a packet never
    sent (RFC 9000 §13.1: PROTOCOL_VIOLATION) or an empty or negative range."""
    for start, stop in spans:
        if not 0 <= start < stop:
            raise PacketError(f"ACK range [{start}, {stop})")
    largest = max(stop for _, stop in spans) - 1
    if largest >= next_pn:
        raise PacketError(f"ACK of packet {largest}, never sent")
    return largest


def _pns_in(packets: dict[int, list[float]], start: int, stop: int) -> list[int]:
    """The recorded packet numbers in [start, stop), ascending."""
    if stop - start <= len(packets):
        return [pn for pn in range(start, stop) if pn in packets]
    return [pn for pn in packets if start <= pn < stop]
