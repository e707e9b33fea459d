# The batched send loop of both UDP extensions (the io socket and the edge's
# relay): queued datagrams → sendmmsg messages, a run of same-size datagrams to
# one destination as one UDP GSO message. The rules are in _mmsg.pyx.

from libc.stdint cimport uint64_t
from posix.uio cimport iovec

from .includes.system cimport ns_mmsghdr, socklen_t


cdef enum:
    GSO_MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS on older kernels (newer allow 128)
    GSO_MAX_BYTES = 65507  # 65535 minus IPv4 and UDP headers: one IP packet's payload


cdef struct Outbox:
    # The caller's datagrams, in send order: their bytes, and where each goes
    # (ignored on a connected socket). Equal pointers mean one destination.
    iovec *iov
    void **name
    socklen_t *namelen
    int capacity  # datagrams
    # The plan: up to `messages` messages, each one datagram or one GSO run.
    ns_mmsghdr *msgs
    int *first  # the message's first datagram
    int *count  # its datagrams (> 1: a GSO run)
    size_t *size  # its bytes
    char *ctrl  # its UDP_SEGMENT control message
    int messages
    bint gso  # cleared for good when the kernel refuses GSO
    # Why the last outbox_send stopped early (EAGAIN, or ECONNREFUSED on a
    # connected socket), 0 if it did not; the last drop and GSO refusal.
    int stop
    int drop_errno
    int drop_at  # the first datagram of the last message dropped
    int gso_errno
    uint64_t syscalls
    uint64_t sent  # datagrams the kernel took
    uint64_t bytes_sent
    uint64_t gso_sends  # messages that carried a GSO run
    uint64_t gso_fallbacks
    uint64_t dropped  # datagrams of messages the kernel refused (not EAGAIN)


cdef int outbox_open(Outbox *box, int messages, int capacity) except -1
cdef void outbox_close(Outbox *box) noexcept
cdef int outbox_send(Outbox *box, int fd, int n, bint connected) noexcept nogil
