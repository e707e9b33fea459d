# cython: language_level=3
"""The UDP forwarder's data path in C: clients ⇄ front socket ⇄ per-flow sockets ⇄ backends.

`relay_front` is one recvmmsg on the front socket, a flow-table lookup per
datagram, then one sendmmsg per flow (that flow's datagrams, in arrival
order, straight from the receive slots: no copy). `relay_upstream` is one
epoll_wait(0) over every flow's socket, a recvmmsg per ready flow into a
shared set of slots, then one sendmmsg on the front socket addressed to the
clients. Python runs only when a client without a flow arrives (`choose`),
once per call, for stats, and once per flow event for `report` (a flow's
first reply, its backend refusing or going silent). The flow-table and
health rules are in flows.py.

Both directions send through netsched_client/io/_mmsg.pyx, the send loop of
the io package's socket: with `gso`, a run of same-size datagrams of one
flow (the last may be shorter) leaves as one UDP GSO message: the stack is
walked once per run and the datagrams are cut apart at the end (receivers
still see datagrams). EIO/EINVAL on a GSO message switches GSO off for good
and the run is resent datagram by datagram.

With a `QuicLbRouter` (the edge fleet's front) the backend is picked per
datagram, in C, from its QUIC destination CID (the rules in routing.py, the
AES-NI decryption in _quic_lb.pxd), and flows are keyed by client and
backend; `choose` is not called. Backend slots are filled and emptied at run
time (`set_backend`), closing the flows of a slot that changes.

Not carried: ECN marks (no per-datagram control messages are asked for);
UDP GRO stays off, so the kernel hands over datagrams one by one.

Other send errors drop datagrams and are counted (UDP; nothing is queued):
EAGAIN drops the rest of that send, ECONNREFUSED on a flow socket (the
backend answered ICMP port unreachable) drops the rest and closes the flow,
any other error drops the message it names.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_RawCalloc, PyMem_RawFree, PyMem_RawMalloc
from libc.errno cimport errno
from libc.math cimport INFINITY
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcmp, memcpy

from netsched_client.io._mmsg cimport outbox_close, outbox_open, outbox_send
from netsched_client.io.includes.system cimport (
    ECONNREFUSED,
    EINTR,
    MSG_TRUNC,
    NS_WOULD_BLOCK,
    msghdr,
    ns_recvmmsg,
    sockaddr,
)

from ._quic_lb cimport (
    ns_aes128_setup,
    ns_aesni_available,
    ns_cid_hash,
    ns_host_score,
    ns_quic_lb_open,
)
from ._linux cimport (
    EPOLL_CLOEXEC,
    EPOLL_CTL_ADD,
    EPOLLIN,
    SO_RCVBUF,
    SOL_SOCKET,
    close,
    connect,
    epoll_create1,
    epoll_ctl,
    epoll_wait,
    ns_flow_socket,
    setsockopt,
)

import errno as _errno
import os

from netsched_client.io._common import enable_offloads

from .flows import (
    DEFAULT_BATCH,
    DEFAULT_BUFFER,
    DEFAULT_IDLE_TIMEOUT,
    FLOW_RCVBUF,
    FlowOutcome,
    ForwarderStats,
    address_of,
    backend_index,
    check_options,
    open_front,
    sockaddr_bytes,
    warn_once,
)
from .routing import MAX_HOST_ID_BYTES, check_routes, check_schemes


cdef extern from *:
    """
    #define NS_HASH_MULTIPLIER 0x9E3779B97F4A7C15ULL  /* 2^64 / golden ratio */
    """
    uint64_t NS_HASH_MULTIPLIER


cdef enum:
    SLOT = 65536  # the largest UDP payload fits
    NO_FLOW = -1
    FD_RESERVED = -(1 << 20)  # _connect: the socket's descriptor fell in the reserve

cdef object ANSWERED = FlowOutcome.ANSWERED
cdef object REFUSED = FlowOutcome.REFUSED
cdef object SILENT = FlowOutcome.SILENT
cdef object IGNORED = FlowOutcome.IGNORED


cdef inline uint32_t _hash(const sockaddr_in6 *name, socklen_t length, uint64_t seed) noexcept:
    """A seeded multiplicative hash of the sockaddr's 32-bit words (clients pick their ports)."""
    cdef const unsigned char *p = <const unsigned char *>name
    cdef uint64_t h = seed
    cdef uint32_t word
    cdef socklen_t i = 0
    while i + 4 <= length:
        memcpy(&word, p + i, 4)
        h = (h ^ word) * NS_HASH_MULTIPLIER
        h ^= h >> 29
        i += 4
    return <uint32_t>(h ^ (h >> 32))


cdef inline uint64_t _key_seed(uint64_t seed, int b) noexcept:
    """The flow hash's seed for a flow keyed by client and backend b (b < 0: client alone)."""
    return seed + <uint64_t>(b + 1)


cdef inline int _source_addr(const sockaddr_in6 *name, socklen_t length,
                             unsigned char *out) noexcept:
    """Copy the client's IP address (no port) to out; return its length, 4 or 16."""
    cdef const unsigned char *p = <const unsigned char *>name
    if length >= sizeof(sockaddr_in6):
        memcpy(out, p + 8, 16)  # sin6_addr
        return 16
    memcpy(out, p + 4, 4)  # sin_addr
    return 4


