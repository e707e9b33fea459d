# The batched UDP socket's C state; the implementation is in _udp.pyx.

from posix.uio cimport iovec

from ._mmsg cimport Outbox
from .includes.system cimport msghdr, ns_mmsghdr, sockaddr_in6, sockaddr_storage, socklen_t


cdef enum:
    ADDR_CACHE = 16  # recently seen peer addresses, each side (a server talks to many)


cdef class BatchedUdpSocket:
    cdef readonly object local_address
    cdef public object on_blocked
    cdef object _sock
    cdef object _queue  # _common.SendQueue
    cdef int _fd
    cdef int _family
    cdef int _batch
    cdef bint _gro

    # receive: one buffer slot, name and control area per mmsghdr
    cdef ns_mmsghdr *_rmsgs
    cdef iovec *_riov
    cdef sockaddr_storage *_rnames
    cdef char *_rctrl
    cdef char *_rbuf
    cdef unsigned char *_recn
    cdef int *_rsegs
    cdef int _rn
    # source address → the tuple handed out last time, so peers cost no allocation
    cdef list _rkeys
    cdef sockaddr_storage _rcache[ADDR_CACHE]
    cdef socklen_t _rclen[ADDR_CACHE]
    cdef int _rnext
    cdef int _rlast

    # send: the datagrams of one outbox_send, and a copy of each one's destination
    cdef Outbox _out
    cdef sockaddr_in6 *_snames
    # destination tuple → its parsed sockaddr
    cdef list _dkeys
    cdef sockaddr_storage _dcache[ADDR_CACHE]
    cdef socklen_t _dclen[ADDR_CACHE]
    cdef int _dnext
    cdef int _dlast

    # the send counters are the outbox's
    cdef unsigned long long _syscalls_recv
    cdef unsigned long long _datagrams_received
    cdef unsigned long long _gro_batches
    cdef unsigned long long _recv_truncated

    cdef int _allocate(self, int batch) except -1
    cdef void _prepare_recv(self) noexcept
    cdef int _check_open(self) except -1
    cdef list _collect(self, int n)
    cdef object _source(self, sockaddr_storage *sa, socklen_t salen)
    cdef int _validate(self, list datagrams) except -1
    cpdef Py_ssize_t _send_from(self, list items, Py_ssize_t i) except -1
    cdef int _load(self, list items, Py_ssize_t i, Py_ssize_t n) except -1
    cdef int _log_faults(self, list items, Py_ssize_t i, unsigned long long fallbacks,
                         unsigned long long dropped) except -1
    cdef int _dest_slot(self, object addr) except -1
    cdef int _parse_dest(self, object addr, int slot) except -1
