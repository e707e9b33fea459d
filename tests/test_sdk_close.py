"""Closing SDK sessions against a real edge over loopback (issue #12, the soak).

`Session.close()` sends the CONNECTION_CLOSE and releases the socket; it does
not sit out the closing period (3 PTO, at least ~75 ms after a handshake with
aioquic's 25 ms max_ack_delay), which made a process closing its sessions one
after another take minutes (bench_soak: 250 sessions a client process). The
edge still hears each close at once: its connections end at their draining
period, not at the idle timeout.
"""

from __future__ import annotations

import asyncio
import os

from netsched_client import Session, open_session
from netsched_edge.server import EdgeServer

SESSIONS = 120
OPENING_AT_ONCE = 24


async def _open(edge: EdgeServer, count: int) -> list[Session]:
    gate = asyncio.Semaphore(OPENING_AT_ONCE)
    ca = str(edge.ca_certificate)

    async def one() -> Session:
        async with gate:
            return await open_session("127.0.0.1", edge.port, ca_file=ca, timeout=20)

    return list(await asyncio.gather(*(one() for _ in range(count))))


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_sessions_closed_one_after_another_close_at_once(start_edge) -> None:
    edge: EdgeServer = await start_edge()
    fds_before = _open_fds()
    sessions = await _open(edge, SESSIONS)
    try:
        assert len(edge.connections) == SESSIONS
        loop = asyncio.get_running_loop()
        started = loop.time()
        for session in sessions:
            await session.close()
        took = loop.time() - started
    finally:
        await asyncio.gather(*(session.close() for session in sessions))
    # Waiting out each closing period took >= SESSIONS x 3 PTO (~10 s here).
    assert took < 2.0, f"closing {SESSIONS} sessions one by one took {took:.1f} s"
    assert all(session.closed for session in sessions)
    assert _open_fds() <= fds_before  # every session's socket is closed
    # The edge heard every CONNECTION_CLOSE: its side ends within its draining period
    # (3 PTO), not at its idle timeout.
    async with asyncio.timeout(5):
        while edge.connections:
            await asyncio.sleep(0.05)


async def test_a_closed_session_sends_its_close_before_its_socket_goes(start_edge) -> None:
    edge: EdgeServer = await start_edge()
    (session,) = await _open(edge, 1)
    assert len(edge.connections) == 1
    await session.close()
    async with asyncio.timeout(2):  # idle timeout: tens of seconds
        while edge.connections:
            await asyncio.sleep(0.02)
