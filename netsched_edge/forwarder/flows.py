"""What both UDP relays share: options, addresses, counters, and the flow-table rules.

The flow-table rules (the Cython relay implements them in C, `FlowTable` is
their Python statement, used by the reference relay):

- A flow is one client (address, port) seen on the front socket. It is
  created by the client's first datagram, with the backend that
  `choose(client)` returns; that is the only time Python runs for it.
- Each flow has its own upstream socket, connected to its backend: the
  kernel then routes backend replies to the flow, drops datagrams from
  anyone else, and reports ICMP port-unreachable as ECONNREFUSED.
- Any datagram, either way, refreshes a flow. A flow idle for
  `idle_timeout` seconds expires (`expire(now)`, run by the driver's timer).
- The table holds at most `max_flows`. A new client when it is full evicts
  the least recently active flow if that flow is idle; else the oldest flow
  whose backend never answered (`flows_evicted`: Linux conntrack's early drop
  of unassured entries), skipping flows with datagrams in the batch being
  relayed; else the client is refused and counted (`flows_refused`), so no
  answered, active flow is ever dropped to make room. One-datagram clients
  from spoofed addresses therefore cannot lock answered clients out, nor
  keep new clients out for longer than it takes to cycle the table.
- One source address holds at most `max_flows_per_source` flows (None: no
  cap); a new client beyond it is refused and counted (`source_refused`)
  without evicting anyone.
- The descriptors are shared with the rest of the process (QUIC socket,
  backend connections, static files): a flow socket whose descriptor number
  is at or above `fd_limit` is closed again and the client refused
  (`fd_refused`). Linux hands out the lowest free number, so such a number
  means fewer than RLIMIT_NOFILE - `fd_limit` descriptors are left; the
  default keeps `default_fd_reserve` of them for everything else. A socket
  that cannot be opened at all (EMFILE) is counted too (`open_errors`).
  Either way only this client's datagram is dropped.
- A flow whose socket fails (ECONNREFUSED: backend down) is closed and
  counted; the client's next datagram opens a new flow and chooses again.

Backend health, per flow (`report(backend, outcome, now)` tells the health
layer, so that `choose` can steer new flows away from a failing backend):

- ANSWERED: the flow's first reply, once per flow: the backend serves.
- REFUSED: ECONNREFUSED on the flow's socket; the flow is closed (above).
- SILENT: the client's datagrams went unanswered for `reply_timeout`
  seconds: from the first one after the last reply (or since the flow
  opened) to the current one, while the client kept sending (a pause longer
  than `reply_timeout` starts the count again, so a client that sends one
  datagram now and then is not taken for a dead backend), and the backend
  answered no flow at all in that time. The current datagram closes the flow
  and opens a new one: `choose` runs again, after the report.
- IGNORED: the same silence on this flow, but the backend answered another
  flow since the flow's first unanswered datagram. Closed and re-pinned as
  SILENT, but it says nothing against the backend: anyone can send a
  backend datagrams it rightly ignores (garbage, from spoofed addresses),
  while only a backend that is alive answers other clients. So an attacker
  can make flows go unanswered, never make a serving backend look dead
  (`report` gets IGNORED, which the health layer does not count; the edge's
  UDP front also discounts SILENT when a health check succeeded meanwhile).

So a client is re-pinned at its first datagram after its backend refused,
or at the first one `reply_timeout` after its backend went silent; each
such flow is one failure for the health layer, which ejects the backend
after its `unhealthy_after` consecutive failures, and from then on `choose`
picks another. `reply_timeout=None` (the relays' default) turns the
silence rule off, for protocols whose backends need not answer.

Time is the driver's `now` (event-loop seconds), never read here.

Why a connected socket per flow rather than one NAT-style upstream socket:
through one socket every client would reach a backend from the same
(address, port), so the backend could not tell clients apart and its
replies could not be mapped back to them (a protocol without its own
session id, DNS or a game server, breaks), and ICMP errors would need
IP_RECVERR parsing. The price, measured by bench/bench_forwarder.py: ~8 µs
of CPU to open a flow (socket, connect, epoll_ctl, `choose`), ~3 µs to
expire one, and one sendmmsg per flow per batch: with one flow per batch
that is the same single call, in the worst case (every datagram of a batch
from another flow) ~3.6 instead of ~2.1 µs per datagram sent. nginx's UDP
proxy makes the same choice.
"""

from __future__ import annotations

import contextlib
import logging
import math
import resource
import socket
import struct
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Generic, Protocol, TypeVar

