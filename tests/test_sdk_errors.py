"""Connection set-up failures are typed, one-line and immediate (issue #14 item 2).

Each case runs the SDK against real sockets on loopback: a real edge with its
generated certificate, a port nothing listens on (the kernel answers ICMP port
unreachable), a port that swallows datagrams, a name that does not resolve.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from netsched_client import (
    CertificateError,
    ConnectError,
    ConnectionLost,
    ConnectionRefused,
    HostNotFound,
    open_session,
)
from netsched_client.runtime.session import client_configuration
from netsched_edge.server import EdgeServer
from netsched_edge.tls import generate_self_signed

EdgeFactory = Callable[..., Awaitable[EdgeServer]]
TIMEOUT = 10.0  # the SDK's default: every failure below must come long before it
FAST = 2.0


async def _fails_fast(connecting: Awaitable[object], kind: type[Exception]) -> Exception:
    started = time.monotonic()
    with pytest.raises(kind) as caught:
        await connecting
    assert time.monotonic() - started < FAST, "waited for a timeout"
    assert "\n" not in str(caught.value)
    return caught.value


async def test_a_name_that_does_not_resolve() -> None:
    exc = await _fails_fast(
        open_session("no-such-host.invalid", 4433, verify=False, timeout=TIMEOUT), HostNotFound
    )
    assert str(exc).startswith("cannot resolve 'no-such-host.invalid': ")
    assert isinstance(exc, ConnectError) and isinstance(exc, ConnectionLost)


async def test_nothing_listening_is_refused_at_once() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # The port is free now: the kernel answers our datagrams with ICMP port unreachable.
    exc = await _fails_fast(
        open_session("127.0.0.1", port, verify=False, timeout=TIMEOUT), ConnectionRefused
    )
    assert str(exc) == f"nothing listens on 127.0.0.1:{port} (ICMP port unreachable)"


async def test_a_silent_port_still_times_out() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        started = time.monotonic()
        with pytest.raises(ConnectionLost, match=r"no handshake with .* within 1\.5 s") as caught:
            await open_session("127.0.0.1", silent.getsockname()[1], verify=False, timeout=1.5)
        assert not isinstance(caught.value, ConnectionRefused)
        assert time.monotonic() - started >= 1.5
        # Nothing came back, so the probe went too, as one empty datagram.
        silent.setblocking(False)
        received = []
        while True:
            try:
                received.append(silent.recv(2048))
            except BlockingIOError:
                break
        assert b"" in received


async def test_no_probe_when_the_server_answers() -> None:
    """A datagram back (here one that is not QUIC) shows that the port listens: no probe."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.setblocking(False)
        received: list[bytes] = []

        async def answer() -> None:
            while True:
                data, peer = await loop.sock_recvfrom(server, 65536)
                received.append(data)
                await loop.sock_sendto(server, b"not quic", peer)

        answering = asyncio.ensure_future(answer())
        try:
            with pytest.raises(ConnectionLost, match="no handshake"):
                await open_session("127.0.0.1", server.getsockname()[1], verify=False, timeout=1.5)
        finally:
            answering.cancel()
        assert received and b"" not in received
        assert all(len(data) >= 1200 for data in received)  # QUIC Initials only


@pytest.mark.parametrize("problem", ["missing", "not PEM", "unreadable"])
async def test_a_bad_ca_file_fails_before_connecting(tmp_path: Path, problem: str) -> None:
    ca = tmp_path / "ca.pem"
    if problem == "not PEM":
        ca.write_text("hello\n")
    elif problem == "unreadable":
        if os.geteuid() == 0:
            ca = tmp_path  # root reads any file; a folder cannot be read as one
        else:
            ca.write_text("x")
            ca.chmod(0)
    reasons = {
        "missing": "No such file or directory",
        "not PEM": "no PEM certificate in it",
        "unreadable": "Is a directory" if ca == tmp_path else "Permission denied",
    }
    # Port 9 on a host that does not resolve: the CA file is read before anything else.
    exc = await _fails_fast(
        open_session("no-such-host.invalid", 9, ca_file=str(ca), timeout=TIMEOUT), CertificateError
    )
    assert isinstance(exc, CertificateError) and exc.reason == reasons[problem]
    assert str(ca) in str(exc)


async def test_a_certificate_the_ca_did_not_sign(start_edge: EdgeFactory, tmp_path: Path) -> None:
    edge = await start_edge()
    other = generate_self_signed(tmp_path / "other").ca_certificate
    exc = await _fails_fast(
        open_session("127.0.0.1", edge.port, ca_file=str(other), timeout=TIMEOUT), CertificateError
    )
    assert isinstance(exc, CertificateError)
    assert exc.reason == "self-signed certificate in certificate chain"
    assert str(exc) == f"certificate of 127.0.0.1:{edge.port} not trusted: {exc.reason}"
    # The right CA still works from the same process.
    session = await open_session("127.0.0.1", edge.port, ca_file=str(edge.ca_certificate))
    await session.close()


async def test_an_app_without_logging_sees_the_error_only(
    start_edge: EdgeFactory, tmp_path: Path
) -> None:
    """No stray aioquic log line on stderr: the typed exception is the one report."""
    edge = await start_edge()
    other = generate_self_signed(tmp_path / "other").ca_certificate
    app = (
        "import asyncio, sys\n"
        "from netsched_client import CertificateError, open_session\n"
        "async def main():\n"
        "    try:\n"
        f"        await open_session('127.0.0.1', {edge.port}, ca_file={str(other)!r})\n"
        "    except CertificateError as exc:\n"
        "        print(type(exc).__name__, exc.reason)\n"
        "asyncio.run(main())\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", app, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0 and err == b""
    assert out == b"CertificateError self-signed certificate in certificate chain\n"


async def test_a_name_the_certificate_does_not_hold(start_edge: EdgeFactory) -> None:
    edge = await start_edge()
    configuration = client_configuration("wrong.example", ca_file=str(edge.ca_certificate))
    exc = await _fails_fast(
        open_session("127.0.0.1", edge.port, configuration=configuration, timeout=TIMEOUT),
        CertificateError,
    )
    assert isinstance(exc, CertificateError) and "wrong.example" in exc.reason


async def test_refusal_does_not_leak_the_probe() -> None:
    tasks_before = len(asyncio.all_tasks())
    with pytest.raises(ConnectionRefused):
        await open_session("127.0.0.1", 9, verify=False, timeout=TIMEOUT)
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) <= tasks_before