@cython.final
cdef class UdpRelay:
    """A UDP load balancer's data path (see the module doc and flows.py)."""

    def __cinit__(self):
        self._front_fd = -1  # closed until __init__ has opened everything
        self._epfd = -1

    def __init__(self, listen, backends, choose, *, max_flows=None,
                 idle_timeout=DEFAULT_IDLE_TIMEOUT, batch=DEFAULT_BATCH, rcvbuf=DEFAULT_BUFFER,
                 sndbuf=DEFAULT_BUFFER, gso=True, reply_timeout=None,
                 report=None, max_flows_per_source=None, fd_reserve=None,
                 QuicLbRouter router=None, max_backends=None):
        options = check_options(listen, backends, max_flows=max_flows,
                                idle_timeout=idle_timeout, batch=batch, rcvbuf=rcvbuf,
                                sndbuf=sndbuf, reply_timeout=reply_timeout, choose=choose,
                                report=report, max_flows_per_source=max_flows_per_source,
                                fd_reserve=fd_reserve, routed=router is not None,
                                max_backends=max_backends)
        if self._flows != NULL:
            raise RuntimeError("UdpRelay is already initialised")
        self._allocate(options.batch, options.max_flows, options.max_backends)
        for b, backend in enumerate(options.backends):
            self._set_address(b, backend)
        self.batch = options.batch
        self.idle_timeout = options.idle_timeout
        self._choose = choose
        self._router = router
        self._report = report
        self._reply_timeout = options.reply_timeout or 0.0
        self._per_source = options.max_flows_per_source or 0
        self._fd_limit = options.fd_limit
        self._flow_rcvbuf = FLOW_RCVBUF
        self._seed = int.from_bytes(os.urandom(8), "little")
        self._prepare()
        self._epfd = epoll_create1(EPOLL_CLOEXEC)
        if self._epfd < 0:
            raise OSError(errno, os.strerror(errno))
        sock = open_front(options)
        self._out.gso = enable_offloads(sock, bool(gso), False)[0]  # probes the kernel
        self._sock = sock
        self._front_fd = sock.fileno()
        self.local_address = sock.getsockname()

    def __dealloc__(self):
        cdef int f
        if self._flows != NULL:
            for f in range(self._max_flows):
                if self._flows[f].fd >= 0:
                    close(self._flows[f].fd)
        if self._epfd >= 0:
            close(self._epfd)
        PyMem_RawFree(self._flows)
        PyMem_RawFree(self._buckets)
        PyMem_RawFree(self._sources)
        PyMem_RawFree(self._sbuckets)
        PyMem_RawFree(self._backends)
        PyMem_RawFree(self._backend_len)
        PyMem_RawFree(self._refused)
        PyMem_RawFree(self._silent)
        PyMem_RawFree(self._answered_at)
        PyMem_RawFree(self._rmsgs)
        PyMem_RawFree(self._riov)
        PyMem_RawFree(self._rnames)
        PyMem_RawFree(self._rbuf)
        PyMem_RawFree(self._rnext)
        PyMem_RawFree(self._active)
        PyMem_RawFree(self._events)
        PyMem_RawFree(self._pmsgs)
        PyMem_RawFree(self._piov)
        PyMem_RawFree(self._pbuf)
        outbox_close(&self._out)

    cdef int _allocate(self, int batch, int max_flows, int nbackends) except -1:
        cdef size_t b = batch
        cdef uint32_t buckets = 1
        cdef int i
        while buckets < <uint32_t>max_flows:  # a load factor of at most 1
            buckets <<= 1
        self._mask = buckets - 1
        self._max_flows = max_flows
        self._nbackends = nbackends
        self._flows = <Flow *>PyMem_RawCalloc(max_flows, sizeof(Flow))
        self._buckets = <int *>PyMem_RawMalloc(buckets * sizeof(int))
        self._sources = <Source *>PyMem_RawCalloc(max_flows, sizeof(Source))
        self._sbuckets = <int *>PyMem_RawMalloc(buckets * sizeof(int))
        self._backends = <sockaddr_in6 *>PyMem_RawCalloc(nbackends, sizeof(sockaddr_in6))
        self._backend_len = <socklen_t *>PyMem_RawCalloc(nbackends, sizeof(socklen_t))
        self._refused = <uint64_t *>PyMem_RawCalloc(nbackends, sizeof(uint64_t))
        self._silent = <uint64_t *>PyMem_RawCalloc(nbackends, sizeof(uint64_t))
        self._answered_at = <double *>PyMem_RawCalloc(nbackends, sizeof(double))
        self._rmsgs = <ns_mmsghdr *>PyMem_RawCalloc(b, sizeof(ns_mmsghdr))
        self._riov = <iovec *>PyMem_RawCalloc(b, sizeof(iovec))
        self._rnames = <sockaddr_in6 *>PyMem_RawCalloc(b, sizeof(sockaddr_in6))
        self._rbuf = <char *>PyMem_RawMalloc(b * SLOT)  # pages fault in as used
        self._rnext = <int *>PyMem_RawCalloc(b, sizeof(int))
        self._active = <int *>PyMem_RawCalloc(b, sizeof(int))
        self._events = <epoll_event *>PyMem_RawCalloc(b, sizeof(epoll_event))
        self._pmsgs = <ns_mmsghdr *>PyMem_RawCalloc(b, sizeof(ns_mmsghdr))
        self._piov = <iovec *>PyMem_RawCalloc(b, sizeof(iovec))
        self._pbuf = <char *>PyMem_RawMalloc(b * SLOT)
        if (self._flows == NULL or self._buckets == NULL or self._backends == NULL
                or self._backend_len == NULL or self._refused == NULL or self._silent == NULL
                or self._answered_at == NULL or self._sources == NULL or self._sbuckets == NULL
                or self._rmsgs == NULL or self._riov == NULL or self._rnames == NULL
                or self._rbuf == NULL or self._rnext == NULL or self._active == NULL
                or self._events == NULL or self._pmsgs == NULL or self._piov == NULL
                or self._pbuf == NULL):
            raise MemoryError("UdpRelay: cannot allocate the flow table and batch buffers")
        outbox_open(&self._out, batch, batch)  # a batch is at most `batch` datagrams either way
        for i in range(nbackends):
            self._answered_at[i] = -INFINITY
        return 0

    cdef void _prepare(self) noexcept:
        """Empty table (every slot on the free list); receive slots wired to their buffers."""
        cdef int i
        cdef msghdr *hdr
        for i in range(self._mask + 1):
            self._buckets[i] = NO_FLOW
            self._sbuckets[i] = NO_FLOW
        for i in range(self._max_flows):
            self._flows[i].fd = -1
            self._flows[i].next = i + 1 if i + 1 < self._max_flows else NO_FLOW
            self._sources[i].next = i + 1 if i + 1 < self._max_flows else NO_FLOW
        self._free = self._sfree = 0
        self._oldest = self._newest = self._last = NO_FLOW
        self._u_oldest = self._u_newest = NO_FLOW
        for i in range(self.batch):
            self._riov[i].iov_base = self._rbuf + <size_t>i * SLOT
            self._riov[i].iov_len = SLOT
            hdr = &self._rmsgs[i].msg_hdr
            hdr.msg_iov = &self._riov[i]
            hdr.msg_iovlen = 1
            hdr.msg_name = &self._rnames[i]
            self._piov[i].iov_base = self._pbuf + <size_t>i * SLOT
            self._piov[i].iov_len = SLOT
            hdr = &self._pmsgs[i].msg_hdr  # connected sockets: no source address needed
            hdr.msg_iov = &self._piov[i]
            hdr.msg_iovlen = 1

    cdef int _check_open(self) except -1:
        if self._front_fd < 0:
            raise OSError(_errno.EBADF, "UdpRelay is closed")
        return 0

    # -- the Python surface --------------------------------------------------

    def fileno(self):
        """The front socket: readable when clients have sent datagrams."""
        return self._front_fd

    def upstream_fileno(self):
        """The epoll descriptor over every flow socket: readable when backends have replied."""
        return self._epfd

    @property
    def stats(self):
        return ForwarderStats(
            from_clients=self._from_clients,
            to_backends=self._to_backends,
            from_backends=self._from_backends,
            to_clients=self._to_clients,
            bytes_from_clients=self._bytes_from_clients,
            bytes_to_backends=self._bytes_to_backends,
            bytes_from_backends=self._bytes_from_backends,
            bytes_to_clients=self._bytes_to_clients,
            active_flows=self._count,
            flows_opened=self._flows_opened,
            flows_expired=self._flows_expired,
            flows_failed=self._flows_failed,
            flows_silent=self._flows_silent,
            flows_ignored=self._flows_ignored,
            flows_evicted=self._flows_evicted,
            flows_retired=self._flows_retired,
            flows_refused=self._flows_refused,
            source_refused=self._source_refused,
            fd_refused=self._fd_refused,
            backend_refused=self._backend_refused,
            no_backend=self._no_backend,
            choose_errors=self._choose_errors,
            open_errors=self._open_errors,
            report_errors=self._report_errors,
            unrouted=self._unrouted,
            send_errors=self._send_errors + self._out.dropped,
            gso_sends=self._out.gso_sends,
            gso_fallbacks=self._out.gso_fallbacks,
            recv_truncated=self._recv_truncated,
            syscalls_recv=self._syscalls_recv,
            syscalls_send=self._out.syscalls,
            refused_by_backend=tuple(self._refused[b] for b in range(self._nbackends)),
            silent_by_backend=tuple(self._silent[b] for b in range(self._nbackends)),
        )

    def close(self):
        """Close every flow, the epoll descriptor and the front socket (idempotent)."""
        cdef int f
        if self._front_fd < 0:
            return
        for f in range(self._max_flows):
            if self._flows[f].fd >= 0:
                self._close_flow(f)
        close(self._epfd)
        self._epfd = -1
        self._front_fd = -1
        self._sock.close()

    def expire(self, double now):
        """Close the flows idle at `now`; return how many."""
        cdef int closed = 0
        while self._evict_idle(now):
            closed += 1
        return closed

    def set_backend(self, int index, address):
        """Point backend slot `index` at `address` (None: empty); return the flows closed.

        Its flows go first (`flows_retired`): their sockets are connected to the old
        address, and a client's next datagram opens a flow to the new one.
        """
        cdef int f
        cdef int closed = 0
        self._check_open()
        if not 0 <= index < self._nbackends:
            raise IndexError(f"backend index {index} is not 0..{self._nbackends - 1}")
        for f in range(self._max_flows):
            if self._flows[f].fd >= 0 and self._flows[f].backend == index:
                self._close_flow(f)
                closed += 1
        self._flows_retired += closed
        if address is None:
            self._backend_len[index] = 0
        else:
            self._set_address(index, address)
        return closed

    cdef int _set_address(self, int index, object address) except -1:
        raw = sockaddr_bytes(tuple(address))
        memcpy(&self._backends[index], PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw))
        self._backend_len[index] = PyBytes_GET_SIZE(raw)
        return 0

    # -- clients → backends --------------------------------------------------

    def relay_front(self, double now):
        """One recvmmsg from clients, relayed per flow; return the datagrams read (0: none)."""
        cdef int i, n, f
        cdef int b = -1  # unrouted: the client's flow, whichever backend it has
        cdef msghdr *hdr
        self._check_open()
        for i in range(self.batch):  # the kernel shrank these to what it wrote last time
            self._rmsgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in6)
        n = self._recv(self._front_fd, self._rmsgs, self.batch)
        if n < 0:
            raise OSError(-n, os.strerror(-n))
        self._from_clients += n
        self._seq += 1
        self._nactive = 0
        for i in range(n):
            hdr = &self._rmsgs[i].msg_hdr
            self._bytes_from_clients += self._rmsgs[i].msg_len
            if hdr.msg_flags & MSG_TRUNC:
                self._recv_truncated += 1
                continue
            if self._router is not None:
                b = self._router.route(<const unsigned char *>self._riov[i].iov_base,
                                       self._rmsgs[i].msg_len)
                if b < 0 or b >= self._nbackends or self._backend_len[b] == 0:
                    self._no_backend += 1
                    self._unrouted += 1
                    continue
            f = self._flow_for(<sockaddr_in6 *>hdr.msg_name, hdr.msg_namelen, b, now)
            if self._front_fd < 0:
                return n  # `choose` or `report` closed the relay: its flows are gone
            if f == NO_FLOW:
                self._unrouted += 1
                continue
            self._queue(f, i, now)
        for i in range(self._nactive):
            self._send_upstream(self._active[i], now)
            if self._front_fd < 0:
                return n
        return n

    cdef int _flow_for(self, sockaddr_in6 *name, socklen_t length, int b, double now) except -2:
        """The client's flow (to backend b when routed), refreshed at `now`, or a new one;
        NO_FLOW if none could be opened.

        A flow whose backend went silent is closed and reported first, so the
        client is pinned again (flows.py).
        """
        cdef int f = self._find(name, length, b)
        if f != NO_FLOW and self._is_silent(f, now):
            self._give_up(f, now)
            if self._front_fd < 0:
                return NO_FLOW
            f = NO_FLOW
        if f == NO_FLOW:
            return self._open_flow(name, length, b, now)
        self._touch(f, now)
        return f

    cdef void _queue(self, int f, int i, double now) noexcept:
        """Append datagram i to flow f's chain for this batch; it now awaits a reply."""
        cdef Flow *flow = &self._flows[f]
        self._rnext[i] = NO_FLOW
        if flow.seq != self._seq:
            flow.seq = self._seq
            flow.first = i
            self._active[self._nactive] = f
            self._nactive += 1
        else:
            self._rnext[flow.tail] = i
        flow.tail = i
        if flow.asked == INFINITY or now - flow.last_sent > self._reply_timeout:
            flow.asked = now  # a pause longer than reply_timeout starts the count again
        flow.last_sent = now

    cdef int _send_upstream(self, int f, double now) except -1:
        """Send flow f's datagrams of this batch, in order, from their receive slots."""
        cdef Flow *flow = &self._flows[f]
        cdef int i = flow.first
        cdef int n = 0
        while i != NO_FLOW:
            self._out.iov[n].iov_base = self._riov[i].iov_base
            self._out.iov[n].iov_len = self._rmsgs[i].msg_len
            n += 1
            i = self._rnext[i]
        self._transmit(flow.fd, n, True, &self._to_backends, &self._bytes_to_backends)
        if self._out.stop == ECONNREFUSED:
            self._fail(f, ECONNREFUSED, now)
        return 0

    # -- backends → clients --------------------------------------------------

    def relay_upstream(self, double now):
        """Replies from every ready flow, relayed to their clients; return how many (0: none)."""
        cdef int e, n, f
        cdef int k = 0  # receive slots used
        cdef uint64_t data
        cdef uint64_t before = self._from_backends
        self._check_open()
        n = epoll_wait(self._epfd, self._events, self.batch, 0)
        if n < 0:
            if errno == EINTR:
                return 0
            raise OSError(errno, os.strerror(errno))
        self._nqueued = 0
        for e in range(n):
            data = self._events[e].data.u64
            f = <int><uint32_t>data
            if self._flows[f].fd < 0 or self._flows[f].gen != <uint32_t>(data >> 32):
                continue  # closed since the event was queued
            if k == self.batch:
                self._send_replies()
                k = 0
            k += self._receive_replies(f, k, now)
            if self._front_fd < 0:
                return self._from_backends - before  # `report` closed the relay
        if self._nqueued:
            self._send_replies()
        return self._from_backends - before

    cdef int _send_replies(self) except -1:
        self._transmit(self._front_fd, self._nqueued, False, &self._to_clients,
                       &self._bytes_to_clients)
        self._nqueued = 0
        return 0

    cdef int _receive_replies(self, int f, int k, double now) except -1:
        """recvmmsg flow f's replies into slots k.. and queue them for its client.

        Return how many slots were filled (truncated replies are counted, not
        queued); a receive error closes the flow.
        """
        cdef Flow *flow = &self._flows[f]
        cdef int got = self._recv(flow.fd, &self._pmsgs[k], self.batch - k)
        cdef int j
        cdef int q = self._nqueued
        if got < 0:
            self._fail(f, -got, now)
            return 0
        if got == 0:
            return 0
        self._from_backends += got
        for j in range(k, k + got):
            self._bytes_from_backends += self._pmsgs[j].msg_len
            if self._pmsgs[j].msg_hdr.msg_flags & MSG_TRUNC:
                self._recv_truncated += 1
                continue
            self._out.iov[q].iov_base = self._piov[j].iov_base
            self._out.iov[q].iov_len = self._pmsgs[j].msg_len
            self._out.name[q] = &flow.client
            self._out.namelen[q] = flow.client_len
            q += 1
        self._nqueued = q
        self._touch(f, now)
        flow.asked = INFINITY
        self._answered_at[flow.backend] = now
        if not flow.answered:
            flow.answered = True
            self._u_unlink(f)
            self._tell(flow.backend, ANSWERED, now)
        return got

    # -- syscalls --------------------------------------------------------------

    cdef int _recv(self, int fd, ns_mmsghdr *msgs, int count) noexcept:
        """recvmmsg, EINTR retried: the datagrams read, 0 if none are waiting, -errno."""
        cdef int n, err
        while True:
            n = ns_recvmmsg(fd, msgs, count)
            self._syscalls_recv += 1
            if n >= 0:
                return n
            err = errno
            if err == EINTR:
                continue
            if NS_WOULD_BLOCK(err):
                return 0
            return -err

    cdef int _transmit(self, int fd, int n, bint connected, uint64_t *datagrams,
                       uint64_t *nbytes) except -1:
        """Send the n datagrams queued in the outbox; add what the kernel took to the counters.

        UDP: what a stopped send (EAGAIN, ECONNREFUSED) leaves is dropped and
        counted, not queued.
        """
        cdef uint64_t sent = self._out.sent
        cdef uint64_t sent_bytes = self._out.bytes_sent
        cdef uint64_t fallbacks = self._out.gso_fallbacks
        self._send_errors += n - outbox_send(&self._out, fd, n, connected)
        datagrams[0] += self._out.sent - sent
        nbytes[0] += self._out.bytes_sent - sent_bytes
        if self._out.gso_fallbacks != fallbacks:
            warn_once("gso", "UDP forwarder: GSO refused by the kernel (%s): sending datagrams "
                      "one by one", os.strerror(self._out.gso_errno))
        return 0

    # -- the flow table ----------------------------------------------------------

    cdef int _find(self, sockaddr_in6 *name, socklen_t length, int b) noexcept:
        """The client's flow (to backend b; b < 0: to any); NO_FLOW if it has none."""
        cdef int f = self._last
        if f == NO_FLOW or not self._same(f, name, length, b):
            f = self._buckets[_hash(name, length, _key_seed(self._seed, b)) & self._mask]
            while f != NO_FLOW and not self._same(f, name, length, b):
                f = self._flows[f].next
            if f == NO_FLOW:
                return NO_FLOW
            self._last = f
        return f

    cdef bint _same(self, int f, sockaddr_in6 *name, socklen_t length, int b) noexcept:
        return (self._flows[f].client_len == length
                and (b < 0 or self._flows[f].backend == b)
                and memcmp(&self._flows[f].client, name, length) == 0)

    cdef bint _is_silent(self, int f, double now) noexcept:
        """Whether a client datagram at `now` finds flow f's backend silent (flows.py)."""
        cdef Flow *flow = &self._flows[f]
        return (self._reply_timeout > 0 and now - flow.last_sent <= self._reply_timeout
                and now - flow.asked >= self._reply_timeout)

    cdef void _touch(self, int f, double now) noexcept:
        """Mark flow f active at `now`: it moves to the newest end of the list."""
        self._flows[f].last_active = now
        if self._newest == f:
            return
        self._unlink(f)
        self._flows[f].older = self._newest
        self._flows[f].newer = NO_FLOW
        if self._newest != NO_FLOW:
            self._flows[self._newest].newer = f
        self._newest = f
        if self._oldest == NO_FLOW:
            self._oldest = f

    cdef void _unlink(self, int f) noexcept:
        """Take flow f out of the least-recently-active list (a no-op if it is not in it)."""
        cdef Flow *flow = &self._flows[f]
        if flow.older != NO_FLOW:
            self._flows[flow.older].newer = flow.newer
        elif self._oldest == f:
            self._oldest = flow.newer
        if flow.newer != NO_FLOW:
            self._flows[flow.newer].older = flow.older
        elif self._newest == f:
            self._newest = flow.older
        flow.older = flow.newer = NO_FLOW

    cdef int _open_flow(self, sockaddr_in6 *name, socklen_t length, int b, double now) except -2:
        """A new flow for this client (to backend b, else `choose`'s), or NO_FLOW (counted);
        `choose` is the only Python per flow."""
        cdef int f, fd, s, choice
        cdef unsigned char addr[16]
        cdef int alen
        if self._per_source > 0:
            alen = _source_addr(name, length, addr)
            s = self._find_source(addr, alen, _hash(<const sockaddr_in6 *>addr, alen, self._seed))
            if s != NO_FLOW and self._sources[s].count >= self._per_source:
                self._source_refused += 1
                return NO_FLOW
        if (self._count >= self._max_flows and not self._evict_idle(now)
                and not self._evict_unanswered()):
            self._flows_refused += 1
            return NO_FLOW
        choice = b if b >= 0 else self._choose_backend(name, length)
        if choice == NO_FLOW:
            return NO_FLOW
        if self._front_fd < 0:
            return NO_FLOW  # `choose` closed the relay
        f = self._free
        fd = self._connect(choice, f)
        if fd == FD_RESERVED:
            self._fd_refused += 1
            warn_once("fds", "UDP forwarder: descriptors are short, new flows are refused (%s)",
                      address_of(PyBytes_FromStringAndSize(<char *>name, length)))
            return NO_FLOW
        if fd < 0:
            self._open_errors += 1
            warn_once("open", "UDP forwarder: cannot open a socket to backend %d: %s",
                      choice, os.strerror(-fd))
            return NO_FLOW
        self._insert(f, fd, choice, name, length, now)
        return f

    cdef int _choose_backend(self, sockaddr_in6 *name, socklen_t length) except -2:
        """`choose`'s backend for this client; NO_FLOW (counted) for none or a failure."""
        client = address_of(PyBytes_FromStringAndSize(<char *>name, length))
        try:
            choice = backend_index(self._choose(client), self._nbackends)
        except Exception as exc:
            self._choose_errors += 1
            warn_once("choose", "UDP forwarder: choose(%r) failed, datagram dropped: %r",
                      client, exc)
            return NO_FLOW
        if choice is None or self._backend_len[choice] == 0:
            self._no_backend += 1
            return NO_FLOW
        return choice

    cdef int _connect(self, int b, int f) noexcept:
        """A socket connected to backend b, registered for slot f; -errno on failure."""
        cdef int size = self._flow_rcvbuf
        cdef int err
        cdef epoll_event event
        cdef int fd = ns_flow_socket((<sockaddr *>&self._backends[b]).sa_family)
        if fd < 0:
            return -errno
        if fd >= self._fd_limit:  # the lowest free number: the reserve is being eaten into
            close(fd)
            return FD_RESERVED
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size))  # best effort
        event.events = EPOLLIN
        event.data.u64 = (<uint64_t>self._flows[f].gen << 32) | <uint32_t>f
        if (connect(fd, <sockaddr *>&self._backends[b], self._backend_len[b]) < 0
                or epoll_ctl(self._epfd, EPOLL_CTL_ADD, fd, &event) < 0):
            err = errno
            close(fd)
            return -err
        return fd

    cdef void _insert(self, int f, int fd, int b, sockaddr_in6 *name, socklen_t length,
                      double now) noexcept:
        cdef Flow *flow = &self._flows[f]
        self._free = flow.next
        memcpy(&flow.client, name, length)
        flow.client_len = length
        # Routed flows are keyed by client and backend, the others by client alone.
        flow.hash = _hash(name, length, _key_seed(self._seed, b if self._router is not None else -1))
        flow.fd = fd
        flow.backend = b
        flow.seq = 0
        flow.asked = INFINITY
        flow.last_sent = now
        flow.answered = False
        flow.older = flow.newer = NO_FLOW
        flow.next = self._buckets[flow.hash & self._mask]
        self._buckets[flow.hash & self._mask] = f
        self._touch(f, now)
        flow.u_older = self._u_newest  # the newest never-answered flow
        flow.u_newer = NO_FLOW
        if self._u_newest != NO_FLOW:
            self._flows[self._u_newest].u_newer = f
        self._u_newest = f
        if self._u_oldest == NO_FLOW:
            self._u_oldest = f
        self._add_source(f, name)
        self._count += 1
        self._flows_opened += 1
        self._last = f

    cdef bint _evict_idle(self, double now) noexcept:
        """Close the least recently active flow if it is idle at `now`; True if one was."""
        cdef int f = self._oldest
        if f == NO_FLOW or now - self._flows[f].last_active < self.idle_timeout:
            return False
        self._close_flow(f)
        self._flows_expired += 1
        return True

    cdef bint _evict_unanswered(self) noexcept:
        """Close the oldest never-answered flow without datagrams in this front batch."""
        cdef int f = self._u_oldest
        while f != NO_FLOW and self._flows[f].seq == self._seq:
            f = self._flows[f].u_newer
        if f == NO_FLOW:
            return False
        self._close_flow(f)
        self._flows_evicted += 1
        return True

    cdef void _u_unlink(self, int f) noexcept:
        """Take flow f out of the never-answered list (a no-op if it is not in it)."""
        cdef Flow *flow = &self._flows[f]
        if flow.u_older != NO_FLOW:
            self._flows[flow.u_older].u_newer = flow.u_newer
        elif self._u_oldest == f:
            self._u_oldest = flow.u_newer
        if flow.u_newer != NO_FLOW:
            self._flows[flow.u_newer].u_older = flow.u_older
        elif self._u_newest == f:
            self._u_newest = flow.u_older
        flow.u_older = flow.u_newer = NO_FLOW

    cdef int _find_source(self, const unsigned char *addr, int length, uint32_t h) noexcept:
        """The slot counting flows from this address; NO_FLOW if it has none."""
        cdef int s = self._sbuckets[h & self._mask]
        while s != NO_FLOW:
            if self._sources[s].len == length and memcmp(self._sources[s].addr, addr, length) == 0:
                return s
            s = self._sources[s].next
        return NO_FLOW

    cdef void _add_source(self, int f, sockaddr_in6 *name) noexcept:
        """Count new flow f for its client's address (a free slot exists: sources <= flows)."""
        cdef unsigned char addr[16]
        cdef int length = _source_addr(name, self._flows[f].client_len, addr)
        cdef uint32_t h = _hash(<const sockaddr_in6 *>addr, length, self._seed)
        cdef int s = self._find_source(addr, length, h)
        if s == NO_FLOW:
            s = self._sfree
            self._sfree = self._sources[s].next
            memcpy(self._sources[s].addr, addr, length)
            self._sources[s].len = length
            self._sources[s].hash = h
            self._sources[s].count = 0
            self._sources[s].next = self._sbuckets[h & self._mask]
            self._sbuckets[h & self._mask] = s
        self._sources[s].count += 1
        self._flows[f].source = s

    cdef void _drop_source(self, int f) noexcept:
        """Flow f is closing: uncount it, freeing its address's slot at zero."""
        cdef int s = self._flows[f].source
        cdef Source *src = &self._sources[s]
        cdef int *link
        src.count -= 1
        if src.count > 0:
            return
        link = &self._sbuckets[src.hash & self._mask]
        while link[0] != s and link[0] != NO_FLOW:
            link = &self._sources[link[0]].next
        link[0] = src.next
        src.next = self._sfree
        self._sfree = s

    cdef int _fail(self, int f, int err, double now) except -1:
        """Close flow f after a socket error; ECONNREFUSED means its backend is down."""
        cdef int b = self._flows[f].backend
        self._flows_failed += 1
        self._close_flow(f)
        if err == ECONNREFUSED:
            self._backend_refused += 1
            self._refused[b] += 1
            self._tell(b, REFUSED, now)
        return 0

    cdef int _give_up(self, int f, double now) except -1:
        """Close flow f: its backend left the client unanswered for reply_timeout.

        IGNORED, not SILENT, when the backend answered another flow meanwhile (flows.py).
        """
        cdef int b = self._flows[f].backend
        cdef bint alive = self._answered_at[b] >= self._flows[f].asked
        self._close_flow(f)
        if alive:
            self._flows_ignored += 1
            self._tell(b, IGNORED, now)
            return 0
        self._flows_silent += 1
        self._silent[b] += 1
        self._tell(b, SILENT, now)
        return 0

    cdef int _tell(self, int b, object outcome, double now) except -1:
        """Report a flow's outcome for backend b (flows.py); a failing `report` is counted."""
        if self._report is None:
            return 0
        try:
            self._report(b, outcome, now)
        except Exception as exc:
            self._report_errors += 1
            warn_once("report", "UDP forwarder: report(%d, %s) failed: %r", b, outcome.value,
                      exc)
        return 0

    cdef void _close_flow(self, int f) noexcept:
        cdef Flow *flow = &self._flows[f]
        cdef int *link = &self._buckets[flow.hash & self._mask]
        while link[0] != f and link[0] != NO_FLOW:
            link = &self._flows[link[0]].next
        link[0] = flow.next
        self._unlink(f)
        self._u_unlink(f)
        self._drop_source(f)
        close(flow.fd)  # which also takes it out of the epoll set
        flow.fd = -1
        flow.gen += 1
        flow.next = self._free
        self._free = f
        self._count -= 1
        if self._last == f:
            self._last = NO_FLOW


