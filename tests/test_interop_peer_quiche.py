"""The quiche peer: how it is launched, what it declines, and its Node program on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from interop.cases import CASES_BY_NAME, Feature, Side
from interop.peers import Job, default_cache
from interop.peers.quiche import PROGRAM, Quiche
from interop.runner import make_certificates

START_TIMEOUT_S = 15.0
CLIENT_TIMEOUT_S = 30.0


def job(tmp_path: Path, side: Side, testcase: str, port: int = 4433) -> Job:
    certs, keys = tmp_path / "certs", tmp_path / f"{side}.keys"
    if side is Side.SERVER:
        return Job(side, testcase, "hq-interop", port, tmp_path, certs, keys, www=tmp_path / "www")
    url = f"https://127.0.0.1:{port}/a"
    return Job(side, testcase, "hq-interop", port, tmp_path, certs, keys,
               downloads=tmp_path / "dl", requests=(url,))  # fmt: skip


def test_launch_runs_the_node_program_with_the_contract_environment(tmp_path: Path) -> None:
    peer = Quiche(tmp_path)
    server = peer.launch(job(tmp_path, Side.SERVER, "retry"))
    assert server.argv[1:] == (str(PROGRAM), str(tmp_path / "quiche" / "node_modules"))
    assert Path(server.argv[0]).name == "node" and PROGRAM.is_file()
    assert server.cwd == tmp_path
    assert {k: server.env[k] for k in ("ROLE", "TESTCASE", "ALPN", "PORT")} == {
        "ROLE": "server",
        "TESTCASE": "retry",
        "ALPN": "hq-interop",
        "PORT": "4433",
    }
    assert server.env["WWW"] == str(tmp_path / "www") and "DOWNLOADS" not in server.env
    client = peer.launch(job(tmp_path, Side.CLIENT, "multiconnect"))
    assert client.argv == server.argv
    assert client.env["ROLE"] == "client" and client.env["TESTCASE"] == "multiconnect"
    assert client.env["REQUESTS"] == "https://127.0.0.1:4433/a"
    assert client.env["DOWNLOADS"] == str(tmp_path / "dl") and "WWW" not in client.env
    assert client.env["SSLKEYLOGFILE"] == str(tmp_path / "client.keys")


def test_unsupported_names_what_the_quiche_binding_cannot_do(tmp_path: Path) -> None:
    peer = Quiche(tmp_path)
    for name in ("chacha20", "keyupdate"):
        assert peer.unsupported(CASES_BY_NAME[name], Side.SERVER) is None, name
        assert "quiche 0.18" in (peer.unsupported(CASES_BY_NAME[name], Side.CLIENT) or ""), name
    for side in Side:
        assert "0x6b3343cf" in (peer.unsupported(CASES_BY_NAME["v2"], side) or "")
        assert "multipath" in (peer.unsupported(CASES_BY_NAME["mp-transfer"], side) or "")
        names = ("handshake", "transfer", "multiplexing", "retry", "ipv6", "resumption", "zerortt")
        for name in names:
            assert peer.unsupported(CASES_BY_NAME[name], side) is None, (name, side)
    assert peer.unsupported(CASES_BY_NAME["rebind-addr"], Side.SERVER) is None
    resumes = {Feature.IPV6, Feature.RESUMPTION, Feature.ZERO_RTT}
    assert peer.server_features == {Feature.RETRY, Feature.MIGRATION} | resumes
    assert peer.client_features == resumes
    assert peer.alpns(Side.CLIENT) == peer.alpns(Side.SERVER) == ("hq-interop",)


def test_status_wants_this_version_installed_with_its_binding(tmp_path: Path) -> None:
    peer = Quiche(tmp_path)
    assert "not installed" in (peer.status() or "")
    peer.home.mkdir(parents=True)
    (peer.home / "READY").write_text("quiche 0.17 via something else\n")
    assert "another version" in (peer.status() or "")
    peer.mark_ready()
    assert "quic-linux-x64 missing" in (peer.status() or "")
    (peer.home / "node_modules" / "@matrixai" / "quic-linux-x64").mkdir(parents=True)
    assert peer.status() is None


# ---------------------------------------------------------------- the program (when set up)

INSTALLED = Quiche(default_cache())
needs_install = pytest.mark.skipif(INSTALLED.status() is not None, reason="quiche peer not set up")


def run_program(launch_job: Job, timeout: float) -> subprocess.CompletedProcess[str]:
    launch = INSTALLED.launch(launch_job)
    return subprocess.run(
        list(launch.argv),
        env={**os.environ, **launch.env},
        cwd=launch.cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@needs_install
@pytest.mark.parametrize(("side", "testcase"), [(Side.SERVER, "v2"), (Side.CLIENT, "chacha20")])
def test_program_exits_127_for_a_case_it_does_not_implement(
    tmp_path: Path, side: Side, testcase: str
) -> None:
    done = run_program(job(tmp_path, side, testcase), CLIENT_TIMEOUT_S)
    assert done.returncode == 127, done.stderr
    assert testcase in done.stderr


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_bound(port: int, server: subprocess.Popen[bytes]) -> None:
    """Until the server's UDP port is taken (binding it ourselves fails), or it exits."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and server.poll() is None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return
        time.sleep(0.05)
    raise AssertionError(f"quiche server did not bind port {port} (exit {server.poll()})")


@needs_install
@pytest.mark.parametrize("testcase", ["handshake", "retry"])
def test_quiche_client_downloads_from_quiche_server_on_loopback(
    tmp_path: Path, testcase: str
) -> None:
    make_certificates(tmp_path / "certs")
    (tmp_path / "www").mkdir()
    body = os.urandom(70_000)  # several packets, more than one flow-control update
    (tmp_path / "www" / "a").write_bytes(body)
    port = free_udp_port()
    launch = INSTALLED.launch(job(tmp_path, Side.SERVER, testcase, port))
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        list(launch.argv), env={**os.environ, **launch.env}, stdout=log, stderr=log
    )
    try:
        wait_bound(port, server)
        done = run_program(job(tmp_path, Side.CLIENT, testcase, port), CLIENT_TIMEOUT_S)
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "dl" / "a").read_bytes() == body
    server_log = (tmp_path / "server.log").read_text()
    assert ("after Retry" in server_log) == (testcase == "retry"), server_log
    assert "CLIENT_HANDSHAKE_TRAFFIC_SECRET" in (tmp_path / "client.keys").read_text()
