"""DATAGRAM replies that cannot leave must not hold back the ones that can.

aioquic sends queued DATAGRAM frames in order and keeps a head that does not
fit a packet, for good: one oversized reply from a UDP backend blocked every
later one. The end-to-end test runs a real edge, a real UDP backend and the
client SDK on loopback; the outbox tests drive `DatagramOutbox` over a real
QUIC connection pair joined in memory, on a virtual clock.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack, suppress
from pathlib import Path
from typing import Any

from aioquic.quic.events import DatagramFrameReceived
from support import events_of, memory_pair, service

from netsched_edge.config import BackendConfig
from netsched_edge.datagrams import DatagramOutbox, max_reply_size

TIMEOUT = 10.0
LATER = 49


class Backend(asyncio.DatagramProtocol):
    """Echoes each datagram, except b"big", answered with 3000 bytes."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(b"B" * 3000 if data == b"big" else data, addr)


async def test_an_oversized_reply_does_not_block_later_ones(
    stack: AsyncExitStack, start_edge, open_client
) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Backend, local_addr=("127.0.0.1", 0))
    stack.callback(transport.close)
    port = transport.get_extra_info("sockname")[1]
    edge = await start_edge(
        service("dg", BackendConfig(name="u", kind="udp", host="127.0.0.1", port=port))
    )
    session = await open_client(edge)

    got: set[bytes] = set()
    async with asyncio.timeout(TIMEOUT):  # the flow opens: resend until echoed
        while not got:
            session.send_datagram("dg", b"hello")
            with suppress(TimeoutError):
                got.add((await asyncio.wait_for(session.receive_datagram(), 0.2))[1])
    session.send_datagram("dg", b"")  # a backend cannot take an empty datagram: dropped
    session.send_datagram("dg", b"big")
    await asyncio.sleep(0.1)  # the big reply is back at the edge: dropped, or stuck at the head
    for i in range(LATER):
        session.send_datagram("dg", b"n%d" % i)
        await asyncio.sleep(0.005)
    with_later: set[bytes] = set()
    with suppress(TimeoutError):
        async with asyncio.timeout(1.0):
            while len(with_later) < LATER:
                with_later.add((await session.receive_datagram())[1])

    assert len(with_later - {b"hello"}) >= LATER - 4  # datagrams may be lost, not all of them
    assert b"B" * 3000 not in with_later
    registry = edge.dispatcher.metrics.registry
    dropped = registry.get_sample_value(
        "netsched_edge_datagrams_dropped_total", {"reason": "oversized"}
    )
    assert dropped == 1
    empty = registry.get_sample_value(
        "netsched_edge_datagrams_dropped_total", {"reason": "bad_request"}
    )
    assert empty == 1


def test_the_largest_reply_fits_the_mtu_and_the_peers_limit() -> None:
    assert max_reply_size(1200, 65536) == 1200 - 41 - 1 - 2
    assert max_reply_size(1500, 65536) == 1500 - 41 - 1 - 2
    assert max_reply_size(1500, 100) == 100 - 1 - 2  # a length of 64 or more takes 2 bytes
    assert max_reply_size(1500, None) == 0  # the peer takes no DATAGRAM frames
    assert max_reply_size(30, 65536) == 0


class Drops:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, reason: str, count: int) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + count


def received(pair: Any) -> list[bytes]:
    pair.flush()
    return [e.data for e in events_of(pair.client) if isinstance(e, DatagramFrameReceived)]


def connected(tmp_path: Path) -> Any:
    pair = memory_pair(ca_dir=tmp_path)
    pair.flush()
    events_of(pair.client)
    return pair


def test_without_the_outbox_one_oversized_frame_blocks_the_queue(tmp_path: Path) -> None:
    """The hazard the outbox exists for (aioquic's behaviour, kept as a witness)."""
    pair = connected(tmp_path)
    pair.server.send_datagram_frame(b"x" * 1300)
    pair.server.send_datagram_frame(b"small")
    assert received(pair) == []


def test_the_outbox_refuses_what_cannot_leave_and_the_rest_flows(tmp_path: Path) -> None:
    pair = connected(tmp_path)
    drops = Drops()
    outbox = DatagramOutbox(pair.server, max_queue=8, on_drop=drops)
    room = outbox.room()
    assert 1100 < room < 1500
    for size in (room + 1, 5000, room):
        if outbox.admit(size, 0.0):
            pair.server.send_datagram_frame(b"y" * size)
            outbox.queued(0.0)
    for i in range(5):
        assert outbox.admit(10, 0.0)
        pair.server.send_datagram_frame(b"later %d" % i)
        outbox.queued(0.0)

    assert received(pair) == [b"y" * room] + [b"later %d" % i for i in range(5)]
    assert drops.counts == {"oversized": 2}


def test_the_queue_is_capped_and_stale_replies_go_first(tmp_path: Path) -> None:
    pair = connected(tmp_path)
    drops = Drops()
    outbox = DatagramOutbox(pair.server, max_queue=4, max_age=1.0, on_drop=drops)

    def reply(data: bytes, now: float) -> None:
        assert outbox.admit(len(data), now)
        pair.server.send_datagram_frame(data)
        outbox.queued(now)

    for i in range(10):  # a client that reads nothing for a while: nothing leaves
        reply(b"a%d" % i, 0.1 * i)
    assert len(outbox) == 4
    assert drops.counts == {"queue_full": 6}
    reply(b"late", 1.75)  # a6 (0.6 s) and a7 (0.7 s) are over 1 s old by now

    assert received(pair) == [b"a8", b"a9", b"late"]
    assert drops.counts == {"queue_full": 6, "stale": 2}
    reply(b"next", 2.0)  # what left is forgotten: no drop
    assert received(pair) == [b"next"]
    assert len(outbox) == 1 and drops.counts == {"queue_full": 6, "stale": 2}
