"""Cancelled streams under load leave nothing behind (issue #12: the request path as a whole).

Many requests at once over netsched/1 and h3, cancelled at every stage (queued for
a slot, waiting for the backend's head, mid-body, after a truncation), mixed with
requests that complete. Afterwards the edge holds no slot, no buffered byte and
no per-stream state, and serves the next request at once.
"""

from __future__ import annotations

import asyncio
import random

from request_support import (
    RawBackend,
    by_path,
    die_after_head,
    eventually,
    h3_client,
    in_flight,
    stall,
    stream_forever,
)
from support import http_backend, service

from netsched_client import SLO, NetSchedError
from netsched_edge.server import EdgeServer

ROUTES = {
    b"/stall": stall,
    b"/forever": stream_forever(b"z" * 16384),
    b"/trunc": die_after_head(1 << 20, b"t" * 1000),
}


async def _abandon_native(session, path: bytes, after: float) -> None:
    stream = await session.open_stream("api", meta={"method": "GET", "path": path.decode()})
    stream.write_eof()
    await asyncio.sleep(after)
    stream.abort()


async def _complete_native(session) -> bool:
    try:
        response = await session.request(
            "api", meta={"method": "GET", "path": "/ok"}, slo=SLO(deadline_ms=5000)
        )
    except NetSchedError:
        return False
    return response.body == b"ok"


async def test_cancelled_streams_under_load_release_everything(
    start_server, start_edge, open_client
) -> None:
    port = await start_server(RawBackend(by_path(ROUTES)))
    edge: EdgeServer = await start_edge(service("api", http_backend("b1", port, max_in_flight=8)))
    rng = random.Random(12)
    sessions = [await open_client(edge) for _ in range(4)]
    async with h3_client(edge) as h3:
        work = []
        for i in range(120):
            session = sessions[i % len(sessions)]
            kind = rng.choice(("abandon", "abandon", "complete", "h3-stop", "h3-trunc"))
            path = rng.choice(list(ROUTES))
            if kind == "abandon":
                work.append(_abandon_native(session, path, rng.uniform(0, 0.2)))
            elif kind == "complete":
                work.append(_complete_native(session))
            elif kind == "h3-stop":
                sid = h3.request("GET", "/api" + path.decode())
                loop = asyncio.get_running_loop()
                loop.call_later(rng.uniform(0, 0.2), h3.stop_sending, sid)
            else:
                h3.request("GET", "/api/trunc")
        results = await asyncio.wait_for(asyncio.gather(*work, return_exceptions=True), 20)
        assert not [r for r in results if isinstance(r, BaseException)]
        assert all(r is True for r in results if isinstance(r, bool))  # completed ones did
        await eventually(lambda: in_flight(edge, "api") == 0, timeout=5, what="every slot back")
        await eventually(lambda: edge.dispatcher.budget.used == 0, what="no byte still counted")
        await eventually(
            lambda: sum(c.tracked_streams for c in edge.connections) == 0,
            timeout=5,
            what="no per-stream state left",
        )
        assert edge.in_flight() == 0
    assert await _complete_native(sessions[0])
