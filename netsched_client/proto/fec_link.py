"""One connection's FEC state, sans-IO: what `NetSchedConnection` drives (docs/FEC.md).

- `FecConfig`: what the app configures (our `netsched_fec` offer, the
  redundancy policy, the session's override, protect-everything mode).
- `FecSender`: the encoder side. It numbers protected packets (connection-wide
  source symbol IDs), holds their delivery handlers until the packet is acked,
  lost, or acknowledged as recovered by SYMBOL_ACK, accrues repair credit per
  protected packet at its request's ratio, and makes REPAIR frames.
- `FecReceiver`: the decoder side. It feeds source and repair symbols to the
  decoder, queues recovered payloads for the normal frame dispatch,
  remembers recovered IDs for SYMBOL_ACK, and resizes the decoder and numbers
  the FEC_WINDOW frames that announce it.
- `MeasuredRecovery`: aioquic's recovery that also feeds a `LossEstimator`
  with each 1-RTT packet's fate (the controller's loss rate and burst length).

Nothing here sees a socket or a clock: times come in as `now`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from aioquic.quic.events import QuicEvent
from aioquic.quic.packet_builder import QuicDeliveryHandler, QuicDeliveryState, QuicSentPacket
from aioquic.quic.rangeset import RangeSet
from aioquic.quic.recovery import QuicPacketSpace

from ..fec.codec import FecDecoder, FecEncoder, Recovered
from ..fec.control import (
    DEFAULT_POLICY,
    NO_OVERRIDE,
    FecDecision,
    FecInputs,
    FecMode,
    FecOverride,
    FecPolicy,
    FecReason,
)
from ..fec.frames import MAX_REPAIR_KEY, MAX_SYMBOL_ACK_RANGES, FecWindow, Repair, SymbolAck
from ..fec.loss import LossEstimator, LossStats
from ..fec.params import FecParameters, NegotiatedFec
from .multipath.recovery import CountingRecovery

RATE_PACKETS: Final = 9  # the sending rate is measured over this many packets
RATE_IDLE_S: Final = 0.5  # a pause this long resets the sending rate estimate
# Until this many packet fates are known, the loss rate is at least the prior.
PRIOR_SAMPLES: Final = 256
# A repair is due at the latest this share of the slack after its oldest
# unrepaired source: it then still arrives within the slack, with a margin.
FLUSH_SLACK_SHARE: Final = 0.8
# A repair sent within this share of a source's slack still arrives within it (the rest:
# pacing and queueing), so it covers every source whose share has not run out yet. More
# than the flush's share: a repair flushed for one source also reaches the one before.
REACH_SLACK_SHARE: Final = 0.9
# A protected packet declared lost keeps its data this many RTTs for the SYMBOL_ACK
# of its recovery before the data is retransmitted (the loss counts at once).
LOST_HOLD_RTTS: Final = 0.5


@dataclass(frozen=True, slots=True)
class FecConfig:
    """FEC for one connection. Without one, a connection neither offers nor speaks FEC."""

    parameters: FecParameters = field(default_factory=FecParameters)
    policy: FecPolicy = DEFAULT_POLICY
    session: FecOverride = NO_OVERRIDE  # the session's say; a request's override wins per field
    protect_all: bool = False  # protect every ack-eliciting 1-RTT packet, not just FEC streams
    default_loss_tolerance: float = 0.01  # a request that names none
    prior_loss_rate: float = 0.01  # assumed until the path has shown PRIOR_SAMPLES fates
    # On a multipath connection, repairs leave on a path other than their sources' (the
    # paths' losses taken as independent: a burst on one spares the repairs on another).
    cross_path_repairs: bool = True

    def __post_init__(self) -> None:
        for name in ("default_loss_tolerance", "prior_loss_rate"):
            value = getattr(self, name)
            if not (_is_number(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"FecConfig.{name}: must be a number in 0.0..1.0 (got {value!r})")

    @property
    def offer(self) -> FecParameters:
        """Our netsched_fec: with the session's FEC off, a decoding window of 0, so that
        the peer sends no repairs until FEC is turned on (then FEC_WINDOW says more)."""
        if self.session.mode is FecMode.OFF:
            return dataclasses.replace(self.parameters, initial_decoding_window=0)
        return self.parameters


@dataclass(frozen=True, slots=True)
class StreamFec:
    """A request's FEC inputs: its SLO and its override (None fields: the session's)."""

    deadline_at: float | None = None  # absolute, connection clock
    loss_tolerance: float | None = None
    override: FecOverride = NO_OVERRIDE
    size_hint: int | None = None  # bytes the response will carry, when known

    def __post_init__(self) -> None:
        # Checked here, where the app hands them over, not while a packet is being built.
        deadline, tolerance, hint = self.deadline_at, self.loss_tolerance, self.size_hint
        if deadline is not None and not (_is_number(deadline) and math.isfinite(deadline)):
            raise ValueError(f"StreamFec.deadline_at: must be a finite number (got {deadline!r})")
        if tolerance is not None and not (_is_number(tolerance) and 0.0 <= tolerance <= 1.0):
            raise ValueError(f"StreamFec.loss_tolerance: must be in 0.0..1.0 (got {tolerance!r})")
        if hint is not None and not (isinstance(hint, int) and not isinstance(hint, bool)):
            raise ValueError(f"StreamFec.size_hint: must be an int (got {hint!r})")
        if hint is not None and hint < 0:
            raise ValueError(f"StreamFec.size_hint: must be >= 0 (got {hint!r})")
        if not isinstance(self.override, FecOverride):
            raise ValueError(f"StreamFec.override: must be a FecOverride (got {self.override!r})")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class FecRedundancyCapped(QuicEvent):
    """The overhead cap kept a request's P(unrecoverable window) above its loss tolerance."""

    stream_id: int
    decision: FecDecision


