"""Issue #14, item 2 (the edge's side): what an operator gets wrong at start is one line
on stderr and a non-zero status from the real `netsched-edge`, never a traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from edge_binary import run, write_config

from netsched_edge.tls import generate_self_signed


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("taken", ["quic", "admin", "udp_listen"])
async def test_an_address_in_use_is_one_line_naming_it(
    tmp_path: Path, taken: str, workers: str
) -> None:
    kind = socket.SOCK_STREAM if taken == "admin" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as holder:
        holder.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            holder.listen()
        port = holder.getsockname()[1]
        config = tmp_path / "edge.toml"
        listen = port if taken == "quic" else 0
        admin = f'admin = "127.0.0.1:{port}"' if taken == "admin" else ""
        udp = (
            f'[[services]]\nname = "dns"\nudp_listen = "127.0.0.1:{port}"\n'
            '[[services.backends]]\nkind = "udp"\naddress = "127.0.0.1:9"\n'
        )
        config.write_text(
            f'[edge]\nlisten = "127.0.0.1:{listen}"\n{admin}\n'
            + (udp if taken == "udp_listen" else "")
        )
        result = await run(
            "--config", str(config), "--workers", workers, "--state-dir", str(tmp_path / "s")
        )
    what = {"quic": "QUIC, UDP", "admin": "admin, TCP", "udp_listen": "service dns, UDP"}[taken]
    assert result.code == 1 and "listening" not in result.out
    assert _one_line(result.err) == (
        f"netsched-edge: cannot start: 127.0.0.1:{port} ({what}) is in use by another process"
    )


@pytest.mark.parametrize("problem", ["no_file", "not_pem", "bad_key", "other_key"])
async def test_a_certificate_or_key_that_cannot_serve_is_one_line_naming_the_file(
    tmp_path: Path, problem: str
) -> None:
    pair = generate_self_signed(tmp_path / "good")
    other = generate_self_signed(tmp_path / "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a PEM file\n")
    cert, key = pair.certificate, pair.private_key
    expected = {
        "no_file": "edge.private_key: no such file",
        "not_pem": f"{garbage}: no PEM certificate in it",
        "bad_key": f"{garbage}: not a PEM private key",
        "other_key": f"{other.private_key}: not the key of the certificate in {cert}",
    }[problem]
    if problem == "no_file":
        key = tmp_path / "missing.pem"
    elif problem == "not_pem":
        cert = garbage
    elif problem == "bad_key":
        key = garbage
    else:
        key = other.private_key
    config = write_config(
        tmp_path / "edge.toml", 9, edge=f'certificate = "{cert}"\nprivate_key = "{key}"'
    )
    for command in (["check-config", str(config)], ["serve", "--config", str(config)]):
        result = await run(*command)
        assert result.code == 2 and "listening" not in result.out
        line = _one_line(result.err)
        assert line.startswith(f"netsched-edge: config error: {config}") and expected in line


async def test_a_state_folder_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = write_config(tmp_path / "edge.toml", 9)
    result = await run("--config", str(config), "--state-dir", str(blocker / "state"))
    assert result.code == 1
    assert _one_line(result.err) == (
        f"netsched-edge: cannot start: state folder: {blocker / 'state'}: Not a directory"
    )