from netsched_client.io import Address
from netsched_client.io._common import MAX_BATCH, open_socket

log = logging.getLogger("netsched.edge.forwarder")

Choose = Callable[[Address], int | None]  # client address → backend index, None: no backend


class FlowOutcome(Enum):
    """What a flow says about its backend's health (the rules in the module doc)."""

    ANSWERED = "answered"
    REFUSED = "refused"
    SILENT = "silent"
    IGNORED = "ignored"


Report = Callable[[int, FlowOutcome, float], None]  # (backend index, outcome, now)

MAX_FLOWS = 1 << 20
DEFAULT_MAX_FLOWS = 4096  # when RLIMIT_NOFILE is unlimited
# The derived default stops here: the C table is allocated (and touched) whole up front,
# ~170 bytes a flow; set max_flows to go higher.
DERIVED_MAX_FLOWS = 1 << 16
MIN_FD_RESERVE = 64  # descriptors the flows never take, at least
_UNLIMITED = (1 << 31) - 1  # descriptor numbers are C ints
DEFAULT_IDLE_TIMEOUT = 30.0  # seconds without a datagram either way (nginx proxy_timeout: 600)
# Seconds of client datagrams without a reply after which a backend is silent
# (the edge's UDP front; the relays' own default is None, the rule off).
DEFAULT_REPLY_TIMEOUT = 5.0
DEFAULT_BATCH = 64
DEFAULT_BUFFER = 4 << 20  # front socket receive and send buffers
FLOW_RCVBUF = 1 << 20  # each upstream socket: room for a burst of replies

_V4 = struct.Struct("=H2s4s8x")  # sockaddr_in: family (host order), port, address, zero
_V6 = struct.Struct("=H2s4s16sI")  # sockaddr_in6: family, port, flowinfo, address, scope id
_warned: set[str] = set()


@dataclass(frozen=True, slots=True)
class ForwarderStats:
    """Counters since the relay was opened (a snapshot)."""

    from_clients: int  # datagrams received on the front socket
    to_backends: int  # datagrams the kernel took for a backend
    from_backends: int  # reply datagrams received from backends
    to_clients: int  # reply datagrams the kernel took for a client
    bytes_from_clients: int  # their payload bytes, the same four ways
    bytes_to_backends: int
    bytes_from_backends: int
    bytes_to_clients: int
    active_flows: int
    flows_opened: int
    flows_expired: int  # idle: by the timer or evicted to make room
    flows_failed: int  # closed on a socket error (backend_refused included)
    flows_silent: int  # closed because the backend left the client unanswered (reply_timeout)
    flows_ignored: int  # closed as silent while the backend answered other flows (not failures)
    flows_evicted: int  # never-answered flows closed to make room for a new client
    flows_retired: int  # closed because their backend slot was emptied or moved (set_backend)
    flows_refused: int  # new clients turned away: the table was full of active flows
    source_refused: int  # new clients turned away: their address had max_flows_per_source
    fd_refused: int  # new clients turned away: their socket would eat into the fd reserve
    backend_refused: int  # ICMP port unreachable from a backend (ECONNREFUSED)
    no_backend: int  # new clients for which `choose` returned None
    choose_errors: int  # `choose` raised or returned something other than a backend index
    open_errors: int  # upstream socket could not be opened (EMFILE, ENETUNREACH…)
    report_errors: int  # `report` raised
    unrouted: int  # client datagrams dropped because no flow could be opened for them
    send_errors: int  # datagrams dropped on a send error (EAGAIN included), either way
    gso_sends: int  # messages that carried a run of datagrams as one UDP GSO send
    gso_fallbacks: int  # times the kernel refused GSO (then switched off)
    recv_truncated: int  # datagrams longer than the receive slot, dropped
    syscalls_recv: int
    syscalls_send: int
    refused_by_backend: tuple[int, ...]  # backend_refused per backend index
    silent_by_backend: tuple[int, ...]  # flows_silent per backend index


# The plain counters; active_flows and the per-backend tuples are derived.
COUNTERS = tuple(
    f
    for f in ForwarderStats.__slots__
    if f not in ("active_flows", "refused_by_backend", "silent_by_backend")
)