@dataclass(frozen=True, slots=True)
class FecStats:
    symbols_sent: int  # protected packets
    repairs_sent: int
    repair_bytes: int
    symbols_recovered_by_peer: int  # our lost packets the peer rebuilt (SYMBOL_ACK)
    symbols_received: int
    repairs_received: int
    symbols_recovered: int  # the peer's lost packets we rebuilt
    capped_decisions: int
    symbols_by_path: tuple[tuple[int, int], ...] = ()  # (path ID, protected packets sent on it)
    repairs_by_path: tuple[tuple[int, int], ...] = ()  # (path ID, repairs sent on it)


# -- sender ----------------------------------------------------------------------------------


class FecSender:
    """Encoder side: symbol IDs, held delivery handlers, repair credit (implements SymbolSink)."""

    def __init__(self, negotiated: NegotiatedFec, max_coding_window: int, protect_all: bool):
        self.symbol_size = negotiated.symbol_size
        self._max_span = max_coding_window
        self.peer_window = negotiated.send_window  # FEC_WINDOW replaces it
        self._peer_window_epoch = -1
        self._protect_all = protect_all
        self._encoder = FecEncoder(self.symbol_size, max_coding_window)
        self._next_id = 0
        self._held: dict[int, list[tuple[QuicDeliveryHandler, Any]]] = {}
        self._lost_until: dict[int, float] = {}  # lost, held for a SYMBOL_ACK until then
        self.rtt = 0.1  # the connection keeps it current
        self._credit = 0.0
        self._span = 1  # the widest window asked for by the unrepaired symbols' requests
        self._unrepaired_from = 0  # first symbol ID no repair covers yet
        self._flush_at: float | None = None  # a repair is due by then (deadline slack)
        # (symbol ID, until when a repair still reaches the peer in time for it), in order
        self._reach: deque[tuple[int, float]] = deque()
        self._repair_key = 0
        # (time, size) of the app's last 1-RTT packets: its sending rate
        self._sends: deque[tuple[float, int]] = deque(maxlen=RATE_PACKETS)
        self.armed = False  # the connection arms it while protected data is waiting
        self.now = 0.0
        self.path_id = 0  # the path whose packets are being built
        self.source_path_id = 0  # the path that carried the newest source symbol
        self.any_path = False  # repairs held back for another path may take this one
        self.repairs_by_path: dict[int, int] = {}
        self.symbols_by_path: dict[int, int] = {}
        self._packet_slack: float | None = None  # the packet being built: its repair's slack
        self.symbols_sent = 0
        self.repairs_sent = 0
        self.repair_bytes = 0
        self.recovered_by_peer = 0

    # SymbolSink

    @property
    def payload_limit(self) -> int:
        if self.peer_window == 0:
            return 0  # the peer holds no symbols: SOURCE_SYMBOL_ID would be wasted bytes
        return self.symbol_size - 2 if self.armed or self._protect_all else 0

    @property
    def protect_all(self) -> bool:
        return self._protect_all

    def take_symbol(self, packet: QuicSentPacket, symbol: bytes, ratio: float) -> int:
        symbol_id = self._next_id
        self._next_id += 1
        self._encoder.add_source(symbol_id, symbol)
        # The packet's handlers wait here: ACK, loss or the peer's SYMBOL_ACK settles them once.
        self._held[symbol_id] = packet.delivery_handlers
        packet.delivery_handlers = [(self._on_symbol_delivery, (symbol_id,))]
        self._credit += ratio
        self.symbols_sent += 1
        self.source_path_id = self.path_id
        self.symbols_by_path[self.path_id] = self.symbols_by_path.get(self.path_id, 0) + 1
        slack, self._packet_slack = self._packet_slack, None
        if slack is not None:
            due = self.now + slack * FLUSH_SLACK_SHARE
            self._flush_at = due if self._flush_at is None else min(self._flush_at, due)
            self._first_in_reach()  # forgets the symbols no repair can help any more
            self._reach.append((symbol_id, self.now + slack * REACH_SLACK_SHARE))
        return symbol_id

    def note_packet(self, size: int) -> None:
        if self._sends and self.now - self._sends[-1][0] > RATE_IDLE_S:
            self._sends.clear()  # an idle period: the next busy one is measured afresh
        self._sends.append((self.now, size))

    def note_request(self, window: int, slack: float | None) -> None:
        """The packet being built carries data of a request with this window and slack
        (`repair_slack`: how long after the packet a repair still arrives in time)."""
        self._span = max(self._span, window)
        if slack is not None:
            pending = self._packet_slack
            self._packet_slack = slack if pending is None else min(pending, slack)

    # delivery

    def _on_symbol_delivery(self, delivery: QuicDeliveryState, symbol_id: int) -> None:
        if delivery == QuicDeliveryState.LOST and self._may_be_recovered(symbol_id):
            # The congestion controller has seen the loss; the data waits a little for
            # the peer's SYMBOL_ACK, which is on its way when a repair covered it.
            self._lost_until[symbol_id] = self.now + LOST_HOLD_RTTS * self.rtt
            return
        self._settle(symbol_id, delivery)

    def _settle(self, symbol_id: int, delivery: QuicDeliveryState) -> None:
        self._lost_until.pop(symbol_id, None)
        for handler, args in self._held.pop(symbol_id, ()):
            handler(delivery, *args)

    def _may_be_recovered(self, symbol_id: int) -> bool:
        will_be = self._flush_at is not None and self.peer_window > 0
        covered = symbol_id < self._unrepaired_from or will_be
        return covered and symbol_id in self._held and symbol_id not in self._lost_until

    def on_symbol_ack(self, ranges: Iterable[range]) -> int:
        """The peer holds these symbols: their data is delivered (the packets stay lost)."""
        settled = 0
        for item in ranges:
            for symbol_id in [i for i in self._held if i in item]:
                self._settle(symbol_id, QuicDeliveryState.ACKED)
                settled += 1
        self.recovered_by_peer += settled
        return settled

    def on_fec_window(self, epoch: int, window: int) -> None:
        if epoch > self._peer_window_epoch:
            self._peer_window_epoch = epoch
            self.peer_window = window

    # measurements

    def rate(self) -> float | None:
        """The application's sending rate in bytes/s (repairs excluded): the mean packet
        size over the median gap of the last RATE_PACKETS packets, so that one odd gap
        (a control packet, a pause) does not skew it; None before three packets."""
        if len(self._sends) < 3:
            return None
        times = [at for at, _ in self._sends]
        gap = statistics.median(b - a for a, b in itertools.pairwise(times))
        size = statistics.fmean(size for _, size in self._sends)
        return size / max(gap, 1e-4)

    # repairs

    def timer(self) -> float | None:
        """When a repair falls due, or lost data stops waiting for a SYMBOL_ACK.

        A repair that is due already (`repair_due`) has no timer: it waits for window
        room and the pacer, and whatever opens the window (an ACK, a loss) brings a
        sending round that sends it. A timer that stayed due while nothing can be sent
        would make the event loop spin until the window opens."""
        due = [*self._lost_until.values()]
        flush_at = self._flush_at
        waiting = flush_at is not None and flush_at > self.now  # not due yet
        if flush_at is not None and waiting and self._credit < 1.0 and self._unrepaired():
            due.append(flush_at)
        return min(due, default=None)

    def on_timer(self, now: float) -> None:
        self.now = now
        for symbol_id in [i for i, until in self._lost_until.items() if until <= now]:
            self._settle(symbol_id, QuicDeliveryState.LOST)  # not recovered: retransmit

    def _unrepaired(self) -> bool:
        return self._unrepaired_from < self._next_id

    def _flush_due(self) -> bool:
        """The oldest unrepaired source's slack is running out: one repair now, credit or not
        (judged at `now`, the sending round's time: when the window has room again)."""
        flush_at = self._flush_at
        return flush_at is not None and self.now >= flush_at and self._unrepaired()

    def repair_due(self) -> bool:
        span_ok = min(self._span, self.peer_window, self._max_span) > 0
        earned = self._credit >= 1.0 or self._flush_due()
        return span_ok and earned and self._next_id > self._encoder.window[0]

    def next_repair(self) -> Repair:
        """The repair over the newest `window` source symbols and every older one no repair
        covered yet (within the peer's decoding window); `commit_repair` once written."""
        limit = min(self.peer_window, self._max_span)
        first = min(self._next_id - min(self._span, limit), self._unrepaired_from)
        first = min(first, self._first_in_reach())
        first = max(first, self._encoder.window[0], self._next_id - limit)
        count = self._next_id - first
        symbol = self._encoder.repair(self._repair_key, first, count)
        return Repair(self._repair_key, first, count, 15, symbol)

    def _first_in_reach(self) -> int:
        """The oldest source symbol a repair sent now still recovers before its deadline.

        A repair that covers it too costs nothing more and gives a loss every repair sent
        within its slack, not only the first one after it: at one repair per four
        sources and a slack of five, 0.82 % of the messages were late instead of 1.03 %
        (docs/CONGESTION.md, "FEC goals"). Symbols beyond the widest window a repair
        may span are forgotten too: a long slack keeps no more than that."""
        reach, oldest = self._reach, self._next_id - self._max_span
        while reach and (reach[0][1] < self.now or reach[0][0] < oldest):
            reach.popleft()
        return reach[0][0] if reach else self._next_id

    def commit_repair(self, frame: Repair, size: int) -> None:
        self._repair_key = (self._repair_key + 1) & MAX_REPAIR_KEY
        self._credit -= 1.0  # a flush without credit ends at 0 below
        self.repairs_sent += 1
        self.repair_bytes += size
        self.repairs_by_path[self.path_id] = self.repairs_by_path.get(self.path_id, 0) + 1
        # Everything sent so far is covered; the next symbols bring their own windows.
        self._unrepaired_from = frame.first_id + frame.count
        self._flush_at = None
        if self._credit < 1.0:
            self._span = 1
            self._credit = max(self._credit, 0.0)


