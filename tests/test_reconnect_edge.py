"""The SDK reconnects to the real `netsched-edge` (issues #12, #17): a SIGTERM drain and a
SIGKILL, each followed by a new edge process on the same port with the same keys file
(what another host behind the fleet's forwarder is to the client: its ticket resumes
there, and its stateless resets carry the tokens the client was given).

Real processes, real sockets on loopback; the backend is a small HTTP/1.1 server here.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from edge_binary import RunningEdge

from netsched_client import (
    SLO,
    ReconnectPolicy,
    RequestInterrupted,
    Response,
    Session,
    open_session,
)
from netsched_client.runtime.session import LIVENESS_S, client_configuration
from netsched_edge.demo_backends import DemoHTTPServer
from netsched_edge.keys import EdgeKeys

CONFIG = """[edge]
listen = "127.0.0.1:{listen}"
keys_file = "{keys}"
drain_timeout_s = 5.0

[[services]]
name = "api"

[[services.backends]]
name = "{name}"
kind = "http"
address = "127.0.0.1:{backend}"
"""
# Long enough to cover an edge process's restart (about a second here).
POLICY = ReconnectPolicy(max_attempts=20, max_time_s=15.0, first_delay_s=0.1, max_delay_s=0.5)
DEADLINE = SLO(deadline_ms=12_000)
IDLE_S = 1.5  # the client's idle timeout where a test needs one to pass


class Edges:
    """Edge processes on one port, one after the other, sharing a keys file."""

    def __init__(self, tmp_path: Path, backend_port: int) -> None:
        self.tmp_path = tmp_path
        self.backend_port = backend_port
        self.keys = tmp_path / "edge.keys"
        EdgeKeys.generate().write(self.keys)
        self.running: list[RunningEdge] = []
        self.port = 0

    async def start(self, name: str) -> RunningEdge:
        config = self.tmp_path / f"{name}.toml"
        config.write_text(
            CONFIG.format(listen=self.port, keys=self.keys, name=name, backend=self.backend_port)
        )
        edge = await RunningEdge.start("--config", str(config), "--state-dir", str(self.tmp_path))
        self.running.append(edge)
        self.port = edge.port
        return edge

    async def stop(self) -> None:
        for edge in self.running:
            await edge.stop()


async def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what}") from None


async def _session(port: int) -> Session:
    return await open_session("127.0.0.1", port, verify=False, reconnect=POLICY, pmtud=None)


async def test_sigterm_drain_fails_no_request_and_the_next_edge_serves_the_rest(
    tmp_path: Path,
) -> None:
    backend = DemoHTTPServer("echo", base_ms=20, cold_ms=0)
    edges = Edges(tmp_path, await backend.start())
    session: Session | None = None
    try:
        first = await edges.start("a")
        session = await _session(first.port)
        served: list[str | None] = []
        failures: list[BaseException] = []
        stop = asyncio.Event()

        async def client(worker: int) -> None:
            assert session is not None
            sent = 0
            while not stop.is_set():
                # Half POST (not idempotent): refused ones go again, none twice.
                body = b"%d-%d" % (worker, sent)
                method = "GET" if sent % 2 else "POST"
                try:
                    response = await session.request("api", body, method=method, slo=DEADLINE)
                except Exception as exc:
                    failures.append(exc)
                else:
                    assert response.body == body
                    served.append(response.backend)
                sent += 1

        workers = [asyncio.create_task(client(i)) for i in range(4)]
        await eventually(lambda: served.count("a") >= 20, 10, "requests served by edge a")
        first.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(first.proc.wait(), 10) == 0
        await edges.start("b")
        await eventually(lambda: served.count("b") >= 20, 10, "requests served by edge b")
        stop.set()
        await asyncio.wait_for(asyncio.gather(*workers), 10)
        assert failures == []
        switched = served.index("b")
        assert served == ["a"] * switched + ["b"] * (len(served) - switched)
        stats = session.reconnect_stats
        # A connection the draining edge took and then refused counts too.
        assert stats.reconnects >= 1 and stats.interrupted == 0, stats
        assert session.session_resumed  # edge a's ticket, taken by edge b (shared keys)
    finally:
        if session is not None:
            await session.close()
        await edges.stop()
        await backend.stop()


class GatedBackend:
    """HTTP/1.1 on loopback: answers each request (its target as the body) once `gate`
    is open; `targets` are the requests seen."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.targets: list[str] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                target = head.split(b" ", 2)[1].decode()
                length = _content_length(head)
                await reader.readexactly(length)
                if target != "/health":
                    self.targets.append(target)
                    await self.gate.wait()
                body = target.encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the edge went away with its connections
        finally:
            writer.close()


