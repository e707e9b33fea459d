# cython: language_level=3, boundscheck=False, wraparound=False
# cython: cdivision=True, initializedcheck=False
"""Loss recovery in C: the sent-packet ledger, loss detection and PTO (RFC 9002), RTT, pacer.

`_ledger_py.py` is the pure-Python reference of the same API (tests run both
and compare). A packet-number space is a ring of C structs indexed by packet
number; an ACK or a loss detection walks it in C and makes Python objects
only for its result (arrays of packet numbers, handles and flags).
"""

from cpython.array cimport array, clone, resize_smart
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.math cimport INFINITY, fabs, ldexp
from libc.stdint cimport int64_t, uint8_t
from libc.string cimport memcpy

from netsched_client.core.errors import PacketError

FLAG_ACK_ELICITING = 1
FLAG_IN_FLIGHT = 2
FLAG_PMTU_PROBE = 4
FLAG_FEC_REPAIR = 8
PACKET_THRESHOLD = 3
TIME_THRESHOLD = 1.125
GRANULARITY = 0.001
PERSISTENT_CONGESTION_THRESHOLD = 3
INITIAL_RTT = 0.333
MAX_ACK_DELAY = 0.025
MAX_PN_GAP = 1 << 16

cdef enum:
    C_ACK_ELICITING = 1
    C_IN_FLIGHT = 2
    C_PACKET_THRESHOLD = 3
    C_PERSISTENT_CONGESTION_THRESHOLD = 3
    C_MAX_PN_GAP = 1 << 16
    EMPTY = 0  # a skipped packet number
    LIVE = 1
    ACKED = 2
    LOST = 3

cdef double C_TIME_THRESHOLD = 1.125  # 9/8, exact in binary: both backends agree
cdef double C_GRANULARITY = 0.001


cdef inline double dmax(double a, double b) noexcept nogil:
    return a if a > b else b


cdef inline double dmin(double a, double b) noexcept nogil:
    return a if a < b else b


cdef class RttEstimator:
    """One path's RTT estimate (RFC 9002 §5) and PTO backoff (§6.2.1); a path's
    packet-number spaces share it."""

    def __init__(self, double initial_rtt=INITIAL_RTT, double max_ack_delay=MAX_ACK_DELAY):
        self.latest_rtt = 0.0
        self.smoothed_rtt = initial_rtt
        self.rttvar = initial_rtt / 2
        self.min_rtt = INFINITY
        self.has_sample = False
        self.first_sample_time = INFINITY
        self.max_ack_delay = max_ack_delay
        self.pto_count = 0

    cdef void update_c(self, double latest, double ack_delay, double now) noexcept nogil:
        cdef double delay, adjusted
        self.latest_rtt = latest
        if not self.has_sample:
            self.min_rtt = self.smoothed_rtt = latest
            self.rttvar = latest / 2
            self.has_sample = True
            self.first_sample_time = now
            return
        self.min_rtt = dmin(self.min_rtt, latest)
        delay = dmin(ack_delay, self.max_ack_delay)
        adjusted = latest - delay if latest >= self.min_rtt + delay else latest
        self.rttvar = 0.75 * self.rttvar + 0.25 * fabs(self.smoothed_rtt - adjusted)
        self.smoothed_rtt = 0.875 * self.smoothed_rtt + 0.125 * adjusted

    cdef double loss_delay_c(self) noexcept nogil:
        return dmax(C_TIME_THRESHOLD * dmax(self.latest_rtt, self.smoothed_rtt), C_GRANULARITY)

    cdef double pto_period_c(self, double max_ack_delay) noexcept nogil:
        return self.smoothed_rtt + dmax(4 * self.rttvar, C_GRANULARITY) + max_ack_delay

    def update(self, double latest, double ack_delay, double now):
        """Takes one RTT sample (§5.3): the ACK delay the peer reports, capped at its
        max_ack_delay, comes off the sample unless that would go below min_rtt."""
        self.update_c(latest, ack_delay, now)

    def loss_delay(self):
        """How much later than a newer acknowledged packet one is lost (§6.1.2)."""
        return self.loss_delay_c()

    def pto_period(self, double max_ack_delay):
        """The PTO without backoff (§6.2.1)."""
        return self.pto_period_c(max_ack_delay)


cdef array EMPTY_Q = array("q")


cdef inline array new_q():
    # clone() skips array()'s type-code parsing: the results' arrays are most of an ACK's cost.
    return clone(EMPTY_Q, 0, False)


cdef class AckResult:
    """What one ACK frame newly acknowledged in one packet-number space."""

    cdef readonly array pns
    cdef readonly array handles
    cdef readonly array flags
    cdef readonly int64_t bytes_acked
    cdef readonly int64_t largest_newly_acked
    cdef readonly double largest_sent_time
    cdef readonly bint rtt_updated

    def __init__(self):
        self.pns = new_q()
        self.handles = new_q()
        self.flags = new_q()
        self.largest_newly_acked = -1


