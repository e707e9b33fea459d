"""`netsched`, the installed binary, against a real edge on loopback: outputs, exit codes, messages.

The edge runs in the test's process (conftest's `start_edge`) and the CLI in
its own, so every byte crosses real UDP sockets. Backends: the static file
service `www`, an HTTP backend that trickles its body (`slow`, for progress
lines, deadlines and Ctrl-C) and the demo echo server (`api`).
"""

from __future__ import annotations

import asyncio
import os
import pty
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pytest

from netsched_edge.config import BackendConfig, HealthConfig, ServiceConfig
from netsched_edge.demo_backends import DemoHTTPServer
from netsched_edge.server import EdgeServer
from netsched_edge.tls import generate_self_signed

EdgeFactory = Callable[..., Awaitable[EdgeServer]]  # conftest's start_edge

NETSCHED = str(Path(sys.executable).parent / "netsched")
CHUNK = 50_000


async def _run(
    *args: str, timeout: float = 30, env: dict[str, str] | None = None
) -> tuple[int, bytes, str]:
    proc = await asyncio.create_subprocess_exec(
        NETSCHED, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out, err.decode()


def _one_line_failure(code: int, err: str) -> str:
    """The single `netsched: ...` line of an expected failure (no traceback)."""
    assert code != 0
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("netsched: "), err
    return lines[0]


async def _trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """HTTP/1.1: GET /health answers at once; any other path sends `chunks` pieces, 0.1 s apart."""
    try:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        target = head.split()[1]
        chunks = 1 if target == "/health" else int(target.rpartition("=")[2] or 20)
        body_size = 2 if target == "/health" else chunks * CHUNK
        writer.write(
            f"HTTP/1.1 200 OK\r\nContent-Length: {body_size}\r\nConnection: close\r\n\r\n".encode()
        )
        if target == "/health":
            writer.write(b"ok")
        else:
            for _ in range(chunks):
                writer.write(b"x" * CHUNK)
                await writer.drain()
                await asyncio.sleep(0.1)
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


@dataclass
class Edge:
    port: int
    ca: str
    www: Path

    def url(self, rest: str) -> str:
        return f"netsched://127.0.0.1:{self.port}/{rest}"


@pytest.fixture
async def edge(start_edge: EdgeFactory, www: Path) -> AsyncIterator[Edge]:
    slow = await asyncio.start_server(_trickle, "127.0.0.1", 0)
    slow_port = slow.sockets[0].getsockname()[1]
    api = DemoHTTPServer("api-backend", base_ms=1, cold_ms=0)
    api_port = await api.start()
    health = HealthConfig(interval_s=0.2)
    server = await start_edge(
        ServiceConfig("www", (BackendConfig("files", "static", root=www),)),
        ServiceConfig(
            "slow", (BackendConfig("trickle", "http", "127.0.0.1", slow_port),), health=health
        ),
        ServiceConfig("api", (BackendConfig("b", "http", "127.0.0.1", api_port),), health=health),
    )
    assert server.ca_certificate is not None
    try:
        yield Edge(server.port, str(server.ca_certificate), www)
    finally:
        slow.close()
        await api.stop()


async def test_version_and_help_list_the_commands() -> None:
    code, out, _ = await _run("--version")
    assert code == 0 and out.decode().strip() == f"netsched {version('netsched')}"
    code, out, _ = await _run("--help")
    assert code == 0
    assert "get" in out.decode() and "request" in out.decode()
    code, out, _ = await _run("get", "--help")
    for option in ("-o FILE", "--paths", "--deadline-ms", "--insecure", "--ca", "--progress"):
        assert option in out.decode()


async def test_get_writes_the_file_and_verifies_with_the_ca(edge: Edge, tmp_path: Path) -> None:
    target = tmp_path / "big.bin"
    code, out, err = await _run("get", edge.url("www/big.bin"), "-o", str(target), "--ca", edge.ca)
    assert code == 0, err
    assert out == b"" and err == ""  # no progress line: stderr is not a terminal
    assert target.read_bytes() == (edge.www / "big.bin").read_bytes()


async def test_get_to_stdout_and_verbose_shows_the_negotiated_features(edge: Edge) -> None:
    code, out, err = await _run("get", edge.url("www/hello.txt"), "--insecure", "-v", "--fec")
    assert code == 0, err
    assert out == b"hello from the edge\n"
    assert f"* connected to 127.0.0.1:{edge.port}, ALPN netsched/1" in err
    assert "* multipath: yes, 1 path(s)" in err
    assert "* FEC: on" in err
    assert "* resumed: no, 0-RTT: off" in err
    assert "* status 200 from files, 20 bytes" in err
    code, _, err = await _run("get", edge.url("www/hello.txt"), "-k", "-v")
    assert code == 0 and "* FEC: off" in err


async def test_session_file_resumes_and_carries_0rtt(edge: Edge, tmp_path: Path) -> None:
    session = tmp_path / "edge.session"
    url = edge.url("www/hello.txt")
    code, out, err = await _run("get", url, "-k", "-v", "--session", str(session))
    assert code == 0 and out == b"hello from the edge\n", err
    assert "* resumed: no, 0-RTT: off" in err
    assert session.stat().st_mode & 0o777 == 0o600  # it holds the resumption secret
    code, out, err = await _run("get", url, "-k", "-v", "--session", str(session), "--early-data")
    assert code == 0 and out == b"hello from the edge\n", err
    assert "* resumed: yes, 0-RTT: accepted" in err
    code, _, err = await _run("get", url, "-k", "-v", "--session", str(session))
    assert code == 0 and "* resumed: yes, 0-RTT: off" in err


async def test_get_progress_line_on_a_long_transfer(edge: Edge) -> None:
    code, out, err = await _run("get", edge.url("slow/t?n=20"), "-k", "--progress")
    assert code == 0, err
    assert len(out) == 20 * CHUNK
    lines = err.strip().splitlines()
    assert len(lines) >= 2, err  # about 2 s: a line every 0.5 s after the first second
    assert all(line.startswith("received ") and "/s | path 0: " in line for line in lines), err
    assert lines[-1].startswith("received 1.0 MB in ")
    code, _, err = await _run("get", edge.url("slow/t?n=15"), "-k")  # not a terminal: silent
    assert code == 0 and err == ""


async def test_progress_line_redraws_in_place_on_a_terminal(edge: Edge, tmp_path: Path) -> None:
    controller, terminal = pty.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            NETSCHED, "get", edge.url("slow/t?n=20"), "-k", "-o", str(tmp_path / "t"),
            stderr=terminal,
        )  # fmt: skip
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        os.close(terminal)
    shown = b""
    with suppress(OSError):  # EIO once the terminal side is closed and drained
        while chunk := os.read(controller, 4096):
            shown += chunk
    os.close(controller)
    redraws = shown.split(b"\r")
    assert len(redraws) >= 3, shown  # one line, redrawn, then the final newline
    assert all(r.startswith(b"received ") and r.endswith(b"\x1b[K") for r in redraws[1:-1])
    assert b"\n" not in shown.rstrip(b"\r\n")


