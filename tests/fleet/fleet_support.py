"""Fleet members in processes of their own, for the tests that kill one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

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
