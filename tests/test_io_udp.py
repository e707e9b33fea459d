"""Batched UDP I/O on real loopback sockets: the Cython socket against the Python reference.

Every socket test runs on both implementations (the native one is skipped
where it is not built); every attach() test also runs on asyncio and uvloop.
"""

from __future__ import annotations

import asyncio
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from netsched_client.io import (
    HAVE_NATIVE,
    MAX_BATCHES_PER_WAKEUP,
    Address,
    BatchedUdpSocket,
    Datagram,
    PyUdpSocket,
    UdpSocket,
    attach,
)
from netsched_client.io._common import IP_MTU_DISCOVER, IPV6_MTU_DISCOVER, PMTUDISC_PROBE
from netsched_client.runtime.endpoint import quic_socket_setup

SocketFactory = Callable[..., UdpSocket]
Runner = Callable[[Coroutine[Any, Any, None]], None]


def _have_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


NATIVE = pytest.param(
    BatchedUdpSocket,
    id="native",
    marks=pytest.mark.skipif(not HAVE_NATIVE, reason="Cython extension not built"),
)
IMPLS = [NATIVE, pytest.param(PyUdpSocket, id="python")]
FAMILIES = [
    pytest.param((socket.AF_INET, "127.0.0.1"), id="v4"),
    pytest.param(
        (socket.AF_INET6, "::1"),
        id="v6",
        marks=pytest.mark.skipif(not _have_ipv6(), reason="::1 is not available here"),
    ),
]
V4 = (socket.AF_INET, "127.0.0.1")


@pytest.fixture
def sockets() -> Iterator[Callable[..., UdpSocket]]:
    """open(cls, family_host, **options): a socket on loopback, closed after the test."""
    with ExitStack() as stack:

        def open_(cls: SocketFactory, where: tuple[int, str], **options: Any) -> UdpSocket:
            family, host = where
            sock = cls(family, (host, 0), **options)
            stack.callback(sock.close)
            return sock

        yield open_


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def run_(coro: Coroutine[Any, Any, None]) -> None:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(coro)

    return run_


@contextmanager
def _closing(sock: UdpSocket) -> Iterator[UdpSocket]:
    try:
        yield sock
    finally:
        sock.close()


def receive(sock: UdpSocket, count: int, timeout: float = 5.0) -> list[Datagram]:
    """Read until `count` datagrams arrived or `timeout` passed (then return what came)."""
    got: list[Datagram] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        select.select([sock.fileno()], [], [], left)
        got += sock.recv_batch()
    return got


