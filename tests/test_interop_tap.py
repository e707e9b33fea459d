"""The tap forwards real QUIC between our client and edge on loopback and sees the rules."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from interop.cases import CASES_BY_NAME, check
from interop.procs import free_udp_port, udp_port_bound
from interop.tap import Tap
from netsched_client import open_session
from netsched_client.runtime.session import client_configuration


async def fetch_through_tap(edge_port: int) -> Tap:
    tap = Tap(("127.0.0.1", edge_port))
    port = await tap.start()
    config = client_configuration("127.0.0.1", alpns=("hq-interop",), verify=False)
    session = await open_session("127.0.0.1", port, configuration=config)
    try:
        response = await asyncio.wait_for(session.request("www", meta={"path": "/big.bin"}), 20)
        assert len(response.body) == 2 << 20
    finally:
        await session.close()
        tap.close()
    return tap


async def test_tap_sees_one_handshake_without_retry(start_edge, www: Path) -> None:
    edge = await start_edge(www=www)
    trace = (await fetch_through_tap(edge.port)).trace
    assert check(CASES_BY_NAME["handshake"], trace) == []
    assert check(CASES_BY_NAME["retry"], trace) == ["didn't find any Retry packets"]
    summary = trace.summary()
    assert summary["handshakes"] == 1
    assert summary["server_initial_versions"] == ["0x00000001"]
    assert trace.bytes[False] > 2 << 20  # the file went through the tap
    assert trace.unparsable == 0


async def test_tap_sees_retry_and_its_token_used(start_edge, www: Path) -> None:
    edge = await start_edge(www=www, retry=True)
    trace = (await fetch_through_tap(edge.port)).trace
    assert check(CASES_BY_NAME["retry"], trace) == []


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
