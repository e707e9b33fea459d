"""The endpoint contract (interop/README.md) as the built peers' launch tests check it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from interop.cases import Side
from interop.peers import Job
from interop.procs import Launch


def job(tmp_path: Path, side: Side, testcase: str, alpn: str = "hq-interop") -> Job:
    common = Job(side, testcase, alpn, 4433, tmp_path, tmp_path / "certs", tmp_path / "k")
    if side is Side.SERVER:
        return replace(common, www=tmp_path / "www")
    return replace(common, downloads=tmp_path / "dl", requests=("https://127.0.0.1:4433/a",))


def assert_contract_client(client: Launch, server: Launch, tmp_path: Path) -> None:
    """A keyupdate client launched from `job`: the server's program, the client's variables."""
    assert server.env["WWW"] == str(tmp_path / "www") and "DOWNLOADS" not in server.env
    assert client.argv == server.argv
    assert client.env["ROLE"] == "client" and client.env["TESTCASE"] == "keyupdate"
    assert client.env["REQUESTS"] == "https://127.0.0.1:4433/a"
    assert client.env["DOWNLOADS"] == str(tmp_path / "dl")
    assert client.env["SSLKEYLOGFILE"] == str(tmp_path / "k") and "WWW" not in client.env
