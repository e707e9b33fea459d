"""Issue #14, item 5: the edge's logs, read from the real `netsched-edge` process: one
access line per request (text and JSON), aioquic's internals only when asked, and the
documented QLOGDIR / SSLKEYLOGFILE."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from edge_binary import RunningEdge, write_config

from netsched_client import SLO, DeadlineExceeded, ServiceNotFound, connect
from netsched_edge.access_log import Access
from netsched_edge.demo_backends import DemoHTTPServer


@pytest.fixture
async def backend() -> AsyncIterator[int]:
    server = DemoHTTPServer("log-backend", base_ms=20, cold_ms=0)
    port = await server.start()
    yield port
    await server.stop()


async def _edge(tmp_path: Path, backend: int, *args: str, env: dict[str, str] | None = None):
    config = write_config(tmp_path / "edge.toml", backend)
    state = str(tmp_path / "state")
    return await RunningEdge.start("--config", str(config), "--state-dir", state, *args, env=env)


async def _three_requests(edge: RunningEdge, ca: Path) -> None:
    """A success within its deadline over two paths, a missed deadline, an unknown service."""
    async with connect(
        "127.0.0.1", edge.port, ca_file=str(ca), paths=["127.0.0.1", "127.0.0.2"], timeout=10
    ) as session:
        assert [p.state for p in session.paths] == ["active", "active"]
        response = await session.request("api", b"hello", slo=SLO(deadline_ms=2000))
        assert response.status == 200
        with pytest.raises(DeadlineExceeded):
            await session.request("api", b"late", slo=SLO(deadline_ms=5))
        with pytest.raises(ServiceNotFound):
            await session.request("nowhere", b"?")


async def _access_lines(edge: RunningEdge, count: int) -> list[str]:
    async with asyncio.timeout(30):  # a worker's lines pass through its parent: a loaded host
        while len(lines := [x for x in edge.stderr if "netsched.edge.access" in x]) < count:
            await asyncio.sleep(0.02)
    return lines


def _fields(line: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in line.split("netsched.edge.access: ")[1].split())


async def test_one_text_access_line_per_request(tmp_path: Path, backend: int) -> None:
    edge = await _edge(tmp_path, backend)  # INFO is the default level
    try:
        await _three_requests(edge, tmp_path / "state" / "ca.pem")
        ok, late, unknown = map(_fields, await _access_lines(edge, 3))
    finally:
        assert await edge.stop() == 0
    assert ok | {"latency_ms": "?"} == {
        "service": "api",
        "backend": "b",
        "status": "200",
        "bytes_in": "5",
        "bytes_out": str(len(b"hello")),  # the demo backend echoes
        "latency_ms": "?",
        "deadline_ms": "2000",
        "deadline": "met",
        "paths": "2",
        "protocol": "netsched/1",
        "stream": "0",
        "end": "complete",
    }
    assert 15 <= float(ok["latency_ms"]) < 2000  # the backend takes 20 ms
    assert (late["status"], late["deadline_ms"], late["deadline"]) == ("504", "5", "missed")
    assert late["backend"] == "-" and late["bytes_out"] == "0"
    assert (unknown["service"], unknown["status"], unknown["deadline"]) == (
        "nowhere",
        "404",
        "none",
    )
    assert len([x for x in edge.stderr if "netsched.edge.access" in x]) == 3


async def test_json_lines_and_no_aioquic_internals_unless_asked(
    tmp_path: Path, backend: int
) -> None:
    edge = await _edge(tmp_path, backend, "--log-format", "json", "--log-level", "debug")
    try:
        await _three_requests(edge, tmp_path / "state" / "ca.pem")
        await _access_lines(edge, 3)
    finally:
        assert await edge.stop() == 0
    records = [json.loads(line) for line in edge.stderr]  # every line is one JSON object
    access = [r for r in records if r["logger"] == "netsched.edge.access"]
    assert [(r["service"], r["status"], r["deadline"]) for r in access] == [
        ("api", 200, "met"),
        ("api", 504, "missed"),
        ("nowhere", 404, "none"),
    ]
    assert access[0]["paths"] == 2 and access[0]["backend"] == "b"
    assert not [r for r in records if r["logger"] in ("quic", "http3")]  # DEBUG, not aioquic's

    asked = await _edge(tmp_path, backend, "--log-format", "json", "--log-level", "debug-quic")
    try:
        await _three_requests(asked, tmp_path / "state" / "ca.pem")
    finally:
        assert await asked.stop() == 0
    quic = [r for r in map(json.loads, asked.stderr) if r["logger"] == "quic"]
    assert quic and all(r["level"] == "debug" or r["level"] == "info" for r in quic)


async def test_warning_level_logs_no_access_lines(tmp_path: Path, backend: int) -> None:
    edge = await _edge(tmp_path, backend, env={"NETSCHED_EDGE_LOG_LEVEL": "warning"})
    try:
        await _three_requests(edge, tmp_path / "state" / "ca.pem")
    finally:
        assert await edge.stop() == 0
    assert not [x for x in edge.stderr if "netsched.edge.access" in x or " INFO " in x]


async def test_workers_log_access_lines_in_the_parent_s_format(
    tmp_path: Path, backend: int
) -> None:
    edge = await _edge(tmp_path, backend, "--workers", "2", "--log-format", "json")
    try:
        await _three_requests(edge, tmp_path / "state" / "ca.pem")
        await _access_lines(edge, 3)
    finally:
        assert await edge.stop() == 0
    access = [r for r in map(json.loads, edge.stderr) if r["logger"] == "netsched.edge.access"]
    assert [r["status"] for r in access] == [200, 504, 404]


async def test_qlogdir_and_sslkeylogfile_work(tmp_path: Path, backend: int) -> None:
    qlogs, keylog = tmp_path / "qlog", tmp_path / "keys.log"
    env = {"QLOGDIR": str(qlogs), "SSLKEYLOGFILE": str(keylog)}
    edge = await _edge(tmp_path, backend, env=env)
    try:
        async with connect(
            "127.0.0.1", edge.port, ca_file=str(tmp_path / "state" / "ca.pem")
        ) as session:
            await session.request("api", b"traced")
    finally:
        assert await edge.stop() == 0
    (qlog,) = qlogs.glob("*.qlog")
    events = qlog.read_text()
    assert '"qlog_version"' in events and "packet_received" in events
    secrets = keylog.read_text().splitlines()
    for label in ("SERVER_HANDSHAKE_TRAFFIC_SECRET", "SERVER_TRAFFIC_SECRET_0"):
        assert any(line.startswith(label + " ") for line in secrets), secrets


def test_a_value_a_client_chose_stays_one_field_on_one_line() -> None:
    access = Access(
        service="api\nservice=forged end",
        backend=None,
        status=404,
        bytes_in=0,
        bytes_out=0,
        latency_ms=1.23456,
        deadline_ms=None,
        paths=1,
        protocol="h3",
        stream=8,
        end="complete",
    )
    text = access.text()
    assert "\n" not in text
    assert text.startswith('service="api\\nservice=forged end" backend=- status=404')
    assert "latency_ms=1.235 deadline_ms=- deadline=none" in text