class Relay(Protocol):
    """The interface of the Cython `UdpRelay` and the reference `PyUdpRelay`.

    Driving contract: when `fileno()` is readable call `relay_front(now)`,
    when `upstream_fileno()` is readable call `relay_upstream(now)`, each
    again while it returns `batch` (more may be waiting); call `expire(now)`
    periodically; `close()` after removing the readers.
    """

    @property
    def local_address(self) -> Address: ...
    @property
    def batch(self) -> int: ...
    @property
    def idle_timeout(self) -> float: ...
    @property
    def stats(self) -> ForwarderStats: ...
    def fileno(self) -> int: ...
    def upstream_fileno(self) -> int: ...
    def relay_front(self, now: float) -> int: ...
    def relay_upstream(self, now: float) -> int: ...
    def expire(self, now: float) -> int: ...
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RelayOptions:
    """Validated relay settings (see `check_options`)."""

    family: int
    listen: Address
    backends: tuple[Address, ...]
    max_backends: int  # backend slots: the backends first, the rest empty (set_backend)
    max_flows: int
    idle_timeout: float
    batch: int
    rcvbuf: int
    sndbuf: int
    reply_timeout: float | None
    max_flows_per_source: int | None
    fd_limit: int  # flow sockets get descriptor numbers below this, or are refused