def payload(index: int, size: int) -> bytes:
    """Distinct, self-describing contents so reordering or mixing cannot go unnoticed."""
    stamp = index.to_bytes(4, "big")
    return (stamp * (size // 4 + 1))[:size]


def mixed_batch(a: Address, b: Address) -> list[Datagram]:
    """GSO-friendly runs (with short tails), interleaved destinations, odd and empty sizes."""
    plan = (
        [(1200, a)] * 20
        + [(700, a)]
        + [(200, b)] * 10
        + [(1200, a), (200, b)] * 5
        + [(0, b), (1, a), (1300, a), (1300, a), (1400, a), (65, b)]
        + [(1200, b)] * 3
        + [(1000, b)]
    )
    return [(payload(i, size), addr) for i, (size, addr) in enumerate(plan)]


def by_destination(batch: list[Datagram], addr: Address) -> list[bytes]:
    return [data for data, dest in batch if dest == addr]


# -- round trips ----------------------------------------------------------------


@pytest.mark.parametrize("where", FAMILIES)
@pytest.mark.parametrize("cls", IMPLS)
@pytest.mark.parametrize("offload", [True, False], ids=["offload", "no-offload"])
def test_mixed_batch_round_trips_exactly(
    sockets: Callable[..., UdpSocket], cls: SocketFactory, where: tuple[int, str], offload: bool
) -> None:
    sender = sockets(cls, where, gso=offload)
    first = sockets(cls, where, gro=offload)
    second = sockets(cls, where, gro=offload)
    batch = mixed_batch(first.local_address, second.local_address)

    assert sender.send_batch(batch) == len(batch)

    for receiver in (first, second):
        expected = by_destination(batch, receiver.local_address)
        got = receive(receiver, len(expected))
        assert [data for data, _ in got] == expected
        assert {source for _, source in got} == {sender.local_address}
        assert receiver.stats.datagrams_received == len(expected)
    stats = sender.stats
    assert stats.datagrams_sent == len(batch)
    assert stats.send_errors == stats.send_overflow == 0
    assert sender.pending == 0
    if cls is BatchedUdpSocket and HAVE_NATIVE:
        assert stats.syscalls_send == 1  # the whole batch in one sendmmsg
        assert (stats.gso_sends > 0) is offload


@pytest.mark.parametrize("cls", IMPLS)
def test_hard_send_error_drops_only_that_datagram(
    sockets: Callable[..., UdpSocket], cls: SocketFactory
) -> None:
    sender = sockets(cls, V4)
    receiver = sockets(cls, V4)
    to = receiver.local_address
    batch = [(b"a" * 100, to), (b"b" * 70_000, to), (b"c" * 100, to), (b"d" * 100, to)]

    assert sender.send_batch(batch) == 3  # 70 000 B exceeds a UDP datagram: EMSGSIZE

    assert [data for data, _ in receive(receiver, 3)] == [b"a" * 100, b"c" * 100, b"d" * 100]
    assert (sender.stats.send_errors, sender.pending) == (1, 0)


def test_native_hands_out_one_address_object_per_peer(sockets: Callable[..., UdpSocket]) -> None:
    """The cached source tuple: no per-datagram address objects, stable for dict lookups."""
    if not HAVE_NATIVE:
        pytest.skip("Cython extension not built")
    senders = [sockets(BatchedUdpSocket, V4, gso=False) for _ in range(3)]
    receiver = sockets(BatchedUdpSocket, V4)
    for _ in range(4):
        for sender in senders:
            sender.send_batch([(b"x", receiver.local_address)] * 5)

    got = receive(receiver, 60)

    assert len(got) == 60
    assert len({id(source) for _, source in got}) == 3
    assert {source for _, source in got} == {sender.local_address for sender in senders}


@pytest.mark.parametrize("where", FAMILIES)
def test_implementations_agree(sockets: Callable[..., UdpSocket], where: tuple[int, str]) -> None:
    """Native (GSO) → Python and Python → native (GRO) deliver what Python → Python does."""
    if not HAVE_NATIVE:
        pytest.skip("Cython extension not built")
    results = []
    for send_cls, receive_cls in [
        (PyUdpSocket, PyUdpSocket),
        (BatchedUdpSocket, PyUdpSocket),
        (PyUdpSocket, BatchedUdpSocket),
        (BatchedUdpSocket, BatchedUdpSocket),
    ]:
        sender = sockets(send_cls, where)
        receiver = sockets(receive_cls, where)
        batch = mixed_batch(receiver.local_address, receiver.local_address)
        sender.send_batch(batch)
        got = receive(receiver, len(batch))
        assert {source for _, source in got} == {sender.local_address}
        results.append([data for data, _ in got])
    assert results[0] == [data for data, _ in batch]
    assert all(result == results[0] for result in results)


@pytest.mark.parametrize(("size", "runs"), [(1200, [54, 54, 54, 38]), (200, [64, 64, 64, 8])])
def test_gso_runs_respect_kernel_limits(
    sockets: Callable[..., UdpSocket], size: int, runs: list[int]
) -> None:
    """Runs stop at 64 segments and at one IP packet's payload; boundaries survive."""
    if not HAVE_NATIVE:
        pytest.skip("Cython extension not built")
    sender = sockets(BatchedUdpSocket, V4)
    receiver = sockets(BatchedUdpSocket, V4, gro=False)  # the kernel re-segments for us
    batch = [(payload(i, size), receiver.local_address) for i in range(sum(runs))]

    assert sender.send_batch(batch) == len(batch)

    assert [data for data, _ in receive(receiver, len(batch))] == [data for data, _ in batch]
    assert sender.stats.gso_sends == len(runs)
    assert receiver.stats.gro_batches == 0


def test_gro_splits_super_datagrams(sockets: Callable[..., UdpSocket]) -> None:
    if not HAVE_NATIVE:
        pytest.skip("Cython extension not built")
    sender = sockets(BatchedUdpSocket, V4, ecn=1)
    receiver = sockets(BatchedUdpSocket, V4)
    assert receiver.gro_enabled
    batch = [(payload(i, 1000), receiver.local_address) for i in range(30)]
    batch.append((payload(30, 300), receiver.local_address))

    sender.send_batch(batch)
    got = receive(receiver, len(batch))

    assert [data for data, _ in got] == [data for data, _ in batch]
    assert receiver.stats.gro_batches == 1  # one super-datagram on loopback
    assert receiver.last_ecn == b"\x01" * len(batch)  # every segment inherits the mark


@pytest.mark.parametrize("cls", IMPLS)
def test_options_off_means_plain_datagrams(
    sockets: Callable[..., UdpSocket], cls: SocketFactory
) -> None:
    sender = sockets(cls, V4, gso=False)
    receiver = sockets(cls, V4, gro=False)
    assert not sender.gso_enabled
    assert not receiver.gro_enabled
    batch = [(payload(i, 1200), receiver.local_address) for i in range(40)]

    sender.send_batch(batch)

    assert [data for data, _ in receive(receiver, 40)] == [data for data, _ in batch]
    assert sender.stats.gso_sends == receiver.stats.gro_batches == 0


def test_gso_refused_at_run_time_falls_back(sockets: Callable[..., UdpSocket]) -> None:
    """SO_NO_CHECK makes the kernel refuse UDP GSO (EINVAL): switch it off, lose nothing."""
    if not HAVE_NATIVE:
        pytest.skip("Cython extension not built")
    sender = sockets(BatchedUdpSocket, V4)
    receiver = sockets(BatchedUdpSocket, V4)
    with socket.fromfd(sender.fileno(), socket.AF_INET, socket.SOCK_DGRAM) as same_socket:
        same_socket.setsockopt(socket.SOL_SOCKET, 11, 1)  # SO_NO_CHECK
    batch = [(payload(i, 1200), receiver.local_address) for i in range(20)]

    assert sender.send_batch(batch) == 20
    assert sender.send_batch(batch) == 20

    assert [data for data, _ in receive(receiver, 40)] == [data for data, _ in batch] * 2
    stats = sender.stats
    assert not sender.gso_enabled
    assert (stats.gso_fallbacks, stats.gso_sends, stats.send_errors) == (1, 0, 0)


# -- receive edge cases -----------------------------------------------------------


@pytest.mark.parametrize("cls", IMPLS)
def test_empty_socket_reads_nothing(sockets: Callable[..., UdpSocket], cls: SocketFactory) -> None:
    receiver = sockets(cls, V4)
    assert receiver.recv_batch() == []
    assert receiver.last_ecn == b""
    assert receiver.stats.syscalls_recv >= 1


@pytest.mark.parametrize("cls", IMPLS)
def test_full_receive_buffer_drops_whole_datagrams(
    sockets: Callable[..., UdpSocket], cls: SocketFactory
) -> None:
    """A tiny SO_RCVBUF overflows: what arrives is an in-order, intact prefix-free subset."""
    sender = sockets(cls, V4, gso=False)
    receiver = sockets(cls, V4, rcvbuf=1)  # the kernel rounds up to its minimum
    batch = [(payload(i, 1200), receiver.local_address) for i in range(200)]

    assert sender.send_batch(batch) == 200  # UDP: the kernel takes them, then drops

    got = [data for data, _ in receive(receiver, 200, timeout=0.2)]
    assert 0 < len(got) < 200
    sent = [data for data, _ in batch]
    assert got == sorted(got, key=sent.index)
    assert set(got) <= set(sent)
    assert receiver.recv_batch() == []


@pytest.mark.parametrize("where", FAMILIES)
@pytest.mark.parametrize("cls", IMPLS)
@pytest.mark.parametrize("ecn", [0, 2, 3])
def test_ecn_marks_round_trip(
    sockets: Callable[..., UdpSocket], cls: SocketFactory, where: tuple[int, str], ecn: int
) -> None:
    sender = sockets(cls, where, ecn=ecn)
    receiver = sockets(cls, where)
    batch = [(payload(i, 100 + i), receiver.local_address) for i in range(5)]
    sender.send_batch(batch)

    got = receive(receiver, 5)

    assert len(got) == 5
    assert receiver.last_ecn == bytes([ecn]) * 5


def test_any_batch_round_trips(sockets: Callable[..., UdpSocket]) -> None:
    """Whatever the sizes and destinations, each receiver gets its datagrams, in order."""
    cls = BatchedUdpSocket if HAVE_NATIVE else PyUdpSocket
    sender, first, second = (sockets(cls, V4) for _ in range(3))

    @settings(max_examples=40, deadline=None)
    @given(
        st.lists(
            st.tuples(st.sampled_from([0, 1, 17, 200, 1199, 1200, 1472]), st.booleans()),
            max_size=150,
        )
    )
    def check(plan: list[tuple[int, bool]]) -> None:
        batch = [
            (payload(i, size), (second if to_second else first).local_address)
            for i, (size, to_second) in enumerate(plan)
        ]
        assert sender.send_batch(batch) == len(batch)
        for receiver in (first, second):
            expected = by_destination(batch, receiver.local_address)
            assert [data for data, _ in receive(receiver, len(expected))] == expected

    check()


# -- bad input and lifecycle ----------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "error", "words"),
    [
        (("x", ("127.0.0.1", 9)), TypeError, "datagrams[2][0] must be bytes"),
        ([b"x", ("127.0.0.1", 9)], TypeError, "datagrams[2] must be a (bytes, address) tuple"),
        ((b"x", "127.0.0.1:9"), TypeError, "destination address must be a tuple"),
        ((b"x", ("localhost", 9)), ValueError, "numeric IPv4 address"),
        ((b"x", ("::1", 9)), ValueError, "numeric IPv4 address"),
        ((b"x", ("127.0.0.1", 0)), ValueError, "port must be an int 1..65535"),
        ((b"x", ("127.0.0.1", "9")), ValueError, "port must be an int 1..65535"),
        ((b"x", ("127.0.0.1", 9, 0, 0)), TypeError, "(host, port)"),
    ],
)
@pytest.mark.parametrize("cls", IMPLS)
def test_bad_datagrams_are_refused_whole(
    sockets: Callable[..., UdpSocket], cls: SocketFactory, item: Any, error: type, words: str
) -> None:
    sender = sockets(cls, V4)
    receiver = sockets(cls, V4)
    good = (b"ok", receiver.local_address)

    with pytest.raises(error) as raised:
        sender.send_batch([good, good, item])

    assert words in str(raised.value)
    assert sender.stats.syscalls_send == 0  # nothing left for half a batch
    assert receiver.recv_batch() == []


def test_both_implementations_word_errors_alike(sockets: Callable[..., UdpSocket]) -> None:
    if not HAVE_NATIVE:
        pytest.skip("Cython extension not built")
    messages = []
    for cls in (BatchedUdpSocket, PyUdpSocket):
        sock = sockets(cls, (socket.AF_INET6, "::1") if _have_ipv6() else V4)
        with pytest.raises(ValueError) as raised:
            sock.send_batch([(b"x", ("fe80::1%lo", 9, 0, 0))])
        messages.append(str(raised.value))
    assert messages[0] == messages[1]


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"family": 99}, "family must be AF_INET or AF_INET6"),
        ({"batch": 0}, "batch must be 1..1024"),
        ({"batch": 5000}, "batch must be 1..1024"),
        ({"rcvbuf": 0}, "rcvbuf must be positive"),
        ({"ecn": 4}, "ecn must be an ECN codepoint 0..3"),
        ({"max_pending": -1}, "max_pending must be >= 0"),
    ],
)
@pytest.mark.parametrize("cls", IMPLS)
def test_bad_options_are_named(cls: SocketFactory, options: dict[str, Any], words: str) -> None:
    options = dict(options)  # the parameter dict is shared between runs
    family = options.pop("family", socket.AF_INET)
    with pytest.raises(ValueError, match=words.replace(".", r"\.")):
        cls(family, ("127.0.0.1", 0), **options)