# -- receiver --------------------------------------------------------------------------------


class FecReceiver:
    """Decoder side: symbols in, recovered payloads out, recovered IDs for SYMBOL_ACK, and
    the decoding window we announce with FEC_WINDOW."""

    def __init__(self, negotiated: NegotiatedFec, window_limit: int):
        self.symbol_size = negotiated.symbol_size
        self.window = negotiated.receive_window
        self.window_limit = window_limit  # the peer's Max Coding Window: a larger decoder idles
        # The widest window we ever announced: repairs the peer sent before it saw a
        # smaller one span up to it, and are ignored rather than a PROTOCOL_VIOLATION.
        self.widest_window = self.window
        self._decoder = self._new_decoder(self.window)
        self.window_frame: FecWindow | None = None  # the latest FEC_WINDOW, sent or not
        self.window_pending = False  # window_frame is still to be (re)sent
        self._recovered_ids = RangeSet()
        self.backlog: deque[Recovered] = deque()
        self.ack_pending = False
        self.symbols_received = 0
        self.repairs_received = 0
        self.symbols_recovered = 0

    def _new_decoder(self, window: int) -> FecDecoder | None:
        return FecDecoder(self.symbol_size, window) if window else None

    def set_window(self, size: int) -> None:
        """Hold `size` source symbols from now on and announce it with the next epoch.

        Shrinking forgets the oldest symbols held (and the memory they took); a
        size of 0 drops the decoder: the peer stops sending repairs.
        """
        if not (isinstance(size, int) and not isinstance(size, bool)):
            raise ValueError(f"FEC decoding window: must be an int (got {size!r})")
        if not 0 <= size <= self.window_limit:
            raise ValueError(
                f"FEC decoding window: {size} is out of range 0..{self.window_limit} "
                "(the peer's Max Coding Window: its repairs never span more)"
            )
        if size == self.window:
            return  # the peer has, or will get with the latest frame, this size already
        epoch = 0 if self.window_frame is None else self.window_frame.epoch + 1
        self.window_frame = FecWindow(epoch, size)
        self.window_pending = True
        self.window = size
        self.widest_window = max(self.widest_window, size)
        if self._decoder is None or size == 0:
            self._decoder = self._new_decoder(size)
        else:
            self._decoder.resize(size)

    def on_window_lost(self, epoch: int) -> None:
        """A packet with FEC_WINDOW `epoch` was lost: resend it unless a newer one superseded it."""
        if self.window_frame is not None and self.window_frame.epoch == epoch:
            self.window_pending = True

    def on_source(self, symbol_id: int, payload: bytes) -> None:
        self.symbols_received += 1
        if self._decoder is not None:
            self._take(self._decoder.receive_source(symbol_id, payload))

    def on_repair(self, frame: Repair) -> None:
        """Raises FecError for a repair the decoder refuses (CorruptRepairError included)."""
        self.repairs_received += 1
        if self._decoder is None or frame.count > self.window:
            return  # sent before the peer saw our smaller window
        self._take(
            self._decoder.receive_repair(
                frame.repair_key, frame.first_id, frame.count, frame.dt, frame.symbol
            )
        )

    def _take(self, recovered: list[Recovered]) -> None:
        # Bounded by the decoder's window: the connection drains it after every packet.
        for item in recovered:
            self.backlog.append(item)
            self._recovered_ids.add(item.symbol_id)
            self.symbols_recovered += 1
            self.ack_pending = True
        while len(self._recovered_ids) > MAX_SYMBOL_ACK_RANGES:
            self._recovered_ids.shift()

    def symbol_ack(self) -> SymbolAck | None:
        if not self.ack_pending or len(self._recovered_ids) == 0:
            return None
        return SymbolAck.newest(list(self._recovered_ids))


