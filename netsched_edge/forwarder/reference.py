"""The pure-Python relay: `UdpRelay`'s rules and counters, one syscall per datagram.

Selected where the Cython relay is not built, and the reference the Cython
relay is tested against. It works in the same steps, so that their counters
agree: a front batch is first split into flows (opening new ones), then each
flow's datagrams are sent in arrival order; replies are read per ready flow
into one batch for the clients.
"""

from __future__ import annotations

import contextlib
import errno
import math
import select
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from netsched_client.io import Address

from .flows import (
    COUNTERS,
    DEFAULT_BATCH,
    DEFAULT_BUFFER,
    DEFAULT_IDLE_TIMEOUT,
    FLOW_RCVBUF,
    Choose,
    FlowOutcome,
    FlowTable,
    ForwarderStats,
    ReplyWatch,
    Report,
    address_family,
    backend_index,
    check_options,
    open_front,
    warn_once,
)
from .routing import PyQuicLbRouter

_SLOT = 65536  # as the Cython relay: the largest UDP payload fits
_ANY = -1  # an unrouted relay's flow key: the client alone, whichever its backend

_Key = tuple[Address, int]  # (client, backend when routed, else _ANY)


@dataclass(frozen=True, slots=True)
class _Flow:
    key: _Key
    backend: int
    sock: socket.socket
    watch: ReplyWatch

    @property
    def client(self) -> Address:
        return self.key[0]


