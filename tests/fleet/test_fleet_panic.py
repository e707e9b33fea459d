"""The front's panic threshold (issue #17), on real sockets with a real etcd.

When the front's own probing breaks, every worker leaves its probes unanswered
at once. Here the break is real and in the front's process: a classic BPF
filter that keeps 0 bytes of any datagram, attached to the front's probe
socket. The workers (real `EdgeServer`s) do answer; the kernel drops the
answers before they reach the socket, as a host firewall dropping them would
(no iptables here, and a rule would touch the whole shared host). Without the
threshold every worker is marked down and nothing is routed; with it the
front routes to all of them. A worker that really stops (SIGSTOP of its
process) is still found and routed around: one of three is no panic.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import os
import signal
import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_front
from test_front import QUICK, SETTINGS, Fleet, RealFleet, short_packet, until

from netsched_client import SLO, DeadlineExceeded, Session
from netsched_edge.fleet.cli import main, share
from netsched_edge.fleet.front import FleetFront
from netsched_edge.fleet.health import HealthSettings
from netsched_edge.fleet.membership import Member

pytestmark = pytest.mark.timeout(30)

fleet = test_front.fleet  # the fixture: fake or real hosts as members, the front

LOCAL = "127.0.0.1"
SO_ATTACH_FILTER, SO_DETACH_FILTER = 26, 27  # linux/socket.h
_RET_K = 0x06  # classic BPF: return k (the bytes of the datagram to keep)
_DROP_ALL = (ctypes.c_uint64 * 1)(struct.unpack("<Q", struct.pack("<HBBI", _RET_K, 0, 0, 0))[0])
_DROP_ALL_PROGRAM = struct.pack("HxxxxxxQ", 1, ctypes.addressof(_DROP_ALL))  # struct sock_fprog
SHORT = SLO(deadline_ms=1000)
# A worker in a process of its own, to be stopped: answers probes, echoes the rest.
PROCESS_HOST = """
import socket
from fleet_support import probe_answer
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
while True:
    data, source = sock.recvfrom(2048)
    sock.sendto(probe_answer(data) or b"reply " + data[:9], source)
"""


@contextlib.contextmanager
def answers_dropped(front: FleetFront) -> Iterator[None]:
    """The kernel drops every datagram bound for the front's probe sockets."""
    sockets = front.health.sockets
    assert sockets, "no probe sent yet"
    for sock in sockets:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, _DROP_ALL_PROGRAM)
    try:
        yield
    finally:
        for sock in sockets:
            sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)


