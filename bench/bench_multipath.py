"""Multipath (issue #3): aggregation, failover and CPU cost, one path vs two in the same run.

The client runs here, on 127.0.0.1 (path A) and 127.0.0.2 (path B). The edge,
serving a generated file from a static-file backend, runs in its own process;
so does the path lab relay (`UdpRelay`), whose per-client-IP profiles shape
each path (rate and one-way delay both ways, a tail-drop queue of one
bandwidth-delay product, at least the lab's default 64 kB). Every download is
a streaming request: the client stamps each chunk as it arrives and compares
the content with the file at the end.

1. Aggregation: the same file over the fastest path alone, then over both;
   goodput, its share of the sum of the path rates (goal >= 95 %), the ratio,
   and the CPU share each process used meanwhile.
2. Failover: during a two-path download the path that carried most bytes is
   blackholed (both ways). Resume = blackhole -> first delivery after the
   longest delivery gap that starts before the client sees the path
   abandoned; against the surviving path's smoothed RTT from `session.paths`
   (goal <= 3 RTT); bytes the application lost (must be 0).
3. CPU per GB over unshaped loopback, straight to the edge (no relay):
   client (process_time) and edge (/proc/<pid>/stat utime + stime).

    python bench/bench_multipath.py [--size-mb 16] [--failover-size-mb 8] [--failover-reps 5]
        [--cpu-size-mb 64] [--reps 1] [--timeout 60]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from netsched_client import PathStats, Session, open_session
from netsched_edge.config import BackendConfig, EdgeConfig, ServiceConfig
from netsched_edge.report import table
from netsched_edge.server import EdgeServer
from netsched_lab.impairment import LinkSpec, PathProfile
from netsched_lab.process import (
    RelayControl,
    RelayStats,
    process_cpu,
    receive,
    relay_process,
    spawned,
)

PATH_A = "127.0.0.1"
PATH_B = "127.0.0.2"
SERVICE = "files"
MIB = 1 << 20
READ_SIZE = 1 << 20  # more than any chunk: each read returns what one event delivered
TICK_S = 0.001
OMIT_S = 1.0  # steady-state goodput leaves out the first second, as iperf3 -O 1
DEFAULT_QUEUE_BYTES = LinkSpec().queue_bytes


# -- scenarios ---------------------------------------------------------------------


def _profile(delay_ms: float, rate_mbps: float) -> PathProfile:
    # One BDP of queue: below that, a loss-based sender cannot keep the link busy.
    bdp = int(rate_mbps * 1e6 / 8 * 2 * delay_ms / 1000)
    spec = LinkSpec(
        delay_ms=delay_ms, rate_mbps=rate_mbps, queue_bytes=max(DEFAULT_QUEUE_BYTES, bdp)
    )
    return PathProfile(up=spec, down=spec)


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    profiles: Mapping[str, PathProfile]  # client IP -> both directions of its path
    single: str  # the path of the single-path baseline: the fastest one

    def rate(self, ip: str) -> float:
        rate = self.profiles[ip].down.rate_mbps
        assert rate is not None, "scenarios are rate-limited"
        return rate

    @property
    def rate_sum(self) -> float:
        return sum(self.rate(ip) for ip in self.profiles)

    def describe(self, ip: str) -> str:
        down = self.profiles[ip].down
        return f"{self.rate(ip):g} Mbit/s {down.delay_ms:g} ms"


SYMMETRIC = Scenario("symmetric", {PATH_A: _profile(5, 20), PATH_B: _profile(5, 20)}, PATH_A)
# Fast but far against slow but near: a lowest-RTT-first scheduler favours the slow path.
ASYMMETRIC = Scenario("asymmetric", {PATH_A: _profile(20, 30), PATH_B: _profile(5, 10)}, PATH_A)
SCENARIOS = {s.name: s for s in (SYMMETRIC, ASYMMETRIC)}


# -- the edge and the relay, each in its own process -----------------------------------------


def _edge_process(root: str, max_body: int, conn: Connection) -> None:
    asyncio.run(_serve_edge(Path(root), max_body, conn))


async def _serve_edge(root: Path, max_body: int, conn: Connection) -> None:
    backend = BackendConfig(name="static", kind="static", root=root)
    service = ServiceConfig(SERVICE, (backend,), max_body=max_body)
    edge = EdgeServer(EdgeConfig(host="127.0.0.1", port=0, services=(service,)))
    await edge.start()
    conn.send(edge.port)
    await asyncio.Event().wait()


@dataclass(frozen=True, slots=True)
class Cpu:
    """CPU seconds (user + system) of the three processes."""

    client: float
    edge: float
    relay: float

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.client - other.client, self.edge - other.edge, self.relay - other.relay)


@dataclass(frozen=True, slots=True)
class Servers:
    edge_port: int
    edge_pid: int
    relay_pid: int
    relay: RelayControl

    def cpu(self) -> Cpu:
        return Cpu(time.process_time(), process_cpu(self.edge_pid), process_cpu(self.relay_pid))


@contextmanager
def servers(root: Path, max_body: int) -> Iterator[Servers]:
    """Start the edge and the relay processes; always stop them."""
    targets = [(_edge_process, (str(root), max_body)), (relay_process, ())]
    with spawned(targets) as [(edge_pid, edge_conn), (relay_pid, relay_conn)]:
        port = receive(edge_conn, "the edge process")
        yield Servers(port, edge_pid, relay_pid, RelayControl(relay_conn))


# -- one download ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Transfer:
    """One download as the client saw it."""

    size: int
    requested_at: float
    samples: list[tuple[float, int]]  # (monotonic time, bytes delivered so far), per chunk
    intact: int  # bytes of the longest prefix equal to the file
    paths: list[PathStats]
    cpu: Cpu  # request to last byte

    @property
    def seconds(self) -> float:
        return self.samples[-1][0] - self.requested_at

    @property
    def goodput_mbps(self) -> float:
        return self.size * 8 / self.seconds / 1e6

    @property
    def steady_mbps(self) -> float:
        """Goodput after the first OMIT_S (request, handshake-free slow start): iperf3's -O."""
        start = self.requested_at + OMIT_S
        later = [(t, n) for t, n in self.samples if t >= start]
        if len(later) < 2:
            return self.goodput_mbps
        (t0, n0), (t1, n1) = later[0], later[-1]
        return (n1 - n0) * 8 / (t1 - t0) / 1e6

    @property
    def lost(self) -> int:
        return self.size - self.intact

    def share(self, ip: str) -> float:
        """Share of the received bytes that came over `ip`'s path."""
        total = sum(p.bytes_received for p in self.paths) or 1
        return sum(p.bytes_received for p in self.paths if _path_ip(p) == ip) / total


