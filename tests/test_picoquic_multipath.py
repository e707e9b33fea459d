"""Multipath interop with picoquic (aiopquic 0.6.1 bundles picoquic 1.1.53), both directions.

Our client ↔ a picoquic server and a picoquic client ↔ our edge, on loopback
(127.0.0.1 and 127.0.0.2): the handshake negotiates initial_max_path_id (0x3e),
an 8 MB hq-interop GET runs over two paths, and a path abandoned mid-transfer
costs no byte. The picoquic side is `interop/programs/picoquic_mp/` (ctypes on
picoquic's C API), the interop suite's multipath peer, run in that peer's
Python 3.12 venv (`python -m interop setup --peers picoquic`, done here when
missing); without Python 3.12 or PyPI the tests skip. picoquic writes qlog
into each test's tmp_path; `QLOGDIR=...` adds ours.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from interop.peers import SetupError, default_cache
from interop.peers.base import REPO_ROOT
from interop.peers.picoquic import Picoquic
from netsched_client import ConnectionLost, Session, open_session
from netsched_client.proto.multipath import events as mpe
from netsched_client.runtime.session import client_configuration
from netsched_edge.server import EdgeServer
from netsched_edge.tls import CertificatePair, generate_self_signed

pytestmark = pytest.mark.timeout(60)

SIZE = 8 << 20
# Values picoquic reports back from our transport parameters. The idle timeout is
# unusual on purpose: it proves picoquic's struct was read at the right offsets.
IDLE_TIMEOUT_S = 21.0
OUR_MAX_PATH_ID = 3  # client and edge default
PICOQUIC_MAX_PATH_ID = 2  # what picoquic offers with multipath option 1
ON_EACH_PATH = 512 << 10  # "bytes on both paths": well clear of ACKs and control frames
ABANDON_AT = 2 << 20
WAIT_S = 30.0
PATH_UNSTABLE_OR_POOR = 0x3E76
ABANDONED = "netsched_edge_paths_abandoned_total"


class Peer:
    """One picoquic program: its JSON-lines reports, its stdin control channel."""

    def __init__(self, process: asyncio.subprocess.Process, workdir: Path) -> None:
        self.process = process
        self.workdir = workdir
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            try:
                self.events.append(json.loads(line))
            except ValueError:  # not a report: keep it for the diagnostics
                self.events.append({"event": "text", "line": line.decode(errors="replace")})
            self._changed.set()
        self._changed.set()

    def of(self, event: str, **match: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e["event"] == event and all(e.get(k) == v for k, v in match.items())
        ]

    async def wait_for(self, event: str, **match: Any) -> dict[str, Any]:
        await self._until(lambda: bool(self.of(event, **match)), f"{event} {match}")
        return self.of(event, **match)[0]

    async def stats(self) -> list[dict[str, dict[str, int]]]:
        """picoquic_get_path_quality for every path of every connection, keyed by path ID."""
        assert self.process.stdin is not None
        seen = len(self.of("stats"))
        self.process.stdin.write(b"stats\n")
        await self.process.stdin.drain()
        await self._until(lambda: len(self.of("stats")) > seen, "stats")
        connections: list[dict[str, dict[str, int]]] = self.of("stats")[-1]["connections"]
        return connections

    async def _until(self, reported: Callable[[], bool], what: str) -> None:
        try:
            async with asyncio.timeout(WAIT_S):
                while not reported():
                    if self._reader.done():
                        raise AssertionError("the program exited")
                    self._changed.clear()
                    await self._changed.wait()
        except (TimeoutError, AssertionError) as exc:
            raise AssertionError(f"no {what} from picoquic: {self.diagnostics()}") from exc

    async def finished(self) -> int:
        async with asyncio.timeout(WAIT_S):
            return await self.process.wait()

    async def stop(self) -> None:
        if self.process.returncode is None and self.process.stdin is not None:
            self.process.stdin.close()  # end of file: the program frees picoquic (flushing qlog)
        try:
            async with asyncio.timeout(5):
                await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        await self._reader

    def diagnostics(self) -> str:
        stderr = (self.workdir / "stderr.txt").read_text(errors="replace")[-2000:]
        return f"events {self.events!r}; stderr {stderr!r}; qlog in {self.workdir / 'qlog'}"


StartPeer = Callable[..., Awaitable[Peer]]


@functools.cache
def body() -> bytes:
    """The 8 MB file both servers serve (made on first use, not at collection)."""
    return random.Random(0x3E).randbytes(SIZE)


def digest() -> str:
    return hashlib.sha256(body()).hexdigest()


@pytest.fixture(scope="session")
def picoquic_python() -> Path:
    peer = Picoquic(default_cache())
    if peer.status() is not None:
        try:
            peer.install(lambda line: None)
        except SetupError as exc:
            pytest.skip(f"picoquic peer unavailable: {exc}")
    return peer.home / "venv" / "bin" / "python"


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> CertificatePair:
    return generate_self_signed(tmp_path_factory.mktemp("picoquic-certs"))


@pytest.fixture(scope="session")
def mp_www(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("picoquic-www")
    (root / "big.bin").write_bytes(body())
    return root


@pytest.fixture
def start_peer(picoquic_python: Path, tmp_path: Path, stack: AsyncExitStack) -> StartPeer:
    async def start(program: str, *args: str) -> Peer:
        workdir = tmp_path / program
        (workdir / "qlog").mkdir(parents=True)
        with open(workdir / "stderr.txt", "wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                str(picoquic_python),
                "-m",
                f"interop.programs.picoquic_mp.{program}",
                *args,
                "--qlog",
                str(workdir / "qlog"),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                cwd=workdir,
                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            )
        peer = Peer(process, workdir)
        stack.push_async_callback(peer.stop)
        return peer

    return start


@pytest.fixture
async def picoquic_server(
    start_peer: StartPeer, certificates: CertificatePair, mp_www: Path
) -> AsyncIterator[tuple[Peer, int]]:
    peer = await start_peer(
        "server",
        "--cert",
        str(certificates.certificate),
        "--key",
        str(certificates.private_key),
        "--www",
        str(mp_www),
    )
    listening = await peer.wait_for("listening")
    yield peer, int(listening["port"])


@pytest.fixture
def open_hq_session(stack: AsyncExitStack) -> Callable[..., Awaitable[Session]]:
    async def open_(port: int, paths: list[str] | None = None) -> Session:
        configuration = client_configuration(
            "localhost", alpns=("hq-interop",), verify=False, idle_timeout=IDLE_TIMEOUT_S
        )
        session = await open_session("127.0.0.1", port, configuration=configuration, paths=paths)
        stack.push_async_callback(session.close)
        return session

    return open_


@pytest.fixture
async def edge(start_edge: Callable[..., Awaitable[EdgeServer]], mp_www: Path) -> EdgeServer:
    return await start_edge(www=mp_www, idle_timeout_s=IDLE_TIMEOUT_S)


def _edge_counter(edge: EdgeServer, name: str, **labels: str) -> float:
    value = edge.dispatcher.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def _get(session: Session) -> bytes:
    response = await session.request("www", meta={"path": "/big.bin"})
    return response.body


def _assert_our_parameters_seen(ready: dict[str, Any]) -> None:
    remote, local = ready["transport"]["remote"], ready["transport"]["local"]
    assert remote["max_idle_timeout"] == IDLE_TIMEOUT_S * 1000, ready  # struct layout check
    assert remote["initial_max_path_id"] == OUR_MAX_PATH_ID, ready
    # picoquic keeps its own offer only when the peer's 0x3e arrived (a server zeroes it).
    assert local["initial_max_path_id"] == PICOQUIC_MAX_PATH_ID, ready


def _fail_if_we_dropped_a_healthy_path(
    session: Session | None = None, edge: EdgeServer | None = None
) -> None:
    """A regression guard for a finding this suite made (now fixed).

    Our dead-path rule once counted a path with nothing in flight as "working",
    so a ~40 ms pause of the picoquic process (PTO ~12 ms on loopback) cost a
    healthy path as PATH_UNSTABLE_OR_POOR. A path is now abandoned only when
    another path was acknowledged after it went silent.
    """
    ours = [] if session is None else _unstable_paths(session)
    by_edge = 0.0 if edge is None else _edge_counter(edge, ABANDONED, by="edge")
    if ours or by_edge:
        pytest.fail(
            f"regression: NetSched abandoned a healthy loopback path as PATH_UNSTABLE_OR_POOR "
            f"after a short picoquic pause (client paths {ours}, edge abandons {by_edge:.0f})"
        )


def _unstable_paths(session: Session) -> list[int]:
    return [
        e.path_id
        for e in session.path_events
        if isinstance(e, mpe.PathAbandoned)
        and not e.by_peer
        and e.error_code == PATH_UNSTABLE_OR_POOR
    ]


# -- mp-handshake ---------------------------------------------------------------------------


async def test_handshake_our_client_to_picoquic_server(
    picoquic_server: tuple[Peer, int], open_hq_session: Callable[..., Awaitable[Session]]
) -> None:
    server, port = picoquic_server
    session = await open_hq_session(port)
    assert session.multipath  # picoquic's 0x3e reached us
    _assert_our_parameters_seen(await server.wait_for("ready"))


async def test_handshake_picoquic_client_to_our_edge(
    start_peer: StartPeer, edge: EdgeServer
) -> None:
    client = await start_peer("client", "--port", str(edge.port))
    assert await client.finished() == 0, client.diagnostics()
    _assert_our_parameters_seen(client.of("ready")[0])
    # The edge sends PATH_NEW_CONNECTION_ID for path 1 only once it took picoquic's 0x3e.
    assert client.of("path_allowed"), client.diagnostics()


# -- mp-transfer ----------------------------------------------------------------------------


async def test_transfer_on_two_paths_our_client_from_picoquic_server(
    picoquic_server: tuple[Peer, int], open_hq_session: Callable[..., Awaitable[Session]]
) -> None:
    server, port = picoquic_server
    session = await open_hq_session(port, paths=["127.0.0.1", "127.0.0.2"])
    assert [p.state for p in session.paths] == ["active", "active"]
    await server.wait_for("path", kind="available", unique_path_id=1)

    assert await _get(session) == body()

    _fail_if_we_dropped_a_healthy_path(session)
    ours = {p.path_id: p.bytes_received for p in session.paths}
    assert all(ours[i] >= ON_EACH_PATH for i in (0, 1)), (ours, session.path_events)
    (theirs,) = await server.stats()
    assert all(theirs[i]["bytes_sent"] >= ON_EACH_PATH for i in ("0", "1")), theirs


# How the client opens its second path: before asking (our test program's way), or
# mid-transfer with picoquic_probe_new_path (how picoquic's own applications add one).
PROBE_WAYS = {"before-transfer": (), "mid-transfer": ("--probe-at", "1")}


@pytest.mark.parametrize("probe", sorted(PROBE_WAYS))
async def test_transfer_on_two_paths_picoquic_client_from_our_edge(
    start_peer: StartPeer, edge: EdgeServer, probe: str
) -> None:
    client = await start_peer(
        "client",
        "--port",
        str(edge.port),
        "--second-local",
        "127.0.0.2",
        *PROBE_WAYS[probe],
        "--get",
        "/big.bin",
    )
    assert await client.finished() == 0, client.diagnostics()
    assert client.of("probe")[0]["ret"] == 0
    assert client.of("path", kind="available", unique_path_id=1)  # validated: picoquic's view
    fetched = client.of("fetched")[0]
    assert (fetched["bytes"], fetched["sha256"]) == (SIZE, digest())
    assert _edge_counter(edge, "netsched_edge_paths_opened_total") == 1
    _fail_if_we_dropped_a_healthy_path(edge=edge)
    received = {i: q["bytes_received"] for i, q in fetched["paths"].items()}
    assert all(received.get(i, 0) >= ON_EACH_PATH for i in ("0", "1")), received


# -- mp-abandon -----------------------------------------------------------------------------


async def test_abandon_path_0_mid_transfer_our_client_from_picoquic_server(
    picoquic_server: tuple[Peer, int], open_hq_session: Callable[..., Awaitable[Session]]
) -> None:
    server, port = picoquic_server
    session = await open_hq_session(port, paths=["127.0.0.1", "127.0.0.2"])
    download = asyncio.create_task(_get(session))
    async with asyncio.timeout(WAIT_S):
        while sum(p.bytes_received for p in session.paths) < ABANDON_AT:
            await asyncio.sleep(0.002)
    assert not download.done(), "the transfer ended before a path could be abandoned"
    if [p.state for p in session.paths] != ["active", "active"]:
        download.cancel()  # abandoning path 0 now would leave no path at all
        _fail_if_we_dropped_a_healthy_path(session)
        raise AssertionError(f"a path closed before the test abandoned one: {session.paths}")
    at_abandon = {p.path_id: p.bytes_received for p in session.paths}
    session.remove_path(0)

    try:
        assert await asyncio.wait_for(download, WAIT_S) == body()
    except ConnectionLost as exc:
        detail = f"our path events {session.path_events}, paths {session.paths}"
        raise AssertionError(f"{exc}; {detail}; {server.diagnostics()}") from exc
    await server.wait_for("path", kind="deleted", unique_path_id=0)
    after = {p.path_id: p.bytes_received for p in session.paths}
    # What was left at the abandon came over path 1 (path 0 may still land what was in flight).
    left = SIZE - sum(at_abandon.values())
    assert after[1] - at_abandon[1] >= left - (1 << 20), (at_abandon, after)
    abandoned = [e for e in session.path_events if isinstance(e, mpe.PathAbandoned)]
    assert [(e.path_id, e.by_peer) for e in abandoned] == [(0, False)]


async def test_abandon_path_0_mid_transfer_picoquic_client_from_our_edge(
    start_peer: StartPeer, edge: EdgeServer
) -> None:
    # picoquic_abandon_path is reachable through ctypes: no blackhole needed.
    client = await start_peer(
        "client",
        "--port",
        str(edge.port),
        "--second-local",
        "127.0.0.2",
        "--get",
        "/big.bin",
        "--abandon-at",
        str(ABANDON_AT),
        "--abandon-path",
        "0",
    )
    assert await client.finished() == 0, client.diagnostics()
    fetched = client.of("fetched")[0]
    assert (fetched["bytes"], fetched["sha256"]) == (SIZE, digest())
    _fail_if_we_dropped_a_healthy_path(edge=edge)
    abandon = client.of("abandon")[0]
    assert abandon["ret"] == 0 and ABANDON_AT <= abandon["at"] < SIZE, abandon
    assert client.of("path", kind="deleted", unique_path_id=0), client.diagnostics()
    assert set(fetched["paths"]) == {"1"}  # path 0 is gone on picoquic's side too
    assert _edge_counter(edge, ABANDONED, by="client") == 1