class Records(logging.Handler):
    """The front's log records; on its logger itself, since an `EdgeServer` starting
    replaces the root logger's handlers (pytest's caplog among them)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def about(self, word: str) -> list[logging.LogRecord]:
        return [record for record in self.records if word in record.getMessage()]


@contextlib.contextmanager
def front_log() -> Iterator[Records]:
    records = Records()
    logger = logging.getLogger("netsched.edge.fleet")
    logger.addHandler(records)
    try:
        yield records
    finally:
        logger.removeHandler(records)


async def three_real_edges(
    fleet: Fleet, tmp_path: Path, threshold: float
) -> tuple[RealFleet, FleetFront, Session]:
    """Three real edges behind the front, every one judged up, a session that works."""
    real = RealFleet(fleet, tmp_path)
    front = await real.start(3, dataclasses.replace(QUICK, panic_threshold=threshold))
    await until(lambda: front.status().probes.answered >= 3 * QUICK.up_after)
    session = await real.session(front)
    assert (await session.request("api", b"before", slo=SHORT)).status == 200
    return real, front, session


async def test_probe_answers_lost_at_the_front_panic_keeps_routing(
    fleet: Fleet, tmp_path: Path
) -> None:
    real, front, before = await three_real_edges(fleet, tmp_path, HealthSettings().panic_threshold)

    with front_log() as log:
        with answers_dropped(front):
            await until(lambda: front.status().silent == 3, 2.0)
            status = front.status()
            assert status.panic and status.down == 0 and status.probes.panics == 1
            assert "PANIC" in status.describe()
            assert (await before.request("api", b"in panic", slo=SHORT)).status == 200
            during = [await real.session(front) for _ in range(3)]
            for session in during:
                assert (await session.request("api", b"new in panic", slo=SHORT)).status == 200
            assert sum(real.connections()) == 4  # each on a host: none was reset or lost
            assert front.status().panic  # the probes still fail
            assert len(log.about("panic")) == 1  # one warning, however long it lasts
        await until(lambda: not front.status().panic, 2.0)  # answers heard again
    assert front.status().silent == 0 and front.status().probes.panics == 1
    started, ended = log.about("panic")
    assert {started.levelno, ended.levelno} == {logging.WARNING}
    assert "only 0 of 3 workers probed answer" in started.getMessage()
    assert "3 of 3 workers probed answer: panic over" in ended.getMessage()


async def test_without_the_threshold_lost_answers_mark_every_worker_down(
    fleet: Fleet, tmp_path: Path
) -> None:
    """`panic_threshold` 0: the behaviour before it, a total outage."""
    _, front, before = await three_real_edges(fleet, tmp_path, 0)

    with answers_dropped(front):
        await until(lambda: front.status().down == 3, 2.0)
        assert not front.status().panic and front.status().probes.panics == 0
        no_backend = front.status().stats.no_backend
        with pytest.raises(DeadlineExceeded):
            await before.request("api", b"nowhere to go", slo=SHORT)
        assert front.status().stats.no_backend > no_backend  # dropped at the front


async def test_a_stopped_worker_is_routed_around_no_panic(fleet: Fleet) -> None:
    """One of three stopped (SIGSTOP: no answer, no ICMP, its lease held): 2 of 3 up is
    no panic, so its CIDs go to the two others as before."""
    ids = [await fleet.host(f"edge-{i}") for i in range(2)]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PROCESS_HOST, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
    )  # fmt: skip
    fleet.stack.push_async_callback(process.wait)
    fleet.stack.callback(process.kill)
    fleet.stack.callback(process.send_signal, signal.SIGCONT)  # before the kill
    assert process.stdout is not None
    async with asyncio.timeout(10):
        port = int(await process.stdout.readline())
    stopped = Member(fleet.etcd, fleet.layout, "edge-stopped", LOCAL, (port,), SETTINGS)
    await fleet.stack.enter_async_context(stopped)
    front = await fleet.front(QUICK)
    await until(lambda: front.status().workers == 3)
    await until(lambda: front.status().probes.answered >= 3 * QUICK.up_after)

    process.send_signal(signal.SIGSTOP)
    await until(lambda: front.status().silent == 1, 2.0)
    status = front.status()
    assert status.down == 1 and not status.panic and status.probes.panics == 0
    config = await fleet.cids()
    transport, _ = await fleet.client(front)
    for _ in range(30):
        transport.sendto(short_packet(config.for_host(stopped.server_id).for_worker(0).generate()))
    await until(lambda: sum(fleet.counts()[sid] for sid in ids) == 30)
    assert all(fleet.counts()[sid] > 0 for sid in ids)  # by hash, over the two living


@pytest.mark.parametrize("text", ["1.5", "-0.1", "nan", "half"])
def test_the_console_front_refuses_a_threshold_outside_0_to_1(
    text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["front", "--listen", f"{LOCAL}:0", "--panic-threshold", text])
    assert exited.value.code == 2
    assert f"not a share from 0 to 1: {text!r}" in capsys.readouterr().err
    assert share("0") == 0 and share("1") == 1 and share("0.25") == 0.25


async def test_in_panic_a_refusing_worker_is_still_routed_around(fleet: Fleet) -> None:
    """A refusal is the worker's host saying nothing listens: no trouble of the front's
    probing fakes it, so panic does not override it."""
    ids = [await fleet.host(f"edge-{i}") for i in range(3)]
    front = await fleet.front(QUICK)
    await until(lambda: front.status().probes.answered >= 3 * QUICK.up_after)
    config = await fleet.cids()
    transport, _ = await fleet.client(front)
    with answers_dropped(front):
        await until(lambda: front.status().panic, 2.0)
        closed = fleet.hosts[ids[0]].transport
        assert closed is not None
        closed.close()  # its process gone: the port refuses
        transport.sendto(short_packet(config.for_host(ids[0]).for_worker(0).generate()))
        await until(lambda: front.status().down == 1)
        assert front.status().panic and front.status().silent == 3
        for _ in range(20):
            transport.sendto(short_packet(config.for_host(ids[0]).for_worker(0).generate()))
        await until(lambda: sum(fleet.counts()[sid] for sid in ids[1:]) == 20)