class Watcher:
    """Hooks into a running download: each delivered chunk, and a 1 ms tick."""

    ticks = False  # whether on_tick is wanted (it wakes the loop every millisecond)

    def on_chunk(self, session: Session, delivered: int) -> None:
        pass

    def on_tick(self, session: Session) -> None:
        pass


def _path_ip(path: PathStats) -> str:
    # Path 0 runs on the session's first local address, which its stats leave out.
    return path.local[0] if path.local else PATH_A


def _intact_prefix(got: bytes, want: bytes) -> int:
    if got == want:
        return len(want)
    step = 64 * 1024
    for start in range(0, min(len(got), len(want)), step):
        a, b = got[start : start + step], want[start : start + step]
        if a != b:
            return start + next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    return min(len(got), len(want))


async def download(
    servers: Servers,
    port: int,
    paths: Sequence[str],
    name: str,
    expected: bytes,
    timeout: float,
    watcher: Watcher | None = None,
) -> Transfer:
    """Fetch /`name` over `paths` (local addresses, the first one for the handshake)."""
    session = await open_session("127.0.0.1", port, verify=False, paths=list(paths))
    try:
        active = [p for p in session.paths if p.state == "active"]
        if len(active) < len(paths):
            raise RuntimeError(f"only {len(active)} of {len(paths)} paths active: {session.paths}")
        cpu = servers.cpu()
        requested_at = time.monotonic()
        async with asyncio.timeout(timeout):
            samples, data = await _fetch(session, name, watcher)
        cpu = servers.cpu() - cpu
        stats = session.paths
    except TimeoutError:
        raise RuntimeError(f"download of {name} over {paths} took over {timeout} s") from None
    finally:
        await session.close()
    intact = _intact_prefix(data, expected)
    return Transfer(len(expected), requested_at, samples, intact, stats, cpu)


