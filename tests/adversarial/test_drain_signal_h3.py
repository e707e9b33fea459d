"""Issue #12 (signals): SIGTERM to the real `netsched-edge` tells an aioquic HTTP/3 client
with a GOAWAY frame (RFC 9114 §5.2) naming the first stream it will not serve, refuses a
later request unprocessed (H3_REQUEST_REJECTED), finishes the request under way and exits 0.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from aioquic.asyncio.client import connect
from aioquic.quic.configuration import QuicConfiguration
from edge_binary import RunningEdge, write_config
from request_support import H3Client
from test_request_drain import _h3_goaways

from netsched_edge.demo_backends import DemoHTTPServer
from netsched_edge.server import H3_REQUEST_REJECTED
from netsched_edge.tls import CA_CERTIFICATE_FILE


async def test_sigterm_sends_goaway_to_h3_clients_and_finishes_what_is_under_way(
    tmp_path: Path,
) -> None:
    backend = DemoHTTPServer("slow", base_ms=1000, cold_ms=0)
    port = await backend.start()
    config = write_config(tmp_path / "edge.toml", port, edge="drain_timeout_s = 5.0")
    state = tmp_path / "state"
    edge = await RunningEdge.start("--config", str(config), "--state-dir", str(state))
    configuration = QuicConfiguration(is_client=True, alpn_protocols=["h3"])
    configuration.load_verify_locations(str(state / CA_CERTIFICATE_FILE))
    try:
        async with connect(
            "127.0.0.1", edge.port, configuration=configuration, create_protocol=H3Client
        ) as client:
            assert isinstance(client, H3Client)
            first = client.request("GET", "/api/slow")
            async with asyncio.timeout(10):
                while backend.requests < 1:  # the request reached the backend
                    await asyncio.sleep(0.02)
            edge.proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(10):
                while not _h3_goaways(bytes(client.control_data)):
                    await asyncio.sleep(0.02)
            assert _h3_goaways(bytes(client.control_data)) == [first + 4]
            late = client.request("GET", "/api/late")  # as a client that missed it
            await asyncio.wait_for(client.exchanges[late].done.wait(), 5)
            assert client.exchanges[late].reset == H3_REQUEST_REJECTED
            await asyncio.wait_for(client.exchanges[first].done.wait(), 5)
            assert client.exchanges[first].headers[b":status"] == b"200"
            assert client.exchanges[first].reset is None
        assert await asyncio.wait_for(edge.proc.wait(), 10) == 0
    finally:
        await edge.stop()
        await backend.stop()
    assert backend.requests == 1  # the refused request never reached it
    access = [line for line in edge.stderr if "netsched.edge.access" in line]
    assert [line.split(" end=")[1].strip() for line in access] == ["refused", "complete"]
