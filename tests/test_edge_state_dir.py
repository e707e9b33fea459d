"""Issue #14, item 1: where the generated certificate and its CA live, with the real
`netsched-edge` binary: it says where the CA is, keeps it over restarts, prints it
(`netsched-edge ca`), and never leaves half-written files; clients verify with it."""

from __future__ import annotations

import asyncio
import datetime
import os
import signal
from pathlib import Path

import pytest
from cryptography import x509
from edge_binary import RunningEdge, run, write_config

from netsched_client import connect
from netsched_client.errors import ConnectionLost
from netsched_edge.demo_backends import DemoHTTPServer
from netsched_edge.tls import (
    CA_CERTIFICATE_FILE,
    CERTIFICATE_FILE,
    PRIVATE_KEY_FILE,
    RENEW_BEFORE,
    certificate_names,
    generate_self_signed,
    keep_credentials,
)


@pytest.fixture
async def backend() -> object:
    server = DemoHTTPServer("state-backend", base_ms=1, cold_ms=0)
    port = await server.start()
    yield port
    await server.stop()


async def _ca_line(edge: RunningEdge) -> tuple[Path, str]:
    """The CA path, and the line the edge prints about it after it listens."""
    line = await edge.wait_for_output("clients trust the generated CA")
    return Path(line.split("generated CA ")[1].split(" (")[0]), line


async def _request_verified(port: int, ca: Path) -> bytes:
    async with connect("127.0.0.1", port, ca_file=str(ca), timeout=10) as session:
        response = await session.request("api", b"verified")
        return response.body


async def test_the_edge_prints_its_ca_keeps_it_and_clients_verify_with_it(
    tmp_path: Path, backend: int
) -> None:
    config = write_config(tmp_path / "edge.toml", backend)
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}  # the default folder, under the test's
    edge = await RunningEdge.start("--config", str(config), env=env)
    try:
        ca, line = await _ca_line(edge)
        assert ca == tmp_path / "state" / "netsched-edge" / CA_CERTIFICATE_FILE
        assert "made now" in line
        assert await _request_verified(edge.port, ca) == b"verified"
        first_ca = ca.read_bytes()
        printed = await run("ca", "--config", str(config), env=env)
        assert (printed.code, printed.out) == (0, first_ca.decode())
        path = await run("ca", "--path", env=env)
        assert (path.code, path.out) == (0, f"{ca}\n")
    finally:
        assert await edge.stop() == 0
    # Kept by rule: the next start serves the same CA, so clients keep trusting it.
    assert (ca.parent / PRIVATE_KEY_FILE).stat().st_mode & 0o077 == 0
    again = await RunningEdge.start("--config", str(config), env=env)
    try:
        assert await _ca_line(again) == (ca, line.replace("made now", "kept from an earlier start"))
        assert ca.read_bytes() == first_ca
        assert await _request_verified(again.port, ca) == b"verified"
    finally:
        assert await again.stop() == 0


async def test_a_reload_keeps_the_generated_certificate(tmp_path: Path, backend: int) -> None:
    config = write_config(tmp_path / "edge.toml", backend)
    state = tmp_path / "elsewhere"
    edge = await RunningEdge.start("--config", str(config), "--state-dir", str(state))
    try:
        ca, _ = await _ca_line(edge)
        assert ca == state / CA_CERTIFICATE_FILE
        edge.proc.send_signal(signal.SIGHUP)
        await edge.wait_for_output("configuration reloaded")
        # A new connection after the reload still verifies with the CA printed at start.
        assert await _request_verified(edge.port, ca) == b"verified"
    finally:
        assert await edge.stop() == 0


async def test_state_dir_from_the_config_and_the_flag_over_it(tmp_path: Path, backend: int) -> None:
    config = write_config(tmp_path / "edge.toml", backend, edge='state_dir = "edge-state"')
    code = await run("check-config", str(config))
    assert code.code == 0, code.err
    printed = await run("ca", "--config", str(config))
    assert printed.code == 1 and "no generated CA in" in printed.err
    assert printed.err.count("\n") == 1 and "Traceback" not in printed.err
    edge = await RunningEdge.start("--config", str(config))
    try:
        assert (await _ca_line(edge))[0] == tmp_path / "edge-state" / CA_CERTIFICATE_FILE
    finally:
        assert await edge.stop() == 0
    flag = tmp_path / "flag-state"
    edge = await RunningEdge.start("--config", str(config), "--state-dir", str(flag))
    try:
        assert (await _ca_line(edge))[0] == flag / CA_CERTIFICATE_FILE
    finally:
        assert await edge.stop() == 0