async def _fetch(
    session: Session, name: str, watcher: Watcher | None
) -> tuple[list[tuple[float, int]], bytes]:
    """(delivery samples, body) of one streaming GET."""
    ticker = asyncio.create_task(_tick(session, watcher)) if watcher and watcher.ticks else None
    samples: list[tuple[float, int]] = []
    parts: list[bytes] = []
    try:
        stream = await session.open_stream(SERVICE, meta={"method": "GET", "path": "/" + name})
        stream.write_eof()
        delivered = 0
        while chunk := await stream.read(READ_SIZE):
            delivered += len(chunk)
            samples.append((time.monotonic(), delivered))
            parts.append(chunk)
            if watcher is not None:
                watcher.on_chunk(session, delivered)
    finally:
        if ticker is not None:
            ticker.cancel()
    if not samples:
        raise RuntimeError(f"/{name}: empty response")
    return samples, b"".join(parts)


async def _tick(session: Session, watcher: Watcher) -> None:
    while True:
        await asyncio.sleep(TICK_S)
        watcher.on_tick(session)


def _relayed(
    servers: Servers,
    scenario: Scenario,
    paths: tuple[str, ...],
    name: str,
    expected: bytes,
    timeout: float,
    watcher: Watcher | None = None,
) -> tuple[Transfer, RelayStats]:
    """One download through a fresh relay shaped as `scenario`, and the relay's counters."""
    port = servers.relay.call("start", servers.edge_port, dict(scenario.profiles))
    try:
        transfer = asyncio.run(download(servers, port, paths, name, expected, timeout, watcher))
    finally:
        stats: RelayStats = servers.relay.call("stop")
    return transfer, stats


# -- 1. aggregation ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AggregationRow:
    scenario: str
    paths: tuple[str, ...]
    rate_mbps: float  # sum of the rates of the paths used
    seconds: float
    goodput_mbps: float
    steady_mbps: float
    shares: tuple[float, ...]  # of the received bytes, per path in `paths`
    down_drops: tuple[int, ...]  # relay drops toward the client (queue full), per path
    cpu_share: Cpu  # CPU seconds per second of transfer
    lost: int

    @property
    def utilization(self) -> float:
        return self.goodput_mbps / self.rate_mbps

    @property
    def steady_utilization(self) -> float:
        return self.steady_mbps / self.rate_mbps


def aggregation(
    servers: Servers, scenario: Scenario, name: str, expected: bytes, timeout: float
) -> list[AggregationRow]:
    rows = []
    for paths in ((scenario.single,), tuple(scenario.profiles)):
        transfer, stats = _relayed(servers, scenario, paths, name, expected, timeout)
        seconds = transfer.seconds
        cpu = transfer.cpu
        rows.append(
            AggregationRow(
                scenario=scenario.name,
                paths=paths,
                rate_mbps=sum(scenario.rate(ip) for ip in paths),
                seconds=seconds,
                goodput_mbps=transfer.goodput_mbps,
                steady_mbps=transfer.steady_mbps,
                shares=tuple(transfer.share(ip) for ip in paths),
                down_drops=tuple(stats[ip][1].dropped if ip in stats else 0 for ip in paths),
                cpu_share=Cpu(cpu.client / seconds, cpu.edge / seconds, cpu.relay / seconds),
                lost=transfer.lost,
            )
        )
    return rows