def _content_length(head: bytes) -> int:
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


async def test_sigkill_then_a_new_edge_idempotent_requests_complete_others_raise(
    tmp_path: Path,
) -> None:
    backend = GatedBackend()
    edges = Edges(tmp_path, await backend.start())
    session: Session | None = None
    try:
        first = await edges.start("a")
        loop = asyncio.get_running_loop()
        started = loop.time()
        session = await _session(first.port)
        handshake_s = loop.time() - started
        gets = [
            asyncio.create_task(session.request("api", path=f"/get/{i}", slo=DEADLINE))
            for i in range(3)
        ]
        posts = [
            asyncio.create_task(session.request("api", b"x", path=f"/post/{i}", slo=DEADLINE))
            for i in range(3)
        ]
        stream = await session.open_stream("api", method="GET", path="/stream", body=b"")
        await eventually(lambda: len(backend.targets) == 7, 5, "every request at the backend")
        first.proc.kill()
        await asyncio.wait_for(first.proc.wait(), 5)
        backend.gate.set()  # what reaches the backend from now on is answered at once
        await edges.start("b")
        back_at = loop.time()
        answers: list[Response] = await asyncio.wait_for(asyncio.gather(*gets), 5)
        # Found within a probe interval (the SDK's liveness PING, the probe cap of a
        # silent path) by the new edge's stateless reset, then resumed in 0-RTT.
        pto_s = LIVENESS_S
        assert loop.time() - back_at <= 2 * (pto_s + handshake_s)
        assert sorted(r.body for r in answers) == [b"/get/0", b"/get/1", b"/get/2"]
        for post in posts:  # may have been processed: never sent twice
            with pytest.raises(RequestInterrupted) as interrupted:
                await post
            assert interrupted.value.may_have_been_processed
        with pytest.raises(RequestInterrupted):  # a stream is never replayed
            await stream.read()
        assert backend.targets.count("/get/0") == 2 and backend.targets.count("/post/0") == 1
        stats = session.reconnect_stats
        assert (stats.reconnects, stats.retried, stats.interrupted) == (1, 3, 3), stats
        assert stats.last_reason == "stateless reset"
        assert session.session_resumed and session.early_data in ("accepted", "rejected")
    finally:
        if session is not None:
            await session.close()
        await edges.stop()
        await backend.stop()


async def test_without_a_recognised_reset_the_idle_timeout_finds_the_dead_edge(
    tmp_path: Path,
) -> None:
    backend = DemoHTTPServer("echo", base_ms=0, cold_ms=0)
    edges = Edges(tmp_path, await backend.start())
    session: Session | None = None
    try:
        first = await edges.start("a")
        configuration = client_configuration("127.0.0.1", verify=False, idle_timeout=IDLE_S)
        session = await open_session(
            "127.0.0.1", first.port, configuration=configuration, reconnect=POLICY, pmtud=None
        )
        assert (await session.request("api", b"one", method="PUT", slo=DEADLINE)).body == b"one"
        first.proc.kill()
        await asyncio.wait_for(first.proc.wait(), 5)
        edges.keys = tmp_path / "other.keys"  # another host: its resets and tickets differ
        EdgeKeys.generate().write(edges.keys)
        await edges.start("b")
        loop = asyncio.get_running_loop()
        started = loop.time()
        response = await session.request("api", b"two", method="PUT", slo=DEADLINE)
        assert response.body == b"two" and response.backend == "b"
        assert loop.time() - started < IDLE_S + 2.0
        stats = session.reconnect_stats
        assert stats.reconnects == 1 and "idle" in (stats.last_reason or "").lower(), stats
        assert not session.session_resumed  # a ticket the new keys cannot open: full handshake
    finally:
        if session is not None:
            await session.close()
        await edges.stop()
        await backend.stop()
