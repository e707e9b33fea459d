"""ConnectionDriver on real loops (asyncio and uvloop) and real loopback sockets.

The timer rules are checked against a scripted connection (deadlines chosen by
the test); QUIC's own timers (loss detection, ACK delay, idle timeout) and a
transfer under loss run real aioquic connections through our endpoints.
Assertions are on counts and ordering, with generous time bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
import uvloop
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    QuicEvent,
    StreamDataReceived,
)

from netsched_client.cli import add_loop_option, loop_factory, run_on_loop
from netsched_client.runtime.driver import (
    MAX_BURST,
    TIMER_RESOLUTION,
    ConnectionDriver,
    loop_clock,
)
from netsched_client.runtime.endpoint import (
    ServerEndpoint,
    open_client_endpoint,
)
from netsched_client.runtime.ticker import Ticker
from netsched_edge.tls import CertificatePair, generate_self_signed
from netsched_lab.impairment import LinkSpec, PathProfile
from netsched_lab.relay import UdpRelay

Runner = Callable[[Coroutine[Any, Any, None]], None]
ALPN = "driver-test"
PATIENCE_S = 10.0  # a busy 2-core machine may be slow; nothing here should take this long
# Float rounding of deadlines; the driver arms uvloop's timers so that none fires early.
EPSILON_S = 1e-6


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def run(loop_name: str) -> Runner:
    factory = uvloop.new_event_loop if loop_name == "uvloop" else asyncio.new_event_loop

    def run_(coro: Coroutine[Any, Any, None]) -> None:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(coro)

    return run_


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> CertificatePair:
    return generate_self_signed(Path(tmp_path_factory.mktemp("tls")))


# -- the timer rules, with deadlines scripted by the test ---------------------------------


@dataclass
class ScriptedConnection:
    """The driver's side of a QUIC connection, with `get_timer` answered by `deadline`.

    Records each `handle_timer` as (the last deadline given, now given, real clock).
    """

    deadline: Callable[[], float | None]
    per_flush: int = 0  # datagrams each datagrams_to_send returns
    fired: list[tuple[float | None, float, float]] = field(default_factory=list)
    asked: float | None = None
    flushes: int = 0
    received: list[bytes] = field(default_factory=list)

    def receive_datagram(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        self.received.append(data)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        self.flushes += 1
        return [(b"x", ("127.0.0.1", 9))] * self.per_flush

    def get_timer(self) -> float | None:
        self.asked = self.deadline()
        return self.asked

    def handle_timer(self, now: float) -> None:
        self.fired.append((self.asked, now, time.monotonic()))

    def next_event(self) -> QuicEvent | None:
        return None


def _driver(
    conn: ScriptedConnection, batches: list[int] | None = None, **options: Any
) -> ConnectionDriver:
    """A driver whose sends are only counted (one entry per batch) into `batches`."""
    out = batches if batches is not None else []
    return ConnectionDriver(cast(QuicConnection, conn), lambda d: out.append(len(d)), **options)


def test_loop_clock_is_sub_millisecond_on_both_loops(run: Runner) -> None:
    async def main() -> None:
        clock = loop_clock(asyncio.get_running_loop())
        readings = {clock() for _ in range(1000)}
        assert len(readings) > 10  # uvloop's loop.time() would give one or two values

    run(main())


def test_pacing_deadlines_never_spin_the_loop(run: Runner) -> None:
    """A connection that always wants a timer 10 µs away (aioquic's pacer) gets
    about one wake-up per timer resolution, none before its deadline."""

    async def main() -> None:
        clock = time.monotonic
        conn = ScriptedConnection(lambda: clock() + 10e-6)
        driver = _driver(conn)
        driver.transmit()
        started = clock()
        await asyncio.sleep(0.1)
        elapsed = clock() - started
        fires = len(conn.fired)
        assert fires >= 5, "the timer must keep firing"
        # uvloop's rounding can bring two wake-ups within 0.5 ms; a spin makes thousands
        assert fires <= 2 * elapsed / TIMER_RESOLUTION, f"{fires} wake-ups in {elapsed:.3f} s"
        for deadline, given, real in conn.fired:
            assert deadline is not None and given >= deadline
            assert real >= deadline - EPSILON_S
        assert driver.stats.timer_wakeups == fires

    run(main())


def test_legacy_rules_spin_on_uvloop() -> None:
    """The rules above are what stops the spin: with the loop's clock and no
    minimum delay, uvloop runs the same pacing timer thousands of times a second."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        conn = ScriptedConnection(lambda: loop.time() + 10e-6)
        driver = _driver(conn, clock=loop.time, timer_resolution=0.0)
        driver.transmit()
        started = loop.time()
        await asyncio.sleep(0.1)
        elapsed = loop.time() - started
        # The fixed driver allows at most 2 wake-ups per resolution (test above); a
        # spin makes many times that even on a loaded host (670-1000+ in 0.1 s seen).
        assert len(conn.fired) > 4 * elapsed / TIMER_RESOLUTION

    uvloop.run(main())


def test_a_far_deadline_fires_once_and_not_early(run: Runner) -> None:
    async def main() -> None:
        due = time.monotonic() + 0.05
        conn = ScriptedConnection(lambda: due if not conn.fired else None)
        driver = _driver(conn)
        driver.transmit()
        async with asyncio.timeout(PATIENCE_S):
            while not conn.fired:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        [(deadline, given, real)] = conn.fired
        assert deadline == due
        assert given >= due and real >= due - EPSILON_S
        assert driver.stats.timers_armed == 1

    run(main())


def test_an_unchanged_deadline_is_not_rearmed(run: Runner) -> None:
    async def main() -> None:
        due = time.monotonic() + 10.0
        conn = ScriptedConnection(lambda: due)
        driver = _driver(conn)
        for _ in range(50):
            driver.schedule_transmit()
            await asyncio.sleep(0)
        stats = driver.stats
        assert stats.flushes == 50
        assert stats.timers_armed == 1

    run(main())


def test_an_earlier_deadline_rearms(run: Runner) -> None:
    async def main() -> None:
        deadlines = [time.monotonic() + 10.0]
        conn = ScriptedConnection(lambda: deadlines[-1] if not conn.fired else None)
        driver = _driver(conn)
        driver.transmit()
        deadlines.append(time.monotonic() + 0.02)
        driver.transmit()
        async with asyncio.timeout(PATIENCE_S):
            while not conn.fired:
                await asyncio.sleep(0.01)
        assert conn.fired[0][1] >= deadlines[1]
        assert driver.stats.timers_armed == 2

    run(main())


def test_a_due_pacer_gets_rounds_up_to_a_burst_then_yields(run: Runner) -> None:
    """A pacer due again as soon as a round is built (its packet time shorter than
    building a packet) is served in the same transmit, up to MAX_BURST datagrams,
    sent as one batch; the rest waits one loop iteration, not a timer."""

    async def main() -> None:
        rounds = MAX_BURST // 16
        # Due as soon as a round was built, whatever the driver's clock (a fine clock may
        # trail time.monotonic()).
        conn = ScriptedConnection(lambda: 0.0 if conn.flushes else None, per_flush=16)
        batches: list[int] = []
        driver = _driver(conn, batches)
        driver.transmit()
        assert batches == [MAX_BURST]  # every round of the tick in one batch
        assert len(conn.fired) == rounds - 1  # each further round handled the timer first
        assert driver.stats.flushes == rounds
        conn.deadline = lambda: None
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert batches == [MAX_BURST, 16]  # the scheduled tick ran, timer-free
        assert driver.stats.timer_wakeups == 0

    run(main())


def test_a_pacer_not_yet_due_waits_for_its_timer(run: Runner) -> None:
    async def main() -> None:
        conn = ScriptedConnection(lambda: time.monotonic() + 0.0005, per_flush=16)
        batches: list[int] = []
        driver = _driver(conn, batches)
        driver.transmit()
        assert batches == [16]
        assert driver.stats.timers_armed == 1

    run(main())


def _fires_once(due: float) -> ScriptedConnection:
    """A connection whose deadline is `due` until its timer has fired."""
    conn = ScriptedConnection(lambda: None if conn.fired else due)
    return conn


def test_one_timer_serves_every_connection_of_a_ticker_earliest_first(run: Runner) -> None:
    """Connections sharing a ticker (a server endpoint's) share its one loop timer:
    armed for the earliest deadline, then the next; each fires once, not early."""

    async def main() -> None:
        now = time.monotonic()
        late, soon, idle = (
            _fires_once(now + 0.2),
            _fires_once(now + 0.03),
            ScriptedConnection(lambda: None),
        )
        ticker = Ticker(lambda d: None)
        drivers = [
            ConnectionDriver(cast(QuicConnection, c), ticker=ticker) for c in (late, soon, idle)
        ]
        for driver in drivers:
            driver.schedule_transmit()
        async with asyncio.timeout(PATIENCE_S):
            while not late.fired:
                await asyncio.sleep(0.01)
        [(_, _, soon_at)], [(_, _, late_at)] = soon.fired, late.fired
        assert now + 0.03 - EPSILON_S <= soon_at < late_at
        assert late_at >= now + 0.2 - EPSILON_S
        stats = ticker.stats
        assert stats.timers_armed == 2 and stats.timer_wakeups == 2
        assert [d.stats.timer_wakeups for d in drivers] == [1, 1, 0]

    run(main())


def test_a_datagram_waiting_when_a_timer_comes_due_is_read_first(run: Runner) -> None:
    """The loop is busy past a connection's deadline while the datagram that moves the
    deadline (an ACK) waits in the socket. uvloop runs due timers before it polls
    sockets, so the timer used to fire on stale state (a PTO, a path judged silent);
    the ticker reads the sockets first, and the deadline the datagram moved is not due."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        due = time.monotonic() + 0.05
        conn = ScriptedConnection(lambda: None if conn.received else due)
        endpoint = await open_client_endpoint(socket.AF_INET, "127.0.0.1")
        driver = ConnectionDriver(cast(QuicConnection, conn), endpoint.send_batch)
        driver.ticker.read_first = endpoint.read_waiting
        endpoint.driver = driver
        driver.schedule_transmit()
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        busy.bind(("127.0.0.1", 0))
        busy.setblocking(False)

        def long_callback() -> None:  # the datagram arrives, the loop is busy past `due`
            busy.recv(16)
            peer.sendto(b"ack", endpoint.local_address)
            time.sleep(max(0.0, due - time.monotonic()) + 0.02)

        loop.add_reader(busy.fileno(), long_callback)
        try:
            await asyncio.sleep(max(0.0, due - 0.02 - time.monotonic()))
            peer.sendto(b"go", busy.getsockname())
            async with asyncio.timeout(PATIENCE_S):
                while not conn.received:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
        finally:
            loop.remove_reader(busy.fileno())
            for sock in (peer, busy):
                sock.close()
            endpoint.close()
        assert conn.received == [b"ack"]
        assert conn.fired == []

    run(main())


def test_a_driver_takes_send_batch_or_ticker(run: Runner) -> None:
    async def main() -> None:
        conn = cast(QuicConnection, ScriptedConnection(lambda: None))
        ticker = Ticker(lambda d: None)
        with pytest.raises(ValueError, match="send_batch or ticker, got both"):
            ConnectionDriver(conn, lambda d: None, ticker=ticker)
        with pytest.raises(ValueError, match="send_batch or ticker, got neither"):
            ConnectionDriver(conn)

    run(main())


def test_negative_resolution_is_refused() -> None:
    conn = ScriptedConnection(lambda: None)
    with pytest.raises(ValueError, match=r"timer_resolution must be >= 0 seconds, got -0\.001"):
        ConnectionDriver(
            cast(QuicConnection, conn),
            lambda d: None,
            asyncio.new_event_loop(),
            timer_resolution=-0.001,
        )


# -- real QUIC connections through our endpoints -----------------------------------------


@dataclass
class Sink:
    """The server application: remembers what each stream delivered."""

    data: dict[int, bytearray] = field(default_factory=dict)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    drivers: list[ConnectionDriver] = field(default_factory=list)

    def attach(self, driver: ConnectionDriver) -> None:
        self.drivers.append(driver)
        driver.add_event_handler(self.on_event)

    def on_event(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self.data.setdefault(event.stream_id, bytearray()).extend(event.data)
            if event.end_stream:
                self.finished.set()


@asynccontextmanager
async def quic_server(certificate: CertificatePair) -> AsyncIterator[tuple[ServerEndpoint, Sink]]:
    configuration = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
    configuration.load_cert_chain(certificate.certificate, certificate.private_key)
    sink = Sink()
    server = ServerEndpoint(configuration, sink.attach)
    server.bind(socket.AF_INET, ("127.0.0.1", 0))
    try:
        yield server, sink
    finally:
        server.close()


@dataclass
class Client:
    driver: ConnectionDriver
    handshake: asyncio.Event = field(default_factory=asyncio.Event)

    def on_event(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            self.handshake.set()

    async def established(self) -> ConnectionDriver:
        async with asyncio.timeout(PATIENCE_S):
            await self.handshake.wait()
        return self.driver


@asynccontextmanager
async def quic_client(
    target: NetworkAddress, *, idle_timeout: float = 30.0, **options: Any
) -> AsyncIterator[Client]:
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=[ALPN], idle_timeout=idle_timeout
    )
    configuration.verify_mode = ssl.CERT_NONE
    endpoint = await open_client_endpoint(socket.AF_INET, "127.0.0.1")
    quic = QuicConnection(configuration=configuration)
    client = Client(ConnectionDriver(quic, endpoint.send_batch, **options))
    client.driver.add_event_handler(client.on_event)
    endpoint.driver = client.driver
    quic.connect(target, now=client.driver.now())
    client.driver.transmit()
    try:
        yield client
    finally:
        endpoint.close()


async def _upload(client: Client, sink: Sink, payload: bytes) -> float:
    """Send `payload` on a new stream; seconds until the server has all of it."""
    driver = await client.established()
    started = time.monotonic()
    stream_id = driver.quic.get_next_available_stream_id()
    driver.quic.send_stream_data(stream_id, payload, end_stream=True)
    driver.transmit()
    async with asyncio.timeout(PATIENCE_S):
        await sink.finished.wait()
    assert bytes(sink.data[stream_id]) == payload
    return time.monotonic() - started


def test_loss_detection_and_idle_timeout_fire(run: Runner) -> None:
    """Against a peer that never answers: the Initial is retransmitted on PTO
    (loss-detection timer), then the idle timeout closes the connection."""

    async def main() -> None:
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))
        silent.setblocking(False)
        idle = 0.5
        terminated: list[QuicEvent] = []
        started = time.monotonic()
        async with quic_client(silent.getsockname(), idle_timeout=idle) as client:
            client.driver.add_event_handler(
                lambda e: terminated.append(e) if isinstance(e, ConnectionTerminated) else None
            )
            async with asyncio.timeout(PATIENCE_S):
                await client.driver.closed.wait()
            elapsed = time.monotonic() - started
        initials = _drain(silent)
        silent.close()
        assert initials >= 2, "no retransmission: the loss-detection timer did not fire"
        assert elapsed >= idle - EPSILON_S, f"idle timeout fired after {elapsed:.3f} s"
        assert len(terminated) == 1
        # every retransmission and the close came from a timer
        assert client.driver.stats.timer_wakeups >= initials

    run(main())


def _drain(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            sock.recv(65536)
        except BlockingIOError:
            return count
        count += 1


def test_data_with_no_reply_is_acknowledged(run: Runner, certificate: CertificatePair) -> None:
    """The server has nothing to say but an ACK, due one ACK delay after the data
    arrived: its timer sends it (or the flush after the receive, if the loop was
    already that late)."""

    async def main() -> None:
        async with (
            quic_server(certificate) as (server, sink),
            quic_client(server.local_address) as client,
        ):
            driver = await client.established()
            await asyncio.sleep(0.1)  # let the handshake's own ACKs and timers settle
            [server_driver] = sink.drivers
            before = server_driver.stats
            driver.quic.send_stream_data(0, b"ping", end_stream=True)
            driver.transmit()
            async with asyncio.timeout(PATIENCE_S):
                await sink.finished.wait()
                while server_driver.stats.datagrams_sent == before.datagrams_sent:
                    await asyncio.sleep(0.005)
            after = server_driver.stats
            assert after.flushes > before.flushes
            assert after.timers_armed > before.timers_armed  # the ACK deadline was armed

    run(main())


def test_a_handler_that_raises_on_a_datagram_ends_its_connection_only(
    run: Runner, certificate: CertificatePair, caplog: pytest.LogCaptureFixture
) -> None:
    """An application bug while a datagram is handled closes that connection with
    INTERNAL_ERROR (as a failed flush or timer does); it used to escape into the loop,
    dropping the rest of the batch for every connection and leaving this one half-updated."""

    def fail(event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            raise RuntimeError("application bug")

    async def main() -> None:
        async with (
            quic_server(certificate) as (server, sink),
            quic_client(server.local_address) as healthy,
        ):
            await healthy.established()
            async with quic_client(server.local_address) as client:
                driver = await client.established()
                victim = sink.drivers[-1]
                victim.add_event_handler(fail)
                sid = driver.quic.get_next_available_stream_id()
                driver.quic.send_stream_data(sid, b"x", end_stream=True)
                driver.transmit()
                async with asyncio.timeout(PATIENCE_S):
                    await victim.closed.wait()
                    await driver.closed.wait()
            sink.data.clear()  # the victim's stream 0 reached the sink before the bug
            sink.finished.clear()
            await _upload(healthy, sink, b"still served")

    run(main())
    assert "connection failed while handling a datagram" in caplog.text
    assert "Exception in callback" not in caplog.text


def test_transfer_completes_with_loss(run: Runner, certificate: CertificatePair) -> None:
    async def main() -> None:
        lossy = LinkSpec(delay_ms=1.0, loss=0.05)
        payload = hashlib.sha256(b"seed").digest() * (256 * 1024 // 32)
        async with quic_server(certificate) as (server, sink):
            relay = UdpRelay(
                server.local_address, default=PathProfile(up=lossy, down=lossy), seed=7
            )
            relay_address = await relay.start()
            try:
                async with quic_client(relay_address) as client:
                    await _upload(client, sink, payload)
                up, down = relay.stats("127.0.0.1")
            finally:
                await relay.stop()
        assert up.dropped_loss > 0 and down.dropped_loss > 0

    run(main())


def test_timer_wakeups_per_mb_drop(
    loop_name: str, run: Runner, certificate: CertificatePair
) -> None:
    """The same 1 MiB upload, the sender driven with the old rules (the loop's
    clock, timers armed at the exact deadline) and with the new ones."""
    size = 1 << 20
    payload = os.urandom(size)
    per_mb: dict[str, float] = {}

    async def upload(name: str, **options: Any) -> None:
        async with (
            quic_server(certificate) as (server, sink),
            quic_client(server.local_address, **options) as client,
        ):
            before = (await client.established()).stats
            await _upload(client, sink, payload)
            wakeups = client.driver.stats.timer_wakeups - before.timer_wakeups
            per_mb[name] = wakeups / (size / 1e6)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await upload("old", clock=loop.time, timer_resolution=0.0)
        await upload("new")

    run(main())
    if loop_name == "uvloop":
        assert per_mb["new"] * 4 < per_mb["old"], per_mb  # the spin is gone
    else:
        assert per_mb["new"] <= per_mb["old"] * 1.5 + 20, per_mb  # and asyncio is no worse


# -- the CLIs' event-loop choice ------------------------------------------------------------


def test_loop_option_defaults_to_uvloop() -> None:
    parser = argparse.ArgumentParser()
    add_loop_option(parser)
    assert parser.parse_args([]).loop == "uvloop"
    assert run_on_loop(_loop_class(), "uvloop") is uvloop.Loop
    assert run_on_loop(_loop_class(), "asyncio") is asyncio.SelectorEventLoop
    with pytest.raises(ValueError, match="loop must be one of uvloop, asyncio, got 'trio'"):
        loop_factory("trio")


def test_missing_uvloop_falls_back_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` now raises ImportError
    with caplog.at_level(logging.WARNING, logger="netsched.cli"):
        assert run_on_loop(_loop_class(), "uvloop") is asyncio.SelectorEventLoop
    [record] = caplog.records
    assert record.getMessage() == "uvloop is not installed: running on the asyncio event loop"


async def _loop_class() -> type[asyncio.AbstractEventLoop]:
    return type(asyncio.get_running_loop())