# -- 2. failover -----------------------------------------------------------------------------


@dataclass(slots=True)
class Blackholer(Watcher):
    """Blackholes the path that carried most bytes once `at_bytes` were delivered,
    and notes when the client first sees that path leave "active"."""

    relay: RelayControl
    at_bytes: int
    ticks = True
    victim: int | None = None
    ip: str | None = None
    share: float = 0.0
    survivor_rtt_ms: float | None = None
    abandon_seen_at: float | None = None

    def on_chunk(self, session: Session, delivered: int) -> None:
        if self.ip is not None or delivered < self.at_bytes:
            return
        active = [p for p in session.paths if p.state == "active"]
        victim = max(active, key=lambda p: p.bytes_received)
        survivors = [p for p in active if p is not victim]
        self.victim, self.ip = victim.path_id, _path_ip(victim)
        self.share = victim.bytes_received / (sum(p.bytes_received for p in active) or 1)
        self.survivor_rtt_ms = survivors[0].rtt_ms if survivors else None
        self.relay.send("blackhole", self.ip)

    def on_tick(self, session: Session) -> None:
        if self.victim is None or self.abandon_seen_at is not None:
            return
        if any(p.path_id == self.victim and p.state != "active" for p in session.paths):
            self.abandon_seen_at = time.monotonic()


@dataclass(frozen=True, slots=True)
class FailoverRow:
    blackholed: str
    share: float  # of the bytes received before the blackhole, on the blackholed path
    resume_ms: float  # blackhole -> first delivery after the outage's gap
    stall_ms: float  # that gap
    normal_gap_ms: float  # longest gap between deliveries before the blackhole
    abandon_seen_ms: float | None  # blackhole -> the client sees the path leave "active"
    survivor_rtt_ms: float | None  # client's smoothed RTT of the surviving path
    lost: int

    @property
    def rtts(self) -> float:
        if not self.survivor_rtt_ms:
            return math.nan
        return self.resume_ms / self.survivor_rtt_ms


def _stall(samples: Sequence[tuple[float, int]], since: float, until: float) -> tuple[float, float]:
    """(end, length) of the longest gap between deliveries that starts in [since, until];
    `since` counts as a delivery. The delivery of bytes the blackholed path already
    carried can go on for a while after the blackhole; the gap of the outage
    starts before the path is abandoned (after that, its data goes out again)."""
    previous, end, longest = since, since, 0.0
    for at, _ in samples:
        if at <= since:
            continue
        if previous <= until and at - previous > longest:
            end, longest = at, at - previous
        previous = at
    return end, longest


def _longest_gap(samples: Sequence[tuple[float, int]], until: float) -> float:
    times = [at for at, _ in samples if at <= until]
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def failover(
    servers: Servers, scenario: Scenario, name: str, expected: bytes, at: float, timeout: float
) -> FailoverRow:
    blackholer = Blackholer(servers.relay, at_bytes=int(len(expected) * at))
    paths = tuple(scenario.profiles)
    transfer, _ = _relayed(servers, scenario, paths, name, expected, timeout, blackholer)
    if blackholer.ip is None:
        raise RuntimeError("the download ended before the blackhole")
    (blackholed_at,) = servers.relay.answers()
    seen = blackholer.abandon_seen_at
    end, stall = _stall(
        transfer.samples, blackholed_at, transfer.samples[-1][0] if seen is None else seen
    )
    return FailoverRow(
        blackholed=blackholer.ip,
        share=blackholer.share,
        resume_ms=(end - blackholed_at) * 1000,
        stall_ms=stall * 1000,
        normal_gap_ms=_longest_gap(transfer.samples, blackholed_at) * 1000,
        abandon_seen_ms=None if seen is None else (seen - blackholed_at) * 1000,
        survivor_rtt_ms=blackholer.survivor_rtt_ms,
        lost=transfer.lost,
    )


