"""Signals of a single edge process (issue #12, fault 8): the real binary, real
sockets, the SDK as client.

SIGHUP reloads the config file without dropping a connection (a bad file is
rejected with its file:line and the old config keeps serving); SIGTERM drains
the requests under way; every exit is status 0, without a traceback, and
leaves no generated key or CA behind.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from intake_support import EdgeProcess, write_config

from netsched_client import Session, open_session
from netsched_client.errors import RequestError
from netsched_edge.demo_backends import DemoHTTPServer


async def _session(port: int) -> Session:
    return await open_session("127.0.0.1", port, verify=False, timeout=5, pmtud=None)


async def _serves(port: int, service: str) -> bool:
    try:
        session = await _session(port)
    except Exception:
        return False
    try:
        return (await session.request(service, b"ping")).body == b"ping"
    except RequestError:
        return False
    finally:
        await session.close()


async def _until(check, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.1)


def _clean_exit(edge: EdgeProcess, code: int) -> None:
    assert code == 0, edge.stderr
    assert not any("Traceback" in line for line in edge.stderr), edge.stderr
    assert list(edge.tmpdir.iterdir()) == []  # the generated key and CA are gone


@pytest.fixture
async def backends(start_server) -> tuple[int, int]:
    a = await start_server(DemoHTTPServer("a", base_ms=0, cold_ms=0))
    b = await start_server(DemoHTTPServer("b", base_ms=0, cold_ms=0))
    return a, b


async def test_sighup_applies_a_new_config_and_keeps_connections(
    tmp_path: Path, backends: tuple[int, int]
) -> None:
    config = tmp_path / "edge.toml"
    write_config(config, {"api": backends[0]})
    edge = EdgeProcess(config, tmp_path / "tmp")
    try:
        port = await edge.start()
        established = await _session(port)
        assert (await established.request("api", b"v1")).body == b"v1"
        assert not await _serves(port, "api2")
        write_config(config, {"api": backends[0], "api2": backends[1]})
        edge.send(signal.SIGHUP)
        await _until(lambda: _serves(port, "api2"))
        # The connection made before the reload is still there, and sees the new config.
        assert (await established.request("api2", b"v2")).body == b"v2"
        assert (await established.request("api", b"v1 again")).body == b"v1 again"
        await established.close()
        edge.send(signal.SIGHUP)  # a second reload, same file: still fine
        assert await _serves(port, "api2")
        edge.send(signal.SIGTERM)
        _clean_exit(edge, await edge.wait(20))
    finally:
        await edge.stop()


async def test_a_bad_config_on_sighup_is_rejected_and_the_old_one_serves(
    tmp_path: Path, backends: tuple[int, int]
) -> None:
    config = tmp_path / "edge.toml"
    write_config(config, {"api": backends[0]})
    edge = EdgeProcess(config, tmp_path / "tmp")
    try:
        port = await edge.start()
        text = config.read_text().replace('name = "api"\n', 'name = "api"\npolicy = "fastest"\n')
        config.write_text(text)
        bad_line = text.splitlines().index('policy = "fastest"') + 1
        edge.send(signal.SIGHUP)

        async def rejected() -> bool:
            return any("reload rejected" in line for line in edge.stderr)

        await _until(rejected)
        (line,) = [line for line in edge.stderr if "reload rejected" in line]
        assert f"{config}:{bad_line}: services[0].policy" in line
        assert await _serves(port, "api")  # the old config keeps serving
        edge.send(signal.SIGTERM)
        _clean_exit(edge, await edge.wait(20))
    finally:
        await edge.stop()


async def test_sigterm_drains_the_requests_under_way(tmp_path: Path, start_server) -> None:
    slow = await start_server(DemoHTTPServer("slow", base_ms=1500, cold_ms=0))
    config = tmp_path / "edge.toml"
    write_config(config, {"slow": slow}, drain_timeout_s=10)
    edge = EdgeProcess(config, tmp_path / "tmp")
    try:
        port = await edge.start()
        session = await _session(port)
        in_flight = asyncio.create_task(session.request("slow", b"finish me"))
        await asyncio.sleep(0.4)  # the request reached the backend
        edge.send(signal.SIGTERM)
        assert (await asyncio.wait_for(in_flight, 10)).body == b"finish me"
        _clean_exit(edge, await edge.wait(20))
        await session.close()
    finally:
        await edge.stop()
