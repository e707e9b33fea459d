"""The quic-go peer: how it is launched, what it declines, when it counts as installed."""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from interop.cases import CASES_BY_NAME, Side
from interop.peers import Job, default_cache
from interop.peers.quicgo import STAMP, QuicGo, source_digest


def job(tmp_path: Path, side: Side, testcase: str, alpn: str = "hq-interop") -> Job:
    common = Job(side, testcase, alpn, 4433, tmp_path, tmp_path / "certs", tmp_path / "k")
    if side is Side.SERVER:
        return replace(common, www=tmp_path / "www")
    return replace(common, downloads=tmp_path / "dl", requests=("https://127.0.0.1:4433/a",))


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
    assert server.env["WWW"] == str(tmp_path / "www") and "DOWNLOADS" not in server.env
    client = peer.launch(job(tmp_path, Side.CLIENT, "keyupdate"))
    assert client.argv == server.argv
    assert client.env["ROLE"] == "client" and client.env["TESTCASE"] == "keyupdate"
    assert client.env["REQUESTS"] == "https://127.0.0.1:4433/a"
    assert client.env["DOWNLOADS"] == str(tmp_path / "dl")
    assert client.env["SSLKEYLOGFILE"] == str(tmp_path / "k") and "WWW" not in client.env


def test_unsupported_names_what_quic_go_0_29_cannot_do(tmp_path: Path) -> None:
    peer = QuicGo(tmp_path)
    for side in Side:
        reason = peer.unsupported(CASES_BY_NAME["v2"], side)
        assert reason is not None and "0x709a50c4" in reason
        assert "multipath" in (peer.unsupported(CASES_BY_NAME["mp-transfer"], side) or "")
    for name in ("retry", "keyupdate", "chacha20", "http3", "handshakeloss"):
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


@pytest.mark.skipif(INSTALLED.status() is not None, reason="quic-go peer not set up")
@pytest.mark.parametrize(("role", "testcase"), [("server", "v2"), ("client", "zerortt")])
def test_program_exits_127_for_a_case_it_does_not_implement(
    tmp_path: Path, role: str, testcase: str
) -> None:
    env = {**os.environ, "ROLE": role, "TESTCASE": testcase, "ALPN": "hq-interop"}
    done = subprocess.run(
        [str(INSTALLED.binary)], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 127
    assert testcase in done.stderr
