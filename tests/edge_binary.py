"""`netsched-edge` as a user runs it: the installed console script in a child process,
its stdout lines read as they come and its stderr kept (for the state-folder, CLI-error,
log and metrics tests)."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

# The console script pip installed next to this interpreter (what users run).
EDGE = shutil.which("netsched-edge", path=str(Path(sys.executable).parent)) or "netsched-edge"

HTTP_SERVICE = """[edge]
listen = "127.0.0.1:0"
{edge}

[[services]]
name = "api"
{service}

[[services.backends]]
name = "b"
kind = "http"
address = "127.0.0.1:{port}"
"""


def write_config(path: Path, backend_port: int, *, edge: str = "", service: str = "") -> Path:
    """An edge config with one HTTP service "api" on `backend_port`; `edge` and `service`
    add lines to their tables."""
    path.write_text(HTTP_SERVICE.format(edge=edge, service=service, port=backend_port))
    return path


async def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Finished:
    """Run `netsched-edge ARGS` to its end."""
    proc = await asyncio.create_subprocess_exec(
        EDGE,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return Finished(proc.returncode, out.decode(), err.decode())


@dataclass(frozen=True, slots=True)
class Finished:
    code: int
    out: str
    err: str


@dataclass
class RunningEdge:
    """`netsched-edge serve ...` until `stop()`: the port it announced and what it printed."""

    proc: asyncio.subprocess.Process
    port: int
    stdout: list[str]
    stderr: list[str] = field(default_factory=list)
    _readers: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def start(
        cls, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> RunningEdge:
        proc = await asyncio.create_subprocess_exec(
            EDGE,
            "serve",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        assert proc.stdout is not None and proc.stderr is not None
        edge = cls(proc, 0, [])
        edge._readers.append(asyncio.create_task(_collect(proc.stderr, edge.stderr)))
        try:
            async with asyncio.timeout(timeout):
                while "listening on" not in (line := await _line(proc.stdout)):
                    edge.stdout.append(line)
                edge.stdout.append(line)
        except BaseException:
            await edge.stop()
            raise
        edge.port = int(line.split("listening on ")[1].split()[0].rsplit(":", 1)[1])
        edge._readers.append(asyncio.create_task(_collect(proc.stdout, edge.stdout)))
        return edge

    async def wait_for_output(self, text: str, timeout: float = 10) -> str:
        """The first line on stdout or stderr holding `text` (waiting for it)."""
        async with asyncio.timeout(timeout):
            while True:
                for line in (*self.stdout, *self.stderr):
                    if text in line:
                        return line
                await asyncio.sleep(0.02)

    async def stop(self, timeout: float = 20) -> int:
        """SIGTERM (a drain), then the exit status; SIGKILL if it does not end."""
        if self.proc.returncode is None:
            self.proc.terminate()
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            code = await self.proc.wait()
        for reader in self._readers:
            await asyncio.wait_for(reader, 5)
        return code


async def _line(stream: asyncio.StreamReader) -> str:
    line = await stream.readline()
    if not line:
        raise EOFError("netsched-edge exited before it listened")
    return line.decode()


async def _collect(stream: asyncio.StreamReader, into: list[str]) -> None:
    while line := await stream.readline():
        into.append(line.decode())
