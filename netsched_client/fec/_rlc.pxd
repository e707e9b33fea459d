# The RLC codec core (RFC 8681, GF(2^8)) for other Cython modules to `cimport`.
from libc.stdint cimport uint8_t, uint16_t


# dst ^= coef * src (n bytes); the region kernel everything else is built on.
cdef void gf_madd(uint8_t* dst, const uint8_t* src, uint8_t coef, size_t n) noexcept nogil
# dst = coef * src (n bytes); dst may be src.
cdef void gf_mul(uint8_t* dst, const uint8_t* src, uint8_t coef, size_t n) noexcept nogil
# RFC 8681 §3.6 coefficients for one repair symbol into out[0:cc_nb]; dt must be 0..15.
cdef void coding_coefs(uint8_t* out, uint16_t repair_key, size_t cc_nb, uint8_t dt) noexcept nogil


cdef class EncoderCore:
    cdef readonly Py_ssize_t symbol_size
    cdef Py_ssize_t slots  # max window; id i lives in slot i % slots
    cdef long long base  # oldest id held
    cdef long long next_id  # id the next source symbol must have
    cdef uint8_t* symbols  # slots x symbol_size, padded source symbols
    cdef uint8_t* scratch  # slots coding coefficients


cdef class DecoderCore:
    cdef readonly Py_ssize_t symbol_size
    cdef Py_ssize_t columns  # max window; column c is id base + c, in slot id % columns
    cdef long long base
    cdef uint8_t* known  # per slot: the source symbol is in `symbols`
    cdef uint8_t* symbols  # columns x symbol_size, padded source symbols by slot
    # Equations over the unknown columns, kept in reduced row echelon form with
    # each row's pivot at its leading (lowest) non-zero column. One row more
    # than columns: the spare holds an incoming equation while it is reduced.
    cdef uint8_t* coef  # (columns + 1) x columns
    cdef uint8_t* data  # (columns + 1) x symbol_size
    cdef int* pivot  # per row: its pivot column, -1 when the row is not in the system
    cdef int* row_of  # per column: the row pivoting on it, or -1
    cdef int* active  # rows in the system
    cdef Py_ssize_t n_active
    cdef int* free_rows
    cdef Py_ssize_t n_free
    cdef int* touched  # rows changed by the current call, to check for decodability
    cdef uint8_t* is_touched
    cdef Py_ssize_t n_touched
    cdef uint8_t* scratch  # columns coding coefficients

    cdef Py_ssize_t _slot(self, Py_ssize_t col) noexcept nogil
    cdef uint8_t* _coef(self, int row) noexcept nogil
    cdef uint8_t* _data(self, int row) noexcept nogil
    cdef uint8_t* _symbol(self, Py_ssize_t col) noexcept nogil
    cdef void _touch(self, int row) noexcept nogil
    cdef void _deactivate(self, int row) noexcept nogil
    cdef void _free(self, int row) noexcept nogil
    cdef void _advance(self, long long new_base) noexcept nogil
    cdef void _row_madd(self, int dst, int src, uint8_t coef) noexcept nogil
    cdef void _reduce(self, int row, Py_ssize_t start) noexcept nogil
    cdef bint _settle(self, int row) noexcept nogil
    cdef list _harvest(self, bint consistent)
    cdef Py_ssize_t _used_columns(self) noexcept nogil
    cdef void _take_buffers(self, DecoderCore other) noexcept
