"""The quic-go peer: how it is launched, what it declines, when it counts as installed."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest
from interop_contract import assert_contract_client, job

from interop.cases import CASES_BY_NAME, Side
from interop.peers import default_cache
from interop.peers.quicgo import STAMP, QuicGo, source_digest
from interop.procs import free_udp_port, udp_port_bound
from interop.runner import make_certificates


def test_launch_runs_the_built_program_with_the_contract_environment(tmp_path: Path) -> None:
    peer = QuicGo(tmp_path)
    server = peer.launch(job(tmp_path, Side.SERVER, "retry", "h3"))
    assert server.argv == (str(tmp_path / "quic-go" / "bin" / "quicgo-peer"),)
    assert server.cwd == tmp_path
    assert {k: server.env[k] for k in ("ROLE", "TESTCASE", "ALPN", "PORT")} == {
        "ROLE": "server",
        "TESTCASE": "retry",
        "ALPN": "h3",
        "PORT": "4433",
    }
    client = peer.launch(job(tmp_path, Side.CLIENT, "keyupdate"))
    assert_contract_client(client, server, tmp_path)


def test_unsupported_names_what_quic_go_0_29_cannot_do(tmp_path: Path) -> None:
    peer = QuicGo(tmp_path)
    for side in Side:
        reason = peer.unsupported(CASES_BY_NAME["v2"], side)
        assert reason is not None and "0x709a50c4" in reason
        assert "multipath" in (peer.unsupported(CASES_BY_NAME["mp-transfer"], side) or "")
    for name in (
        "retry",
        "keyupdate",
        "chacha20",
        "http3",
        "handshakeloss",
        "resumption",
        "zerortt",
    ):
        assert peer.unsupported(CASES_BY_NAME[name], Side.CLIENT) is None, name
        assert peer.unsupported(CASES_BY_NAME[name], Side.SERVER) is None, name
    assert set(peer.alpns(Side.CLIENT)) == set(peer.alpns(Side.SERVER)) == {"hq-interop", "h3"}


def test_status_wants_a_binary_built_from_the_current_source(tmp_path: Path) -> None:
    peer = QuicGo(tmp_path)
    assert "not installed" in (peer.status() or "")
    peer.mark_ready()
    assert "missing" in (peer.status() or "")
    peer.binary.parent.mkdir(parents=True)
    peer.binary.write_bytes(b"")
    (peer.binary.parent / STAMP).write_text("0" * 64 + "\n")
    assert "older" in (peer.status() or "")
    (peer.binary.parent / STAMP).write_text(source_digest() + "\n")
    assert peer.status() is None


INSTALLED = QuicGo(default_cache())
needs_build = pytest.mark.skipif(INSTALLED.status() is not None, reason="quic-go peer not set up")


@needs_build
@pytest.mark.parametrize(
    ("role", "testcase"), [("server", "v2"), ("client", "connectionmigration")]
)
def test_program_exits_127_for_a_case_it_does_not_implement(
    tmp_path: Path, role: str, testcase: str
) -> None:
    env = {**os.environ, "ROLE": role, "TESTCASE": testcase, "ALPN": "hq-interop"}
    done = subprocess.run(
        [str(INSTALLED.binary)], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 127
    assert testcase in done.stderr


@needs_build
@pytest.mark.parametrize(
    ("testcase", "alpn"),
    [
        ("resumption", "hq-interop"),
        ("zerortt", "hq-interop"),
        ("resumption", "h3"),
        ("zerortt", "h3"),
    ],
)
def test_second_connection_resumes_and_zerortt_goes_early(
    tmp_path: Path, testcase: str, alpn: str
) -> None:
    """The built program with itself: two connections, the second resumed (and in 0-RTT)."""
    certs = tmp_path / "certs"
    certs.mkdir()
    make_certificates(certs)
    www, downloads = tmp_path / "www", tmp_path / "dl"
    www.mkdir()
    downloads.mkdir()
    bodies = {f"f{i}": os.urandom(2000) for i in range(5)}
    for name, body in bodies.items():
        (www / name).write_bytes(body)
    port = free_udp_port()
    common = {
        "TESTCASE": testcase,
        "ALPN": alpn,
        "CERTS": str(certs),
        "HOST": "127.0.0.1",
        "PORT": str(port),
    }
    server = subprocess.Popen(
        [str(INSTALLED.binary)],
        env={**os.environ, **common, "ROLE": "server", "WWW": str(www)},
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while not udp_port_bound(port) and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        client_env = {
            **common,
            "ROLE": "client",
            "REQUESTS": " ".join(f"https://127.0.0.1:{port}/{name}" for name in bodies),
            "DOWNLOADS": str(downloads),
            "SSLKEYLOGFILE": str(tmp_path / "client.keys"),
        }
        client = subprocess.run(
            [str(INSTALLED.binary)],
            env={**os.environ, **client_env},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        server.terminate()
        server.wait(timeout=10)
    early = testcase == "zerortt"
    assert client.returncode == 0, client.stderr
    assert f"resumed true, 0-RTT used {str(early).lower()}" in client.stderr
    for name, body in bodies.items():
        got = hashlib.sha256((downloads / name).read_bytes()).digest()
        assert got == hashlib.sha256(body).digest(), name
    labels = [line.split()[0] for line in (tmp_path / "client.keys").read_text().splitlines()]
    assert labels.count("CLIENT_HANDSHAKE_TRAFFIC_SECRET") == 2  # two connections
    # Only a ClientHello that offers early data has an early secret.
    assert labels.count("CLIENT_EARLY_TRAFFIC_SECRET") == int(early)
