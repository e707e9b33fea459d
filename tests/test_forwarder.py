"""The UDP forwarder's relay on real loopback sockets: the Cython relay and its Python reference.

Relays are pumped by hand here (select, then `relay_front`/`relay_upstream`
with a `now` the test picks), so flow ages are exact and no event loop is
involved; tests/test_forwarder_loop.py drives them from asyncio and uvloop.
"""

from __future__ import annotations

import math
import os
import re
import resource
import select
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import asdict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netsched_client.io import Address
from netsched_edge.forwarder import (
    HAVE_NATIVE,
    FlowTable,
    PyUdpRelay,
    Relay,
    UdpRelay,
)
from netsched_edge.forwarder.flows import FlowOutcome, ReplyWatch, address_of, sockaddr_bytes

RelayFactory = Callable[..., Relay]


def _have_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


IMPLS = [
    pytest.param(
        UdpRelay,
        id="native",
        marks=pytest.mark.skipif(not HAVE_NATIVE, reason="Cython extension not built"),
    ),
    pytest.param(PyUdpRelay, id="python"),
]
FAMILIES = [
    pytest.param((socket.AF_INET, "127.0.0.1"), id="v4"),
    pytest.param(
        (socket.AF_INET6, "::1"),
        id="v6",
        marks=pytest.mark.skipif(not _have_ipv6(), reason="::1 is not available here"),
    ),
]
V4 = (socket.AF_INET, "127.0.0.1")
TIMEOUT = 5.0  # generous: a busy 2-core machine


class Net:
    """Loopback sockets and relays for one test, all closed at its end."""

    def __init__(self, stack: ExitStack) -> None:
        self._stack = stack

    def udp(self, where: tuple[int, str] = V4) -> socket.socket:
        family, host = where
        sock = self._stack.enter_context(socket.socket(family, socket.SOCK_DGRAM))
        sock.bind((host, 0))
        sock.settimeout(TIMEOUT)
        return sock

    def relay(
        self, cls: RelayFactory, backends: list[Address], choose: Callable[[Address], Any],
        where: tuple[int, str] = V4, **options: Any,
    ) -> Relay:  # fmt: skip
        relay = cls((where[1], 0), backends, choose, **options)
        self._stack.callback(relay.close)
        return relay


@pytest.fixture
def net() -> Iterator[Net]:
    with ExitStack() as stack:
        yield Net(stack)


def dead_port(where: tuple[int, str] = V4) -> Address:
    """An address nobody listens on: datagrams to it draw ICMP port unreachable."""
    family, host = where
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        addr: Address = probe.getsockname()
    return addr