async def test_get_opens_extra_paths_and_counts_bytes_per_path(edge: Edge) -> None:
    code, out, err = await _run(
        "get", edge.url("slow/t?n=15"), "-k", "-v", "--progress", "--paths", "127.0.0.1,127.0.0.2"
    )
    assert code == 0, err
    assert len(out) == 15 * CHUNK
    assert "* multipath: yes" in err
    assert "*   path 0: " in err and "*   path 1: " in err, err
    assert "| path 1: " in err  # the progress line splits the bytes by path


async def test_get_works_on_the_pure_python_fallbacks(edge: Edge, tmp_path: Path) -> None:
    """No compiled module (as installed without a C compiler): the same bytes, one warning."""
    target = tmp_path / "big.bin"
    env = {**os.environ, "NETSCHED_NO_EXTENSIONS": "1"}
    code, _, err = await _run(
        "get", edge.url("www/big.bin"), "-o", str(target), "-k", "--fec", "-v", env=env
    )
    assert code == 0, err
    assert target.read_bytes() == (edge.www / "big.bin").read_bytes()
    assert err.count("NativeFallbackWarning") == 1 and "* FEC: on" in err, err


async def test_get_runs_on_asyncio_where_uvloop_is_not_installed(edge: Edge) -> None:
    """uvloop is a dependency only on CPython outside Windows; without it: a warning, asyncio."""
    code = (
        "import sys; sys.modules['uvloop'] = None  # as if not installed\n"
        "from netsched_client.cli import main\n"
        f"sys.exit(main(['get', {edge.url('www/hello.txt')!r}, '-k']))\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    assert out == b"hello from the edge\n"
    assert err.decode().strip() == (
        "netsched: netsched.cli: uvloop is not installed: running on the asyncio event loop"
    )


async def test_request_still_sends_a_body(edge: Edge) -> None:
    code, out, err = await _run(
        "request", f"127.0.0.1:{edge.port}", "api", "--data", "echo me", "--ca", edge.ca
    )
    assert code == 0, err
    assert out == b"echo me" and "from b" in err


async def test_expected_failures_print_one_line(edge: Edge, tmp_path: Path) -> None:
    cases: list[tuple[list[str], int, str]] = [
        (["get", "http://127.0.0.1/www/x"], 2, "URL must start with netsched:// or https://"),
        (["get", f"netsched://127.0.0.1:{edge.port}/"], 2, "names no service"),
        (["get", edge.url("www/hello.txt"), "--ca", str(tmp_path / "none.pem")], 2, "CA file"),
        (["get", edge.url("www/x"), "-o", str(tmp_path / "no" / "f")], 2, "does not exist"),
        (["request", "nohostport", "api", "-k"], 2, "edge must be HOST:PORT"),
        (["get", edge.url("www/hello.txt"), "-k", "--early-data"], 2, "needs --session"),
        (["get", edge.url("www/x"), "-k", "--session", str(edge.www / "hello.txt")], 2, "session"),
        (["get", "netsched://no-such-host.invalid:4433/www/x", "-k"], 1, "cannot resolve"),
        (["get", edge.url("nosuch/x"), "-k"], 1, "ServiceNotFound"),
        (["get", edge.url("www/missing.txt"), "-k"], 1, "404"),
        (["request", f"127.0.0.1:{edge.port}", "nosuch", "-k"], 1, "ServiceNotFound"),
    ]
    for args, expected_code, words in cases:
        code, _, err = await _run(*args)
        line = _one_line_failure(code, err)
        assert code == expected_code and words in line, (args, code, line)


async def test_no_edge_and_wrong_ca_fail_in_one_line(edge: Edge, tmp_path: Path) -> None:
    # Nothing listens on this UDP port: the OS says so (ICMP), long before the timeout.
    started = time.monotonic()
    code, _, err = await _run("get", "netsched://127.0.0.1:9/www/x", "-k")
    line = _one_line_failure(code, err)
    assert code == 1 and "ConnectionRefused: nothing listens on 127.0.0.1:9" in line, line
    assert time.monotonic() - started < 5  # the connect timeout is 10 s
    # A port that swallows datagrams: no handshake within the connect timeout.
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    silent_url = f"netsched://127.0.0.1:{silent.getsockname()[1]}/www/x"
    code, _, err = await _run("get", silent_url, "-k", "--connect-timeout", "1")
    line = _one_line_failure(code, err)
    assert code == 1 and "ConnectionLost: no handshake" in line, line
    # Ctrl-C while starting up and waiting for that handshake: one line too.
    proc = await asyncio.create_subprocess_exec(
        NETSCHED, "get", silent_url, "-k", stderr=asyncio.subprocess.PIPE
    )
    await asyncio.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err_bytes = await asyncio.wait_for(proc.communicate(), 15)
    line = _one_line_failure(proc.returncode or 0, err_bytes.decode())
    assert proc.returncode == 130 and line == "netsched: interrupted"
    silent.close()
    # A CA that did not sign the edge's certificate: refused at the handshake.
    other = generate_self_signed(tmp_path / "other").ca_certificate
    code, _, err = await _run("get", edge.url("www/hello.txt"), "--ca", str(other))
    line = _one_line_failure(code, err)
    assert code == 1 and line.startswith("netsched: CertificateError: certificate of"), line
    assert "self-signed certificate" in line, line
    # A CA file that holds no certificate: bad usage, before connecting.
    code, _, err = await _run("get", edge.url("www/hello.txt"), "--ca", str(edge.www / "hello.txt"))
    line = _one_line_failure(code, err)
    assert code == 2 and "no PEM certificate" in line, line


async def test_deadline_and_ctrl_c_leave_no_partial_file(edge: Edge, tmp_path: Path) -> None:
    target = tmp_path / "slow.bin"
    code, _, err = await _run(
        "get", edge.url("slow/t?n=20"), "-k", "--deadline-ms", "400", "-o", str(target)
    )
    line = _one_line_failure(code, err)
    assert code == 1 and "DeadlineExceeded" in line, line
    assert not target.exists()

    proc = await asyncio.create_subprocess_exec(
        NETSCHED,
        "get",
        edge.url("slow/t?n=40"),
        "-k",
        "-o",
        str(target),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await asyncio.sleep(1.5)  # connected and receiving
    proc.send_signal(signal.SIGINT)
    _, err_bytes = await asyncio.wait_for(proc.communicate(), 15)
    line = _one_line_failure(proc.returncode or 0, err_bytes.decode())
    assert proc.returncode == 130 and line == "netsched: interrupted"
    assert not target.exists()
