"""Congestion control on a lossy path: goodput and RTT inflation of reno, cubic and bbr.

Through the path lab relay (real UDP on loopback): 20 Mbit/s, 25 ms each way
(the relay's 64 kB queue, about half a BDP), loss on the downlink only, in one run:

  clean     no loss
  loss1     1 % random loss
  loss5     5 % random loss
  bursts    Gilbert-Elliott, 5 % loss in bursts of 4 packets on average

The server (its own process) is our runtime without the edge: ServerEndpoint,
ConnectionDriver, NetSchedConnection and the netsched/1 protocol, one endpoint per
congestion controller, answering a request with `--size-mb` MB at once. The client is
the SDK (open_session, open_stream, read). Goodput is bytes received over the time
from the request to the last byte, or to `--timeout-s` when the transfer did not end
(then marked "*"). RTT inflation is the sender's latest RTT sampled every 5 ms over
the transfer, median and 90th percentile, over the base RTT (50 ms): the standing
queue the controller keeps.

    python bench/bench_cc.py [--size-mb 6] [--timeout-s 10] [--scenarios ...] [--ccs ...]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import multiprocessing as mp
import signal
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent

from netsched_client import open_session
from netsched_client.proto import session as native
from netsched_client.proto.cc import CONGESTION_CONTROLS
from netsched_client.proto.connection import NetSchedConnection
from netsched_client.proto.events import RequestReceived
from netsched_client.proto.framing import ResponseHead
from netsched_client.runtime.driver import ConnectionDriver
from netsched_client.runtime.endpoint import ServerEndpoint, open_server_endpoint
from netsched_edge.tls import generate_self_signed
from netsched_lab.impairment import GilbertElliott, LinkSpec, PathProfile
from netsched_lab.relay import UdpRelay

SERVICE = "bench"
BASE_RTT_S = 0.050
RATE_MBPS = 20.0
RTT_SAMPLE_S = 0.005
READ_CHUNK = 1 << 16
UP = LinkSpec(delay_ms=25, rate_mbps=RATE_MBPS)
SCENARIOS: dict[str, LinkSpec] = {
    "clean": LinkSpec(delay_ms=25, rate_mbps=RATE_MBPS),
    "loss1": LinkSpec(delay_ms=25, rate_mbps=RATE_MBPS, loss=0.01),
    "loss5": LinkSpec(delay_ms=25, rate_mbps=RATE_MBPS, loss=0.05),
    "bursts": LinkSpec(
        delay_ms=25, rate_mbps=RATE_MBPS, bursty=GilbertElliott.from_loss_and_burst(0.05, 4)
    ),
}


@dataclass(frozen=True, slots=True)
class Result:
    scenario: str
    cc: str
    received: int
    seconds: float
    finished: bool
    rtt_median_s: float | None
    rtt_p90_s: float | None

    @property
    def goodput_mbps(self) -> float:
        return self.received * 8 / self.seconds / 1e6


# -- server (its own process) ----------------------------------------------------------


class _RttLog:
    """The sender's latest RTT on its first path, every RTT_SAMPLE_S while a transfer runs."""

    def __init__(self, quic: NetSchedConnection) -> None:
        self._quic = quic
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(RTT_SAMPLE_S)
            paths = list(self._quic.paths.values())
            rtt = self._quic.path_latest_rtt(paths[0]) if paths else None
            if rtt is not None:
                self.samples.append(rtt)

    def summary(self) -> bytes:
        self.stop()
        samples = sorted(self.samples)
        if not samples:
            return b"{}"
        p90 = samples[min(len(samples) - 1, int(0.9 * len(samples)))]
        return json.dumps({"median": statistics.median(samples), "p90": p90}).encode()


def _on_connection(payload: bytes) -> Any:
    def accept(driver: ConnectionDriver) -> None:
        quic = driver.quic
        assert isinstance(quic, NetSchedConnection)
        proto = native.NetSchedProtocol(quic)
        rtts = _RttLog(quic)

        def on_event(event: QuicEvent) -> None:
            for pevent in proto.handle_event(event):
                if not isinstance(pevent, RequestReceived):
                    continue
                if pevent.head.meta.get("path") == "/rtt":
                    body = rtts.summary()  # the transfer's samples, for the client
                else:
                    rtts.start()
                    body = payload
                proto.send_response(
                    pevent.stream_id, ResponseHead(status=200), body, end_stream=True
                )
                driver.schedule_transmit()

        driver.add_event_handler(on_event)

    return accept


async def _serve(ccs: tuple[str, ...], size: int, ready: mp.Queue[Any]) -> None:
    pair = generate_self_signed(Path(tempfile.mkdtemp(prefix="bench-cc-")))
    payload = bytes(size)
    endpoints: dict[str, ServerEndpoint] = {}
    for cc in ccs:
        configuration = QuicConfiguration(
            is_client=False, alpn_protocols=[native.ALPN], congestion_control_algorithm=cc
        )
        configuration.load_cert_chain(pair.certificate, pair.private_key)

        def factory(configuration: QuicConfiguration = configuration) -> ServerEndpoint:
            return ServerEndpoint(
                configuration, _on_connection(payload), connection_factory=NetSchedConnection
            )

        endpoints[cc] = await open_server_endpoint("127.0.0.1", 0, factory)
    ready.put({cc: endpoint.local_address[1] for cc, endpoint in endpoints.items()})
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for endpoint in endpoints.values():
        endpoint.close()