# -- 3. CPU per GB ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CpuRow:
    paths: tuple[str, ...]
    seconds: float
    goodput_mbps: float
    client_s_per_gb: float
    edge_s_per_gb: float
    lost: int

    @property
    def total_s_per_gb(self) -> float:
        return self.client_s_per_gb + self.edge_s_per_gb


def cpu(
    servers: Servers, paths: tuple[str, ...], name: str, expected: bytes, timeout: float
) -> CpuRow:
    # Straight to the edge: nothing to shape, and no relay work on the CPUs.
    transfer = asyncio.run(download(servers, servers.edge_port, paths, name, expected, timeout))
    gigabytes = len(expected) / 1e9
    return CpuRow(
        paths=paths,
        seconds=transfer.seconds,
        goodput_mbps=transfer.goodput_mbps,
        client_s_per_gb=transfer.cpu.client / gigabytes,
        edge_s_per_gb=transfer.cpu.edge / gigabytes,
        lost=transfer.lost,
    )


# -- the whole run ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    size_mb: float = 16.0  # MiB, aggregation
    failover_size_mb: float = 8.0
    failover_reps: int = 5
    blackhole_at: float = 0.3  # share of the file delivered when the blackhole starts
    cpu_size_mb: float = 64.0
    reps: int = 1  # aggregation and CPU runs, each one path then two
    timeout_s: float = 60.0  # per download
    seed: int = 3


@dataclass(frozen=True, slots=True)
class Results:
    options: Options
    aggregation: list[AggregationRow]
    failover: list[FailoverRow]
    cpu: list[CpuRow]
    load: tuple[float, float]  # 1-minute load average before and after: other work on the host


def _payloads(root: Path, options: Options) -> dict[str, bytes]:
    """The files by name, written under `root`; pseudo-random, so a misplaced byte shows."""
    sizes = {
        "warmup.bin": MIB,
        "aggregation.bin": int(options.size_mb * MIB),
        "failover.bin": int(options.failover_size_mb * MIB),
        "cpu.bin": int(options.cpu_size_mb * MIB),
    }
    payload = random.Random(options.seed).randbytes(max(sizes.values()))
    files = {}
    for name, size in sizes.items():
        (root / name).write_bytes(payload[:size])
        files[name] = payload[:size]
    return files


def run(options: Options, progress: Callable[[str], None] = lambda _: None) -> Results:
    with tempfile.TemporaryDirectory(prefix="bench-multipath-") as tmp:
        files = _payloads(Path(tmp), options)
        max_body = max(len(data) for data in files.values()) + 1
        load = os.getloadavg()[0]
        with servers(Path(tmp), max_body) as procs:
            results = _run(procs, files, options, progress)
        return Results(options, *results, (load, os.getloadavg()[0]))


def _run(
    procs: Servers, files: dict[str, bytes], options: Options, progress: Callable[[str], None]
) -> tuple[list[AggregationRow], list[FailoverRow], list[CpuRow]]:
    timeout = options.timeout_s
    warmup = files["warmup.bin"]
    asyncio.run(download(procs, procs.edge_port, (PATH_A,), "warmup.bin", warmup, timeout))
    # CPU first: no earlier connection of ours is still draining at the edge.
    cpus = []
    for rep in range(options.reps):
        for paths in ((PATH_A,), (PATH_A, PATH_B)):
            progress(f"cpu, {len(paths)} path(s), {rep + 1}/{options.reps}")
            cpus.append(cpu(procs, paths, "cpu.bin", files["cpu.bin"], timeout))
    rows: list[AggregationRow] = []
    for rep in range(options.reps):
        for scenario in SCENARIOS.values():
            progress(f"aggregation, {scenario.name}, {rep + 1}/{options.reps}")
            rows += aggregation(
                procs, scenario, "aggregation.bin", files["aggregation.bin"], timeout
            )
    failovers = []
    for rep in range(options.failover_reps):
        progress(f"failover {rep + 1}/{options.failover_reps}")
        failovers.append(
            failover(
                procs,
                SYMMETRIC,
                "failover.bin",
                files["failover.bin"],
                options.blackhole_at,
                timeout,
            )
        )
    return rows, failovers, cpus


