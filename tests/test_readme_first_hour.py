"""README's "Your first hour", run as written (ports made free, paths made temporary):
a plain HTTP server as the backend, the edge from the README's config, its generated CA,
then the README's `netsched get` and its Python example against it."""

from __future__ import annotations

import asyncio
import re
import socket
import sys
from pathlib import Path

import pytest
from edge_binary import EDGE, RunningEdge, run

README = Path(__file__).resolve().parent.parent / "README.md"
NETSCHED = str(Path(EDGE).with_name("netsched"))


def _section() -> str:
    text = README.read_text()
    start = text.index("## Your first hour")
    return text[start : text.index("\n## ", start + 1)]


def _block(section: str, language: str) -> str:
    """The first fenced block of `language`, its indentation removed."""
    match = re.search(rf"( *)```{language}\n(.*?)\n *```", section, re.S)
    assert match is not None, f"no {language} block in the first-hour section"
    indent = len(match.group(1))
    return "\n".join(line[indent:] for line in match.group(2).splitlines()) + "\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _output(*args: str, cwd: Path) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, (args, err.decode())
    return out.decode()


@pytest.mark.timeout(120)
async def test_the_first_hour_works_as_written(tmp_path: Path) -> None:
    section = _section()
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>hello from my service</h1>\n")
    backend_port = _free_port()
    http = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "http.server", str(backend_port), "--bind", "127.0.0.1",
        "--directory", str(site),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    config = _block(section, "toml").replace("127.0.0.1:8000", f"127.0.0.1:{backend_port}")
    (tmp_path / "edge.toml").write_text(config.replace("127.0.0.1:4433", "127.0.0.1:0"))
    try:
        checked = await run("check-config", str(tmp_path / "edge.toml"))
        assert checked.code == 0, checked.err
        edge = await RunningEdge.start("--config", str(tmp_path / "edge.toml"))
        try:
            said = await edge.wait_for_output("generated CA")
            assert str(tmp_path / "state" / "ca.pem") in said  # where the CA is kept
            ca = await run("ca", "--config", str(tmp_path / "edge.toml"))
            (tmp_path / "ca.pem").write_text(ca.out)
            url = f"netsched://127.0.0.1:{edge.port}/site/"
            page = await _output(NETSCHED, "get", url, "--ca", "ca.pem", cwd=tmp_path)
            assert page == "<h1>hello from my service</h1>\n"
            app = _block(section, "python").replace("4433", str(edge.port))
            (tmp_path / "app.py").write_text(app)
            printed = await _output(sys.executable, "app.py", cwd=tmp_path)
            assert printed == "200 text/html b'<h1>hello from my service</h1>\\n'\n"
        finally:
            assert await edge.stop() == 0
    finally:
        http.terminate()
        await http.wait()
