"""`netsched-edge --workers 2` as a supervised process tree (issue #12, fault 8).

The real binary, real worker processes, the SDK as client: a worker killed
with SIGKILL is started again under its index (steering by QUIC-LB server ID
still lands every packet on the worker that owns the connection), workers die
with their parent, and SIGHUP/SIGTERM reach every worker through the parent.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections import Counter
from pathlib import Path

import pytest
from intake_support import EdgeProcess, alive, write_config

from netsched_client import Session, open_session
from netsched_client.errors import ConnectionLost, RequestError
from netsched_edge.demo_backends import DemoHTTPServer

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="SO_REUSEPORT steering and PR_SET_PDEATHSIG are Linux's"
)


async def _session(port: int) -> Session:
    return await open_session("127.0.0.1", port, verify=False, timeout=5, pmtud=None)


async def _workers_serving(port: int, service: str, tries: int) -> Counter[str]:
    """Which worker answered each of `tries` new connections ("lost" for a failure)."""
    seen: Counter[str] = Counter()
    for _ in range(tries):
        try:
            session = await _session(port)
        except ConnectionLost:
            seen["lost"] += 1
            continue
        try:
            seen[(await session.request(service, b"x")).meta["edge-worker"]] += 1
        except (RequestError, ConnectionLost):
            seen["lost"] += 1
        finally:
            await session.close()
    return seen


async def _until(check, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.1)


@pytest.fixture
async def api(start_server) -> int:
    return int(await start_server(DemoHTTPServer("a", base_ms=0, cold_ms=0)))


async def test_a_killed_worker_comes_back_under_its_index(tmp_path: Path, api: int) -> None:
    config = tmp_path / "edge.toml"
    write_config(config, {"api": api}, drain_timeout_s=2)
    edge = EdgeProcess(config, tmp_path / "tmp", workers=2)
    try:
        port = await edge.start()
        await _until(lambda: len(edge.workers_pids()) == 2)
        first, second = edge.workers_pids()  # started in index order
        # A connection on worker 1 that must outlive worker 0's restart.
        kept = None
        for _ in range(20):
            session = await _session(port)
            if (await session.request("api", b"x")).meta["edge-worker"] == "1":
                kept = session
                break
            await session.close()
        assert kept is not None
        os.kill(first, signal.SIGKILL)
        await _until(lambda: len(edge.workers_pids()) == 2 and first not in edge.workers_pids())
        assert second in edge.workers_pids()
        assert any("worker 0" in line and "SIGKILL" in line for line in edge.stderr)
        seen = await _workers_serving(port, "api", 12)
        assert seen["lost"] == 0 and set(seen) == {"0", "1"}, seen
        reply = await kept.request("api", b"still on 1")
        assert reply.body == b"still on 1" and reply.meta["edge-worker"] == "1"
        await kept.close()
        edge.send(signal.SIGTERM)
        assert await edge.wait(30) == 0
    finally:
        await edge.stop()


async def test_workers_exit_with_their_parent(tmp_path: Path, api: int) -> None:
    config = tmp_path / "edge.toml"
    write_config(config, {"api": api}, drain_timeout_s=1)
    edge = EdgeProcess(config, tmp_path / "tmp", workers=2)
    try:
        port = await edge.start()
        await _until(lambda: len(edge.workers_pids()) == 2)
        workers = edge.workers_pids()
        edge.send(signal.SIGKILL)
        await edge.wait(10)
        await _until(lambda: not any(alive(pid) for pid in workers), timeout=15)
        # The parent's generated key and CA went with its workers.
        assert not [p for p in edge.tmpdir.iterdir() if p.name.startswith("netsched-")]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", port))  # nobody holds the port any more
    finally:
        await edge.stop()


async def test_sighup_and_sigterm_reach_every_worker(
    tmp_path: Path, api: int, start_server
) -> None:
    other = await start_server(DemoHTTPServer("b", base_ms=0, cold_ms=0))
    config = tmp_path / "edge.toml"
    write_config(config, {"api": api}, drain_timeout_s=2)
    edge = EdgeProcess(config, tmp_path / "tmp", workers=2)
    try:
        port = await edge.start()
        await _until(lambda: len(edge.workers_pids()) == 2)
        workers = edge.workers_pids()
        established = await _session(port)
        text = config.read_text()
        config.write_text(text.replace('name = "api"\n', 'name = "api"\npolicy = "fastest"\n'))
        edge.send(signal.SIGHUP)
        await _until(lambda: any("reload rejected" in line for line in edge.stderr))
        assert (await _workers_serving(port, "api", 4))["lost"] == 0  # the old config serves
        write_config(config, {"api": api, "api2": other}, drain_timeout_s=2)
        edge.send(signal.SIGHUP)
        await asyncio.sleep(1.0)
        seen = await _workers_serving(port, "api2", 8)
        assert seen["lost"] == 0 and set(seen) == {"0", "1"}, seen  # both workers reloaded
        assert (await established.request("api2", b"y")).body == b"y"
        await established.close()
        assert edge.workers_pids() == workers  # reloaded in place, not restarted
        edge.send(signal.SIGTERM)
        assert await edge.wait(30) == 0
        assert not any(alive(pid) for pid in workers)
        assert not any("Traceback" in line for line in edge.stderr), edge.stderr
        assert not [p for p in edge.tmpdir.iterdir() if p.name.startswith("netsched-")]
    finally:
        await edge.stop()
