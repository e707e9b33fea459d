# cython: language_level=3
"""C-level API of loss recovery, for the later stages of the core to cimport."""

from libc.stdint cimport int64_t, uint8_t

ctypedef struct sent_packet:
    int64_t pn
    double sent_time
    int64_t size
    int64_t handle         # what the stream layer resolves to the packet's frames
    uint8_t flags          # FLAG_* bits
    uint8_t state          # empty (a skipped packet number), live, acknowledged, lost

cdef class RttEstimator:
    cdef readonly double latest_rtt
    cdef readonly double smoothed_rtt
    cdef readonly double rttvar
    cdef readonly double min_rtt
    cdef readonly bint has_sample
    cdef readonly double first_sample_time
    cdef public double max_ack_delay
    cdef public int pto_count
    cdef void update_c(self, double latest, double ack_delay, double now) noexcept nogil
    cdef double loss_delay_c(self) noexcept nogil
    cdef double pto_period_c(self, double max_ack_delay) noexcept nogil

cdef class Ledger:
    cdef sent_packet *ring
    cdef Py_ssize_t capacity   # a power of two
    cdef Py_ssize_t head       # slot of first_pn
    cdef Py_ssize_t count      # slots from first_pn to next_pn - 1
    cdef Py_ssize_t live
    cdef int64_t first_pn
    cdef readonly RttEstimator rtt
    cdef readonly bint application_data
    cdef readonly int64_t next_pn
    cdef readonly int64_t largest_acked
    cdef readonly int64_t bytes_in_flight
    cdef readonly int64_t ack_eliciting_in_flight
    cdef readonly double last_ack_eliciting_time
    cdef readonly double loss_time
    cpdef void on_sent(
        self, int64_t pn, double now, int64_t size, int flags, int64_t handle
    ) except *
    cpdef double pto_deadline(self) noexcept
    cdef sent_packet *slot(self, int64_t pn) noexcept nogil
    cdef int grow(self, Py_ssize_t need) except -1
    cdef int64_t leave_flight(self, sent_packet *packet) noexcept nogil
    cdef void trim(self) noexcept nogil

cdef class Pacer:
    cdef readonly int64_t packet_size
    cdef readonly double rate
    cdef readonly double burst
    cdef readonly double tokens
    cdef readonly double last
    cdef double tokens_at(self, double now) noexcept nogil