# -- report --------------------------------------------------------------------------------


def _label(paths: Sequence[str]) -> str:
    return "+".join("A" if ip == PATH_A else "B" for ip in paths)


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


def _pct(value: float) -> str:
    return f"{value * 100:.1f} %"


def _goal(value: float, goal: float, *, at_least: bool) -> str:
    if value >= goal if at_least else value <= goal:
        return "met"
    if math.isnan(value):
        return "not measured"
    return f"missed by {abs(value - goal) / goal * 100:.0f} %"


def report_aggregation(results: Results) -> list[str]:
    o = results.options
    lines = [f"1. Aggregation: {o.size_mb:g} MiB over the fastest path, then over both", ""]
    headers = [
        "scenario", "paths", "path rates, one-way delay", "s", "Mbit/s", "of rates",
        "steady", "of rates", "bytes/path %", "drops", "CPU client/edge/relay", "lost",
    ]  # fmt: skip
    rows = []
    for r in results.aggregation:
        scenario = SCENARIOS[r.scenario]
        rows.append(
            [
                r.scenario,
                _label(r.paths),
                " + ".join(scenario.describe(ip) for ip in r.paths),
                r.seconds,
                r.goodput_mbps,
                _pct(r.utilization),
                r.steady_mbps,
                _pct(r.steady_utilization),
                "/".join(f"{s * 100:.0f}" for s in r.shares),
                "/".join(str(d) for d in r.down_drops),
                "/".join(
                    f"{c * 100:.0f}%"
                    for c in (r.cpu_share.client, r.cpu_share.edge, r.cpu_share.relay)
                ),
                r.lost,
            ]
        )
    lines += [table(headers, rows), ""]
    lines.append(
        "drops: relay tail drops toward the client (queue: one BDP, >= 64 kB); "
        "CPU: seconds per second of transfer, per process; "
        f"steady: after the first {OMIT_S:g} s (iperf3 -O)"
    )
    for scenario in SCENARIOS.values():
        mine = [r for r in results.aggregation if r.scenario == scenario.name]
        single = _median([r.goodput_mbps for r in mine if len(r.paths) == 1])
        multi = _median([r.goodput_mbps for r in mine if len(r.paths) > 1])
        steady = _median([r.steady_mbps for r in mine if len(r.paths) > 1]) / scenario.rate_sum
        share = multi / scenario.rate_sum
        lines.append(
            f"{scenario.name}: two paths {multi:.1f} Mbit/s = {_pct(share)} of "
            f"{scenario.rate_sum:g} Mbit/s, steady {_pct(steady)} "
            f"(goal >= 95 %: {_goal(share, 0.95, at_least=True)}, "
            f"steady {_goal(steady, 0.95, at_least=True)}); "
            f"two paths / one path {multi / single:.2f}x "
            f"(ideal {scenario.rate_sum / scenario.rate(scenario.single):.2f}x)"
        )
    return lines


def report_failover(results: Results) -> list[str]:
    o = results.options
    lines = [
        f"2. Failover: {o.failover_size_mb:g} MiB over A+B ({SYMMETRIC.describe(PATH_A)} each, "
        f"base RTT {2 * SYMMETRIC.profiles[PATH_A].down.delay_ms:g} ms), the path with most "
        f"bytes blackholed at {o.blackhole_at * 100:.0f} % delivered",
        "",
    ]
    headers = [
        "rep", "blackholed", "its share", "resume ms", "stall ms", "normal gap ms",
        "abandon seen ms", "survivor RTT ms", "resume/RTT", "lost",
    ]  # fmt: skip
    rows = [
        [
            n + 1,
            _label([r.blackholed]),
            _pct(r.share),
            r.resume_ms,
            r.stall_ms,
            r.normal_gap_ms,
            math.nan if r.abandon_seen_ms is None else r.abandon_seen_ms,
            math.nan if r.survivor_rtt_ms is None else r.survivor_rtt_ms,
            r.rtts,
            r.lost,
        ]
        for n, r in enumerate(results.failover)
    ]
    lines += [table(headers, rows), ""]
    lines.append(
        "normal gap: longest gap between deliveries before the blackhole; abandon seen: "
        "the client's state of the blackholed path leaves 'active' (PATH_ABANDON from the edge, "
        "after dead_after_s of silence: nan when the download ended first)"
    )
    resumes = [r.resume_ms for r in results.failover]
    ratios = [r.rtts for r in results.failover]
    worst = max(ratios, default=math.nan)
    lines.append(
        f"resume median {_median(resumes):.1f} ms, max {max(resumes, default=math.nan):.1f} ms; "
        f"resume / surviving RTT median {_median(ratios):.1f}, max {worst:.1f} "
        f"(goal <= 3: {_goal(worst, 3.0, at_least=False)}); "
        f"bytes lost to the application: {sum(r.lost for r in results.failover)}"
    )
    return lines