def nofile_limit() -> int:
    """The soft RLIMIT_NOFILE (2**31 - 1 when unlimited)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return _UNLIMITED if soft == resource.RLIM_INFINITY or soft < 0 else min(soft, _UNLIMITED)


def default_fd_reserve(nofile: int) -> int:
    """Descriptors the relays leave to the rest of the process: a quarter of the limit."""
    return max(MIN_FD_RESERVE, nofile // 4)


def default_max_flows(nofile: int | None = None) -> int:
    """One relay's flows when not configured: half of what the reserve leaves (at most
    DERIVED_MAX_FLOWS)."""
    nofile = nofile_limit() if nofile is None else nofile
    if nofile >= _UNLIMITED:
        return DEFAULT_MAX_FLOWS
    return max(1, min(DERIVED_MAX_FLOWS, (nofile - default_fd_reserve(nofile)) // 2))


def check_options(
    listen: Address,
    backends: Sequence[Address],
    *,
    max_flows: int | None,
    idle_timeout: float,
    batch: int,
    rcvbuf: int,
    sndbuf: int,
    reply_timeout: float | None,
    choose: object,
    report: object,
    max_flows_per_source: int | None = None,
    fd_reserve: int | None = None,
    routed: bool = False,
    max_backends: int | None = None,
) -> RelayOptions:
    """Validate the relay's settings; raise ValueError/TypeError naming the bad one.

    `max_flows` None: `default_max_flows()`; `fd_reserve` None: `default_fd_reserve`
    of the soft RLIMIT_NOFILE, both read now. A `routed` relay (a router picks each
    datagram's backend) may start with no backend, the slots filled by `set_backend`.
    """
    if not backends and not routed:
        raise ValueError("backends must name at least one (host, port) address")
    if max_backends is None:
        max_backends = len(backends)
    if type(max_backends) is not int or not max(1, len(backends)) <= max_backends <= MAX_FLOWS:
        raise ValueError(
            f"max_backends must be an int {max(1, len(backends))}..{MAX_FLOWS}, "
            f"got {max_backends!r}"
        )
    family = address_family(listen, "listen", allow_port_zero=True)
    for i, backend in enumerate(backends):
        address_family(backend, f"backends[{i}]")
    if max_flows is None:
        max_flows = default_max_flows()
    if type(max_flows) is not int or not 1 <= max_flows <= MAX_FLOWS:
        raise ValueError(f"max_flows must be an int 1..{MAX_FLOWS}, got {max_flows!r}")
    if max_flows_per_source is not None and (
        type(max_flows_per_source) is not int or not 1 <= max_flows_per_source <= MAX_FLOWS
    ):
        raise ValueError(
            f"max_flows_per_source must be None or an int 1..{MAX_FLOWS}, "
            f"got {max_flows_per_source!r}"
        )
    nofile = nofile_limit()
    if fd_reserve is None:
        fd_reserve = default_fd_reserve(nofile)
    if type(fd_reserve) is not int or fd_reserve < 0:
        raise ValueError(f"fd_reserve must be None or an int >= 0, got {fd_reserve!r}")
    if not _positive_seconds(idle_timeout):
        raise ValueError(f"idle_timeout must be a positive number of seconds, got {idle_timeout!r}")
    if type(batch) is not int or not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"batch must be an int 1..{MAX_BATCH}, got {batch!r}")
    for name, size in (("rcvbuf", rcvbuf), ("sndbuf", sndbuf)):
        if type(size) is not int or size <= 0:
            raise ValueError(f"{name} must be a positive int, got {size!r}")
    if reply_timeout is not None and not _positive_seconds(reply_timeout):
        raise ValueError(
            f"reply_timeout must be None or a positive number of seconds, got {reply_timeout!r}"
        )
    if not callable(choose):
        raise TypeError(f"choose must be callable, got {choose!r:.80}")
    if report is not None and not callable(report):
        raise TypeError(f"report must be callable or None, got {report!r:.80}")
    return RelayOptions(
        family, tuple(listen), tuple(tuple(b) for b in backends), max_backends, max_flows,
        float(idle_timeout), batch, rcvbuf, sndbuf,
        None if reply_timeout is None else float(reply_timeout),
        max_flows_per_source, max(0, nofile - fd_reserve),
    )  # fmt: skip


def _positive_seconds(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf


def open_front(options: RelayOptions) -> socket.socket:
    """The bound, non-blocking front socket, buffers sized (warning once if capped)."""
    sock = open_socket(options.family, options.listen, options.rcvbuf, options.sndbuf, 0)
    # The relay does not carry ECN marks: no per-datagram TOS control messages.
    for level, name in (
        (socket.IPPROTO_IP, "IP_RECVTOS"),
        (socket.IPPROTO_IPV6, "IPV6_RECVTCLASS"),
    ):
        if options.family == socket.AF_INET6 or level == socket.IPPROTO_IP:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(level, getattr(socket, name), 0)
    return sock


def address_family(addr: object, field: str, *, allow_port_zero: bool = False) -> int:
    """AF_INET or AF_INET6 for a numeric (host, port[, flowinfo, scope_id]); else raise."""
    if not isinstance(addr, tuple) or len(addr) not in (2, 4):
        raise TypeError(f"{field} must be a (host, port) tuple, got {addr!r:.80}")
    host, port = addr[0], addr[1]
    lowest = 0 if allow_port_zero else 1
    if type(port) is not int or not lowest <= port < 65536:
        raise ValueError(f"{field} port must be an int {lowest}..65535, got {port!r:.80}")
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, TypeError):
            continue
        if family == socket.AF_INET and len(addr) == 4:
            break  # flowinfo and scope id belong to IPv6 only
        return family
    raise ValueError(f"{field} must be a numeric IPv4 or IPv6 address, got {addr!r:.80}")


def sockaddr_bytes(addr: Address) -> bytes:
    """Linux's struct sockaddr_in / sockaddr_in6 for a numeric address (for the C relay)."""
    family = address_family(addr, "address")
    port = addr[1].to_bytes(2, "big")
    if family == socket.AF_INET:
        return _V4.pack(family, port, socket.inet_pton(family, addr[0]))
    flowinfo, scope_id = (addr[2], addr[3]) if len(addr) == 4 else (0, 0)
    packed = socket.inet_pton(family, addr[0])
    return _V6.pack(family, port, flowinfo.to_bytes(4, "big"), packed, scope_id)


def address_of(raw: bytes) -> Address:
    """The Python address tuple for a struct sockaddr_in / sockaddr_in6 (inverse of above)."""
    if len(raw) >= _V6.size:
        _, port, flowinfo, packed, scope_id = _V6.unpack_from(raw)
        host = socket.inet_ntop(socket.AF_INET6, packed)
        return (host, int.from_bytes(port, "big"), int.from_bytes(flowinfo, "big"), scope_id)
    _, port, packed = _V4.unpack_from(raw)
    return (socket.inet_ntop(socket.AF_INET, packed), int.from_bytes(port, "big"))


def backend_index(choice: object, count: int) -> int | None:
    """Check what `choose` returned: a backend index, or None (no backend for this client)."""
    if choice is None or (type(choice) is int and 0 <= choice < count):
        return choice
    raise ValueError(
        f"choose must return a backend index 0..{count - 1} or None, got {choice!r:.80}"
    )


def warn_once(kind: str, message: str, *args: object) -> None:
    """Log the first occurrence of a per-flow problem; the stats count every one."""
    if kind in _warned:
        log.debug(message, *args)
        return
    _warned.add(kind)
    log.warning(message + " (further ones are only counted in the stats)", *args)


def sweep_interval(idle_timeout: float) -> float:
    """How often the driver expires flows: an idle flow lives at most 1.25 x idle_timeout."""
    return max(idle_timeout / 4, 0.01)


class ReplyWatch:
    """One flow's replies, for the silence rule (module doc); the C relay keeps the same state."""

    __slots__ = ("_asked", "_last_sent", "answered", "reply_timeout")

    def __init__(self, reply_timeout: float | None) -> None:
        self.reply_timeout = reply_timeout
        self.answered = False
        self._asked: float | None = None  # the first unanswered client datagram
        self._last_sent = -math.inf  # the client's last datagram

    def silent(self, now: float) -> bool:
        """Whether a client datagram at `now` finds the backend silent (no side effects)."""
        timeout = self.reply_timeout
        return (
            timeout is not None
            and self._asked is not None
            and now - self._last_sent <= timeout
            and now - self._asked >= timeout
        )

    @property
    def asked(self) -> float:
        """When the current unanswered run of client datagrams began (inf: none)."""
        return math.inf if self._asked is None else self._asked

    def sent(self, now: float) -> None:
        """The client sent a datagram at `now`."""
        timeout = math.inf if self.reply_timeout is None else self.reply_timeout
        if self._asked is None or now - self._last_sent > timeout:
            self._asked = now
        self._last_sent = now

    def replied(self) -> bool:
        """The backend replied; return True if that is the flow's first reply."""
        self._asked = None
        first = not self.answered
        self.answered = True
        return first


K = TypeVar("K")
V = TypeVar("V")


class FlowTable(Generic[K, V]):
    """Flows by client, least recently active first (the rules in the module doc).

    `find` refreshes a flow; `add` needs room (check `full`, then `pop_idle`, then
    `pop_unanswered`) and a source under its cap (`source_full`); `answered` marks a
    flow's first reply. `source(key)` names a client's source (its address).
    """

    def __init__(
        self,
        max_flows: int,
        idle_timeout: float,
        *,
        max_per_source: int | None = None,
        source: Callable[[K], object] = lambda key: key,
    ) -> None:
        self.max_flows = max_flows
        self.idle_timeout = idle_timeout
        self.max_per_source = max_per_source
        self._source = source
        self._flows: OrderedDict[K, tuple[V, float]] = OrderedDict()
        self._unanswered: OrderedDict[K, V] = OrderedDict()  # by age: the early-drop order
        self._per_source: Counter[object] = Counter()

    def __len__(self) -> int:
        return len(self._flows)

    @property
    def full(self) -> bool:
        return len(self._flows) >= self.max_flows

    def source_full(self, key: K) -> bool:
        """Whether `key`'s source already holds `max_per_source` flows."""
        cap = self.max_per_source
        return cap is not None and self._per_source[self._source(key)] >= cap

    def find(self, key: K, now: float) -> V | None:
        """The flow of `key`, marked active at `now`; None if there is none."""
        entry = self._flows.get(key)
        if entry is None:
            return None
        self._flows[key] = (entry[0], now)
        self._flows.move_to_end(key)
        return entry[0]

    def add(self, key: K, flow: V, now: float) -> None:
        if key in self._flows:
            raise KeyError(f"flow {key!r} already exists")
        if self.full:
            raise OverflowError(f"flow table is full ({self.max_flows} flows)")
        if self.source_full(key):
            raise OverflowError(f"source of {key!r} has {self.max_per_source} flows")
        self._flows[key] = (flow, now)
        self._unanswered[key] = flow
        self._per_source[self._source(key)] += 1

    def answered(self, key: K) -> None:
        """The flow of `key` got its first reply: it is no longer early-drop prey."""
        self._unanswered.pop(key, None)

    def remove(self, key: K) -> V | None:
        entry = self._flows.pop(key, None)
        if entry is None:
            return None
        self._forget(key)
        return entry[0]

    def pop_idle(self, now: float) -> V | None:
        """Remove and return the least recently active flow if it is idle, else None."""
        if not self._flows:
            return None
        key, (flow, last) = next(iter(self._flows.items()))
        if now - last < self.idle_timeout:
            return None
        del self._flows[key]
        self._forget(key)
        return flow

    def pop_unanswered(self, busy: Callable[[V], bool] = lambda flow: False) -> V | None:
        """Remove and return the oldest never-answered flow that is not `busy`, else None."""
        for key, flow in self._unanswered.items():
            if not busy(flow):
                del self._flows[key]
                self._forget(key)
                return flow
        return None

    def values(self) -> list[V]:
        return [flow for flow, _ in self._flows.values()]

    def _forget(self, key: K) -> None:
        self._unanswered.pop(key, None)
        source = self._source(key)
        self._per_source[source] -= 1
        if not self._per_source[source]:
            del self._per_source[source]