cdef class LossResult:
    """The packets one loss detection declared lost."""

    cdef readonly array pns
    cdef readonly array handles
    cdef readonly array flags
    cdef readonly int64_t bytes_lost
    cdef readonly bint persistent_congestion

    def __init__(self):
        self.pns = new_q()
        self.handles = new_q()
        self.flags = new_q()


cdef int push(array out, int64_t value) except -1:
    cdef Py_ssize_t used = len(out)
    resize_smart(out, used + 1)
    out.data.as_longlongs[used] = value
    return 0


cdef int record(array pns, array handles, array flags, sent_packet *packet) except -1:
    push(pns, packet.pn)
    push(handles, packet.handle)
    push(flags, packet.flags)
    return 0


cdef class Ledger:
    """The packets sent in one packet-number space (one per path for 1-RTT), in
    packet-number order, until acknowledged or declared lost."""

    def __cinit__(self, RttEstimator rtt not None, bint application_data=True):
        self.capacity = 64
        self.ring = <sent_packet *>PyMem_Malloc(self.capacity * sizeof(sent_packet))
        if self.ring == NULL:
            raise MemoryError()

    def __init__(self, RttEstimator rtt not None, bint application_data=True):
        self.rtt = rtt
        self.application_data = application_data  # Initial/Handshake PTOs leave out ack delay
        self.head = self.count = self.live = 0
        self.first_pn = self.next_pn = 0
        self.largest_acked = -1
        self.bytes_in_flight = self.ack_eliciting_in_flight = 0
        self.last_ack_eliciting_time = 0.0
        self.loss_time = INFINITY

    def __dealloc__(self):
        PyMem_Free(self.ring)

    def __len__(self):
        """Packets neither acknowledged nor declared lost."""
        return self.live

    cdef sent_packet *slot(self, int64_t pn) noexcept nogil:
        return &self.ring[(self.head + (pn - self.first_pn)) & (self.capacity - 1)]

    cdef int grow(self, Py_ssize_t need) except -1:
        """Doubles the ring until `need` slots fit, unwrapping it to start at 0."""
        cdef Py_ssize_t capacity = self.capacity, first
        while capacity < need:
            capacity *= 2
        if capacity == self.capacity:
            return 0
        cdef sent_packet *ring = <sent_packet *>PyMem_Malloc(capacity * sizeof(sent_packet))
        if ring == NULL:
            raise MemoryError()
        first = min(self.count, self.capacity - self.head)
        memcpy(ring, &self.ring[self.head], first * sizeof(sent_packet))
        memcpy(&ring[first], self.ring, (self.count - first) * sizeof(sent_packet))
        PyMem_Free(self.ring)
        self.ring, self.capacity, self.head = ring, capacity, 0
        return 0

    cpdef void on_sent(
        self, int64_t pn, double now, int64_t size, int flags, int64_t handle
    ) except *:
        """Records a packet; packet numbers must rise (they may skip a few)."""
        cdef int64_t skipped
        cdef sent_packet *packet
        if pn < self.next_pn or size < 0:
            raise PacketError(f"packet {pn} of {size} bytes after {self.next_pn - 1}")
        if self.count == 0:
            self.first_pn = pn
        elif pn - self.next_pn > C_MAX_PN_GAP:
            raise PacketError(
                f"packet {pn} skips more than {MAX_PN_GAP} after {self.next_pn - 1}"
            )
        self.grow(pn - self.first_pn + 1)
        for skipped in range(self.next_pn if self.count else pn, pn):
            self.slot(skipped).state = EMPTY
        packet = self.slot(pn)
        packet.pn, packet.sent_time, packet.size = pn, now, size
        packet.handle, packet.flags, packet.state = handle, <uint8_t>flags, LIVE
        self.count = pn - self.first_pn + 1
        self.live += 1
        self.next_pn = pn + 1
        if flags & C_IN_FLIGHT:
            self.bytes_in_flight += size
        if flags & C_ACK_ELICITING:
            self.ack_eliciting_in_flight += 1
            self.last_ack_eliciting_time = now

    def on_ack(self, ranges, double ack_delay, double now):
        """Applies an ACK frame's ranges; takes an RTT sample when its largest packet
        is newly acknowledged and something ack-eliciting was (§5.1)."""
        cdef list spans = sorted(ranges)
        cdef AckResult result = AckResult()
        cdef int64_t start, stop, pn, largest
        cdef sent_packet *packet
        cdef bint eliciting = False
        if not spans:
            return result
        largest = _check_ack(spans, self.next_pn)
        for start, stop in spans:  # the result lists packets ascending
            for pn in range(max(start, self.first_pn), min(stop, self.first_pn + self.count)):
                packet = self.slot(pn)
                if packet.state != LIVE:
                    continue
                packet.state = ACKED
                record(result.pns, result.handles, result.flags, packet)
                result.largest_newly_acked = pn
                result.largest_sent_time = packet.sent_time
                result.bytes_acked += self.leave_flight(packet)
                eliciting = eliciting or (packet.flags & C_ACK_ELICITING)
        self.largest_acked = max(self.largest_acked, largest)
        if result.largest_newly_acked == largest and eliciting:
            self.rtt.update_c(now - result.largest_sent_time, ack_delay, now)
            result.rtt_updated = True
        if result.largest_newly_acked >= 0:
            self.rtt.pto_count = 0  # §6.2.1: an acknowledgement resets the backoff
        self.trim()
        return result

    def detect_lost(self, double now):
        """Declares lost what the packet or time threshold says (§6.1) and re-arms the
        loss timer; checks the lost run for persistent congestion (§7.6)."""
        cdef LossResult result = LossResult()
        cdef double delay = self.rtt.loss_delay_c()
        cdef double duration = (
            self.rtt.pto_period_c(self.rtt.max_ack_delay) * C_PERSISTENT_CONGESTION_THRESHOLD
        )
        # The run: lost ack-eliciting packets sent after the first RTT sample with no
        # acknowledged one between them (§7.6.2); spanning `duration`, the path is congested.
        cdef double run_start = INFINITY
        cdef int64_t pn, last = min(self.largest_acked + 1, self.first_pn + self.count)
        cdef sent_packet *packet
        self.loss_time = INFINITY
        for pn in range(self.first_pn, last):
            packet = self.slot(pn)
            if packet.state == ACKED:
                run_start = INFINITY
            if packet.state != LIVE:
                continue
            # `sent + delay <= now`, the very sum the timer is armed at: `sent <= now -
            # delay` can round the other way at that instant and re-arm it there forever.
            if packet.sent_time + delay <= now or pn + C_PACKET_THRESHOLD <= self.largest_acked:
                packet.state = LOST
                record(result.pns, result.handles, result.flags, packet)
                result.bytes_lost += self.leave_flight(packet)
                if (packet.flags & C_ACK_ELICITING
                        and packet.sent_time > self.rtt.first_sample_time):
                    run_start = dmin(run_start, packet.sent_time)
                    if packet.sent_time - run_start >= duration:
                        result.persistent_congestion = True
            else:
                self.loss_time = dmin(self.loss_time, packet.sent_time + delay)
        self.trim()
        return result

    cpdef double pto_deadline(self) noexcept:
        """When the probe timer fires (§6.2.1, with backoff); inf with nothing
        ack-eliciting in flight."""
        if not self.ack_eliciting_in_flight:
            return INFINITY
        cdef double max_ack_delay = self.rtt.max_ack_delay if self.application_data else 0.0
        cdef double period = ldexp(self.rtt.pto_period_c(max_ack_delay), self.rtt.pto_count)
        return self.last_ack_eliciting_time + period

    cdef int64_t leave_flight(self, sent_packet *packet) noexcept nogil:
        """Takes a packet out of the in-flight counts; its bytes if it was in flight."""
        self.live -= 1
        if packet.flags & C_ACK_ELICITING:
            self.ack_eliciting_in_flight -= 1
        if not packet.flags & C_IN_FLIGHT:
            return 0
        self.bytes_in_flight -= packet.size
        return packet.size

    cdef void trim(self) noexcept nogil:
        """Drops the settled packets below the oldest live one."""
        while self.count and self.ring[self.head].state != LIVE:
            self.head = (self.head + 1) & (self.capacity - 1)
            self.first_pn += 1
            self.count -= 1


