"""N edge workers on one port: every connection, on every path, stays on one worker."""

from __future__ import annotations

import asyncio
import os
from collections import Counter

import pytest
from adversarial.intake_support import client_hello_initial, header_of, raw_peer, short_header
from aioquic.quic.packet import QuicPacketType
from support import http_backend, service

from netsched_client import open_session
from netsched_client.errors import ConnectionLost
from netsched_client.proto.quic_lb import QuicLbConfig, server_id_of
from netsched_edge.config import EdgeConfig
from netsched_edge.demo_backends import DemoHTTPServer
from netsched_edge.keys import EdgeKeys
from netsched_edge.workers import FleetCids, WorkerPool, steering_program


def test_quic_lb_plaintext_cids() -> None:
    config = QuicLbConfig(server_id=b"\x05", config_rotation=1, cid_length=8)
    cid = config.generate()
    assert len(cid) == 8 and cid[0] == 0b001_00111  # rotation 1, length 8 - 1
    assert server_id_of(cid, 1) == b"\x05"
    assert server_id_of(b"\xe7" + cid[1:], 1) is None  # rotation 0b111: unroutable
    with pytest.raises(ValueError):
        QuicLbConfig(server_id=b"\x01" * 4, cid_length=8)  # no room for the nonce


def test_steering_program_shape() -> None:
    program = steering_program(4)
    assert program[-2] == (0x94, 0, 0, 4) and program[-1][0] == 0x16


@pytest.mark.skipif(os.uname().sysname != "Linux", reason="SO_REUSEPORT steering is Linux-only")
async def test_connections_and_their_paths_stay_on_one_worker(start_server) -> None:
    backend = await start_server(DemoHTTPServer("b", base_ms=1, cold_ms=0))
    config = EdgeConfig(
        host="127.0.0.1", port=0, services=(service("api", http_backend("b", backend)),)
    )
    pool = WorkerPool(config, 3)
    loop = asyncio.get_running_loop()
    port = await loop.run_in_executor(None, pool.start)
    try:
        seen: Counter[str] = Counter()
        for _ in range(6):
            session = await open_session(
                "127.0.0.1",
                port,
                ca_file=str(pool.ca_certificate),
                paths=["127.0.0.1", "127.0.0.2"],
            )
            try:
                first = (await session.request("api", b"a")).meta["edge-worker"]
                assert [p.state for p in session.paths] == ["active", "active"]
                session.remove_path(0)  # from now on only the 127.0.0.2 path carries data
                workers = {
                    (await session.request("api", b"b")).meta["edge-worker"] for _ in range(3)
                }
                assert workers == {first}
                assert session.paths[0].state == "closing"
                seen[first] += 1
            finally:
                await session.close()
        assert len(seen) >= 2, seen  # connections spread over the workers
    finally:
        await loop.run_in_executor(None, pool.stop)


@pytest.mark.skipif(os.uname().sysname != "Linux", reason="SO_REUSEPORT steering is Linux-only")
async def test_retry_and_stateless_resets_work_on_every_worker(start_server, tmp_path) -> None:
    """Retry SCIDs are the worker's routable CIDs and the keys are shared: every
    handshake through a Retry completes, whichever worker the client lands on."""
    backend = await start_server(DemoHTTPServer("b", base_ms=1, cold_ms=0))
    keys = EdgeKeys.generate()
    keys.write(tmp_path / "keys.toml")
    config = EdgeConfig(
        host="127.0.0.1",
        port=0,
        retry=True,
        keys_file=tmp_path / "keys.toml",
        services=(service("api", http_backend("b", backend)),),
    )
    pool = WorkerPool(config, 2)
    loop = asyncio.get_running_loop()
    port = await loop.run_in_executor(None, pool.start)
    peer = await raw_peer(port)
    try:
        peer.send(client_hello_initial())
        answer = await peer.recv(5.0)
        assert answer is not None and header_of(answer).packet_type == QuicPacketType.RETRY
        seen: Counter[str] = Counter()
        failures = 0
        for _ in range(18):
            try:
                session = await open_session(
                    "127.0.0.1", port, ca_file=str(pool.ca_certificate), timeout=5
                )
            except ConnectionLost:
                failures += 1
                continue
            try:
                seen[(await session.request("api", b"a")).meta["edge-worker"]] += 1
            finally:
                await session.close()
        assert failures == 0 and sum(seen.values()) == 18
        assert set(seen) == {"0", "1"}, seen
        for index in (0, 1):  # a CID of each worker's (QUIC-LB server ID = the index)
            cid = bytes([0x07, index]) + os.urandom(6)
            peer.send(short_header(cid, 100))
            reset = await peer.recv(5.0)
            assert reset is not None and reset.endswith(keys.endpoint_keys().reset_token(cid))
    finally:
        peer.close()
        await loop.run_in_executor(None, pool.stop)


async def test_fleet_workers_issue_encrypted_cids_on_ports_of_their_own(start_server) -> None:
    """In a fleet each worker has its own port and its CIDs hide the server ID
    (host ID ‖ worker index) from everyone but holders of the fleet's key."""
    backend = await start_server(DemoHTTPServer("b", base_ms=1, cold_ms=0))
    config = EdgeConfig(
        host="127.0.0.1", port=0, services=(service("api", http_backend("b", backend)),)
    )
    fleet = FleetCids(host_server_id=b"\x2a", key=os.urandom(16), config_rotation=2)
    pool = WorkerPool(config, 2, fleet=fleet)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, pool.start)
    try:
        assert len(set(pool.ports)) == 2 and 0 not in pool.ports
        for index, port in enumerate(pool.ports):
            peer = await raw_peer(port)
            try:
                peer.send(client_hello_initial())
                answer = await peer.recv(5.0)
            finally:
                peer.close()
            assert answer is not None
            server_cid = header_of(answer).source_cid
            assert server_cid[0] == 0b010_00111  # rotation 2, length 8 - 1
            assert server_cid[1:3] != bytes([0x2A, index])  # not in the clear
            assert fleet.for_worker(index).scheme.server_id(server_cid) == bytes([0x2A, index])
            session = await open_session("127.0.0.1", port, ca_file=str(pool.ca_certificate))
            try:
                assert (await session.request("api", b"a")).meta["edge-worker"] == str(index)
            finally:
                await session.close()
    finally:
        await loop.run_in_executor(None, pool.stop)
