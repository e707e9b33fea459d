"""Endpoint processes: started in their own session, logged to a file, always killed.

Each process leads a new process group (`start_new_session`), so stopping it
reaches the children it forked too (a venv's interpreter, a shell wrapper), and
only them. Readiness of a server is read from /proc/net/udp{,6}: the moment
its port is bound, whatever the stack prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

STOP_GRACE_S = 2.0
POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class Launch:
    """How to start one endpoint: argv, extra environment, working directory."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None

    def describe(self, limit: int = 300) -> str:
        """The command line, each value cut to `limit` characters (REQUESTS can be 60 kB)."""
        words = [f"{k}={v}" for k, v in sorted(self.env.items())] + list(self.argv)
        return " ".join(w if len(w) <= limit else f"{w[:limit]}…[{len(w)} chars]" for w in words)


class Process:
    """One running endpoint."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self._proc = proc
        self.log = log

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    async def wait(self, timeout: float) -> int | None:
        """The exit status, or None if it is still running after `timeout` seconds."""
        try:
            return await asyncio.wait_for(self._proc.wait(), timeout)
        except TimeoutError:
            return None

    async def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after a grace period; reaps the leader."""
        for sig, grace in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, STOP_GRACE_S)):
            if self._proc.returncode is not None:
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, sig)
            await self.wait(grace)
        # The leader may be gone while children it forked live on in its group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)


async def start(launch: Launch, log: Path) -> Process:
    """Start `launch` with stdout and stderr to `log` (which starts with the command)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        out.write(f"$ {launch.describe()}\n")
        out.flush()
        proc = await asyncio.create_subprocess_exec(
            *launch.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **launch.env},
            cwd=launch.cwd,
            start_new_session=True,
        )
    return Process(proc, log)


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port that was free a moment ago (the server binds it next; a race is rare)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def udp_port_bound(port: int) -> bool:
    """Whether any socket is bound to UDP `port` (IPv4 or IPv6), from /proc/net."""
    wanted = f":{port:04X}"
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        if any(line.split()[1].endswith(wanted) for line in lines if len(line.split()) > 1):
            return True
    return False


async def wait_bound(port: int, process: Process, timeout: float) -> bool:
    """True once `port` is bound; False if `process` exits or `timeout` passes first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if udp_port_bound(port):
            return True
        if process.returncode is not None:
            return False
        await asyncio.sleep(POLL_S)
    return False
