"""What a SIGHUP reload cannot change, said in one line (issue #12, reload).

The listening and admin addresses, retry, multipath, FEC and the other keys of
`lifecycle.RESTART_KEYS` are read once at start: a reload keeps the running
value and logs one WARNING line naming them; `check-config NEW --running OLD`
prints the same line before the operator sends SIGHUP.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from netsched_client import open_session
from netsched_edge.config import EdgeConfig, parse_config
from netsched_edge.lifecycle import restart_only_changes
from netsched_edge.server import EdgeServer

BASE = """
[edge]
listen = "127.0.0.1:4433"
{extra}

[[services]]
name = "api"
{service}
[[services.backends]]
kind = "{kind}"
address = "127.0.0.1:9000"
"""


def _config(extra: str = "", service: str = "", kind: str = "http") -> EdgeConfig:
    return parse_config(BASE.format(extra=extra, service=service, kind=kind), file="edge.toml")


def test_keys_read_at_start_are_named_and_the_others_are_not() -> None:
    running = _config()
    assert restart_only_changes(running, _config(service="retries = 0")) == []
    assert restart_only_changes(running, replace(running, idle_timeout_s=5.0)) == []
    assert restart_only_changes(
        running, _config("retry = true\nmultipath = false\nfec = false")
    ) == [
        "[edge] retry",
        "[edge] multipath",
        "[edge] fec",
    ]
    moved = replace(running, port=4434, host="127.0.0.2")
    assert restart_only_changes(running, moved) == ["[edge] listen"]  # one key, two fields
    assert restart_only_changes(running, _config('early_data = "idempotent"')) == []
    assert restart_only_changes(running, _config('early_data = "off"')) == [
        "[edge] early_data (off versus on)"
    ]
    udp = _config(kind="udp", service='udp_listen = "127.0.0.1:5300"')
    other = _config(kind="udp", service='udp_listen = "127.0.0.1:5301"')
    assert restart_only_changes(udp, other) == ["service api: udp_listen"]


async def _run(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "netsched_edge.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_check_config_says_in_one_line_what_takes_a_restart(tmp_path: Path) -> None:
    running = tmp_path / "running.toml"
    running.write_text(BASE.format(extra="", service="", kind="http"))
    new = tmp_path / "new.toml"
    new.write_text(
        BASE.format(extra="retry = true", service="", kind="http").replace("4433", "4434")
    )
    code, out, err = await _run("check-config", str(new), "--running", str(running))
    assert code == 0, err
    (line,) = [line for line in out.splitlines() if "restart" in line]
    assert line == (
        f"{new}: restart needed: [edge] listen, [edge] retry changed: a reload keeps the "
        "running value; drain and restart the edge to apply"
    )
    same_keys = tmp_path / "same.toml"
    same_keys.write_text(BASE.format(extra="", service="retries = 0", kind="http"))
    code, out, err = await _run("check-config", str(same_keys), "--running", str(running))
    assert code == 0, err
    assert f"{same_keys}: a reload (SIGHUP) applies every change" in out
    assert "restart" not in out


async def test_a_reload_keeps_the_listening_port_and_says_so(
    start_edge, caplog: pytest.LogCaptureFixture
) -> None:
    edge: EdgeServer = await start_edge()
    port = edge.port
    changed = replace(edge.config, port=port + 1, multipath=False)
    with caplog.at_level(logging.WARNING, logger="netsched.edge"):
        edge.reload(changed)
    (line,) = [r.getMessage() for r in caplog.records if "restart" in r.getMessage()]
    assert line == (
        "reload: [edge] listen, [edge] multipath changed: a reload keeps the running "
        "value; drain and restart the edge to apply"
    )
    assert edge.port == port
    # Still served where it was, over a real handshake.
    session = await open_session("127.0.0.1", port, ca_file=str(edge.ca_certificate), timeout=5)
    await session.close()