async def test_a_crash_while_writing_leaves_nothing_that_is_used(
    tmp_path: Path, backend: int
) -> None:
    """What a writer killed mid-way leaves (a temporary file, a certificate cut short):
    removed or made again at the next start, never served."""
    state = tmp_path / "state"
    old = generate_self_signed(state)
    leftover = state / f".{PRIVATE_KEY_FILE}.x1y2z3"
    leftover.write_bytes(b"-----BEGIN PRIVATE KEY-----\nMIGH")
    cut = old.certificate.read_bytes()
    old.certificate.write_bytes(cut[: len(cut) // 2])
    config = write_config(tmp_path / "edge.toml", backend)
    edge = await RunningEdge.start("--config", str(config), "--state-dir", str(state))
    try:
        ca, line = await _ca_line(edge)
        assert "made now" in line
        assert sorted(p.name for p in state.iterdir()) == [
            ".lock",
            CA_CERTIFICATE_FILE,
            CERTIFICATE_FILE,
            PRIVATE_KEY_FILE,
        ]
        assert await _request_verified(edge.port, ca) == b"verified"
    finally:
        assert await edge.stop() == 0


async def test_a_client_with_another_ca_is_refused(tmp_path: Path, backend: int) -> None:
    """The CA the edge printed is what verifies it: another CA does not (the check is real)."""
    config = write_config(tmp_path / "edge.toml", backend)
    other = generate_self_signed(tmp_path / "other")
    edge = await RunningEdge.start("--config", str(config), "--state-dir", str(tmp_path / "s"))
    try:
        with pytest.raises(ConnectionLost):
            await _request_verified(edge.port, other.ca_certificate)
    finally:
        assert await edge.stop() == 0


def _names(pair_dir: Path) -> set[str]:
    leaf = x509.load_pem_x509_certificate((pair_dir / CERTIFICATE_FILE).read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {*san.get_values_for_type(x509.DNSName)} | {
        str(a) for a in san.get_values_for_type(x509.IPAddress)
    }


def test_kept_credentials_are_made_again_only_by_rule(tmp_path: Path) -> None:
    state = tmp_path / "state"
    pair, made = keep_credentials(state, certificate_names("0.0.0.0"))
    assert made and _names(state) == {"localhost", "127.0.0.1", "::1"}
    assert os.stat(state).st_mode & 0o077 == 0  # the folder holds a private key
    ca = pair.ca_certificate.read_bytes()
    assert keep_credentials(state, certificate_names("127.0.0.1")) == (pair, False)
    assert pair.ca_certificate.read_bytes() == ca
    # A listening address the leaf does not name: made again, the earlier names kept.
    _, made = keep_credentials(state, certificate_names("127.0.0.2"))
    assert made and _names(state) == {"localhost", "127.0.0.1", "::1", "127.0.0.2"}
    assert pair.ca_certificate.read_bytes() != ca
    # A key that is not the leaf's.
    other = generate_self_signed(tmp_path / "other")
    pair.private_key.write_bytes(other.private_key.read_bytes())
    assert keep_credentials(state, certificate_names("127.0.0.1"))[1]
    # A leaf in its last month.
    generate_self_signed(state, valid_days=RENEW_BEFORE.days - 1)
    assert keep_credentials(state, certificate_names("127.0.0.1"))[1]
    leaf = x509.load_pem_x509_certificate(pair.certificate.read_bytes())
    assert leaf.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > RENEW_BEFORE


async def test_workers_serve_the_kept_certificate(tmp_path: Path, backend: int) -> None:
    config = write_config(tmp_path / "edge.toml", backend)
    state = tmp_path / "state"
    edge = await RunningEdge.start(
        "--config", str(config), "--state-dir", str(state), "--workers", "2"
    )
    try:
        ca, _ = await _ca_line(edge)
        assert ca == state / CA_CERTIFICATE_FILE
        for _ in range(4):  # new connections reach either worker
            assert await _request_verified(edge.port, ca) == b"verified"
        edge.proc.send_signal(signal.SIGHUP)  # each worker reads the config again
        async with asyncio.timeout(10):
            while sum("configuration reloaded" in line for line in edge.stderr) < 2:
                await asyncio.sleep(0.05)
        for _ in range(4):  # and still presents the certificate the CA signed
            assert await _request_verified(edge.port, ca) == b"verified"
    finally:
        assert await edge.stop() == 0
