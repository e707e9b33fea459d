"""examples/httpx_client.py and bench/bench_httpx.py run as shipped, against real servers."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from netsched_edge.config import BackendConfig, ServiceConfig
from netsched_edge.server import EdgeServer
from tests.test_http_semantics import _echo

ROOT = Path(__file__).resolve().parent.parent
EdgeFactory = Callable[..., Awaitable[EdgeServer]]


async def _python(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_example_runs_against_an_edge(start_edge: EdgeFactory) -> None:
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = echo.sockets[0].getsockname()[1]
    edge = await start_edge(ServiceConfig("api", (BackendConfig("b", "http", "127.0.0.1", port),)))
    example = str(ROOT / "examples" / "httpx_client.py")
    code, out, err = await _python(
        example, f"127.0.0.1:{edge.port}", "--ca", str(edge.ca_certificate)
    )
    echo.close()
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "200 application/json backend b", out
    assert re.fullmatch(r"  [\d.]+ ms, deadline met: True, 1 path\(s\)", lines[1]), out
    assert lines[2] == "urgent: 200" and re.fullmatch(r"streamed \d+ bytes", lines[3]), out


async def test_the_benchmark_prints_both_and_the_ratio() -> None:
    bench = str(ROOT / "bench" / "bench_httpx.py")
    code, out, err = await _python(bench, "--duration", "0.5", "--concurrency", "2", timeout=120)
    assert code == 0, err
    assert "httpx HTTP/1.1 direct" in out and "httpx NetSchedTransport" in out
    assert re.search(r"NetSchedTransport / plain HTTP/1\.1: [\d.]+x requests/s, [\d.]+x p99", out)
