"""The tap forwards real QUIC between our client and edge on loopback and sees the rules."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from interop.cases import (
    CASES_BY_NAME,
    MULTIPATH_LOCALS,
    check,
    data_on_two_paths,
    multipath_negotiated,
)
from interop.procs import free_udp_port, udp_port_bound
from interop.tap import Tap
from netsched_client import open_session
from netsched_client.runtime.session import client_configuration


async def fetch_through_tap(edge_port: int, paths: list[str] | None = None) -> Tap:
    tap = Tap(("127.0.0.1", edge_port))
    port = await tap.start()
    config = client_configuration("127.0.0.1", alpns=("hq-interop",), verify=False)
    keys = config.secrets_log_file = io.StringIO()
    session = await open_session("127.0.0.1", port, configuration=config, paths=paths)
    try:
        if paths:
            assert [p.state for p in session.paths] == ["active"] * len(paths)
        response = await asyncio.wait_for(session.request("www", meta={"path": "/big.bin"}), 20)
        assert len(response.body) == 2 << 20
    finally:
        await session.close()
        tap.close()
    tap.trace.keylog = keys.getvalue()
    return tap


async def test_tap_sees_one_handshake_without_retry(start_edge, www: Path) -> None:
    edge = await start_edge(www=www)
    trace = (await fetch_through_tap(edge.port)).trace
    assert check(CASES_BY_NAME["handshake"], trace).problems == ()
    assert check(CASES_BY_NAME["retry"], trace).problems == ("didn't find any Retry packets",)
    summary = trace.summary()
    assert summary["handshakes"] == 1
    assert summary["server_initial_versions"] == ["0x00000001"]
    assert trace.bytes[False] > 2 << 20  # the file went through the tap
    assert trace.unparsable == 0
    # Multipath offered by both sides (as the edge and the SDK do by default), one path used.
    assert multipath_negotiated(trace) is None
    assert data_on_two_paths(trace) is not None and len(trace.paths) == 1


async def test_tap_sees_retry_and_its_token_used(start_edge, www: Path) -> None:
    edge = await start_edge(www=www, retry=True)
    trace = (await fetch_through_tap(edge.port)).trace
    assert check(CASES_BY_NAME["retry"], trace).problems == ()


async def test_tap_counts_bytes_per_path_of_a_multipath_client(start_edge, www: Path) -> None:
    edge = await start_edge(www=www)
    trace = (await fetch_through_tap(edge.port, list(MULTIPATH_LOCALS))).trace
    assert multipath_negotiated(trace) is None  # ClientHello + the key log's EncryptedExtensions
    assert sorted(host for host, _ in trace.paths) == sorted(MULTIPATH_LOCALS)
    assert sum(p.server_bytes for p in trace.paths.values()) == trace.server_total
    assert all(p.server_bytes and p.client_bytes for p in trace.paths.values())
    assert trace.summary()["paths"] == {
        f"{host}:{port}": {"client": p.client_bytes, "server": p.server_bytes}
        for (host, port), p in trace.paths.items()
    }


async def test_tap_sends_from_the_client_ip_so_paths_stay_apart() -> None:
    loop = asyncio.get_running_loop()
    seen: asyncio.Queue[tuple[str, int]] = asyncio.Queue()

    class Server(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            seen.put_nowait(addr)

    server, _ = await loop.create_datagram_endpoint(Server, local_addr=("127.0.0.1", 0))
    tap = Tap(server.get_extra_info("sockname"))
    port = await tap.start()
    clients = [
        (await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=(ip, 0)))[0]
        for ip in MULTIPATH_LOCALS
    ]
    try:
        for client in clients:
            client.sendto(b"\x40 not quic", ("127.0.0.1", port))
            source = await asyncio.wait_for(seen.get(), 5)
            assert source[0] == client.get_extra_info("sockname")[0]
    finally:
        for transport in (*clients, server):
            transport.close()
        tap.close()
    assert sorted(h for h, _ in tap.trace.paths) == sorted(MULTIPATH_LOCALS)


def test_tap_refuses_non_loopback_addresses() -> None:
    with pytest.raises(ValueError, match="loopback only"):
        Tap(("192.0.2.1", 443))


async def test_udp_port_bound_reads_proc() -> None:
    port = free_udp_port()
    assert not udp_port_bound(port)
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", port)
    )
    try:
        assert udp_port_bound(port)
    finally:
        transport.close()
