"""EAGAIN on send: the pending queue, on_blocked and attach()'s writer, for real.

Loopback frees a datagram's send-buffer charge inside sendmsg, so a full
SO_SNDBUF never happens there. A rate-limited qdisc (tbf) on the loopback of
a private network namespace holds datagrams, so a minimal SO_SNDBUF fills and
the kernel answers EAGAIN. Each case runs this file as a script inside
`unshare -n` (root only); nothing outside the new namespace is touched.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import uvloop

from netsched_client.io import (
    HAVE_NATIVE,
    BatchedUdpSocket,
    Datagram,
    PyUdpSocket,
    UdpSocket,
    attach,
)

ROOT = Path(__file__).resolve().parent.parent
QDISC = "tc qdisc add dev lo root tbf rate 20mbit burst 5kb latency 1s"
IMPLEMENTATIONS: dict[str, Callable[..., UdpSocket]] = {
    "native": BatchedUdpSocket,
    "python": PyUdpSocket,
}
LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def _namespaces_usable() -> bool:
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("tc")):
        return False
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=30)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(
    not _namespaces_usable(), reason="needs root, unshare and tc for a private netns"
)


@pytest.mark.parametrize("loop", list(LOOPS))
@pytest.mark.parametrize(
    "impl",
    [
        pytest.param(
            "native", marks=pytest.mark.skipif(not HAVE_NATIVE, reason="extension not built")
        ),
        "python",
    ],
)
def test_blocked_sends_flush_in_order(impl: str, loop: str) -> None:
    done = subprocess.run(
        ["unshare", "-n", sys.executable, __file__, impl, loop],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "ok", done.stdout + done.stderr


# -- the part that runs inside the namespace ---------------------------------------


def payload(index: int) -> bytes:
    return index.to_bytes(4, "big") * 300  # 1200 bytes


async def blocked_sends(impl: str) -> None:
    cls = IMPLEMENTATIONS[impl]
    loop = asyncio.get_running_loop()
    receiver = cls(socket.AF_INET, ("127.0.0.1", 0))
    sender = cls(socket.AF_INET, ("127.0.0.1", 0), sndbuf=1)  # the kernel's minimum
    got: list[Datagram] = []
    complete = asyncio.Event()

    def on_batch(batch: list[Datagram]) -> None:
        got.extend(batch)
        if len(got) == 300:
            complete.set()

    detach_receiver = attach(loop, receiver, on_batch)
    detach_sender = attach(loop, sender, lambda batch: None)
    sent = [(payload(i), receiver.local_address) for i in range(300)]

    taken = sender.send_batch(sent[:150])
    assert 0 < taken < 150 and sender.pending == 150 - taken, (taken, sender.pending)
    sender.send_batch(sent[150:])  # queues behind the pending ones
    await asyncio.wait_for(complete.wait(), 20)

    assert [data for data, _ in got] == [data for data, _ in sent]
    assert sender.pending == 0
    stats = sender.stats
    assert (stats.datagrams_sent, stats.send_errors, stats.send_overflow) == (300, 0, 0)
    await asyncio.sleep(0.1)
    assert sender.stats.syscalls_send == stats.syscalls_send  # the writer is gone: no spinning
    detach_sender()
    detach_receiver()
    sender.close()
    receiver.close()


async def overflow_is_tail_dropped(impl: str) -> None:
    cls = IMPLEMENTATIONS[impl]
    loop = asyncio.get_running_loop()
    receiver = cls(socket.AF_INET, ("127.0.0.1", 0))
    sender = cls(socket.AF_INET, ("127.0.0.1", 0), sndbuf=1, max_pending=10)
    detach_sender = attach(loop, sender, lambda batch: None)
    sent = [(payload(i), receiver.local_address) for i in range(100)]

    taken = sender.send_batch(sent)
    assert sender.pending == 10
    assert sender.stats.send_overflow == 100 - taken - 10
    while sender.pending:
        await asyncio.sleep(0.01)
    got: list[Datagram] = []
    while len(got) < taken + 10:
        await asyncio.sleep(0.01)
        got += receiver.recv_batch()
    assert [data for data, _ in got] == [data for data, _ in sent[: taken + 10]]
    detach_sender()
    sender.close()
    receiver.close()


def main(impl: str, loop: str) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(QDISC.split(), check=True)
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(blocked_sends(impl))
        runner.run(overflow_is_tail_dropped(impl))
    print("ok")


if __name__ == "__main__":
    main(*sys.argv[1:])
