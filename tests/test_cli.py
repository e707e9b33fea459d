"""The two binaries, run as a user would: real processes, real sockets."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

from netsched_edge.demo_backends import DemoHTTPServer

ROOT = Path(__file__).resolve().parent.parent


async def _run(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _edge(*args: str) -> list[str]:
    return [sys.executable, "-m", "netsched_edge.cli", *args]


async def test_check_config_accepts_example_and_names_errors(tmp_path: Path) -> None:
    code, out, _ = await _run(*_edge("check-config", str(ROOT / "examples" / "edge.toml")))
    assert code == 0 and "ok" in out
    bad = tmp_path / "edge.toml"
    bad.write_text(
        '[edge]\nlisten = "127.0.0.1:4433"\n\n[[services]]\nname = "api"\npolicy = "fastest"\n'
    )
    code, _, err = await _run(*_edge("check-config", str(bad)))
    assert code == 2
    assert f"{bad}:6: services[0].policy:" in err


async def test_demo_runs_and_reports(tmp_path: Path) -> None:
    code, out, err = await _run(*_edge("demo", "--duration", "1.5", "--rate", "60"), timeout=90)
    assert code == 0, err
    for word in ("Per backend", "Per SLO class", "fast", "steady", "slow", "interactive", "bulk"):
        assert word in out


async def test_serve_and_request_through_the_clis(tmp_path: Path) -> None:
    backend = DemoHTTPServer("cli-backend", base_ms=1, cold_ms=0)
    port = await backend.start()
    config = tmp_path / "edge.toml"
    config.write_text(
        '[edge]\nlisten = "127.0.0.1:0"\n\n[[services]]\nname = "api"\n\n'
        f'[[services.backends]]\nname = "b"\nkind = "http"\naddress = "127.0.0.1:{port}"\n'
    )
    edge = await asyncio.create_subprocess_exec(
        *_edge("--config", str(config)), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert edge.stdout is not None
        line = (await asyncio.wait_for(edge.stdout.readline(), 30)).decode()
        edge_port = line.split("listening on 127.0.0.1:")[1].split()[0]
        code, out, err = await _run(
            sys.executable,
            "-m",
            "netsched_client.cli",
            "request",
            f"127.0.0.1:{edge_port}",
            "api",
            "--data",
            "through the CLI",
            "--deadline-ms",
            "2000",
            "--insecure",
        )
        assert code == 0, err
        assert out == "through the CLI" and "from b" in err
        code, _, err = await _run(
            sys.executable,
            "-m",
            "netsched_client.cli",
            "request",
            f"127.0.0.1:{edge_port}",
            "missing",
            "--insecure",
        )
        assert code == 1 and "ServiceNotFound" in err
    finally:
        edge.terminate()
        assert await asyncio.wait_for(edge.wait(), 10) == 0
        await backend.stop()


async def test_a_port_in_use_is_one_line_and_status_1(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        config = tmp_path / "edge.toml"
        config.write_text(
            f'[edge]\nlisten = "127.0.0.1:{port}"\n\n[[services]]\nname = "api"\n\n'
            '[[services.backends]]\nname = "b"\nkind = "http"\naddress = "127.0.0.1:9"\n'
        )
        for workers in ("1", "2"):
            code, out, err = await _run(*_edge("--config", str(config), "--workers", workers))
            assert code == 1 and "listening" not in out, err
            assert f"cannot start: 127.0.0.1:{port} (QUIC, UDP) is in use" in err, err
            assert "Traceback" not in err


async def test_check_config_reads_the_keys_file(tmp_path: Path) -> None:
    keys = tmp_path / "edge.keys"
    keys.write_text("version = 1\nretry = 'not hex'\n")
    config = tmp_path / "edge.toml"
    config.write_text(f'[edge]\nkeys_file = "{keys}"\n')
    code, _, err = await _run(*_edge("check-config", str(config)))
    assert code == 2 and f"{keys}:2: retry must be 32 bytes" in err, err
    code, _, err = await _run(*_edge("generate-keys", str(tmp_path / "good.keys")))
    assert code == 0, err
    config.write_text(f'[edge]\nkeys_file = "{tmp_path / "good.keys"}"\n')
    code, out, err = await _run(*_edge("check-config", str(config)))
    assert code == 0 and "ok" in out, err


async def test_edge_help_lists_every_command_and_version_is_the_package_s() -> None:
    from netsched_edge import __version__

    code, out, _ = await _run(*_edge("--help"))
    assert code == 0
    for command in ("serve", "check-config", "generate-keys", "demo"):
        assert command in out
    code, out, _ = await _run(*_edge("--version"))
    assert (code, out.strip()) == (0, f"netsched-edge {__version__}")
    code, _, err = await _run(*_edge())  # no command: usage, status 2
    assert code == 2 and "usage: netsched-edge" in err
    code, _, err = await _run(*_edge("check-config"))  # its FILE is missing
    assert code == 2 and "the following arguments are required: file" in err


async def test_serve_raises_the_soft_file_limit_to_the_hard_one(tmp_path: Path) -> None:
    """Connections, backend sockets and UDP flows each hold a descriptor: the edge runs
    with the hard limit (flows derive their cap from it), as nginx and Go processes do."""
    script = (
        "import resource, sys\n"
        "from netsched_edge.cli import _raise_file_limit\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "_raise_file_limit()\n"
        "want = hard if hard != resource.RLIM_INFINITY else 1 << 20\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0] == want)\n"
    )
    code, out, err = await _run(sys.executable, "-c", script)
    assert (code, out.strip()) == (0, "True"), err