def payload(client: int, index: int, size: int = 40) -> bytes:
    """Self-describing contents, so mixing or reordering cannot go unnoticed."""
    stamp = f"c{client}:{index};".encode()
    return (stamp * (size // len(stamp) + 1))[:size]


def pump(relay: Relay, now: float, until: Callable[[], bool]) -> None:
    """Relay both ways at time `now` until `until()` holds (or fail after TIMEOUT)."""
    deadline = time.monotonic() + TIMEOUT
    while not until():
        assert time.monotonic() < deadline, f"timed out; stats: {relay.stats}"
        ready, _, _ = select.select([relay.fileno(), relay.upstream_fileno()], [], [], 0.02)
        if relay.fileno() in ready:
            relay.relay_front(now)
        if relay.upstream_fileno() in ready:
            relay.relay_upstream(now)


def relayed(relay: Relay, count: int) -> Callable[[], bool]:
    return lambda: relay.stats.to_backends == count


def receive(sock: socket.socket, count: int) -> list[tuple[bytes, Address]]:
    return [sock.recvfrom(65536) for _ in range(count)]


def echo(backend: socket.socket, count: int) -> list[tuple[bytes, Address]]:
    """Answer `count` datagrams with b"re:" + each; return what arrived."""
    got = receive(backend, count)
    for data, source in got:
        backend.sendto(b"re:" + data, source)
    return got


def nothing_waiting(sock: socket.socket) -> bool:
    return not select.select([sock], [], [], 0.05)[0]


class Recorder:
    """A `choose` that records its calls and answers from a per-port plan (default 0)."""

    def __init__(self) -> None:
        self.calls: list[Address] = []
        self.plan: dict[int, object] = {}

    def __call__(self, client: Address) -> Any:
        self.calls.append(client)
        answer = self.plan.get(client[1], 0)
        if isinstance(answer, Exception):
            raise answer
        return answer


class Reports:
    """A `report` that records its calls as (backend, outcome, now)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, FlowOutcome, float]] = []

    def __call__(self, backend: int, outcome: FlowOutcome, now: float) -> None:
        self.calls.append((backend, outcome, now))


# -- relaying ------------------------------------------------------------------------


@pytest.mark.parametrize("where", FAMILIES)
@pytest.mark.parametrize("cls", IMPLS)
def test_round_trip_keeps_contents_order_and_clients(
    net: Net, cls: RelayFactory, where: tuple[int, str]
) -> None:
    backend = net.udp(where)
    choose = Recorder()
    relay = net.relay(cls, [backend.getsockname()], choose, where)
    clients = [net.udp(where) for _ in range(3)]
    sent = {c: [payload(c, i, 30 + 50 * i) for i in range(20)] for c in range(3)}
    for i in range(20):  # interleaved, as they would arrive
        for c, client in enumerate(clients):
            client.sendto(sent[c][i], relay.local_address)

    pump(relay, 1.0, lambda: relay.stats.to_backends == 60)
    got = echo(backend, 60)
    pump(relay, 2.0, lambda: relay.stats.to_clients == 60)

    by_source: dict[Address, list[bytes]] = {}
    for data, source in got:
        by_source.setdefault(source, []).append(data)
    assert sorted(by_source.values()) == sorted(sent.values())  # one upstream socket per flow
    for c, client in enumerate(clients):
        replies = receive(client, 20)
        assert [data for data, _ in replies] == [b"re:" + data for data in sent[c]]
        assert {source[:2] for _, source in replies} == {relay.local_address[:2]}
        assert nothing_waiting(client)
    assert sorted(choose.calls) == sorted(client.getsockname() for client in clients)
    stats = relay.stats
    assert (stats.from_clients, stats.to_backends, stats.from_backends, stats.to_clients) == (
        60, 60, 60, 60,
    )  # fmt: skip
    assert (stats.flows_opened, stats.active_flows, stats.unrouted, stats.send_errors) == (
        3,
        3,
        0,
        0,
    )


@pytest.mark.parametrize("cls", IMPLS)
def test_each_flow_keeps_the_backend_chosen_once(net: Net, cls: RelayFactory) -> None:
    backends = [net.udp() for _ in range(3)]
    clients = [net.udp() for _ in range(6)]
    choose = Recorder()
    choose.plan = {client.getsockname()[1]: i % 3 for i, client in enumerate(clients)}
    relay = net.relay(cls, [b.getsockname() for b in backends], choose)

    for round_ in range(5):
        for c, client in enumerate(clients):
            client.sendto(payload(c, round_), relay.local_address)
        pump(relay, float(round_), relayed(relay, 6 * (round_ + 1)))

    for b, backend in enumerate(backends):
        got = receive(backend, 10)
        assert nothing_waiting(backend)
        mine = [c for c in range(6) if c % 3 == b]
        assert sorted(data for data, _ in got) == sorted(
            payload(c, r) for c in mine for r in range(5)
        )
    assert len(choose.calls) == 6  # once per flow, not per datagram
    assert relay.stats.flows_opened == 6


@pytest.mark.parametrize("cls", IMPLS)
def test_many_flows_get_their_own_replies(net: Net, cls: RelayFactory) -> None:
    backend = net.udp()
    relay = net.relay(cls, [backend.getsockname()], Recorder(), batch=16)
    clients = [net.udp() for _ in range(120)]
    for c, client in enumerate(clients):
        client.sendto(payload(c, 0), relay.local_address)
        client.sendto(payload(c, 1), relay.local_address)

    pump(relay, 0.0, lambda: relay.stats.to_backends == 240)
    echo(backend, 240)
    pump(relay, 0.0, lambda: relay.stats.to_clients == 240)

    for c, client in enumerate(clients):
        assert [data for data, _ in receive(client, 2)] == [
            b"re:" + payload(c, 0),
            b"re:" + payload(c, 1),
        ]
    assert relay.stats.active_flows == 120


@pytest.mark.parametrize("cls", IMPLS)
def test_backend_may_send_more_than_it_got(net: Net, cls: RelayFactory) -> None:
    """A kept session: replies flow as long as the flow lives, not one per request."""
    backend = net.udp()
    relay = net.relay(cls, [backend.getsockname()], Recorder(), batch=8)
    client = net.udp()
    client.sendto(b"subscribe", relay.local_address)
    pump(relay, 0.0, lambda: relay.stats.to_backends == 1)
    _, flow = backend.recvfrom(100)

    for i in range(50):
        backend.sendto(payload(9, i), flow)
    pump(relay, 0.0, lambda: relay.stats.to_clients == 50)

    assert [data for data, _ in receive(client, 50)] == [payload(9, i) for i in range(50)]


@pytest.mark.parametrize("gso", [True, False], ids=["gso", "no-gso"])
@pytest.mark.parametrize("cls", IMPLS)
def test_runs_of_one_size_may_leave_as_one_gso_send(net: Net, cls: RelayFactory, gso: bool) -> None:
    """Datagram boundaries and order survive GSO both ways; mixed sizes break runs."""
    backend = net.udp()
    relay = net.relay(cls, [backend.getsockname()], Recorder(), gso=gso)
    client = net.udp()
    sizes = [1200] * 20 + [700] + [1200] * 3 + [1, 0, 1300, 1300] + [100] * 30
    sent = [payload(0, i, size) for i, size in enumerate(sizes)]
    for data in sent:
        client.sendto(data, relay.local_address)

    pump(relay, 0.0, lambda: relay.stats.to_backends == len(sent))
    upstream_runs = relay.stats.gso_sends
    got = receive(backend, len(sent))
    for data, flow in got:
        backend.sendto(data[::-1], flow)
    pump(relay, 0.0, lambda: relay.stats.to_clients == len(sent))

    assert [data for data, _ in got] == sent
    assert [data for data, _ in receive(client, len(sent))] == [data[::-1] for data in sent]
    runs = (upstream_runs > 0, relay.stats.gso_sends > upstream_runs)
    assert runs == ((True, True) if gso and cls is UdpRelay and HAVE_NATIVE else (False, False))
    assert relay.stats.send_errors == 0


def test_gso_refused_at_run_time_falls_back(net: Net) -> None:
    """SO_NO_CHECK makes the kernel refuse UDP GSO (EINVAL): switch it off, lose nothing."""
    if not HAVE_NATIVE:
        pytest.skip("Cython extension not built")
    backend = net.udp()
    relay = net.relay(UdpRelay, [backend.getsockname()], Recorder())
    with socket.fromfd(relay.fileno(), socket.AF_INET, socket.SOCK_DGRAM) as front:
        front.setsockopt(socket.SOL_SOCKET, 11, 1)  # SO_NO_CHECK, on the replies' socket
    client = net.udp()
    client.sendto(b"subscribe", relay.local_address)
    pump(relay, 0.0, lambda: relay.stats.to_backends == 1)
    _, flow = backend.recvfrom(100)
    replies = [payload(1, i, 1200) for i in range(40)]

    for data in replies:
        backend.sendto(data, flow)
    pump(relay, 0.0, lambda: relay.stats.to_clients == 40)

    assert [data for data, _ in receive(client, 40)] == replies
    stats = relay.stats
    assert (stats.gso_fallbacks, stats.gso_sends, stats.send_errors) == (1, 0, 0)


# -- the flow table ----------------------------------------------------------------------


@pytest.mark.parametrize("cls", IMPLS)
def test_idle_flows_expire_and_traffic_either_way_keeps_them(net: Net, cls: RelayFactory) -> None:
    backend = net.udp()
    choose = Recorder()
    relay = net.relay(cls, [backend.getsockname()], choose, idle_timeout=10.0)
    quiet, chatty = net.udp(), net.udp()
    quiet.sendto(b"quiet", relay.local_address)
    chatty.sendto(b"chatty", relay.local_address)
    pump(relay, 100.0, lambda: relay.stats.to_backends == 2)
    flows = dict(receive(backend, 2))
    backend.sendto(b"ping", flows[b"chatty"])  # a reply refreshes chatty's flow at 105
    pump(relay, 105.0, lambda: relay.stats.to_clients == 1)
    assert chatty.recvfrom(100)[0] == b"ping"

    assert relay.expire(109.9) == 0
    assert relay.expire(110.0) == 1  # quiet: last seen at 100
    assert relay.stats.active_flows == 1
    assert relay.expire(114.9) == 0
    assert relay.expire(115.0) == 1  # chatty: last seen at 105, by a reply
    assert (relay.stats.flows_expired, relay.stats.active_flows) == (2, 0)

    quiet.sendto(b"again", relay.local_address)
    pump(relay, 120.0, lambda: relay.stats.to_backends == 3)
    assert len(choose.calls) == 3  # a new flow, so `choose` ran again
    assert backend.recvfrom(100)[0] == b"again"


@pytest.mark.parametrize("cls", IMPLS)
def test_full_table_refuses_new_clients_while_flows_are_active(net: Net, cls: RelayFactory) -> None:
    backend = net.udp()
    choose = Recorder()
    relay = net.relay(cls, [backend.getsockname()], choose, max_flows=2, idle_timeout=10.0)
    a, b, c, d = (net.udp() for _ in range(4))
    a.sendto(b"a0", relay.local_address)
    b.sendto(b"b0", relay.local_address)
    pump(relay, 0.0, lambda: relay.stats.to_backends == 2)
    echo(backend, 2)  # answered flows: never evicted while active
    pump(relay, 0.0, lambda: relay.stats.to_clients == 2)

    c.sendto(b"c0", relay.local_address)
    pump(relay, 5.0, lambda: relay.stats.unrouted == 1)
    a.sendto(b"a1", relay.local_address)  # a is active at 5, b is last seen at 0
    pump(relay, 5.0, lambda: relay.stats.to_backends == 3)
    stats = relay.stats
    assert (stats.flows_refused, stats.flows_expired, stats.active_flows) == (1, 0, 2)
    assert len(choose.calls) == 2  # a refused client costs no Python call

    c.sendto(b"c1", relay.local_address)  # at 10, b is idle: it makes room
    pump(relay, 10.0, lambda: relay.stats.to_backends == 4)
    assert sorted(data for data, _ in echo(backend, 2)) == [b"a1", b"c1"]
    pump(relay, 10.0, lambda: relay.stats.to_clients == 4)
    d.sendto(b"d0", relay.local_address)  # a (5) and c (10) are active and answered: refused
    pump(relay, 10.0, lambda: relay.stats.unrouted == 2)
    a.sendto(b"a2", relay.local_address)
    c.sendto(b"c2", relay.local_address)
    pump(relay, 10.0, lambda: relay.stats.to_backends == 6)

    assert sorted(data for data, _ in receive(backend, 2)) == [b"a2", b"c2"]
    assert nothing_waiting(backend)
    stats = relay.stats
    assert (stats.flows_refused, stats.flows_expired, stats.active_flows) == (2, 1, 2)
    assert stats.flows_evicted == 0
    assert [call[1] for call in choose.calls] == [s.getsockname()[1] for s in (a, b, c)]


@pytest.mark.parametrize("cls", IMPLS)
def test_full_table_evicts_the_oldest_never_answered_flow(net: Net, cls: RelayFactory) -> None:
    backend = net.udp()
    relay = net.relay(cls, [backend.getsockname()], Recorder(), max_flows=2, idle_timeout=10.0)
    a, b, c, d, e, f = (net.udp() for _ in range(6))
    a.sendto(b"a0", relay.local_address)
    b.sendto(b"b0", relay.local_address)
    pump(relay, 0.0, lambda: relay.stats.to_backends == 2)
    backend.sendto(b"re", next(src for data, src in receive(backend, 2) if data == b"b0"))
    pump(relay, 0.0, lambda: relay.stats.to_clients == 1)  # b answered, a never

    c.sendto(b"c0", relay.local_address)  # full, nothing idle: a goes (early drop)
    pump(relay, 1.0, lambda: relay.stats.to_backends == 3)
    d.sendto(b"d0", relay.local_address)  # c goes; b, answered, stays
    pump(relay, 2.0, lambda: relay.stats.to_backends == 4)
    assert (relay.stats.flows_evicted, relay.stats.active_flows) == (2, 2)
    e.sendto(b"e0", relay.local_address)  # one batch: e evicts d; f would evict e, which
    f.sendto(b"f0", relay.local_address)  # has a datagram in this batch: f is refused
    pump(relay, 3.0, lambda: relay.stats.from_clients == 6)

    assert [data for data, _ in receive(backend, 3)] == [b"c0", b"d0", b"e0"]
    assert nothing_waiting(backend)
    stats = relay.stats
    assert (stats.flows_evicted, stats.flows_refused, stats.flows_expired) == (3, 1, 0)
    b.sendto(b"b1", relay.local_address)
    pump(relay, 3.0, lambda: relay.stats.to_backends == 6)
    assert backend.recvfrom(100)[0] == b"b1"


@pytest.mark.parametrize("cls", IMPLS)
def test_one_source_address_holds_at_most_its_share(net: Net, cls: RelayFactory) -> None:
    backend = net.udp()
    relay = net.relay(
        cls, [backend.getsockname()], Recorder(), max_flows=8, max_flows_per_source=2,
        idle_timeout=10.0,
    )  # fmt: skip
    here = [net.udp() for _ in range(3)]
    there = net.udp((socket.AF_INET, "127.0.0.2"))
    for i, client in enumerate([*here, there]):
        client.sendto(b"%d" % i, relay.local_address)
        pump(relay, 0.0, lambda i=i: relay.stats.from_clients == i + 1)

    assert sorted(data for data, _ in receive(backend, 3)) == [b"0", b"1", b"3"]
    stats = relay.stats
    assert (stats.source_refused, stats.flows_refused, stats.active_flows) == (1, 0, 3)
    relay.expire(20.0)  # the address's flows close: its count goes back to zero
    for i, client in enumerate(here):
        client.sendto(b"again", relay.local_address)
        pump(relay, 20.0, lambda i=i: relay.stats.from_clients == 5 + i)
    assert [data for data, _ in receive(backend, 2)] == [b"again"] * 2
    assert relay.stats.source_refused == 2


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("cls", IMPLS)
def test_no_flow_socket_eats_into_the_descriptor_reserve(net: Net, cls: RelayFactory) -> None:
    backend = net.udp()
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    relay = net.relay(cls, [backend.getsockname()], Recorder(), fd_reserve=limit)
    client = net.udp()
    before = _open_fds()
    for i in range(3):
        client.sendto(b"x", relay.local_address)
        pump(relay, float(i), lambda i=i: relay.stats.unrouted == i + 1)

    assert _open_fds() == before  # each socket was closed again at once
    stats = relay.stats
    assert (stats.fd_refused, stats.active_flows, stats.to_backends) == (3, 0, 0)
    assert nothing_waiting(backend)


@pytest.mark.parametrize("cls", IMPLS)
def test_backend_down_is_counted_and_the_next_datagram_chooses_again(
    net: Net, cls: RelayFactory
) -> None:
    alive = net.udp()
    choose = Recorder()
    reports = Reports()
    relay = net.relay(cls, [dead_port(), alive.getsockname()], choose, report=reports)
    client = net.udp()
    choose.plan[client.getsockname()[1]] = 0
    client.sendto(b"first", relay.local_address)

    pump(relay, 0.0, lambda: relay.stats.backend_refused == 1)

    stats = relay.stats
    assert (stats.flows_failed, stats.active_flows, stats.refused_by_backend) == (1, 0, (1, 0))
    assert reports.calls == [(0, FlowOutcome.REFUSED, 0.0)]
    choose.plan[client.getsockname()[1]] = 1  # the policy learnt that backend 0 is down
    client.sendto(b"second", relay.local_address)
    pump(relay, 1.0, lambda: relay.stats.to_backends == 2)
    assert alive.recvfrom(100)[0] == b"second"
    assert len(choose.calls) == 2


@pytest.mark.parametrize("cls", IMPLS)
@pytest.mark.parametrize(
    ("answer", "counter"),
    [
        (None, "no_backend"),
        (RuntimeError("policy bug"), "choose_errors"),
        (2, "choose_errors"),  # out of range
        (True, "choose_errors"),  # a bool is not an index
        ("0", "choose_errors"),
    ],
)
def test_clients_without_a_backend_are_dropped_and_counted(
    net: Net, cls: RelayFactory, answer: object, counter: str
) -> None:
    backend = net.udp()
    choose = Recorder()
    relay = net.relay(cls, [backend.getsockname(), backend.getsockname()], choose)
    client = net.udp()
    choose.plan[client.getsockname()[1]] = answer
    for i in range(3):
        client.sendto(b"x%d" % i, relay.local_address)

    pump(relay, 0.0, lambda: relay.stats.unrouted == 3)

    stats = asdict(relay.stats)
    assert stats[counter] == 3  # asked again for each datagram: no flow was made
    assert (stats["active_flows"], stats["to_backends"]) == (0, 0)
    assert nothing_waiting(backend)


@pytest.mark.parametrize("cls", IMPLS)
def test_choose_may_close_the_relay(net: Net, cls: RelayFactory) -> None:
    backend = net.udp()
    relays: list[Relay] = []

    def close_it(client: Address) -> int:
        relays[0].close()
        return 0

    relays.append(net.relay(cls, [backend.getsockname()], close_it))
    net.udp().sendto(b"x", relays[0].local_address)
    select.select([relays[0].fileno()], [], [], TIMEOUT)

    assert relays[0].relay_front(0.0) == 1
    assert relays[0].stats.active_flows == 0
    with pytest.raises(OSError, match="closed"):
        relays[0].relay_front(0.0)
    relays[0].close()  # idempotent


# -- backend health ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", IMPLS)
def test_a_flows_first_reply_is_reported_once(net: Net, cls: RelayFactory) -> None:
    backend = net.udp()
    reports = Reports()
    relay = net.relay(cls, [backend.getsockname()], Recorder(), report=reports, reply_timeout=5.0)
    client = net.udp()
    for i in range(3):
        client.sendto(b"q%d" % i, relay.local_address)
    pump(relay, 1.0, relayed(relay, 3))
    echo(backend, 3)
    pump(relay, 2.0, lambda: relay.stats.to_clients == 3)
    client.sendto(b"q3", relay.local_address)
    pump(relay, 3.0, relayed(relay, 4))
    echo(backend, 1)
    pump(relay, 4.0, lambda: relay.stats.to_clients == 4)

    assert reports.calls == [(0, FlowOutcome.ANSWERED, 2.0)]
    assert len(receive(client, 4)) == 4


@pytest.mark.parametrize("cls", IMPLS)
def test_a_silent_backend_is_reported_before_the_client_chooses_again(
    net: Net, cls: RelayFactory
) -> None:
    silent, alive = net.udp(), net.udp()
    events: list[object] = []

    def choose(client: Address) -> int:
        events.append("choose")
        return 0 if events == ["choose"] else 1

    def report(backend: int, outcome: FlowOutcome, now: float) -> None:
        events.append((backend, outcome, now))

    relay = net.relay(
        cls, [silent.getsockname(), alive.getsockname()], choose, report=report,
        reply_timeout=5.0,
    )  # fmt: skip
    client = net.udp()
    for i, now in enumerate([10.0, 12.0, 14.0, 14.9]):  # unanswered, for less than 5 s
        client.sendto(b"q%d" % i, relay.local_address)
        pump(relay, now, relayed(relay, i + 1))
    assert events == ["choose"]

    client.sendto(b"q4", relay.local_address)
    pump(relay, 15.0, relayed(relay, 5))

    assert events == ["choose", (0, FlowOutcome.SILENT, 15.0), "choose"]
    assert [data for data, _ in receive(silent, 4)] == [b"q0", b"q1", b"q2", b"q3"]
    assert alive.recvfrom(100)[0] == b"q4"
    stats = relay.stats
    assert (stats.flows_silent, stats.silent_by_backend, stats.flows_failed) == (1, (1, 0), 0)
    assert (stats.flows_opened, stats.active_flows) == (2, 1)


@pytest.mark.parametrize("cls", IMPLS)
def test_a_reply_or_a_long_pause_starts_the_silence_count_again(
    net: Net, cls: RelayFactory
) -> None:
    backend = net.udp()
    reports = Reports()
    relay = net.relay(cls, [backend.getsockname()], Recorder(), report=reports, reply_timeout=5.0)
    client = net.udp()

    def send(now: float) -> None:
        client.sendto(b"at %g" % now, relay.local_address)
        pump(relay, now, relayed(relay, relay.stats.to_backends + 1))

    send(0.0)
    echo(backend, 1)
    pump(relay, 3.0, lambda: relay.stats.to_clients == 1)  # answered at 3
    send(4.0)
    send(8.5)  # unanswered since 4
    send(15.0)  # a pause of 6.5 s: counting starts again at 15
    send(19.9)
    assert reports.calls == [(0, FlowOutcome.ANSWERED, 3.0)]
    send(20.0)  # 5 s unanswered, sending all along

    assert reports.calls[1:] == [(0, FlowOutcome.SILENT, 20.0)]
    assert (relay.stats.flows_silent, relay.stats.flows_opened) == (1, 2)


@pytest.mark.parametrize("cls", IMPLS)
def test_a_client_left_unanswered_by_a_backend_answering_others_is_ignored(
    net: Net, cls: RelayFactory
) -> None:
    backend = net.udp()
    reports = Reports()
    relay = net.relay(cls, [backend.getsockname()], Recorder(), report=reports, reply_timeout=5.0)
    junk, good = net.udp(), net.udp()

    def send(client: socket.socket, data: bytes, now: float) -> Address:
        client.sendto(data, relay.local_address)
        pump(relay, now, relayed(relay, relay.stats.to_backends + 1))
        got, source = backend.recvfrom(100)
        assert got == data
        return source

    send(junk, b"junk", 0.0)  # a backend ignores junk: never answered
    backend.sendto(b"re", send(good, b"good", 1.0))
    pump(relay, 2.0, lambda: relay.stats.to_clients == 1)  # the backend is alive at 2
    send(junk, b"junk", 3.0)
    assert reports.calls == [(0, FlowOutcome.ANSWERED, 2.0)]
    send(junk, b"junk", 5.5)  # unanswered for 5.5 s, sending all along

    assert reports.calls[1:] == [(0, FlowOutcome.IGNORED, 5.5)]
    stats = relay.stats
    assert (stats.flows_ignored, stats.flows_silent, stats.silent_by_backend) == (1, 0, (0,))
    assert (stats.flows_opened, stats.active_flows) == (3, 2)


@pytest.mark.parametrize("cls", IMPLS)
def test_without_reply_timeout_an_unanswered_flow_stays(net: Net, cls: RelayFactory) -> None:
    backend = net.udp()
    reports = Reports()
    relay = net.relay(cls, [backend.getsockname()], Recorder(), report=reports)
    client = net.udp()
    for i in range(4):
        client.sendto(b"q%d" % i, relay.local_address)
        pump(relay, 4.0 * i, relayed(relay, i + 1))

    assert (relay.stats.flows_opened, relay.stats.flows_silent, reports.calls) == (1, 0, [])


@pytest.mark.parametrize("cls", IMPLS)
def test_a_failing_report_is_counted_and_relaying_goes_on(net: Net, cls: RelayFactory) -> None:
    backend = net.udp()

    def report(backend: int, outcome: FlowOutcome, now: float) -> None:
        raise RuntimeError("health layer bug")

    relay = net.relay(cls, [backend.getsockname()], Recorder(), report=report)
    client = net.udp()
    client.sendto(b"q", relay.local_address)
    pump(relay, 0.0, relayed(relay, 1))
    echo(backend, 1)
    pump(relay, 0.0, lambda: relay.stats.to_clients == 1)

    assert client.recvfrom(100)[0] == b"re:q"
    assert (relay.stats.report_errors, relay.stats.active_flows) == (1, 1)


@pytest.mark.parametrize("cls", IMPLS)
def test_report_may_close_the_relay(net: Net, cls: RelayFactory) -> None:
    backend = net.udp()
    relays: list[Relay] = []

    def close_it(backend: int, outcome: FlowOutcome, now: float) -> None:
        relays[0].close()

    relays.append(net.relay(cls, [backend.getsockname()], Recorder(), report=close_it))
    client = net.udp()
    client.sendto(b"q", relays[0].local_address)
    pump(relays[0], 0.0, relayed(relays[0], 1))
    echo(backend, 1)
    select.select([relays[0].upstream_fileno()], [], [], TIMEOUT)

    assert relays[0].relay_upstream(0.0) == 1
    assert (relays[0].stats.active_flows, relays[0].stats.to_clients) == (0, 0)
    with pytest.raises(OSError, match="closed"):
        relays[0].relay_upstream(0.0)


# -- both implementations, one scenario ------------------------------------------------------


def _scenario(net: Net, cls: RelayFactory) -> tuple[dict[str, Any], list[list[bytes]]]:
    """Flows opened, refused, evicted, failed, expired; return stats and what the backend got."""
    backend = net.udp()
    choose = Recorder()
    relay = net.relay(
        cls, [backend.getsockname(), dead_port()], choose, max_flows=2, idle_timeout=10.0,
        batch=4,
    )  # fmt: skip
    c0, c1, c2, c3 = clients = [net.udp() for _ in range(4)]
    port = [c.getsockname()[1] for c in clients]
    choose.plan = {port[2]: 1, port[3]: None}

    for i in range(5):
        c0.sendto(payload(0, i), relay.local_address)
        c1.sendto(payload(1, i), relay.local_address)
    pump(relay, 0.0, lambda: relay.stats.to_backends == 10)
    arrived = echo(backend, 10)
    pump(relay, 0.0, lambda: relay.stats.to_clients == 10)
    c2.sendto(b"refused", relay.local_address)  # full of active flows
    pump(relay, 1.0, lambda: relay.stats.flows_refused == 1)
    c2.sendto(b"to the dead one", relay.local_address)  # evicts an idle flow
    pump(relay, 20.0, lambda: relay.stats.backend_refused == 1)
    c3.sendto(b"no backend", relay.local_address)  # evicts the other idle flow
    pump(relay, 20.0, lambda: relay.stats.no_backend == 1)
    choose.plan[port[3]] = ValueError("policy bug")
    c3.sendto(b"choose fails", relay.local_address)
    pump(relay, 21.0, lambda: relay.stats.choose_errors == 1)
    c0.sendto(b"back", relay.local_address)
    pump(relay, 22.0, lambda: relay.stats.to_backends == 12)  # 11: the dead one's
    relay.expire(40.0)

    got: dict[Address, list[bytes]] = {}
    for data, source in arrived + receive(backend, 1):
        got.setdefault(source, []).append(data)
    stats = asdict(relay.stats)
    for batching in ("syscalls_recv", "syscalls_send", "gso_sends", "gso_fallbacks"):
        del stats[batching]  # the reference sends datagram by datagram
    return stats, sorted(got.values())


def test_native_and_reference_agree(net: Net) -> None:
    if not HAVE_NATIVE:
        pytest.skip("Cython extension not built")
    native = _scenario(net, UdpRelay)
    reference = _scenario(net, PyUdpRelay)

    assert native == reference
    stats, got = native
    assert got == [
        [b"back"],
        [payload(0, i) for i in range(5)],
        [payload(1, i) for i in range(5)],
    ]
    assert stats == {
        "from_clients": 15, "to_backends": 12, "from_backends": 10, "to_clients": 10,
        "bytes_from_clients": 10 * 40 + 48, "bytes_to_backends": 10 * 40 + 15 + 4,
        "bytes_from_backends": 10 * 43, "bytes_to_clients": 10 * 43,
        "active_flows": 0, "flows_opened": 4, "flows_expired": 3, "flows_failed": 1,
        "flows_silent": 0, "flows_ignored": 0, "flows_evicted": 0, "flows_retired": 0,
        "flows_refused": 1,
        "source_refused": 0, "fd_refused": 0, "backend_refused": 1, "no_backend": 1,
        "choose_errors": 1, "open_errors": 0, "report_errors": 0, "unrouted": 3,
        "send_errors": 0, "recv_truncated": 0, "refused_by_backend": (0, 1),
        "silent_by_backend": (0, 0),
    }  # fmt: skip


def _flood_scenario(net: Net, cls: RelayFactory) -> dict[str, Any]:
    """Clients from three addresses against a small table with a per-source cap; the
    backend answers only the first client of each address; time moves on."""
    backend = net.udp()
    relay = net.relay(
        cls, [backend.getsockname()], Recorder(), max_flows=4, max_flows_per_source=2,
        idle_timeout=10.0, batch=8,
    )  # fmt: skip
    hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    clients = [net.udp((socket.AF_INET, host)) for host in hosts for _ in range(3)]
    answered: set[Address] = set()
    sent = 0
    for step in range(6):
        now = 3.0 * step
        for i, client in enumerate(clients):
            if (i + step) % 2 == 0:
                client.sendto(b"s%d-c%d" % (step, i), relay.local_address)
                sent += 1
        pump(relay, now, lambda sent=sent: relay.stats.from_clients == sent)
        while not nothing_waiting(backend):
            data, source = backend.recvfrom(100)
            client = int(data.split(b"-c")[1])
            if client % 3 == 0:  # the first client of each address
                backend.sendto(b"re:" + data, source)
                answered.add(source)
        pump(relay, now, lambda: nothing_waiting(backend))
        relay.relay_upstream(now)
    stats = asdict(relay.stats)
    for batching in ("syscalls_recv", "syscalls_send", "gso_sends", "gso_fallbacks"):
        del stats[batching]
    return stats


def test_native_and_reference_agree_under_a_flood(net: Net) -> None:
    if not HAVE_NATIVE:
        pytest.skip("Cython extension not built")
    native = _flood_scenario(net, UdpRelay)
    reference = _flood_scenario(net, PyUdpRelay)

    assert native == reference
    assert native["flows_evicted"] > 0
    assert native["source_refused"] > 0
    assert native["to_clients"] > 0


# -- options, addresses, lifecycle ---------------------------------------------------------


@pytest.mark.parametrize("cls", IMPLS)
@pytest.mark.parametrize(
    ("listen", "backends", "options", "words"),
    [
        (("127.0.0.1", 0), [], {}, "backends must name"),
        (("localhost", 0), [("127.0.0.1", 9)], {}, "listen must be a numeric"),
        (("127.0.0.1", 0), [("127.0.0.1", 0)], {}, "backends[0] port"),
        (("127.0.0.1", 0), [("127.0.0.1", 9, 0, 0)], {}, "backends[0] must be a numeric"),
        (("127.0.0.1", 0), ["127.0.0.1:9"], {}, "backends[0] must be a (host, port)"),
        (("127.0.0.1", 0), [("127.0.0.1", 9)], {"max_flows": 0}, "max_flows"),
        (("127.0.0.1", 0), [("127.0.0.1", 9)], {"idle_timeout": 0}, "idle_timeout"),
        (("127.0.0.1", 0), [("127.0.0.1", 9)], {"idle_timeout": math.nan}, "idle_timeout"),
        (("127.0.0.1", 0), [("127.0.0.1", 9)], {"batch": 0}, "batch"),
        (("127.0.0.1", 0), [("127.0.0.1", 9)], {"rcvbuf": -1}, "rcvbuf"),
        (("127.0.0.1", 0), [("127.0.0.1", 9)], {"reply_timeout": 0}, "reply_timeout"),
        (("127.0.0.1", 0), [("127.0.0.1", 9)], {"reply_timeout": math.inf}, "reply_timeout"),
        (("127.0.0.1", 0), [("127.0.0.1", 9)], {"reply_timeout": "5"}, "reply_timeout"),
        (("127.0.0.1", 0), [("127.0.0.1", 9)], {"report": 1}, "report must be callable"),
    ],
)
def test_bad_options_are_named(
    cls: RelayFactory, listen: Any, backends: Any, options: dict[str, Any], words: str
) -> None:
    with pytest.raises((TypeError, ValueError), match=re.escape(words)):
        cls(listen, backends, lambda client: 0, **options)


@pytest.mark.parametrize("cls", IMPLS)
def test_choose_must_be_callable(cls: RelayFactory) -> None:
    with pytest.raises(TypeError, match="choose must be callable"):
        cls(("127.0.0.1", 0), [("127.0.0.1", 9)], 0)


@pytest.mark.parametrize("cls", IMPLS)
def test_close_releases_every_flow(net: Net, cls: RelayFactory) -> None:
    backend = net.udp()
    relay = net.relay(cls, [backend.getsockname()], Recorder())
    for _ in range(3):
        net.udp().sendto(b"x", relay.local_address)
    pump(relay, 0.0, lambda: relay.stats.active_flows == 3)
    flows = {source for _, source in receive(backend, 3)}

    relay.close()

    assert relay.stats.active_flows == 0
    for flow in flows:  # their sockets are gone: the port answers ICMP unreachable
        backend.sendto(b"late", flow)
    with pytest.raises(OSError, match="closed"):
        relay.relay_upstream(0.0)


@settings(max_examples=100, deadline=None)
@given(
    st.one_of(
        st.tuples(st.ip_addresses(v=4).map(str), st.integers(1, 65535)),
        st.tuples(
            st.ip_addresses(v=6).map(str),
            st.integers(1, 65535),
            st.integers(0, (1 << 20) - 1),
            st.integers(0, (1 << 32) - 1),
        ),
    )
)
def test_sockaddr_round_trips(addr: Address) -> None:
    raw = sockaddr_bytes(addr)
    assert len(raw) == (16 if len(addr) == 2 else 28)
    back = address_of(raw)
    family = socket.AF_INET if len(addr) == 2 else socket.AF_INET6
    assert socket.inet_pton(family, back[0]) == socket.inet_pton(family, addr[0])
    assert back[1:] == addr[1:]


# -- the flow-table rules, against a model -----------------------------------------------------

_OPS = st.lists(
    st.tuples(st.sampled_from(["open", "find", "remove", "expire"]), st.integers(0, 7),
              st.floats(0, 5)),
    max_size=60,
)  # fmt: skip
IDLE = 3.0


@settings(max_examples=150, deadline=None)
@given(_OPS, st.integers(1, 5))
def test_flow_table_evicts_only_idle_flows_oldest_first(
    ops: list[tuple[str, int, float]], max_flows: int
) -> None:
    table: FlowTable[int, int] = FlowTable(max_flows, idle_timeout=IDLE)
    model: dict[int, tuple[float, int]] = {}  # key → (last active, touch number)
    now = 0.0
    for touch, (op, key, step) in enumerate(ops):
        now += step
        if op == "find":
            assert table.find(key, now) == (key if key in model else None)
            if key in model:
                model[key] = (now, touch)
        elif op == "remove":
            assert table.remove(key) == (key if key in model else None)
            model.pop(key, None)
        elif op == "expire":
            while (flow := table.pop_idle(now)) is not None:
                assert flow == min(model, key=model.__getitem__)
                assert now - model.pop(flow)[0] >= IDLE
            assert all(now - last < IDLE for last, _ in model.values())
        elif key not in model:  # open, making room only from idle flows
            if table.full:
                oldest = min(model, key=model.__getitem__)
                victim = table.pop_idle(now)
                if now - model[oldest][0] < IDLE:
                    assert victim is None
                    continue
                assert victim == oldest
                del model[oldest]
            table.add(key, key, now)
            model[key] = (now, touch)
        assert len(table) == len(model) <= max_flows
        assert sorted(table.values()) == sorted(model)


_OPS_WITH_REPLIES = st.lists(
    st.tuples(st.sampled_from(["open", "find", "answer", "remove", "expire"]),
              st.integers(0, 7), st.floats(0, 5)),
    max_size=60,
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(_OPS_WITH_REPLIES, st.integers(1, 5), st.integers(1, 3))
def test_flow_table_drops_never_answered_flows_early_and_caps_sources(
    ops: list[tuple[str, int, float]], max_flows: int, per_source: int
) -> None:
    """Keys 0..7 come from sources key % 2; making room takes an idle flow, else the
    oldest never-answered one (by opening), else fails."""
    table: FlowTable[int, int] = FlowTable(
        max_flows, idle_timeout=IDLE, max_per_source=per_source, source=lambda key: key % 2
    )
    model: dict[int, tuple[float, int]] = {}  # key → (last active, touch number)
    opened: list[int] = []  # never-answered keys, oldest opening first
    now = 0.0
    for touch, (op, key, step) in enumerate(ops):
        now += step
        if op == "find":
            assert table.find(key, now) == (key if key in model else None)
            if key in model:
                model[key] = (now, touch)
        elif op == "answer":
            table.answered(key)
            if key in opened:
                opened.remove(key)
        elif op == "remove":
            assert table.remove(key) == (key if key in model else None)
            model.pop(key, None)
            if key in opened:
                opened.remove(key)
        elif op == "expire":
            while (flow := table.pop_idle(now)) is not None:
                assert now - model.pop(flow)[0] >= IDLE
                if flow in opened:
                    opened.remove(flow)
        elif key not in model:
            same_source = sum(1 for k in model if k % 2 == key % 2)
            assert table.source_full(key) == (same_source >= per_source)
            if same_source >= per_source:
                continue
            if table.full:
                oldest = min(model, key=model.__getitem__)
                victim = table.pop_idle(now)
                if now - model[oldest][0] >= IDLE:
                    assert victim == oldest
                else:
                    assert victim is None
                    victim = table.pop_unanswered()
                    assert victim == (opened[0] if opened else None)
                    if victim is None:
                        continue
                del model[victim]
                if victim in opened:
                    opened.remove(victim)
            table.add(key, key, now)
            model[key] = (now, touch)
            opened.append(key)
        assert len(table) == len(model) <= max_flows
        assert sorted(table.values()) == sorted(model)


# -- the silence rule, against a model -----------------------------------------------------------

REPLY_TIMEOUT = 2.0


def _silent_by_model(sends: list[float], now: float) -> bool:
    """Unanswered sends (since the last reply) reaching back REPLY_TIMEOUT without a long pause."""
    if not sends or now - sends[-1] > REPLY_TIMEOUT:
        return False
    start = sends[-1]
    for earlier, later in zip(reversed(sends[:-1]), reversed(sends[1:]), strict=True):
        if later - earlier > REPLY_TIMEOUT:
            break
        start = earlier
    return now - start >= REPLY_TIMEOUT


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.floats(0, 3)), max_size=60))
def test_reply_watch_follows_the_silence_rule(events: list[tuple[bool, float]]) -> None:
    watch = ReplyWatch(REPLY_TIMEOUT)
    sends: list[float] = []  # the client's datagrams since the flow's last reply
    now = 0.0
    for is_reply, step in events:
        now += step
        if is_reply:
            first = not watch.answered
            assert watch.replied() is first
            sends = []
            continue
        silent = watch.silent(now)
        assert silent == _silent_by_model(sends, now)
        if silent:  # the relay replaces the flow
            watch, sends = ReplyWatch(REPLY_TIMEOUT), []
        watch.sent(now)
        sends.append(now)