cdef class Pacer:
    """A token bucket (RFC 9002 §7.7): `burst` bytes at most at once, refilled at
    `rate` bytes a second; rate 0 sends at once. A new pacer's bucket is full."""

    def __init__(self, int64_t packet_size):
        self.packet_size = packet_size
        self.rate = self.burst = self.last = 0.0
        self.tokens = INFINITY  # the first set_rate caps it to the burst

    def set_rate(self, double rate, double burst):
        """A new rate and bucket size; the tokens already earned stay, capped."""
        if rate < 0 or burst < 0:
            raise ValueError(f"pacing rate {rate}, burst {burst}")
        self.rate = rate
        self.burst = burst
        self.tokens = dmin(self.tokens, burst)

    def next_send_time(self, double now):
        """When a packet of `packet_size` may leave (`now` or later)."""
        cdef double tokens
        if self.rate <= 0:
            return now
        tokens = self.tokens_at(now)
        if tokens >= self.packet_size:
            return now
        return now + (self.packet_size - tokens) / self.rate

    def on_sent(self, int64_t size, double now):
        """Spends `size` bytes of tokens (the bucket may go into debt: a packet that
        left early is paid back before the next one)."""
        self.tokens = self.tokens_at(now) - size
        self.last = dmax(self.last, now)

    cdef double tokens_at(self, double now) noexcept nogil:
        cdef double elapsed = dmax(now - self.last, 0.0)
        return dmin(self.tokens + elapsed * self.rate, self.burst)


cdef int64_t _check_ack(list spans, int64_t next_pn) except? -1:
    """The largest acknowledged packet number; PacketError for an ACK of a packet never
    sent (RFC 9000 §13.1: PROTOCOL_VIOLATION) or an empty or negative range."""
    for start, stop in spans:
        if not 0 <= start < stop:
            raise PacketError(f"ACK range [{start}, {stop})")
    largest = max([stop for _, stop in spans]) - 1
    if largest >= next_pn:
        raise PacketError(f"ACK of packet {largest}, never sent")
    return largest