@pytest.mark.parametrize("cls", IMPLS)
def test_closed_socket_refuses_io(cls: SocketFactory) -> None:
    sock = cls(socket.AF_INET, ("127.0.0.1", 0))
    address = sock.local_address
    sock.close()
    sock.close()  # idempotent

    assert sock.fileno() == -1
    for call in (sock.recv_batch, sock.flush, lambda: sock.send_batch([(b"x", address)])):
        with pytest.raises(OSError, match="closed"):
            call()


def test_python_socket_is_selected_without_the_extension() -> None:
    script = (
        "import sys\n"
        "sys.modules['netsched_client.io._udp'] = None  # as if it was never built\n"
        "from netsched_client import io\n"
        "assert io.BatchedUdpSocket is io.PyUdpSocket and not io.HAVE_NATIVE\n"
    )
    subprocess.run([sys.executable, "-c", script], timeout=60, check=True)


def test_capped_buffers_warn_once_with_the_fix() -> None:
    """The kernel caps SO_RCVBUF at net.core.rmem_max: one warning naming the sysctl."""
    limit = int(Path("/proc/sys/net/core/rmem_max").read_text())
    script = (
        "import logging, socket\n"
        "from netsched_client.io import BatchedUdpSocket, PyUdpSocket\n"
        "logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')\n"
        "for cls in (BatchedUdpSocket, PyUdpSocket, BatchedUdpSocket):\n"
        f"    cls(socket.AF_INET, ('127.0.0.1', 0), rcvbuf={limit * 2}).close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1, done.stderr
    assert f"sysctl -w net.core.rmem_max={limit * 2}" in warnings[0]


# -- the event loop ----------------------------------------------------------------


@pytest.mark.parametrize("cls", IMPLS)
def test_attach_echoes_batches(run: Runner, cls: SocketFactory) -> None:
    """Client → echo server → client through attach(); one on_batch per batch read."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with (
            _closing(cls(socket.AF_INET, ("127.0.0.1", 0))) as server,
            _closing(cls(socket.AF_INET, ("127.0.0.1", 0))) as client,
        ):
            server_batches: list[list[Datagram]] = []
            echoed: list[Datagram] = []
            done = asyncio.Event()

            def serve(batch: list[Datagram]) -> None:
                server_batches.append(batch)
                server.send_batch([(data[::-1], source) for data, source in batch])

            def collect(batch: list[Datagram]) -> None:
                echoed.extend(batch)
                if len(echoed) == 300:
                    done.set()

            detach_server = attach(loop, server, serve)
            detach_client = attach(loop, client, collect)
            sent = [(payload(i, 1200 if i % 3 else 200), server.local_address) for i in range(300)]
            for start in range(0, 300, 50):
                client.send_batch(sent[start : start + 50])
                await asyncio.sleep(0)
            await asyncio.wait_for(done.wait(), 10)
            detach_client()
            detach_server()

        assert [data for data, _ in echoed] == [data[::-1] for data, _ in sent]
        assert {source for _, source in echoed} == {server.local_address}
        assert all(server_batches)
        assert sum(map(len, server_batches)) == 300
        if cls is BatchedUdpSocket and HAVE_NATIVE:
            assert len(server_batches) < 300  # batched, not one callback per datagram

    run(main())


@pytest.mark.parametrize("cls", IMPLS)
def test_attach_reads_a_bounded_number_of_batches_per_wakeup(
    run: Runner, cls: SocketFactory
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        # No GSO: 80 plain datagrams are ten batches of 8 to read.
        with (
            _closing(cls(socket.AF_INET, ("127.0.0.1", 0), batch=8)) as receiver,
            _closing(cls(socket.AF_INET, ("127.0.0.1", 0), gso=False)) as sender,
        ):
            per_wakeup: list[int] = []
            got: list[Datagram] = []
            done = asyncio.Event()

            def on_batch(batch: list[Datagram]) -> None:
                if not per_wakeup or per_wakeup[-1] < 0:
                    per_wakeup.append(0)
                    loop.call_soon(close_wakeup)  # runs after this reader callback returns
                per_wakeup[-1] += 1
                got.extend(batch)
                if len(got) == 80:
                    done.set()

            def close_wakeup() -> None:
                per_wakeup.append(-1)

            sender.send_batch([(payload(i, 100), receiver.local_address) for i in range(80)])
            detach = attach(loop, receiver, on_batch)
            await asyncio.wait_for(done.wait(), 10)
            detach()

        counts = [count for count in per_wakeup if count >= 0]
        assert sum(counts) >= 80 // 8
        assert max(counts) <= MAX_BATCHES_PER_WAKEUP
        assert len(counts) >= 3

    run(main())


@pytest.mark.parametrize("cls", IMPLS)
def test_detach_stops_callbacks(run: Runner, cls: SocketFactory) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with (
            _closing(cls(socket.AF_INET, ("127.0.0.1", 0))) as receiver,
            _closing(cls(socket.AF_INET, ("127.0.0.1", 0))) as sender,
        ):
            calls: list[list[Datagram]] = []
            detach = attach(loop, receiver, calls.append)
            detach()
            assert receiver.on_blocked is None
            sender.send_batch([(b"after detach", receiver.local_address)])
            await asyncio.sleep(0.05)
            assert calls == []
            assert [data for data, _ in receive(receiver, 1)] == [b"after detach"]

    run(main())


def test_dont_fragment_is_set_on_quic_sockets() -> None:
    """The PMTU search needs probes that fail when too big, not fragments."""
    calls: list[socket.socket] = []
    setup = quic_socket_setup(calls.append)
    for family in (socket.AF_INET, socket.AF_INET6):
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            setup(sock)
            assert sock.getsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER) == PMTUDISC_PROBE
            if family == socket.AF_INET6:
                assert sock.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER) == PMTUDISC_PROBE
    assert len(calls) == 2  # the caller's own setup still runs
