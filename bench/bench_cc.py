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
queue the controller keeps. The coupled controllers (lia, olia) are NewReno on one
path: they run in the fairness rows, not here, unless `--ccs` names them.

Fairness, in the same run: two flows share one bottleneck, the clean scenario's
downlink (one relay path: the relay shapes all flows from one client IP with one
token bucket and one 64 kB queue, and every flow here comes from 127.0.0.1):

  bbr/bbr, bbr/cubic, reno/reno   two single-path connections
  lia/reno, olia/reno             a multipath connection with coupled congestion
                                  control, both of its paths through the bottleneck,
                                  against one NewReno flow (RFC 6356's goal: ~1.0x)

Both flows download at once; goodput is each flow's bytes received from
`--warmup-s` to `--warmup-s` + `--fair-s` after both requests left (slow start and
Startup left out), with the share ratio (flow 1 / flow 2) and Jain's fairness
index (x1 + x2)^2 / (2 (x1^2 + x2^2)). The server names each flow's controller
and coupled paths in its response head; the bench checks them.

In virtual time (`--virtual SEEDS`, alone): the same pairs in the in-memory lab
(`netsched_lab.memory`, our connections without sockets or an event loop), each
connection's every path through one downlink in the relay's own model (FAIR_LINK:
token bucket, 64 kB tail-drop queue), the connection whose next event is the
earliest always running first, so that both flows' datagrams reach the link in time
order. A run replays exactly per seed, whatever the host's load, so runs over several
seeds tell a controller's share from the noise of one run. Each flow's row adds its
window cuts (loss events) over the window, the mean share of its whole window (all
its paths) a cut took, and its mean whole window.

    python bench/bench_cc.py [--size-mb 6] [--timeout-s 10] [--scenarios ...] [--ccs ...]
        [--pairs ...] [--warmup-s 2] [--fair-s 10]
    python bench/bench_cc.py --virtual 1,2,3,4 --pairs reno/reno lia/reno olia/reno --fair-s 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import functools
import itertools
import json
import math
import multiprocessing as mp
import random
import signal
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived

from netsched_client import Session, open_session
from netsched_client.proto import session as native
from netsched_client.proto.cc import CONGESTION_CONTROLS
from netsched_client.proto.cc.coupled import COUPLED_CONTROLS
from netsched_client.proto.connection import NetSchedConnection
from netsched_client.proto.events import RequestReceived
from netsched_client.proto.framing import ResponseHead
from netsched_client.runtime.driver import ConnectionDriver
from netsched_client.runtime.endpoint import ServerEndpoint, open_server_endpoint
from netsched_edge.tls import generate_self_signed
from netsched_lab import impairment, memory
from netsched_lab.impairment import GilbertElliott, LinkSpec, PathProfile
from netsched_lab.relay import UdpRelay
from netsched_lab.seeded import fixed_configurations, seeded_randomness

SERVICE = "bench"
BASE_RTT_S = 0.050
RATE_MBPS = 20.0
RTT_SAMPLE_S = 0.005
READ_CHUNK = 1 << 16
UP = LinkSpec(delay_ms=25, rate_mbps=RATE_MBPS)
# One path each: the coupled controllers would be NewReno here (see the fairness rows).
SINGLE_PATH_CCS = tuple(cc for cc in CONGESTION_CONTROLS if cc not in COUPLED_CONTROLS)
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


@dataclass(frozen=True, slots=True)
class Pair:
    """Two flows on one bottleneck: each one's controller and number of paths."""

    name: str
    ccs: tuple[str, str]
    paths: tuple[int, int] = (1, 1)


PAIRS: dict[str, Pair] = {
    pair.name: pair
    for pair in (
        Pair("bbr/bbr", ("bbr", "bbr")),
        Pair("bbr/cubic", ("bbr", "cubic")),
        Pair("reno/reno", ("reno", "reno")),
        Pair("lia/reno", ("lia", "reno"), (2, 1)),
        Pair("olia/reno", ("olia", "reno"), (2, 1)),
    )
}
FAIR_LINK = SCENARIOS["clean"]


@dataclass(frozen=True, slots=True)
class Plan:
    """A server endpoint's connections: their controllers in turn (the runtime's default
    scheduler, "deadline")."""

    ccs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Cuts:
    """A flow's loss events over the measurement window, as its paths' windows show them:
    how many cuts, and the mean share of the flow's whole window (all its paths) each took
    (NewReno's: one half; a coupled flow's that halves one of two equal paths: a quarter)."""

    count: int
    mean_share: float
    mean_window: float  # bytes, all paths


@dataclass(frozen=True, slots=True)
class Flow:
    """One flow of a pair: what the server ran and what arrived in the window."""

    cc: str
    coupled_paths: int  # members of the connection's coupled group (0: not coupled)
    path_bytes: tuple[int, ...]  # bytes received over each path that carried any
    received: int  # in the measurement window
    seconds: float
    cuts: Cuts | None = None  # the sender's window cuts (virtual runs only)

    @property
    def goodput_mbps(self) -> float:
        return self.received * 8 / self.seconds / 1e6


@dataclass(frozen=True, slots=True)
class Fairness:
    pair: Pair
    flows: tuple[Flow, Flow]

    @property
    def ratio(self) -> float:
        first, second = (flow.goodput_mbps for flow in self.flows)
        return first / second if second > 0 else float("inf")

    @property
    def jain(self) -> float:
        rates = [flow.goodput_mbps for flow in self.flows]
        squares = sum(rate * rate for rate in rates)
        return sum(rates) ** 2 / (len(rates) * squares) if squares > 0 else 0.0


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


def _on_connection(size: int) -> Any:
    """Answers "/rtt" with the RTT samples, anything else with `size` zero bytes (or
    the request's "size"); the head names the controller and its coupled paths."""

    def accept(driver: ConnectionDriver) -> None:
        quic = driver.quic
        assert isinstance(quic, NetSchedConnection)
        proto = native.NetSchedProtocol(quic)
        rtts = _RttLog(quic)

        def on_event(event: QuicEvent) -> None:
            if isinstance(event, ConnectionTerminated):
                rtts.stop()  # a fairness flow closes without asking for them
            for pevent in proto.handle_event(event):
                if not isinstance(pevent, RequestReceived):
                    continue
                meta = pevent.head.meta
                if meta.get("path") == "/rtt":
                    body = rtts.summary()  # the transfer's samples, for the client
                else:
                    rtts.start()
                    body = bytes(int(meta.get("size", size)))
                head = ResponseHead(status=200, meta=_controller_meta(quic))
                proto.send_response(pevent.stream_id, head, body, end_stream=True)
                driver.schedule_transmit()

        driver.add_event_handler(on_event)

    return accept


def _controller_meta(quic: NetSchedConnection) -> dict[str, str]:
    return {
        "cc": quic.configuration.congestion_control_algorithm,
        "coupled": str(len(quic.congestion_group.members)),
    }


class _InTurn:
    """A plan's connection factory: its controllers in turn, in the order the client
    opens a pair's flows (one handshake after the other), so that one relay and one
    endpoint carry both; the client checks the head's "cc" all the same."""

    def __init__(self, plan: Plan) -> None:
        self._ccs = itertools.cycle(plan.ccs)

    def __call__(self, *, configuration: QuicConfiguration, **kwargs: Any) -> NetSchedConnection:
        cc = next(self._ccs)
        chosen = dataclasses.replace(configuration, congestion_control_algorithm=cc)
        return NetSchedConnection(configuration=chosen, **kwargs)


async def _serve(plans: dict[str, Plan], size: int, ready: mp.Queue[dict[str, int]]) -> None:
    """One endpoint per plan."""
    cert = generate_self_signed(Path(tempfile.mkdtemp(prefix="bench-cc-")))
    configuration = QuicConfiguration(is_client=False, alpn_protocols=[native.ALPN])
    configuration.load_cert_chain(cert.certificate, cert.private_key)
    endpoints: dict[str, ServerEndpoint] = {}
    for name, plan in plans.items():

        def factory(plan: Plan = plan) -> ServerEndpoint:
            return ServerEndpoint(
                configuration, _on_connection(size), connection_factory=_InTurn(plan)
            )

        endpoints[name] = await open_server_endpoint("127.0.0.1", 0, factory)
    ready.put({name: endpoint.local_address[1] for name, endpoint in endpoints.items()})
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for endpoint in endpoints.values():
        endpoint.close()


def _server_main(plans: dict[str, Plan], size: int, ready: mp.Queue[dict[str, int]]) -> None:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: no orphaned servers
    asyncio.run(_serve(plans, size, ready))


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


async def _share(port: int, pair: Pair, warmup: float, seconds: float) -> Fairness:
    """Both flows of `pair` at once through one relay path (see the module doc)."""
    relay = UdpRelay(("127.0.0.1", port), default=PathProfile(UP, FAIR_LINK))
    host, relay_port = await relay.start()
    try:
        async with contextlib.AsyncExitStack() as stack:
            sessions = []
            for paths in pair.paths:  # in turn: the endpoint hands out controllers in order
                session = await open_session(
                    host, relay_port, verify=False, reconnect=False, paths=[host] * paths
                )
                stack.push_async_callback(session.close)
                sessions.append(session)
            begin = asyncio.get_running_loop().time() + warmup
            # More than the whole link carries in the time: no flow ends inside the window.
            size = int(RATE_MBPS * 1e6 / 8 * (warmup + seconds) * 1.5)
            first, second = await asyncio.gather(
                *(_bulk(session, size, (begin, begin + seconds)) for session in sessions)
            )
    finally:
        await relay.stop()
    for flow, cc, paths in zip((first, second), pair.ccs, pair.paths, strict=True):
        coupled = paths if cc in COUPLED_CONTROLS else 0
        if (flow.cc, flow.coupled_paths) != (cc, coupled):
            raise RuntimeError(f"{pair.name}: a flow ran {flow} instead of {cc} on {paths} paths")
    return Fairness(pair, (first, second))


async def _bulk(session: Session, size: int, window: tuple[float, float]) -> Flow:
    """Downloads `size` bytes until the window ends, counting what arrives within it."""
    loop = asyncio.get_running_loop()
    start, end = window
    stream = await session.open_stream(SERVICE, meta={"path": "/data", "size": str(size)})
    stream.write_eof()
    head: ResponseHead | None = None
    received = 0
    try:
        async with asyncio.timeout_at(end):
            head = await stream.response()
            while chunk := await stream.read(READ_CHUNK):
                if loop.time() >= start:
                    received += len(chunk)
            raise RuntimeError(f"the {size}-byte transfer ended inside the window")
    except TimeoutError:
        pass
    if head is None:
        raise RuntimeError("no response head within the window")
    path_bytes = tuple(path.bytes_received for path in session.paths if path.bytes_received)
    return Flow(head.meta["cc"], int(head.meta["coupled"]), path_bytes, received, end - start)


def run(
    scenarios: tuple[str, ...] = tuple(SCENARIOS),
    ccs: tuple[str, ...] = SINGLE_PATH_CCS,
    size_mb: float = 6.0,
    timeout_s: float = 10.0,
) -> list[Result]:
    """Every scenario with every controller (no fairness pairs)."""
    results, _ = run_all(scenarios, ccs, size_mb, timeout_s, pairs=())
    return results


def run_all(
    scenarios: tuple[str, ...],
    ccs: tuple[str, ...],
    size_mb: float,
    timeout_s: float,
    pairs: tuple[str, ...] = tuple(PAIRS),
    warmup_s: float = 2.0,
    fair_s: float = 10.0,
) -> tuple[list[Result], list[Fairness]]:
    """Every scenario with every controller, then every pair on one bottleneck; one
    server process for the whole run."""
    plans = {cc: Plan((cc,)) for cc in ccs}
    plans |= {name: Plan(PAIRS[name].ccs) for name in pairs}
    ctx = mp.get_context("spawn")
    ready: mp.Queue[dict[str, int]] = ctx.Queue()
    server = ctx.Process(target=_server_main, args=(plans, int(size_mb * 1e6), ready))
    server.start()
    try:
        ports = ready.get(timeout=30)
        results = [
            asyncio.run(_download(ports[cc], SCENARIOS[scenario], scenario, cc, timeout_s))
            for scenario in scenarios
            for cc in ccs
        ]
        shares = [asyncio.run(_share(ports[name], PAIRS[name], warmup_s, fair_s)) for name in pairs]
        return results, shares
    finally:
        server.terminate()
        server.join(timeout=10)


# -- the pairs in virtual time (--virtual) -----------------------------------------------

VIRTUAL_STEP_S = 0.001  # how often the servers' streams are fed and windows read
VIRTUAL_CUT = 0.7  # a path's window falling under this share of its last value is a cut
VIRTUAL_BACKLOG = 1 << 20  # the server keeps this much more queued than has arrived
VIRTUAL_ACK_JITTER_S = 0.001


class _SharedBottleneck:
    """A client address's link in the in-memory lab whose downlink is the pair's one
    bottleneck: FAIR_LINK in the relay's own model (token bucket, 64 kB tail-drop
    queue), shared by every path of both flows. The uplink delays, with up to
    VIRTUAL_ACK_JITTER_S more drawn from the seed (in order): without it every seed
    gives the same run, and the flows' phases would stay locked."""

    def __init__(self, downlink: impairment.Link, rng: random.Random) -> None:
        self._downlink = downlink
        self._rng = rng
        self._uplink_free = 0.0

    def arrival(self, now: float, size: int, upstream: bool) -> float | None:
        if upstream:
            delay = UP.delay_ms / 1000 + self._rng.random() * VIRTUAL_ACK_JITTER_S
            self._uplink_free = max(now + delay, self._uplink_free)
            return self._uplink_free
        deliveries = self._downlink.submit(bytes(size), now)
        return deliveries[0][0] if deliveries else None


@dataclasses.dataclass
class _CountingNet(memory.Net):
    """A Net that counts the client's stream bytes instead of keeping them."""

    arrived: int = 0

    def _drain_events(self) -> None:
        while (event := self.client.next_event()) is not None:
            if isinstance(event, StreamDataReceived):
                self.arrived += len(event.data)
        while self.server.next_event() is not None:
            pass


@dataclasses.dataclass
class _WindowLog:
    """The server's per-path windows, read once a step: cuts and the flow's mean window."""

    last: dict[int, int] = dataclasses.field(default_factory=dict)
    cuts: list[float] = dataclasses.field(default_factory=list)
    windows: list[int] = dataclasses.field(default_factory=list)

    def read(self, quic: NetSchedConnection, counting: bool) -> None:
        windows = {
            int(info["path_id"]): int(info["cwnd"])
            for info in quic.path_info()
            if info["state"] == "active"
        }
        total = sum(self.last.get(path, 0) for path in windows)
        for path, window in windows.items():
            before = self.last.get(path)
            if counting and before and window < VIRTUAL_CUT * before:
                self.cuts.append((before - window) / total)
        if counting:
            self.windows.append(sum(windows.values()))
        self.last = windows

    def summary(self) -> Cuts:
        share = statistics.fmean(self.cuts) if self.cuts else 0.0
        return Cuts(len(self.cuts), share, statistics.fmean(self.windows))


def _virtual_net(cc: str, paths: int, bottleneck: _SharedBottleneck) -> _CountingNet:
    client_cfg, server_cfg = fixed_configurations()
    server_cfg.congestion_control_algorithm = cc
    make = functools.partial(NetSchedConnection, max_path_id=3, pmtud=memory.NETWORK_PMTUD)
    client = make(configuration=client_cfg)
    server = make(
        configuration=server_cfg,
        original_destination_connection_id=client.original_destination_connection_id,
    )
    links = {address: bottleneck for address in (memory.C1, memory.C2)[:paths]}
    net = _CountingNet(client, server, links)  # type: ignore[arg-type]
    client.connect(memory.SERVER, now=net.now)
    return net


def _next_event(net: memory.Net) -> float:
    """When `net` next has something to do: a timer of either side or a datagram due."""
    times = [t for t in (net.client.get_timer(), net.server.get_timer()) if t is not None]
    return min([*times, *(at for at, *_ in net.queue[:1])], default=math.inf)


def _advance(nets: list[_CountingNet], seconds: float, each_step: Any = None) -> None:
    """Runs the connections together for `seconds`, always the one whose next event is
    the earliest, so that their datagrams reach the shared link in time order (each
    connection's own clock would let one flow queue ahead of the other); `each_step`
    every VIRTUAL_STEP_S, with every connection brought to that time."""
    clock = max(net.now for net in nets)
    end = clock + seconds
    while clock < end:
        tick = min(clock + VIRTUAL_STEP_S, end)
        while True:
            due, index = min((_next_event(net), index) for index, net in enumerate(nets))
            if due > tick:
                break
            # At least a microsecond: a timer still due where it fired (aioquic's loss
            # timer on a rounding edge) moves on, as Net.run moves it on.
            nets[index].run(max(due - nets[index].now, 1e-6))
        for net in nets:
            if net.now < tick:
                net.run(tick - net.now)
        clock = tick
        if each_step is not None:
            each_step()


def share_virtual(pair: Pair, seed: int, warmup: float, seconds: float) -> Fairness:
    """`pair` through one shared bottleneck in the in-memory lab, virtual time, seeded:
    the same run every time, whatever the host's load. The multipath flow opens its
    second path after the handshakes; then each server sends on a stream of its own
    (kept VIRTUAL_BACKLOG ahead of what arrived) and goodput counts from `warmup` to
    `warmup + seconds` later."""
    with seeded_randomness(seed):
        rng = random.Random(seed)
        bottleneck = _SharedBottleneck(impairment.Link(FAIR_LINK, rng), rng)
        nets = [_virtual_net(cc, n, bottleneck) for cc, n in zip(pair.ccs, pair.paths, strict=True)]
        _advance(nets, 0.5)
        for net, paths in zip(nets, pair.paths, strict=True):
            if paths > 1:
                net.client.open_path(memory.C2, memory.SERVER, net.now)
        _advance(nets, 0.5)
        streams = [net.server.get_next_available_stream_id(is_unidirectional=True) for net in nets]
        pushed = [0] * len(nets)
        logs = [_WindowLog() for _ in nets]

        def each_step(counting: bool) -> None:
            for index, (net, stream_id) in enumerate(zip(nets, streams, strict=True)):
                if pushed[index] - net.arrived < VIRTUAL_BACKLOG:
                    net.server.send_stream_data(stream_id, bytes(VIRTUAL_BACKLOG))
                    pushed[index] += VIRTUAL_BACKLOG
                logs[index].read(net.server, counting)

        _advance(nets, warmup, functools.partial(each_step, False))
        before = [net.arrived for net in nets]
        _advance(nets, seconds, functools.partial(each_step, True))
    flows = []
    for net, cc, log, start in zip(nets, pair.ccs, logs, before, strict=True):
        coupled = len(net.server.congestion_group.members)
        path_bytes = tuple(
            int(info["bytes_received"]) for info in net.client.path_info() if info["bytes_received"]
        )
        flows.append(Flow(cc, coupled, path_bytes, net.arrived - start, seconds, log.summary()))
    return Fairness(pair, (flows[0], flows[1]))


def virtual_report(shares: dict[int, list[Fairness]], warmup_s: float, fair_s: float) -> str:
    """Per pair: each seed's flow goodputs, ratio, Jain's index and window cuts, then
    the ratio's and Jain's mean over the seeds."""
    lines = [
        f"fairness in virtual time: one {RATE_MBPS:g} Mbit/s bottleneck "
        f"({FAIR_LINK.queue_bytes // 1000} kB queue, the relay's model), 50 ms RTT, "
        f"goodput from {warmup_s:g} s to {warmup_s + fair_s:g} s; cuts: loss events, "
        "mean share of the flow's whole window cut, mean whole window (packets)",
        f"{'pair':10} {'seed':>4} {'flow 1':>34} {'flow 2':>34} {'1 / 2':>6} {'Jain':>6}"
        f"  {'cuts 1':>18} {'cuts 2':>18}",
    ]
    by_pair: dict[str, list[Fairness]] = {}
    for seed, seed_shares in shares.items():
        for share in seed_shares:
            by_pair.setdefault(share.pair.name, []).append(share)
            first, second = (_flow_cell(flow) for flow in share.flows)
            cut1, cut2 = (_cuts_cell(flow.cuts) for flow in share.flows)
            lines.append(
                f"{share.pair.name:10} {seed:>4} {first:>34} {second:>34} "
                f"{share.ratio:6.2f} {share.jain:6.3f}  {cut1:>18} {cut2:>18}"
            )
    for name, runs in by_pair.items():
        ratio = statistics.fmean(share.ratio for share in runs)
        jain = statistics.fmean(share.jain for share in runs)
        low, high = min(s.ratio for s in runs), max(s.ratio for s in runs)
        lines.append(
            f"{name:10} mean over {len(runs)} seeds: 1 / 2 {ratio:.2f} ({low:.2f}-{high:.2f}), "
            f"Jain {jain:.3f}"
        )
    return "\n".join(lines)


def _cuts_cell(cuts: Cuts | None) -> str:
    if cuts is None:
        return "-"
    packets = cuts.mean_window / 1200
    return f"{cuts.count} x {cuts.mean_share:.2f}, {packets:.0f}"


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


def fairness_report(shares: list[Fairness], warmup_s: float, fair_s: float) -> str:
    """One row per pair: each flow's goodput (a multipath flow's split of the whole
    download over its paths), flow 1 / flow 2, and Jain's index."""
    lines = [
        f"fairness: both flows through one {RATE_MBPS:g} Mbit/s bottleneck "
        f"({FAIR_LINK.queue_bytes // 1000} kB queue), goodput from {warmup_s:g} s "
        f"to {warmup_s + fair_s:g} s",
        f"{'pair':10} {'flow 1':>34} {'flow 2':>34} {'1 / 2':>6} {'Jain':>6}",
    ]
    for share in shares:
        first, second = (_flow_cell(flow) for flow in share.flows)
        lines.append(
            f"{share.pair.name:10} {first:>34} {second:>34} {share.ratio:6.2f} {share.jain:6.3f}"
        )
    return "\n".join(lines)


def _flow_cell(flow: Flow) -> str:
    cell = f"{flow.cc} {flow.goodput_mbps:6.2f} Mb"
    if len(flow.path_bytes) > 1:
        split = "/".join(f"{100 * b / sum(flow.path_bytes):.0f}" for b in flow.path_bytes)
        cell += f" ({len(flow.path_bytes)} paths {split} %)"
    return cell


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=6.0)
    parser.add_argument("--timeout-s", type=float, default=10.0)
    parser.add_argument("--scenarios", nargs="*", choices=tuple(SCENARIOS), default=SCENARIOS)
    ccs = CONGESTION_CONTROLS
    parser.add_argument("--ccs", nargs="+", choices=ccs, default=SINGLE_PATH_CCS)
    parser.add_argument("--pairs", nargs="*", choices=tuple(PAIRS), default=tuple(PAIRS))
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--fair-s", type=float, default=10.0)
    parser.add_argument(
        "--virtual",
        type=lambda text: [int(seed) for seed in text.split(",")],
        metavar="SEEDS",
        help="only the pairs, in the in-memory lab in virtual time, once per seed (1,2,3)",
    )
    args = parser.parse_args()
    if args.virtual:
        per_seed = {
            seed: [
                share_virtual(PAIRS[name], seed, args.warmup_s, args.fair_s) for name in args.pairs
            ]
            for seed in args.virtual
        }
        print(virtual_report(per_seed, args.warmup_s, args.fair_s))
        return
    results, shares = run_all(
        tuple(args.scenarios),
        tuple(args.ccs),
        args.size_mb,
        args.timeout_s,
        tuple(args.pairs),
        args.warmup_s,
        args.fair_s,
    )
    if results:
        print(
            f"{RATE_MBPS:g} Mbit/s, {BASE_RTT_S * 1e3:g} ms base RTT, loss on the downlink, "
            f"{args.size_mb:g} MB per transfer"
        )
        print(report(results))
    if shares:
        print(fairness_report(shares, args.warmup_s, args.fair_s))


if __name__ == "__main__":
    main()
