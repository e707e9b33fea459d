# The relay's C state; the implementation and the rules are in _relay.pyx and flows.py.

from libc.stdint cimport uint32_t, uint64_t
from posix.uio cimport iovec

from netsched_client.io._mmsg cimport Outbox
from netsched_client.io.includes.system cimport ns_mmsghdr, sockaddr_in6, socklen_t

from ._linux cimport epoll_event
from ._quic_lb cimport ns_aes128


cdef struct Flow:
    sockaddr_in6 client  # the client's sockaddr (an IPv4 sockaddr_in fits too)
    socklen_t client_len
    uint32_t hash
    int fd  # the connected upstream socket; -1: the slot is free
    int backend
    int next  # the next flow in this hash bucket, or in the free list
    int older  # least-recently-active list
    int newer
    uint32_t gen  # bumped on close, so a stale epoll event cannot reach the slot's next flow
    double last_active
    double asked  # the first client datagram since the last reply; INFINITY: none
    double last_sent  # the client's last datagram
    bint answered  # a reply came (reported once)
    uint64_t seq  # the front batch that last queued datagrams for this flow
    int first  # that batch's datagrams for this flow, chained through UdpRelay._rnext
    int tail
    int source  # its slot in UdpRelay._sources
    int u_older  # never-answered flows, oldest first (the early-drop list)
    int u_newer


cdef struct Source:
    unsigned char addr[16]  # the client's address: 4 bytes (IPv4) or 16 (IPv6)
    int len
    uint32_t hash
    int count  # flows from this address
    int next  # the next source in this hash bucket, or in the free list


cdef enum:
    CODEPOINTS = 8  # config rotation: the first octet's 3 high bits


cdef class QuicLbRouter:
    cdef readonly object scheme  # the current netsched_client.proto.quic_lb.QuicLbScheme
    cdef readonly tuple schemes  # the current one first, then those still accepted
    cdef readonly bint native_aes  # False: decrypted through the scheme, in Python
    # per config rotation codepoint: whether a scheme has it, and that scheme's numbers
    cdef object _by_codepoint  # list: QuicLbScheme or None
    cdef bint _present[CODEPOINTS]
    cdef bint _keyed[CODEPOINTS]
    cdef int _cid_lengths[CODEPOINTS]
    cdef int _plaintext_lengths[CODEPOINTS]
    cdef int _rounds[CODEPOINTS]  # Feistel passes back to the server ID (3 or 4)
    cdef ns_aes128 _aes[CODEPOINTS]
    cdef int _cid_length  # the current scheme's: a short header of an unknown codepoint
    cdef int _server_id_length  # every scheme's
    cdef int _host_bytes
    cdef uint64_t _seed
    # the live members: host ID -> member slot, then each member's backends per worker
    cdef int *_host_slot  # 1 << (8 * _host_bytes) entries, -1: not a member
    cdef int _nmembers
    cdef uint32_t *_member_host
    cdef int *_member_first  # into _backends
    cdef int *_member_workers
    cdef int *_backends  # -1: the worker is down (routing.DOWN)
    # the members rendezvous picks from (one worker up at least), each one's workers up
    cdef int _nup
    cdef uint32_t *_up_host
    cdef int *_up_first  # into _up_backends
    cdef int *_up_workers
    cdef int *_up_backends

    cdef int route(self, const unsigned char *data, Py_ssize_t length) except -2
    cdef int _decrypt(self, const unsigned char *cid, unsigned char *server_id) except -1
    cdef int _rendezvous(self, const unsigned char *cid, int length) noexcept
    cdef void _free_members(self) noexcept


