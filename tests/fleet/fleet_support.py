"""A real etcd for the fleet tests, and fleet members in processes of their own
for the tests that kill one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aioquic.quic.packet import encode_quic_version_negotiation

from netsched_edge.fleet.health import PROBE_VERSION

ETCD_START_S = 15.0
HELPER = Path(__file__).with_name("fleet_process.py")


@dataclass
class EtcdServer:
    endpoint: str
    ports: tuple[int, int]  # client, peer
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


def start_etcd(directory: Path, ports: tuple[int, int] | None = None) -> EtcdServer:
    """An etcd with its data in `directory`, on `ports` (client, peer) or free ones."""
    binary = shutil.which("etcd")
    if binary is None:
        pytest.skip("no etcd binary (Debian's etcd-server; .ci/run installs it)")
    client_port, peer_port = ports or _free_ports(2)
    client, peer = (f"http://127.0.0.1:{port}" for port in (client_port, peer_port))
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
            stop_etcd(EtcdServer(client, (client_port, peer_port), process))
            output = (directory / "etcd.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"etcd did not start: {output}")
        time.sleep(0.1)
    return EtcdServer(client, (client_port, peer_port), process)


def stop_etcd(server: EtcdServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(5)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(5)


StartFleetProcess = Callable[..., Awaitable["FleetProcess"]]


class FleetProcess:
    """A fleet member in a process of its own (fleet_process.py), to be killed
    without a goodbye: its leases are not revoked, they run out."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def line(self, timeout: float = 10.0) -> str:
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            return (await self.process.stdout.readline()).decode().strip()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()


def config_text(service: str, *, static_root: str | None = None) -> str:
    """An edge config with one HTTP service (and a static one serving `static_root`)."""
    text = f'[[services]]\nname = "{service}"\n'
    text += '[[services.backends]]\nkind = "http"\naddress = "127.0.0.1:9"\n'
    if static_root is not None:
        text += '[[services]]\nname = "files"\n[[services.backends]]\nkind = "static"\n'
        text += f'root = "{static_root}"\n'
    return text


def probe_answer(data: bytes) -> bytes | None:
    """What an edge answers to the front's health probe (Version Negotiation, its CIDs
    swapped); None when `data` is no probe."""
    if len(data) < 7 or int.from_bytes(data[1:5], "big") != PROBE_VERSION:
        return None
    dcid_end = 6 + data[5]
    dcid, scid = data[6:dcid_end], data[dcid_end + 1 : dcid_end + 1 + data[dcid_end]]
    return encode_quic_version_negotiation(
        source_cid=dcid, destination_cid=scid, supported_versions=[1]
    )