def report_cpu(results: Results) -> list[str]:
    o = results.options
    lines = [f"3. CPU per GB: {o.cpu_size_mb:g} MiB straight to the edge, unshaped loopback", ""]
    headers = ["paths", "s", "Mbit/s", "client s/GB", "edge s/GB", "total s/GB", "lost"]
    rows = [
        [_label(r.paths), r.seconds, r.goodput_mbps, r.client_s_per_gb, r.edge_s_per_gb,
         r.total_s_per_gb, r.lost]
        for r in results.cpu
    ]  # fmt: skip
    lines += [table(headers, rows), ""]
    for what in ("client", "edge", "total"):
        single = _median([getattr(r, f"{what}_s_per_gb") for r in results.cpu if len(r.paths) == 1])
        multi = _median([getattr(r, f"{what}_s_per_gb") for r in results.cpu if len(r.paths) > 1])
        lines.append(f"{what} CPU per GB, two paths / one path: {multi / single:.2f}x")
    return lines


def report(results: Results) -> str:
    sections = (report_aggregation(results), report_failover(results), report_cpu(results))
    before, after = results.load
    host = (
        f"host: {os.cpu_count()} CPUs, 1-minute load average {before:.1f} before, {after:.1f} after"
    )
    return "\n\n".join(["\n".join(lines) for lines in sections] + [host])


def _options(argv: Sequence[str] | None) -> Options:
    d = Options()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=float, default=d.size_mb, help="MiB, aggregation")
    parser.add_argument("--failover-size-mb", type=float, default=d.failover_size_mb)
    parser.add_argument("--failover-reps", type=int, default=d.failover_reps)
    parser.add_argument(
        "--blackhole-at",
        type=float,
        default=d.blackhole_at,
        help="share of the file delivered when the blackhole starts",
    )
    parser.add_argument("--cpu-size-mb", type=float, default=d.cpu_size_mb)
    parser.add_argument("--reps", type=int, default=d.reps, help="aggregation and CPU runs")
    parser.add_argument("--timeout", type=float, default=d.timeout_s, help="s per download")
    parser.add_argument("--seed", type=int, default=d.seed)
    args = parser.parse_args(argv)
    if not 0 < args.blackhole_at < 1:
        parser.error(f"--blackhole-at must be between 0 and 1, got {args.blackhole_at}")
    for name in ("size_mb", "failover_size_mb", "cpu_size_mb", "timeout"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    for name in ("reps", "failover_reps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return Options(
        size_mb=args.size_mb,
        failover_size_mb=args.failover_size_mb,
        failover_reps=args.failover_reps,
        blackhole_at=args.blackhole_at,
        cpu_size_mb=args.cpu_size_mb,
        reps=args.reps,
        timeout_s=args.timeout,
        seed=args.seed,
    )


def main(argv: Sequence[str] | None = None) -> None:
    options = _options(argv)
    started = time.monotonic()
    results = run(options, lambda step: print(f"... {step}", file=sys.stderr, flush=True))
    print(report(results))
    print(f"\n({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