# -- loss measurement -----------------------------------------------------------------------


class MeasuredRecovery(CountingRecovery):
    """aioquic's recovery that reports each 1-RTT packet's fate to a `LossEstimator`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.loss_estimator = LossEstimator()

    def on_ack_received(self, *, ack_rangeset: RangeSet, now: float, **kwargs: Any) -> None:
        space: QuicPacketSpace = kwargs["space"]
        if space.is_application_data and space.sent_packets:
            for packet_number in _acked_in_flight(space, ack_rangeset):
                self.loss_estimator.on_acked(packet_number, now)
        super().on_ack_received(ack_rangeset=ack_rangeset, now=now, **kwargs)
        self._settle(now)

    def _on_packets_lost(self, *, packets: Iterable[QuicSentPacket], **kwargs: Any) -> None:
        packets = list(packets)
        space: QuicPacketSpace = kwargs["space"]
        now: float = kwargs["now"]
        if space.is_application_data and kwargs.get("congestion_event", True):
            for packet in packets:
                self.loss_estimator.on_lost(packet.packet_number, now)
        super()._on_packets_lost(packets=packets, **kwargs)

    def _settle(self, now: float) -> None:
        rtt = self._rtt_smoothed if self._rtt_initialized else self._rtt_initial
        self.loss_estimator.settle(now, max(rtt, 1e-3))

    def stats_with_prior(self, prior: float) -> LossStats:
        stats = self.loss_estimator.stats
        if stats.samples >= PRIOR_SAMPLES:
            return stats
        return LossStats(max(stats.loss_rate, prior), stats.mean_burst, stats.samples)


def _acked_in_flight(space: QuicPacketSpace, ack_rangeset: RangeSet) -> list[int]:
    """Packet numbers both in flight and acknowledged: the ranges are clipped to what
    was sent (packet numbers are sorted), so a peer's huge ranges cost nothing."""
    numbers = space.sent_packets
    low, high = next(iter(numbers)), next(reversed(numbers))
    return [
        packet_number
        for item in ack_rangeset
        for packet_number in range(max(item.start, low), min(item.stop, high + 1))
        if packet_number in numbers
    ]