cdef class UdpRelay:
    cdef readonly object local_address
    cdef readonly int batch
    cdef readonly double idle_timeout
    cdef object _sock  # the front socket; its fd is _front_fd
    cdef object _choose
    cdef QuicLbRouter _router  # None: `choose` pins each client to a backend
    cdef object _report  # None, or flows.Report
    cdef double _reply_timeout  # 0: the silence rule is off
    cdef int _front_fd
    cdef int _flow_rcvbuf
    cdef int _epfd  # every flow's upstream socket, registered for EPOLLIN

    # the flow table: slots, hash buckets, free list, least-recently-active list
    cdef Flow *_flows
    cdef int *_buckets
    cdef uint32_t _mask
    cdef uint64_t _seed
    cdef int _max_flows
    cdef int _count
    cdef int _free
    cdef int _oldest
    cdef int _newest
    cdef int _last  # the flow the previous lookup found: clients send in runs
    cdef int _u_oldest  # the never-answered list
    cdef int _u_newest
    # flows per source address: slots (one per flow at most), hash buckets, free list
    cdef Source *_sources
    cdef int *_sbuckets
    cdef int _sfree
    cdef int _per_source  # 0: no cap
    cdef int _fd_limit  # flow sockets must get descriptor numbers below this

    cdef int _nbackends
    cdef sockaddr_in6 *_backends
    cdef socklen_t *_backend_len
    cdef uint64_t *_refused  # per backend
    cdef uint64_t *_silent  # per backend
    cdef double *_answered_at  # per backend: the last reply on any of its flows

    # from clients: one slot per datagram, then one sendmmsg per flow
    cdef ns_mmsghdr *_rmsgs
    cdef iovec *_riov
    cdef sockaddr_in6 *_rnames
    cdef char *_rbuf
    cdef int *_rnext
    cdef int *_active  # flows with datagrams in the current batch
    cdef int _nactive
    cdef uint64_t _seq
    # from backends: slots filled by several flows, then one sendmmsg to the clients
    cdef epoll_event *_events
    cdef ns_mmsghdr *_pmsgs
    cdef iovec *_piov
    cdef char *_pbuf
    # the send side of both directions (_mmsg.pyx): _nqueued datagrams queued so far
    cdef Outbox _out
    cdef int _nqueued

    cdef uint64_t _from_clients
    cdef uint64_t _to_backends
    cdef uint64_t _from_backends
    cdef uint64_t _to_clients
    cdef uint64_t _bytes_from_clients
    cdef uint64_t _bytes_to_backends
    cdef uint64_t _bytes_from_backends
    cdef uint64_t _bytes_to_clients
    cdef uint64_t _flows_opened
    cdef uint64_t _flows_expired
    cdef uint64_t _flows_failed
    cdef uint64_t _flows_silent
    cdef uint64_t _flows_ignored
    cdef uint64_t _flows_refused
    cdef uint64_t _flows_evicted
    cdef uint64_t _flows_retired
    cdef uint64_t _source_refused
    cdef uint64_t _fd_refused
    cdef uint64_t _backend_refused
    cdef uint64_t _no_backend
    cdef uint64_t _choose_errors
    cdef uint64_t _open_errors
    cdef uint64_t _report_errors
    cdef uint64_t _unrouted
    cdef uint64_t _send_errors  # what a stopped send left (the outbox counts its own drops)
    cdef uint64_t _recv_truncated
    cdef uint64_t _syscalls_recv

    cdef int _allocate(self, int batch, int max_flows, int nbackends) except -1
    cdef int _set_address(self, int index, object address) except -1
    cdef void _prepare(self) noexcept
    cdef int _check_open(self) except -1
    cdef int _recv(self, int fd, ns_mmsghdr *msgs, int count) noexcept
    cdef int _transmit(self, int fd, int n, bint connected, uint64_t *datagrams,
                       uint64_t *nbytes) except -1
    cdef int _flow_for(self, sockaddr_in6 *name, socklen_t length, int b, double now) except -2
    cdef int _find(self, sockaddr_in6 *name, socklen_t length, int b) noexcept
    cdef bint _same(self, int f, sockaddr_in6 *name, socklen_t length, int b) noexcept
    cdef bint _is_silent(self, int f, double now) noexcept
    cdef void _touch(self, int f, double now) noexcept
    cdef void _unlink(self, int f) noexcept
    cdef void _queue(self, int f, int i, double now) noexcept
    cdef int _send_upstream(self, int f, double now) except -1
    cdef int _send_replies(self) except -1
    cdef int _receive_replies(self, int f, int k, double now) except -1
    cdef int _open_flow(self, sockaddr_in6 *name, socklen_t length, int b, double now) except -2
    cdef int _choose_backend(self, sockaddr_in6 *name, socklen_t length) except -2
    cdef int _connect(self, int b, int f) noexcept
    cdef void _insert(self, int f, int fd, int b, sockaddr_in6 *name, socklen_t length,
                      double now) noexcept
    cdef bint _evict_idle(self, double now) noexcept
    cdef bint _evict_unanswered(self) noexcept
    cdef void _u_unlink(self, int f) noexcept
    cdef int _find_source(self, const unsigned char *addr, int length, uint32_t h) noexcept
    cdef void _add_source(self, int f, sockaddr_in6 *name) noexcept
    cdef void _drop_source(self, int f) noexcept
    cdef int _fail(self, int f, int err, double now) except -1
    cdef int _give_up(self, int f, double now) except -1
    cdef int _tell(self, int b, object outcome, double now) except -1
    cdef void _close_flow(self, int f) noexcept