class PyUdpRelay:
    """A UDP load balancer's data path with the `UdpRelay` interface (see flows.py)."""

    def __init__(
        self,
        listen: Address,
        backends: Sequence[Address],
        choose: Choose,
        *,
        max_flows: int | None = None,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        batch: int = DEFAULT_BATCH,
        rcvbuf: int = DEFAULT_BUFFER,
        sndbuf: int = DEFAULT_BUFFER,
        gso: bool = True,
        reply_timeout: float | None = None,
        report: Report | None = None,
        max_flows_per_source: int | None = None,
        fd_reserve: int | None = None,
        router: PyQuicLbRouter | None = None,
        max_backends: int | None = None,
    ) -> None:
        # gso is accepted for a common signature: this relay sends datagram by datagram.
        options = check_options(
            listen, backends, max_flows=max_flows, idle_timeout=idle_timeout, batch=batch,
            rcvbuf=rcvbuf, sndbuf=sndbuf, reply_timeout=reply_timeout, choose=choose,
            report=report, max_flows_per_source=max_flows_per_source, fd_reserve=fd_reserve,
            routed=router is not None, max_backends=max_backends,
        )  # fmt: skip
        empty: list[Address | None] = [None] * (options.max_backends - len(options.backends))
        self._backends: list[Address | None] = [*options.backends, *empty]
        self._choose = choose
        self._router = router
        self._report = report
        self._reply_timeout = options.reply_timeout
        self._table: FlowTable[_Key, _Flow] = FlowTable(
            options.max_flows,
            options.idle_timeout,
            max_per_source=options.max_flows_per_source,
            source=lambda key: key[0][0],  # the client's address, without the port
        )
        self._fd_limit = options.fd_limit
        self._plan: dict[_Flow, list[bytes]] = {}  # the front batch being relayed
        self._by_fd: dict[int, _Flow] = {}
        self._n = dict.fromkeys(COUNTERS, 0)
        self._refused = [0] * options.max_backends
        self._silent = [0] * options.max_backends
        self._answered_at = [-math.inf] * options.max_backends  # any flow's last reply
        self._epoll = select.epoll()
        self._sock = open_front(options)
        self._closed = False
        self.local_address: Address = self._sock.getsockname()
        self.batch = options.batch
        self.idle_timeout = options.idle_timeout

    def fileno(self) -> int:
        return self._sock.fileno()

    def upstream_fileno(self) -> int:
        return self._epoll.fileno()

    @property
    def stats(self) -> ForwarderStats:
        return ForwarderStats(
            **self._n,
            active_flows=len(self._table),
            refused_by_backend=tuple(self._refused),
            silent_by_backend=tuple(self._silent),
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for flow in self._table.values():
            self._table.remove(flow.key)
            self._close_flow(flow)
        self._epoll.close()
        self._sock.close()

    def set_backend(self, index: int, address: Address | None) -> int:
        """Point backend slot `index` at `address` (None: empty); return the flows closed."""
        self._check_open()
        if not 0 <= index < len(self._backends):
            raise IndexError(f"backend index {index} is not 0..{len(self._backends) - 1}")
        if address is not None:
            address_family(tuple(address), "address")
        retired = [flow for flow in self._table.values() if flow.backend == index]
        for flow in retired:
            self._table.remove(flow.key)
            self._close_flow(flow)
        self._n["flows_retired"] += len(retired)
        self._backends[index] = None if address is None else tuple(address)
        return len(retired)

    def expire(self, now: float) -> int:
        closed = 0
        while (flow := self._table.pop_idle(now)) is not None:
            self._close_flow(flow)
            self._n["flows_expired"] += 1
            closed += 1
        return closed

    # -- clients → backends --------------------------------------------------

    def relay_front(self, now: float) -> int:
        self._check_open()
        before = self._n["from_clients"]
        plan = self._plan = {}
        for data, client in self._receive_front():
            backend = _ANY
            if self._router is not None:
                routed = self._router.route_datagram(data)
                if routed is None or not 0 <= routed < len(self._backends):
                    routed = None
                if routed is None or self._backends[routed] is None:
                    self._n["no_backend"] += 1
                    self._n["unrouted"] += 1
                    continue
                backend = routed
            flow = self._flow_for((client, backend), now)
            if self._closed:
                break  # `choose` or `report` closed the relay: its flows are gone
            if flow is None:
                self._n["unrouted"] += 1
            else:
                plan.setdefault(flow, []).append(data)
                flow.watch.sent(now)
        for flow, datagrams in plan.items():
            if self._closed:
                break
            self._send_upstream(flow, datagrams, now)
        self._plan = {}
        return self._n["from_clients"] - before

    def _flow_for(self, key: _Key, now: float) -> _Flow | None:
        """The flow of (client, routed backend or _ANY), or a new one; a flow whose
        backend went silent is replaced."""
        flow = self._table.find(key, now)
        if flow is not None and flow.watch.silent(now):
            self._give_up(flow, now)
            if self._closed:
                return None
            flow = None
        return flow or self._open_flow(key, now)

    def _receive_front(self) -> list[tuple[bytes, Address]]:
        """Up to `batch` datagrams read; truncated ones are counted and left out."""
        out: list[tuple[bytes, Address]] = []
        for _ in range(self.batch):
            self._n["syscalls_recv"] += 1
            try:
                data, _, flags, addr = self._sock.recvmsg(_SLOT)
            except BlockingIOError:
                break
            self._n["from_clients"] += 1
            self._n["bytes_from_clients"] += len(data)
            if flags & socket.MSG_TRUNC:
                self._n["recv_truncated"] += 1
                continue
            out.append((data, addr))
        return out

    def _send_upstream(self, flow: _Flow, datagrams: list[bytes], now: float) -> None:
        for i, data in enumerate(datagrams):
            self._n["syscalls_send"] += 1
            try:
                flow.sock.send(data)
            except BlockingIOError:
                self._n["send_errors"] += len(datagrams) - i
                return
            except ConnectionRefusedError as exc:
                self._n["send_errors"] += len(datagrams) - i
                self._fail(flow, exc, now)
                return
            except OSError:
                self._n["send_errors"] += 1
                continue
            self._n["to_backends"] += 1
            self._n["bytes_to_backends"] += len(data)

    # -- backends → clients --------------------------------------------------

    def relay_upstream(self, now: float) -> int:
        self._check_open()
        before = self._n["from_backends"]
        replies: list[tuple[bytes, Address]] = []
        slots = 0  # as the Cython relay's receive slots
        for fd, _ in self._epoll.poll(0, self.batch):
            flow = self._by_fd.get(fd)
            if flow is None:
                continue
            if slots == self.batch:
                self._send_replies(replies)
                replies, slots = [], 0
            slots += self._receive_replies(flow, self.batch - slots, replies, now)
            if self._closed:
                return self._n["from_backends"] - before  # `report` closed the relay
        self._send_replies(replies)
        return self._n["from_backends"] - before

    def _receive_replies(
        self, flow: _Flow, limit: int, replies: list[tuple[bytes, Address]], now: float
    ) -> int:
        """Queue up to `limit` replies of `flow` for its client; return how many were read."""
        read = 0
        while read < limit:
            self._n["syscalls_recv"] += 1
            try:
                data, _, flags, _ = flow.sock.recvmsg(_SLOT)
            except BlockingIOError:
                break
            except OSError as exc:
                self._fail(flow, exc, now)
                break
            read += 1
            self._n["from_backends"] += 1
            self._n["bytes_from_backends"] += len(data)
            if flags & socket.MSG_TRUNC:
                self._n["recv_truncated"] += 1
                continue
            replies.append((data, flow.client))
        if read:
            self._table.find(flow.key, now)
            self._answered_at[flow.backend] = now
            if flow.watch.replied():
                self._table.answered(flow.key)
                self._tell(flow.backend, FlowOutcome.ANSWERED, now)
        return read

    def _send_replies(self, replies: list[tuple[bytes, Address]]) -> None:
        for i, (data, client) in enumerate(replies):
            self._n["syscalls_send"] += 1
            try:
                self._sock.sendto(data, client)
            except BlockingIOError:
                self._n["send_errors"] += len(replies) - i
                return
            except OSError:
                self._n["send_errors"] += 1
                continue
            self._n["to_clients"] += 1
            self._n["bytes_to_clients"] += len(data)

    # -- flows -------------------------------------------------------------------

    def _open_flow(self, key: _Key, now: float) -> _Flow | None:
        client, routed = key
        if self._table.source_full(key):
            self._n["source_refused"] += 1
            return None
        if self._table.full and not self._make_room(now):
            self._n["flows_refused"] += 1
            return None
        choice = routed if routed != _ANY else self._choose_backend(client)
        if choice is None or self._closed:
            return None
        backend = self._backends[choice]
        assert backend is not None  # routed to a filled slot, or checked by _choose_backend
        try:
            sock = self._connect(backend)
        except OSError as exc:
            self._n["open_errors"] += 1
            warn_once("open", "UDP forwarder: cannot open a socket to backend %d: %s", choice, exc)
            return None
        if sock is None:
            self._n["fd_refused"] += 1
            warn_once(
                "fds", "UDP forwarder: descriptors are short, new flows are refused (%s)", client
            )
            return None
        flow = _Flow(key, choice, sock, ReplyWatch(self._reply_timeout))
        self._table.add(key, flow, now)
        self._by_fd[sock.fileno()] = flow
        self._n["flows_opened"] += 1
        return flow

    def _choose_backend(self, client: Address) -> int | None:
        """`choose`'s backend for this client; None (counted) for none or a failure."""
        try:
            choice = backend_index(self._choose(client), len(self._backends))
        except Exception as exc:
            self._n["choose_errors"] += 1
            warn_once(
                "choose", "UDP forwarder: choose(%r) failed, datagram dropped: %r", client, exc
            )
            return None
        if choice is None or self._backends[choice] is None:
            self._n["no_backend"] += 1
            return None
        return choice

    def _make_room(self, now: float) -> bool:
        """Close an idle flow, else the oldest never-answered one not in this batch."""
        victim = self._table.pop_idle(now)
        if victim is not None:
            self._close_flow(victim)
            self._n["flows_expired"] += 1
            return True
        victim = self._table.pop_unanswered(busy=lambda flow: flow in self._plan)
        if victim is None:
            return False
        self._close_flow(victim)
        self._n["flows_evicted"] += 1
        return True

    def _connect(self, backend: Address) -> socket.socket | None:
        """A socket connected to `backend`; None if its descriptor is in the reserve."""
        sock = socket.socket(address_family(backend, "backend"), socket.SOCK_DGRAM)
        if sock.fileno() >= self._fd_limit:
            sock.close()
            return None
        try:
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, FLOW_RCVBUF)
            sock.connect(backend)
            self._epoll.register(sock.fileno(), select.EPOLLIN)
        except BaseException:
            sock.close()
            raise
        return sock

    def _fail(self, flow: _Flow, exc: OSError, now: float) -> None:
        self._n["flows_failed"] += 1
        self._table.remove(flow.key)
        self._close_flow(flow)
        if isinstance(exc, ConnectionRefusedError):
            self._n["backend_refused"] += 1
            self._refused[flow.backend] += 1
            self._tell(flow.backend, FlowOutcome.REFUSED, now)

    def _give_up(self, flow: _Flow, now: float) -> None:
        self._table.remove(flow.key)
        self._close_flow(flow)
        if self._answered_at[flow.backend] >= flow.watch.asked:
            self._n["flows_ignored"] += 1
            self._tell(flow.backend, FlowOutcome.IGNORED, now)
            return
        self._n["flows_silent"] += 1
        self._silent[flow.backend] += 1
        self._tell(flow.backend, FlowOutcome.SILENT, now)

    def _tell(self, backend: int, outcome: FlowOutcome, now: float) -> None:
        if self._report is None:
            return
        try:
            self._report(backend, outcome, now)
        except Exception as exc:
            self._n["report_errors"] += 1
            warn_once(
                "report", "UDP forwarder: report(%d, %s) failed: %r", backend, outcome.value, exc
            )

    def _close_flow(self, flow: _Flow) -> None:
        del self._by_fd[flow.sock.fileno()]
        flow.sock.close()  # which also takes it out of the epoll set

    def _check_open(self) -> None:
        if self._closed:
            raise OSError(errno.EBADF, "PyUdpRelay is closed")
