"""The quinn peer: how it is launched, what it declines, when it counts as installed."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest
from interop_contract import assert_contract_client, job

from interop.cases import CASES_BY_NAME, Side
from interop.keylog import parse_keylog
from interop.peers import default_cache
from interop.peers.quinn import SOURCE, SOURCE_DIGEST, Quinn, source_digest
from interop.procs import free_udp_port, udp_port_bound
from interop.runner import make_certificates


def test_launch_runs_the_built_program_with_the_contract_environment(tmp_path: Path) -> None:
    peer = Quinn(tmp_path)
    server = peer.launch(job(tmp_path, Side.SERVER, "retry"))
    assert server.argv == (str(tmp_path / "quinn" / "target" / "release" / "quinn-interop-peer"),)
    assert server.cwd == tmp_path
    assert {k: server.env[k] for k in ("ROLE", "TESTCASE", "ALPN", "PORT", "HOST")} == {
        "ROLE": "server",
        "TESTCASE": "retry",
        "ALPN": "hq-interop",
        "PORT": "4433",
        "HOST": "127.0.0.1",
    }
    client = peer.launch(job(tmp_path, Side.CLIENT, "keyupdate"))
    assert_contract_client(client, server, tmp_path)


def test_unsupported_names_what_quinn_0_9_cannot_do(tmp_path: Path) -> None:
    peer = Quinn(tmp_path)
    for side in Side:
        reason = peer.unsupported(CASES_BY_NAME["v2"], side)
        assert reason is not None and "0x6b3343cf" in reason
        assert "multipath" in (peer.unsupported(CASES_BY_NAME["mp-transfer"], side) or "")
    for name in ("retry", "rebind-port", "rebind-addr"):
        assert peer.unsupported(CASES_BY_NAME[name], Side.SERVER) is None, name
    for name in ("keyupdate", "chacha20"):
        assert peer.unsupported(CASES_BY_NAME[name], Side.CLIENT) is None, name
    # quinn 0.9's Endpoint::rebind keeps the connection's DCID: no active migration.
    assert "active-migration" in (
        peer.unsupported(CASES_BY_NAME["connectionmigration"], Side.CLIENT) or ""
    )
    for name in ("handshake", "transfer", "multiplexing", "resumption", "zerortt", "ipv6"):
        assert peer.unsupported(CASES_BY_NAME[name], Side.CLIENT) is None, name
        assert peer.unsupported(CASES_BY_NAME[name], Side.SERVER) is None, name
    assert peer.alpns(Side.CLIENT) == peer.alpns(Side.SERVER) == ("hq-interop",)


def test_status_wants_a_binary_built_from_the_current_source(tmp_path: Path) -> None:
    peer = Quinn(tmp_path)
    assert "not installed" in (peer.status() or "")
    peer.mark_ready()
    assert "missing" in (peer.status() or "")
    peer.binary.parent.mkdir(parents=True)
    peer.binary.write_bytes(b"")
    (peer.home / SOURCE_DIGEST).write_text("0" * 64 + "\n")
    assert "changed" in (peer.status() or "")
    (peer.home / SOURCE_DIGEST).write_text(source_digest(SOURCE) + "\n")
    assert peer.status() is None


def test_source_digest_covers_names_and_contents(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "main.rs").write_text("fn main() {}\n")
    first = source_digest(tmp_path)
    (tmp_path / "src" / "main.rs").write_text("fn main() { }\n")
    second = source_digest(tmp_path)
    (tmp_path / "src" / "main.rs").rename(tmp_path / "src" / "lib.rs")
    assert len({first, second, source_digest(tmp_path)}) == 3


INSTALLED = Quinn(default_cache())
needs_build = pytest.mark.skipif(INSTALLED.status() is not None, reason="quinn peer not set up")


def run_peer(env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(INSTALLED.binary)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@needs_build
@pytest.mark.parametrize(
    ("role", "testcase"), [("server", "v2"), ("client", "connectionmigration")]
)
def test_program_exits_127_for_a_case_it_does_not_implement(
    tmp_path: Path, role: str, testcase: str
) -> None:
    done = run_peer({"ROLE": role, "TESTCASE": testcase, "CERTS": str(tmp_path)})
    assert done.returncode == 127
    assert testcase in done.stderr


@needs_build
def test_program_names_a_bad_variable(tmp_path: Path) -> None:
    done = run_peer({"ROLE": "client", "TESTCASE": "handshake", "PORT": "70000", "CERTS": "x"})
    assert done.returncode == 1
    assert "PORT" in done.stderr


@needs_build
def test_client_downloads_from_server_over_loopback(tmp_path: Path) -> None:
    """One retry exchange of the built program with itself, files checked by hash."""
    certs = tmp_path / "certs"
    certs.mkdir()
    make_certificates(certs)
    (tmp_path / "www").mkdir()
    (tmp_path / "dl").mkdir()
    body = os.urandom(300_000)
    (tmp_path / "www" / "blob").write_bytes(body)
    port = free_udp_port()
    common = {"TESTCASE": "retry", "CERTS": str(certs), "HOST": "127.0.0.1", "PORT": str(port)}
    server_env = {**common, "ROLE": "server", "WWW": str(tmp_path / "www")}
    server = subprocess.Popen(
        [str(INSTALLED.binary)],
        env={**os.environ, **server_env, "SSLKEYLOGFILE": str(tmp_path / "server.keys")},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while not udp_port_bound(port) and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        url = f"https://127.0.0.1:{port}"
        client = run_peer(
            {
                **common,
                "ROLE": "client",
                "REQUESTS": f"{url}/blob {url}/missing",
                "DOWNLOADS": str(tmp_path / "dl"),
                "SSLKEYLOGFILE": str(tmp_path / "client.keys"),
            }
        )
    finally:
        server.terminate()
        server.wait(timeout=10)
    # A file the server does not have fails the client (the stream is reset).
    assert client.returncode == 1, client.stderr
    assert "/missing" in client.stderr
    assert hashlib.sha256((tmp_path / "dl" / "blob").read_bytes()).digest() == (
        hashlib.sha256(body).digest()
    )
    secrets = parse_keylog((tmp_path / "client.keys").read_text())
    assert secrets.client_traffic is not None and secrets.server_traffic is not None