cdef enum:
    MAX_CID = 20  # QUIC v1
    LONG_DCID_AT = 6  # flags(1) version(4) length(1)
    MAX_SERVER_ID = 19


@cython.final
cdef class QuicLbRouter:
    """A QUIC datagram's backend index by its DCID, in C (the rules in routing.py)."""

    def __cinit__(self):
        self._nmembers = self._nup = 0

    def __init__(self, scheme, hash_seed, *, native_aes=True):
        self._host_bytes = scheme.server_id_length - 1
        self._server_id_length = scheme.server_id_length
        self._seed = hash_seed & 0xFFFFFFFFFFFFFFFF
        self.native_aes = bool(native_aes) and ns_aesni_available() != 0
        self.set_schemes((scheme,))
        PyMem_RawFree(self._host_slot)
        self._host_slot = NULL
        if 1 <= self._host_bytes <= MAX_HOST_ID_BYTES:  # else it only decrypts (no routes)
            self._host_slot = <int *>PyMem_RawMalloc((<size_t>1 << (8 * self._host_bytes))
                                                     * sizeof(int))
            if self._host_slot == NULL:
                raise MemoryError("QuicLbRouter: cannot allocate the host table")
        self.set_routes(())

    def __dealloc__(self):
        PyMem_RawFree(self._host_slot)
        self._free_members()

    cdef void _free_members(self) noexcept:
        PyMem_RawFree(self._member_host)
        PyMem_RawFree(self._member_first)
        PyMem_RawFree(self._member_workers)
        PyMem_RawFree(self._backends)
        PyMem_RawFree(self._up_host)
        PyMem_RawFree(self._up_first)
        PyMem_RawFree(self._up_workers)
        PyMem_RawFree(self._up_backends)
        self._member_host = self._up_host = NULL
        self._member_first = self._member_workers = self._backends = NULL
        self._up_first = self._up_workers = self._up_backends = NULL
        self._nmembers = self._nup = 0

    def set_schemes(self, schemes):
        """The configurations accepted (routing.check_schemes): the current one first."""
        cdef int cp
        schemes = check_schemes(schemes, self._server_id_length)
        by_codepoint = [None] * CODEPOINTS
        for scheme in schemes:
            by_codepoint[scheme.config_rotation] = scheme
        for cp in range(CODEPOINTS):
            scheme = by_codepoint[cp]
            self._present[cp] = scheme is not None
            if scheme is None:
                continue
            self._keyed[cp] = scheme.key is not None
            self._cid_lengths[cp] = scheme.cid_length
            self._plaintext_lengths[cp] = scheme.plaintext_length
            self._rounds[cp] = 3 if scheme.server_id_length <= scheme.plaintext_length // 2 else 4
            if self._keyed[cp] and self.native_aes:
                ns_aes128_setup(&self._aes[cp], <const unsigned char *>PyBytes_AS_STRING(scheme.key))
        self._by_codepoint = by_codepoint
        self.schemes = schemes
        self.scheme = schemes[0]
        self._cid_length = self.scheme.cid_length

    def set_routes(self, routes):
        """Replace the live members: a sequence of routing.HostRoute, one per host ID."""
        cdef int m, w, k
        routes = check_routes(self.scheme, routes)
        self._free_members()
        workers = sum(len(route.backends) for route in routes)
        self._member_host = <uint32_t *>PyMem_RawCalloc(len(routes) + 1, sizeof(uint32_t))
        self._member_first = <int *>PyMem_RawCalloc(len(routes) + 1, sizeof(int))
        self._member_workers = <int *>PyMem_RawCalloc(len(routes) + 1, sizeof(int))
        self._backends = <int *>PyMem_RawCalloc(workers + 1, sizeof(int))
        self._up_host = <uint32_t *>PyMem_RawCalloc(len(routes) + 1, sizeof(uint32_t))
        self._up_first = <int *>PyMem_RawCalloc(len(routes) + 1, sizeof(int))
        self._up_workers = <int *>PyMem_RawCalloc(len(routes) + 1, sizeof(int))
        self._up_backends = <int *>PyMem_RawCalloc(workers + 1, sizeof(int))
        if (self._member_host == NULL or self._member_first == NULL
                or self._member_workers == NULL or self._backends == NULL
                or self._up_host == NULL or self._up_first == NULL
                or self._up_workers == NULL or self._up_backends == NULL):
            self._free_members()
            raise MemoryError("QuicLbRouter: cannot allocate the member table")
        if self._host_slot != NULL:
            for k in range(1 << (8 * self._host_bytes)):
                self._host_slot[k] = -1
        k = 0
        for m, route in enumerate(routes):
            self._member_host[m] = route.host_id
            self._member_first[m] = k
            self._member_workers[m] = len(route.backends)
            for w, backend in enumerate(route.backends):
                self._backends[k + w] = backend
            k += len(route.backends)
            self._host_slot[route.host_id] = m
        self._nmembers = len(routes)
        k = 0
        for route in routes:
            up = route.up
            if not up:
                continue
            self._up_host[self._nup] = route.host_id
            self._up_first[self._nup] = k
            self._up_workers[self._nup] = len(up)
            for w, backend in enumerate(up):
                self._up_backends[k + w] = backend
            k += len(up)
            self._nup += 1

    def server_id(self, bytes cid):
        """The server ID a CID carries under the scheme of its codepoint (QuicLbScheme.server_id,
        computed here); None for a codepoint no scheme has."""
        cdef unsigned char out[MAX_SERVER_ID]
        if not cid or not self._present[cid[0] >> 5] or len(cid) < self._cid_lengths[cid[0] >> 5]:
            return None
        self._decrypt(<const unsigned char *>PyBytes_AS_STRING(cid), out)
        return PyBytes_FromStringAndSize(<char *>out, self._server_id_length)

    def route_datagram(self, bytes datagram):
        """route() for Python callers (tests): the backend index, or None."""
        cdef int b = self.route(<const unsigned char *>PyBytes_AS_STRING(datagram), len(datagram))
        return None if b < 0 else b

    cdef int route(self, const unsigned char *data, Py_ssize_t length) except -2:
        """The datagram's backend index; -1: none (too short, or no member at all)."""
        cdef const unsigned char *cid
        cdef int cid_length, m, worker, cp
        cdef uint32_t host = 0
        cdef int b
        cdef unsigned char server_id[MAX_SERVER_ID]
        if length < 1 or self._nmembers == 0:
            return -1
        if data[0] & 0x80:
            if length < LONG_DCID_AT:
                return -1
            cid_length = data[LONG_DCID_AT - 1]
            if cid_length > MAX_CID or LONG_DCID_AT + cid_length > length:
                return -1
            cid = data + LONG_DCID_AT
        else:
            if length < 2:
                return -1
            cp = data[1] >> 5  # a short header's DCID length: its configuration's
            cid_length = self._cid_lengths[cp] if self._present[cp] else self._cid_length
            if 1 + cid_length > length:
                return -1
            cid = data + 1
        if cid_length > 0 and self._present[cid[0] >> 5] and cid_length >= self._cid_lengths[cid[0] >> 5]:
            self._decrypt(cid, server_id)
            for m in range(self._host_bytes):
                host = host << 8 | server_id[m]
            m = self._host_slot[host]
            worker = server_id[self._host_bytes]
            if m >= 0 and worker < self._member_workers[m]:
                b = self._backends[self._member_first[m] + worker]
                if b >= 0:  # else down: by hash, like a dead host's CID
                    return b
        return self._rendezvous(cid, cid_length)

    cdef int _decrypt(self, const unsigned char *cid, unsigned char *server_id) except -1:
        """Write the server ID of a CID of a scheme's codepoint and length (checked by the
        caller)."""
        cdef unsigned char plain[MAX_SERVER_ID]
        cdef int cp = cid[0] >> 5
        if not self._keyed[cp]:
            memcpy(server_id, cid + 1, self._server_id_length)
        elif self.native_aes:
            ns_quic_lb_open(&self._aes[cp], cid + 1, self._plaintext_lengths[cp], self._rounds[cp],
                            plain)
            memcpy(server_id, plain, self._server_id_length)
        else:
            found = self._by_codepoint[cp].server_id(
                PyBytes_FromStringAndSize(<const char *>cid, self._cid_lengths[cp]))
            memcpy(server_id, PyBytes_AS_STRING(found), self._server_id_length)
        return 0

    cdef int _rendezvous(self, const unsigned char *cid, int length) noexcept:
        """The backend of the highest-scoring member for this CID (lower host ID on a tie)."""
        cdef uint64_t hashed = ns_cid_hash(cid, length, self._seed)
        cdef uint64_t score, best_score = 0
        cdef int m, best = -1
        for m in range(self._nup):
            score = ns_host_score(hashed, self._up_host[m])
            if (best < 0 or score > best_score
                    or (score == best_score and self._up_host[m] < self._up_host[best])):
                best, best_score = m, score
        if best < 0:
            return -1
        return self._up_backends[self._up_first[best]
                                 + <int>((hashed >> 32) % <uint64_t>self._up_workers[best])]