# -- decisions --------------------------------------------------------------------------------


def decision_inputs(
    stream: StreamFec,
    *,
    config: FecConfig,
    loss: LossStats,
    rtt: float,
    rate: float,
    now: float,
    sender: FecSender,
) -> FecInputs:
    """The controller's inputs for one request now."""
    slack = None if stream.deadline_at is None else stream.deadline_at - now - rtt / 2
    remaining = None
    if stream.size_hint is not None:
        remaining = max(1, math.ceil(stream.size_hint / (sender.symbol_size - 2)))
    tolerance = stream.loss_tolerance
    return FecInputs(
        loss_tolerance=config.default_loss_tolerance if tolerance is None else tolerance,
        loss_rate=loss.loss_rate,
        mean_burst=loss.mean_burst,
        rtt=rtt,
        rate=rate,
        slack=slack,
        symbol_size=sender.symbol_size,
        remaining_packets=remaining,
        decoder_window=min(sender.peer_window, 4095),
    )


def flush_delay(decision: FecDecision, inputs: FecInputs) -> float | None:
    """The slack a protected packet's repairs have (`FecSender.note_request`): the
    sender flushes within FLUSH_SLACK_SHARE of it; tail repairs go at once."""
    if decision.reason is FecReason.TAIL or inputs.slack is None:
        return 0.0 if decision.reason is FecReason.TAIL else None
    return max(0.0, inputs.slack)
