"""A real etcd on loopback ports of its own, in a temporary directory, for the fleet tests.

One etcd serves the whole session; each test gets a key prefix of its own
(`layout`). Raft timers are short (25 ms heartbeats) so that etcd accepts
1-second leases and expires them on time.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fleet_support import FleetProcess, StartFleetProcess

from netsched_edge.fleet.etcd import Etcd
from netsched_edge.fleet.layout import Layout

ETCD_START_S = 15.0
HELPER = Path(__file__).with_name("fleet_process.py")


@dataclass
class EtcdServer:
    endpoint: str
    process: subprocess.Popen[bytes]


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _healthy(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/health", timeout=1) as answer:
            return bool(json.load(answer).get("health") == "true")
    except (OSError, ValueError):
        return False


def start_etcd(directory: Path) -> EtcdServer:
    binary = shutil.which("etcd")
    if binary is None:
        pytest.skip("no etcd binary (Debian's etcd-server; .ci/run installs it)")
    client, peer = (f"http://127.0.0.1:{port}" for port in _free_ports(2))
    log = (directory / "etcd.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            "--name=test",
            f"--data-dir={directory / 'data'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=test={peer}",
            "--heartbeat-interval=25",
            "--election-timeout=250",
            "--logger=zap",
            "--log-level=error",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    give_up_at = time.monotonic() + ETCD_START_S
    while not _healthy(client):
        if process.poll() is not None or time.monotonic() > give_up_at:
            stop_etcd(EtcdServer(client, process))
            output = (directory / "etcd.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"etcd did not start: {output}")
        time.sleep(0.1)
    return EtcdServer(client, process)


def stop_etcd(server: EtcdServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(5)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(5)


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = start_etcd(tmp_path_factory.mktemp("etcd"))
    try:
        yield server
    finally:
        stop_etcd(server)


@pytest.fixture
def layout() -> Layout:
    return Layout(f"/test-{uuid.uuid4().hex}/")


@pytest.fixture
async def etcd(etcd_server: EtcdServer) -> AsyncIterator[Etcd]:
    async with Etcd(etcd_server.endpoint) as client:
        yield client


@pytest.fixture
async def fleet_process(etcd_server: EtcdServer) -> AsyncIterator[StartFleetProcess]:
    started: list[FleetProcess] = []

    async def start(layout: Layout, name: str, *args: str) -> FleetProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HELPER),
            etcd_server.endpoint,
            layout.prefix,
            name,
            *args,
            stdout=asyncio.subprocess.PIPE,
        )
        started.append(FleetProcess(process))
        return started[-1]

    try:
        yield start
    finally:
        for helper in started:
            helper.kill()
            await helper.process.wait()
