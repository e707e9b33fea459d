"""One-datagram clients from hundreds of addresses must not starve the edge of descriptors.

The edge runs in its own process with RLIMIT_NOFILE lowered to 256 (the test
process keeps its own limit). 300 clients, each from its own 127.x.y.z
address (all of 127/8 is loopback: as good as spoofed sources), send the UDP
front one datagram of garbage each and leave; each would cost the edge one
flow socket for the idle timeout. Afterwards a static file, an HTTP backend
and a well-behaved UDP client must still be served, with no flow socket
failing to open (forwarder/flows.py: max_flows from RLIMIT_NOFILE, early
drop of never-answered flows, the descriptor reserve).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
from contextlib import AsyncExitStack
from pathlib import Path

from flow_support import TIMEOUT, open_clients, start_backend

from netsched_client import open_session
from netsched_edge.demo_backends import DemoHTTPServer
from netsched_edge.forwarder.flows import default_fd_reserve, default_max_flows

NOFILE = 256
CLIENTS = 300

EDGE = """
import asyncio, json, resource, sys
from pathlib import Path
from netsched_edge.config import BackendConfig, EdgeConfig, ServiceConfig
from netsched_edge.server import EdgeServer

LIMIT = int(sys.argv[4])
resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

async def main():
    www, http_port, udp_port = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    services = (
        ServiceConfig(name="files", backends=(BackendConfig(name="f", kind="static", root=www),)),
        ServiceConfig(
            name="api",
            backends=(BackendConfig(name="h", kind="http", host="127.0.0.1", port=http_port),),
        ),
        ServiceConfig(
            name="game",
            backends=(BackendConfig(name="u", kind="udp", host="127.0.0.1", port=udp_port),),
            udp_listen=("127.0.0.1", 0),
        ),
    )
    config = EdgeConfig(
        host="127.0.0.1", port=0, services=services, admin_host="127.0.0.1", admin_port=0
    )
    edge = EdgeServer(config)
    await edge.start()
    info = {
        "port": edge.port,
        "udp": edge.udp_fronts["game"].local_address[1],
        "ca": str(edge.ca_certificate),
        "admin": edge.admin_port,
    }
    print(json.dumps(info), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def start_edge(stack: AsyncExitStack, www: Path, http_port: int, udp_port: int) -> dict:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", EDGE, str(www), str(http_port), str(udp_port), str(NOFILE),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip

    async def stop() -> None:
        if process.returncode is None:
            process.kill()
            await process.wait()

    stack.push_async_callback(stop)
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 30.0)
    info: dict = json.loads(line)
    return info


async def metrics(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n")
        return (await asyncio.wait_for(reader.read(), TIMEOUT)).decode()
    finally:
        writer.close()


def sample(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and ",".join(sorted(match.group(1).split(","))) == wanted:
            return float(match.group(2))
    return 0.0


def spray(udp_port: int, count: int) -> None:
    """One datagram of garbage from each of `count` loopback addresses (one socket at a time)."""
    for i in range(count):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((f"127.1.{i // 200}.{i % 200 + 1}", 0))
            sock.sendto(b"\xffgarbage", ("127.0.0.1", udp_port))


async def test_many_one_datagram_clients_leave_descriptors_for_other_services(
    stack: AsyncExitStack, tmp_path: Path, start_server
) -> None:
    (tmp_path / "hello.txt").write_bytes(b"hello\n")
    http_port = await start_server(DemoHTTPServer("h", base_ms=0, cold_ms=0))
    backend = await start_backend(stack, "u")
    info = await start_edge(stack, tmp_path, http_port, backend.port)

    spray(info["udp"], CLIENTS)
    async with asyncio.timeout(TIMEOUT):
        while True:
            text = await metrics(info["admin"])
            got = sample(
                text, "netsched_edge_forwarder_datagrams_total",
                service="game", direction="from_clients",
            )  # fmt: skip
            if got >= CLIENTS:
                break
            await asyncio.sleep(0.05)

    session = await open_session("127.0.0.1", info["port"], ca_file=info["ca"])
    stack.push_async_callback(session.close)
    page = await session.request("files", meta={"method": "GET", "path": "/hello.txt"})
    assert (page.status, page.body) == (200, b"hello\n")
    api = await session.request("api", b"ping")
    assert api.status == 200
    (player,) = await open_clients(stack, ("127.0.0.1", info["udp"]), 1, source="127.2.0.1")
    async with asyncio.timeout(TIMEOUT):
        while not player.replies:
            player.send(b"ok hello")
            await asyncio.sleep(0.05)

    text = await metrics(info["admin"])
    active = sample(text, "netsched_edge_forwarder_flows_active", service="game")
    assert 0 < active < NOFILE // 2
    dropped = "netsched_edge_forwarder_dropped_datagrams_total"
    assert sample(text, dropped, service="game", reason="open_error") == 0  # never EMFILE
    evicted = sample(text, "netsched_edge_forwarder_flows_closed_total", service="game",
                     reason="evicted")  # fmt: skip
    assert evicted >= CLIENTS - active


def test_the_flow_budget_follows_the_descriptor_limit() -> None:
    assert (default_fd_reserve(256), default_max_flows(256)) == (64, 96)
    assert (default_fd_reserve(1024), default_max_flows(1024)) == (256, 384)
    assert default_max_flows(65536) == 24576
    assert default_max_flows(1 << 20) == 1 << 16  # the table is allocated whole: capped
    assert default_max_flows(16) == 1  # a tiny limit still allows a flow; the reserve guards
