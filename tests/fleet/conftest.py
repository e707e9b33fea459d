"""A real etcd on loopback ports of its own, in a temporary directory, for the fleet tests.

One etcd serves the whole session; each test gets a key prefix of its own
(`layout`). Raft timers are short (25 ms heartbeats) so that etcd accepts
1-second leases and expires them on time.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from fleet_support import (
    HELPER,
    EtcdServer,
    FleetProcess,
    StartFleetProcess,
    start_etcd,
    stop_etcd,
)

from netsched_edge.fleet.etcd import Etcd
from netsched_edge.fleet.layout import Layout


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