def _server_main(ccs: tuple[str, ...], size: int, ready: mp.Queue[Any]) -> None:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: no orphaned servers
    asyncio.run(_serve(ccs, size, ready))


# -- client ----------------------------------------------------------------------------


async def _download(port: int, down: LinkSpec, scenario: str, cc: str, timeout: float) -> Result:
    relay = UdpRelay(("127.0.0.1", port), default=PathProfile(UP, down))
    host, relay_port = await relay.start()
    try:
        session = await open_session(host, relay_port, verify=False, reconnect=False)
        try:
            return await _measure(session, scenario, cc, timeout)
        finally:
            await session.close()
    finally:
        await relay.stop()


async def _measure(session: Any, scenario: str, cc: str, timeout: float) -> Result:
    started = time.perf_counter()
    stream = await session.open_stream(SERVICE, meta={"path": "/data"})
    stream.write_eof()
    received, finished = 0, False
    try:
        async with asyncio.timeout(timeout):
            while chunk := await stream.read(READ_CHUNK):
                received += len(chunk)
            finished = True
    except TimeoutError:
        pass
    seconds = min(time.perf_counter() - started, timeout)
    rtt = await _rtt_summary(session)
    return Result(scenario, cc, received, seconds, finished, rtt.get("median"), rtt.get("p90"))


async def _rtt_summary(session: Any) -> dict[str, float]:
    """The server's RTT samples over the transfer (asked on a second stream: an
    unfinished transfer's data still ahead of it in the send order is the reason for
    its own timeout)."""
    stream = await session.open_stream(SERVICE, meta={"path": "/rtt"})
    stream.write_eof()
    body = b""
    try:
        async with asyncio.timeout(5.0):
            while chunk := await stream.read(READ_CHUNK):
                body += chunk
    except TimeoutError:
        return {}
    result: dict[str, float] = json.loads(body or b"{}")
    return result


def run(
    scenarios: tuple[str, ...] = tuple(SCENARIOS),
    ccs: tuple[str, ...] = CONGESTION_CONTROLS,
    size_mb: float = 6.0,
    timeout_s: float = 10.0,
) -> list[Result]:
    """Every scenario with every controller, one server process for the whole run."""
    ctx = mp.get_context("spawn")
    ready: mp.Queue[Any] = ctx.Queue()
    server = ctx.Process(target=_server_main, args=(ccs, int(size_mb * 1e6), ready))
    server.start()
    try:
        ports: dict[str, int] = ready.get(timeout=30)
        results = []
        for scenario in scenarios:
            for cc in ccs:
                down = SCENARIOS[scenario]
                coro = _download(ports[cc], down, scenario, cc, timeout_s)
                results.append(asyncio.run(coro))
        return results
    finally:
        server.terminate()
        server.join(timeout=10)


def report(results: list[Result]) -> str:
    """One row per run; goodput and RTT inflation also as a ratio to reno's in its scenario."""
    reno = {r.scenario: r for r in results if r.cc == "reno"}
    lines = [
        f"{'scenario':8} {'cc':6} {'goodput':>12} {'vs reno':>8} "
        f"{'RTT med/base':>13} {'RTT p90/base':>13} {'med vs reno':>12}"
    ]
    for r in results:
        base = reno.get(r.scenario)
        ratio = "-"
        if base and base.goodput_mbps > 0:
            ratio = f"{r.goodput_mbps / base.goodput_mbps:7.2f}x"
        med = _inflation(r.rtt_median_s)
        p90 = _inflation(r.rtt_p90_s)
        rel = "-"
        if base and base.rtt_median_s and r.rtt_median_s:
            rel = f"{r.rtt_median_s / base.rtt_median_s:11.2f}x"
        mark = " " if r.finished else "*"
        lines.append(
            f"{r.scenario:8} {r.cc:6} {r.goodput_mbps:9.2f}{mark}Mb {ratio:>8} "
            f"{med:>13} {p90:>13} {rel:>12}"
        )
    lines.append("* the transfer did not finish: goodput over the timeout")
    return "\n".join(lines)


def _inflation(rtt: float | None) -> str:
    return "-" if rtt is None else f"{rtt / BASE_RTT_S:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=6.0)
    parser.add_argument("--timeout-s", type=float, default=10.0)
    parser.add_argument("--scenarios", nargs="+", choices=tuple(SCENARIOS), default=SCENARIOS)
    ccs = CONGESTION_CONTROLS
    parser.add_argument("--ccs", nargs="+", choices=ccs, default=ccs)
    args = parser.parse_args()
    results = run(tuple(args.scenarios), tuple(args.ccs), args.size_mb, args.timeout_s)
    print(
        f"{RATE_MBPS:g} Mbit/s, {BASE_RTT_S * 1e3:g} ms base RTT, loss on the downlink, "
        f"{args.size_mb:g} MB per transfer"
    )
    print(report(results))


if __name__ == "__main__":
    main()
