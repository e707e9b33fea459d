"""picoquic's client fetches a large file from our edge over two paths, one cut mid-way (#13).

An independent multipath stack against the edge over a long transfer: picoquic's
client (`interop/programs/picoquic_mp/client.py`, ctypes on picoquic's C API,
run in the picoquic peer's Python 3.12 venv) GETs one file (hq-interop) from
127.0.0.1, and in the two-path runs opens a second path from 127.0.0.2 with
`picoquic_probe_new_path` once `--probe-at` of the file arrived. The edge
(`EdgeServer` with a `www` root) runs in a process of its own; the path lab
relay (`netsched_lab.relay.UdpRelay`) runs here, between client and edge,
where its per-path counters can be read while the transfer runs. It shapes
each path (`--rate-mbps`, `--delay-ms`, both ways; a rate, so that the
path's rate, not the host's CPUs, limits a transfer). Once the relay
has passed `--cut-at` of the file towards the client, the cut path is
blackholed, both ways, for good.

Runs, in this order, each rep (a feature is shown helping by a run without it):
  one-path          127.0.0.1 only
  two-paths         127.0.0.1, then 127.0.0.2 probed mid-transfer
  two-paths-cut-A   as above, 127.0.0.1 (the handshake's path) blackholed mid-way
  two-paths-cut-B   as above, 127.0.0.2 (the probed path) blackholed mid-way
  one-path-cut-A    127.0.0.1 only, blackholed mid-way: cannot finish; the run
                    ends when no byte flowed for `--stall-s` (or at `--timeout`)

Per run: completed, bytes and SHA-256 as picoquic's client reported them, the
time from the request to the last byte, goodput, bytes per path (relay: what
it passed towards the client per client IP, packet overhead included;
picoquic: `bytes_received` of each path it still has at the end), picoquic's
lost packets, and for the cut runs the relay's view of the surviving path,
sampled every SAMPLE_S: the longest pause in its data before the cut (normal
jitter) and after it, when data flowed again, and its throughput before and
after the cut; `deleted` is when picoquic's client reported the cut path
deleted (the edge abandons a path after its dead-path rule's silence, or
picoquic does). Edge metrics are deltas per run. picoquic's client cannot
report its in-order progress mid-transfer, so a stall of the stream behind
the cut path's lost packets shows only as far as it stops the survivor.

    python bench/bench_picoquic_failover.py [--size-mb 64] [--reps 1] [--cut-at 0.33]
        [--probe-at 0.05] [--rate-mbps 20] [--delay-ms 5] [--timeout 120] [--stall-s 40]
        [--runs NAME,...]

Needs the picoquic peer: `python -m interop setup --peers picoquic`.
Only loopback traffic; every run ends by itself (client timeout, stall, --timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from netsched_edge.config import EdgeConfig
from netsched_edge.report import table
from netsched_edge.server import EdgeServer
from netsched_lab.impairment import LinkSpec, LinkStats, PathProfile
from netsched_lab.process import receive, spawned
from netsched_lab.relay import UdpRelay

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the interop suite
from interop.peers import default_cache
from interop.peers.base import REPO_ROOT
from interop.peers.picoquic import Picoquic

PATH_A = "127.0.0.1"
PATH_B = "127.0.0.2"
FILE = "big.bin"
MIB = 1 << 20
MB = 1e6
SAMPLE_S = 0.002  # relay counters sampled this often (cut trigger, stall measurement)
# A sample in which a path carried less than this moved no data, only ACKs and control
# frames (a few full-size packets: asyncio's timer jitter makes single ones noise).
DATA_BYTES = 4 * 1500
STOPPED = 2  # a gap after the cut this many times the longest before it: the survivor stopped
RATE_WINDOW_S = 1.0  # the surviving path's throughput before the cut: over this long
STOP_GRACE_S = 5.0  # the client, told to stop, exits within this (then it is killed)
EDGE_LOG = "edge.log"
ABANDONED = "netsched_edge_paths_abandoned_total"
OPENED = "netsched_edge_paths_opened_total"
PICOQUIC_ERRORS = {0x433: "PICOQUIC_ERROR_IDLE_TIMEOUT"}  # picoquic.h: PICOQUIC_ERROR_CLASS + 51
DECISIONS = ("silent", "back")  # the edge scheduler's reasons that tell of a path outage


@dataclass(frozen=True, slots=True)
class RunSpec:
    name: str
    paths: tuple[str, ...]  # the client's local addresses; the first one does the handshake
    cut: str | None = None  # the client IP blackholed at --cut-at


RUNS = (
    RunSpec("one-path", (PATH_A,)),
    RunSpec("two-paths", (PATH_A, PATH_B)),
    RunSpec("two-paths-cut-A", (PATH_A, PATH_B), PATH_A),
    RunSpec("two-paths-cut-B", (PATH_A, PATH_B), PATH_B),
    RunSpec("one-path-cut-A", (PATH_A,), PATH_A),
)
RUN_NAMES = {spec.name: spec for spec in RUNS}


@dataclass(frozen=True, slots=True)
class Options:
    size_mb: float = 64
    reps: int = 1
    cut_at: float = 1 / 3  # share of the file the relay passed to the client when the cut falls
    probe_at: float = 0.05  # share of the file received when the client probes its second path
    timeout_s: float = 120.0  # per run, the client's own timeout (the bench adds a margin)
    # After a cut, a run in which no byte flowed this long ends; above the edge's idle
    # timeout (30 s), so a connection left without a path ends by itself first.
    stall_s: float = 40.0
    # Each path, each way (relay profile): a rate the processes keep up with on a small
    # host, so the second path adds what it should; 0: unshaped loopback.
    rate_mbps: float = 20.0
    delay_ms: float = 5.0
    runs: tuple[str, ...] = tuple(RUN_NAMES)
    seed: int = 13

    @property
    def size(self) -> int:
        return int(self.size_mb * MIB)


# -- the edge, in a process of its own ------------------------------------------------------


def edge_process(root: str, log_file: str, conn: Connection) -> None:
    """A child's main: an edge serving `root` over hq-interop; answers "metrics" until EOF."""
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    asyncio.run(_serve_edge(Path(root), conn))


async def _serve_edge(root: Path, conn: Connection) -> None:
    edge = EdgeServer(EdgeConfig(host=PATH_A, port=0, www=root))
    await edge.start()
    loop = asyncio.get_running_loop()
    try:
        conn.send(edge.port)
        while True:
            try:
                command = await loop.run_in_executor(None, conn.recv)
            except (EOFError, OSError):  # the parent closed its end
                return
            if command == "metrics":
                conn.send(_edge_metrics(edge))
            else:
                conn.send(RuntimeError(f"edge: unexpected command {command!r}"))
    finally:
        await edge.close()


def _edge_metrics(edge: EdgeServer) -> dict[str, float]:
    metrics = edge.dispatcher.metrics
    registry = metrics.registry
    values = {
        "opened": registry.get_sample_value(OPENED, {}) or 0.0,
        "abandoned by edge": registry.get_sample_value(ABANDONED, {"by": "edge"}) or 0.0,
        "abandoned by client": registry.get_sample_value(ABANDONED, {"by": "client"}) or 0.0,
    }
    for reason in DECISIONS:
        values[reason] = float(metrics.scheduler_decisions.get(reason, 0))
    return values


@dataclass(slots=True)
class Edge:
    port: int
    conn: Connection
    log: Path

    def metrics(self) -> dict[str, float]:
        self.conn.send("metrics")
        answer: dict[str, float] = receive(self.conn, "the edge process")
        return answer

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def log_since(self, offset: int) -> list[str]:
        if not self.log.exists():
            return []
        with self.log.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace").splitlines()


@contextlib.contextmanager
def edge_server(root: Path, log: Path) -> Iterator[Edge]:
    """Start the edge process; always stop it."""
    with spawned([(edge_process, (str(root), str(log)))]) as [(_, conn)]:
        yield Edge(receive(conn, "the edge process"), conn, log)


# -- picoquic's client --------------------------------------------------------------------


def picoquic_python() -> Path:
    """The picoquic peer venv's interpreter; SystemExit with the setup command when missing."""
    peer = Picoquic(default_cache())
    why = peer.status()
    if why is not None:
        raise SystemExit(f"the picoquic peer is not ready: {why}")
    return peer.home / "venv" / "bin" / "python"


Report = tuple[float, dict[str, Any]]  # (time.monotonic() when read, the JSON report)


class Client:
    """One run of picoquic's client program: its reports, timed as they are read."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.reports: list[Report] = []
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, python: Path, args: Sequence[str], workdir: Path) -> Client:
        workdir.mkdir(parents=True, exist_ok=True)
        with open(workdir / "stderr.txt", "wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                str(python),
                "-m",
                "interop.programs.picoquic_mp.client",
                *args,
                stdin=asyncio.subprocess.PIPE,  # the control channel: end of file stops it
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                cwd=workdir,
                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            )
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            try:
                report = json.loads(line)
            except ValueError:
                report = {"event": "text", "line": line.decode(errors="replace")}
            self.reports.append((time.monotonic(), report))

    async def stop(self) -> int:
        """Stop the program (end of file on its control channel, then kill); its exit status."""
        if self.process.returncode is None and self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            async with asyncio.timeout(STOP_GRACE_S):
                await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        with contextlib.suppress(Exception):
            await self.reader
        assert self.process.returncode is not None
        return self.process.returncode


# -- one run ----------------------------------------------------------------------------


Sample = tuple[float, dict[str, int]]  # (monotonic time, relay bytes towards the client per IP)


@dataclass(slots=True)
class Outcome:
    spec: RunSpec
    rep: int
    exit_status: int
    ended: str  # "client exited", "stalled", "bench timeout"
    reports: list[Report]
    samples: list[Sample]
    cut_time: float | None
    edge_delta: dict[str, float]
    edge_log: list[str]
    expected_sha256: str
    size: int
    relay_drops: int = 0
    links: dict[str, tuple[LinkStats, LinkStats]] = field(default_factory=dict)  # (up, down)
    notes: list[str] = field(default_factory=list)

    def report(self, event: str, **match: Any) -> Report | None:
        for at, report in self.reports:
            if report.get("event") == event and all(report.get(k) == v for k, v in match.items()):
                return at, report
        return None

    @property
    def fetched(self) -> dict[str, Any] | None:
        found = self.report("fetched")
        return None if found is None else found[1]

    @property
    def completed(self) -> bool:
        fetched = self.fetched
        return (
            self.exit_status == 0
            and fetched is not None
            and fetched["bytes"] == self.size
            and fetched["sha256"] == self.expected_sha256
        )

    @property
    def sha_ok(self) -> bool | None:
        fetched = self.fetched
        return None if fetched is None else fetched["sha256"] == self.expected_sha256

    @property
    def seconds(self) -> float:
        """Request to the last byte (to the end of the run when it did not finish)."""
        requested = self.report("request")
        if requested is None:
            return math.nan
        fetched = self.report("fetched")
        end = fetched[0] if fetched is not None else self.samples[-1][0]
        return end - requested[0]

    @property
    def goodput_mbs(self) -> float:
        return self.size / self.seconds / MB if self.completed else math.nan

    def relay_bytes(self, ip: str) -> int:
        return self.samples[-1][1].get(ip, 0) if self.samples else 0

    @property
    def picoquic_paths(self) -> dict[str, dict[str, int]]:
        fetched = self.fetched
        return {} if fetched is None else fetched.get("paths", {})

    @property
    def survivor(self) -> str | None:
        others = [ip for ip in self.spec.paths if ip != self.spec.cut]
        return others[0] if self.spec.cut is not None and others else None

    def at_cut(self, ip: str) -> int:
        assert self.cut_time is not None
        return max((s[ip] for t, s in self.samples if t <= self.cut_time), default=0)

    def gaps(self) -> tuple[float, float, float]:
        """On the surviving path, in ms: the longest gap between samples that moved data
        before the cut (from its first data: the normal jitter), the longest one after
        the cut (counted from the cut, up to its last data), and when that one ended
        (cut -> data flows again). NaN without a survivor."""
        survivor = self.survivor
        if survivor is None or self.cut_time is None:
            return math.nan, math.nan, math.nan
        cut = self.cut_time
        normal = after = 0.0
        resume = math.nan
        last_active: float | None = None
        previous = 0
        for t, sample in self.samples:
            moved = sample[survivor] - previous >= DATA_BYTES
            previous = sample[survivor]
            if t > cut and (last_active is None or last_active < cut):
                last_active = cut  # the gap after the cut counts from the cut
            if not moved:
                continue
            if last_active is not None:
                gap = t - last_active
                if t <= cut:
                    normal = max(normal, gap)
                elif math.isnan(resume) or gap > after:
                    after, resume = gap, t - cut
            last_active = t
        return normal * 1e3, after * 1e3, resume * 1e3

    def rate_mbs(self, ip: str, since: float, until: float) -> float:
        """`ip`'s relay throughput between two times, trimmed to the samples in which
        it carried data (the path's first byte, the transfer's last)."""
        window = [(t, s[ip]) for t, s in self.samples if since <= t <= until]
        while len(window) > 1 and window[0][1] == window[1][1]:
            window.pop(0)  # the path was not up yet
        while len(window) > 1 and window[-1][1] == window[-2][1]:
            window.pop()  # the transfer had ended
        if len(window) < 2 or window[-1][0] <= window[0][0]:
            return math.nan
        (t0, b0), (t1, b1) = window[0], window[-1]
        return (b1 - b0) / (t1 - t0) / MB

    def survivor_rates(self) -> tuple[float, float, float]:
        """The surviving path's MB/s: RATE_WINDOW_S before the cut, the first
        RATE_WINDOW_S after it, and from the cut to its last data."""
        survivor = self.survivor
        if survivor is None or self.cut_time is None:
            return math.nan, math.nan, math.nan
        cut, end = self.cut_time, self.samples[-1][0]
        return (
            self.rate_mbs(survivor, cut - RATE_WINDOW_S, cut),
            self.rate_mbs(survivor, cut, cut + RATE_WINDOW_S),
            self.rate_mbs(survivor, cut, end),
        )

    def cut_path_deleted_ms(self) -> float:
        """Cut -> picoquic's client reports the cut path deleted."""
        if self.spec.cut is None or self.cut_time is None:
            return math.nan
        unique_path_id = self.spec.paths.index(self.spec.cut)  # 0: handshake, 1: probed
        deleted = self.report("path", kind="deleted", unique_path_id=unique_path_id)
        fetched = self.report("fetched")
        if deleted is None or (fetched is not None and deleted[0] >= fetched[0]):
            return math.nan  # not before the last byte: the connection's close deleted it
        return (deleted[0] - self.cut_time) * 1e3


def path_profile(options: Options) -> PathProfile:
    """Each path's shape, both ways: rate and delay, a tail-drop queue of one
    bandwidth-delay product (at least the lab's default), as bench_multipath's."""
    spec = LinkSpec(delay_ms=options.delay_ms)
    if options.rate_mbps:
        bdp = int(options.rate_mbps * 1e6 / 8 * 2 * options.delay_ms / 1000)
        spec = replace(spec, rate_mbps=options.rate_mbps, queue_bytes=max(spec.queue_bytes, bdp))
    return PathProfile(up=spec, down=spec)


def _delivered(relay: UdpRelay, paths: Sequence[str]) -> dict[str, int]:
    return {ip: relay.stats(ip)[1].bytes_delivered for ip in paths}


def client_args(spec: RunSpec, options: Options, relay_port: int) -> list[str]:
    args = ["--host", PATH_A, "--port", str(relay_port), "--local", spec.paths[0]]
    if len(spec.paths) > 1:
        args += [
            "--second-local",
            spec.paths[1],
            "--probe-at",
            str(int(options.probe_at * options.size)),
        ]
    return [*args, "--get", "/" + FILE, "--timeout", str(options.timeout_s)]


async def run_once(
    spec: RunSpec,
    rep: int,
    options: Options,
    edge: Edge,
    python: Path,
    workdir: Path,
    expected_sha256: str,
) -> Outcome:
    """One fetch through a fresh relay, cut as `spec` says; always stops client and relay."""
    relay = UdpRelay((PATH_A, edge.port), default=path_profile(options), seed=options.seed)
    _, relay_port = await relay.start()
    before, log_offset = edge.metrics(), edge.log_size()
    samples: list[Sample] = []
    cut_time: float | None = None
    ended = "client exited"
    client: Client | None = None
    try:
        client = await Client.start(python, client_args(spec, options, relay_port), workdir)
        cut_bytes = options.cut_at * options.size
        last_growth, last_total = time.monotonic(), 0
        async with asyncio.timeout(options.timeout_s + 2 * STOP_GRACE_S):
            while not client.reader.done():
                now = time.monotonic()
                sample = _delivered(relay, spec.paths)
                samples.append((now, sample))
                total = sum(sample.values())
                if total > last_total:
                    last_growth, last_total = now, total
                if spec.cut is not None and cut_time is None and total >= cut_bytes:
                    relay.blackhole(spec.cut)
                    cut_time = time.monotonic()
                if cut_time is not None and now - last_growth > options.stall_s:
                    ended = "stalled"
                    break
                await asyncio.wait([client.reader], timeout=SAMPLE_S)
    except TimeoutError:
        ended = "bench timeout"
    finally:
        status = -1 if client is None else await client.stop()
        samples.append((time.monotonic(), _delivered(relay, spec.paths)))
        drops, links = relay.relay_drops, {ip: relay.stats(ip) for ip in spec.paths}
        await relay.stop()
    after = edge.metrics()
    return Outcome(
        spec=spec,
        rep=rep,
        exit_status=status,
        ended=ended,
        reports=[] if client is None else client.reports,
        samples=samples,
        cut_time=cut_time,
        edge_delta={k: after[k] - before.get(k, 0.0) for k in after},
        edge_log=edge.log_since(log_offset),
        expected_sha256=expected_sha256,
        size=options.size,
        relay_drops=drops,
        links=links,
    )


# -- all runs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Results:
    options: Options
    outcomes: list[Outcome]
    load: tuple[float, float]  # 1-minute load average before and after


def run(
    options: Options, python: Path, progress: Callable[[str], None] = lambda _: None
) -> Results:
    with tempfile.TemporaryDirectory(prefix="bench-picoquic-failover-") as tmp:
        root = Path(tmp) / "www"
        root.mkdir()
        body = random.Random(options.seed).randbytes(options.size)
        (root / FILE).write_bytes(body)
        expected = hashlib.sha256(body).hexdigest()
        del body
        load = os.getloadavg()[0]
        with edge_server(root, Path(tmp) / EDGE_LOG) as edge:
            outcomes = asyncio.run(_runs(options, edge, python, Path(tmp), expected, progress))
        return Results(options, outcomes, (load, os.getloadavg()[0]))


async def _runs(
    options: Options,
    edge: Edge,
    python: Path,
    tmp: Path,
    expected: str,
    progress: Callable[[str], None],
) -> list[Outcome]:
    outcomes = []
    for rep in range(options.reps):
        for name in options.runs:
            spec = RUN_NAMES[name]
            progress(f"{name}, {rep + 1}/{options.reps}")
            workdir = tmp / f"client-{rep + 1}-{name}"
            outcome = await run_once(spec, rep, options, edge, python, workdir, expected)
            stderr = (workdir / "stderr.txt").read_text(errors="replace").strip()
            if stderr:
                outcome.notes.append(f"client stderr: {stderr[-500:]}")
            outcomes.append(outcome)
    return outcomes


# -- report ----------------------------------------------------------------------------------


def _mb(n: float) -> str:
    return f"{n / MB:.1f}"


def _yes(flag: bool | None) -> str:
    return "-" if flag is None else ("yes" if flag else "no")


def _picoquic_paths(outcome: Outcome) -> str:
    paths = outcome.picoquic_paths
    return " ".join(f"{i}:{_mb(q['bytes_received'])}" for i, q in sorted(paths.items())) or "-"


def _lost(outcome: Outcome) -> str:
    paths = outcome.picoquic_paths
    return " ".join(f"{i}:{q['lost']}/{q['sent']}" for i, q in sorted(paths.items())) or "-"


def report_transfers(results: Results) -> list[str]:
    o = results.options
    shape = f"{o.rate_mbps:g} Mbit/s" if o.rate_mbps else "unshaped"
    lines = [
        f"1. Transfers: {o.size_mb:g} MiB GET (hq-interop) by picoquic's client from our edge; "
        f"each path {shape}, {o.delay_ms:g} ms each way; second path probed at "
        f"{o.probe_at * 100:.0f} % received; cut at {o.cut_at * 100:.0f} % passed by the relay",
        "",
    ]
    headers = [
        "run", "rep", "completed", "bytes", "sha256 ok", "s", "MB/s",
        "relay A MB", "relay B MB", "picoquic path:MB", "queue drops", "picoquic lost/sent",
        "ended", "exit",
    ]  # fmt: skip
    rows = []
    for r in results.outcomes:
        fetched = r.fetched
        rows.append(
            [
                r.spec.name,
                r.rep + 1,
                _yes(r.completed),
                "-" if fetched is None else fetched["bytes"],
                _yes(r.sha_ok),
                r.seconds,
                r.goodput_mbs,
                _mb(r.relay_bytes(PATH_A)),
                _mb(r.relay_bytes(PATH_B)) if PATH_B in r.spec.paths else "-",
                _picoquic_paths(r),
                "/".join(str(r.links[ip][1].dropped_queue) for ip in r.spec.paths),
                _lost(r),
                r.ended,
                r.exit_status,
            ]
        )
    lines += [table(headers, rows), ""]
    lines.append(
        "MB = 10^6 bytes; s: request to last byte; relay MB: what the relay passed towards the "
        "client per client IP (packets, overhead included); picoquic path:MB: bytes_received "
        "per unique path ID that picoquic still had at the end; queue drops: the relay's "
        "tail drops towards the client per path (its rate limit); picoquic lost/sent: per path "
        "it had at the end, the packets picoquic's client sent (mostly ACK-only) and deemed "
        "lost, ACK-only ones included: a peer acknowledges those only along with a later "
        "ack-eliciting packet (RFC 9000 13.2.1), so picoquic's repeat timer may count them"
    )
    return lines


def _gaps(outcome: Outcome) -> tuple[float, float, float | str]:
    normal, after, again = outcome.gaps()
    return normal, after, "no stop" if after <= STOPPED * normal else again


def report_cuts(results: Results) -> list[str]:
    cut = [r for r in results.outcomes if r.spec.cut is not None]
    if not cut:
        return []
    lines = ["2. Cuts: the relay's view of the surviving path, the edge's metrics", ""]
    headers = [
        "run", "rep", "cut after s", "A/B MB at cut", "normal gap ms", "gap after cut ms",
        "flows again ms", "survivor MB/s before", "1st s after", "to end", "deleted ms",
        "edge abandons edge/client", "edge silent/back",
    ]  # fmt: skip
    rows = []
    for r in cut:
        requested = r.report("request")
        cut_after = (
            math.nan if r.cut_time is None or requested is None else r.cut_time - requested[0]
        )
        at_cut = "/".join(_mb(r.at_cut(ip)) for ip in r.spec.paths) if r.cut_time else "not cut"
        abandons = (f"{r.edge_delta[f'abandoned by {who}']:.0f}" for who in ("edge", "client"))
        rows.append(
            [
                r.spec.name,
                r.rep + 1,
                cut_after,
                at_cut,
                *_gaps(r),
                *r.survivor_rates(),
                r.cut_path_deleted_ms(),
                "/".join(abandons),
                f"{r.edge_delta['silent']:.0f}/{r.edge_delta['back']:.0f}",
            ]
        )
    lines += [table(headers, rows), ""]
    lines.append(
        f"On the surviving path, as the relay passed it to the client, in {SAMPLE_S * 1e3:g} "
        f"ms samples (moving data: >= {DATA_BYTES} B): normal gap, the longest pause before "
        "the cut; gap after cut, the longest from the cut to its last data; flows again, "
        f"cut -> the end of that gap ('no stop': not {STOPPED}x the normal gap); MB/s in "
        f"the {RATE_WINDOW_S:g} s before the cut, the "
        f"{RATE_WINDOW_S:g} s after, and to the end. deleted: cut -> picoquic reports the "
        "cut path deleted (-: not before the last byte); edge silent/back: the edge "
        "scheduler's decisions that a path went silent or came back"
    )
    return lines


def _meaning(local_error: int) -> str:
    name = PICOQUIC_ERRORS.get(local_error)
    return "" if name is None else f" (local_error {local_error:#x}: {name})"


def report_notes(results: Results) -> list[str]:
    lines = []
    for r in results.outcomes:
        notes = list(r.notes)
        failed = r.report("failed")
        if failed is not None:
            notes.append(f"client failed: {failed[1].get('reason')}")
        closed = r.report("closed")
        if closed is not None:
            errors = {k: v for k, v in closed[1].items() if k != "event"}
            notes.append(f"connection closed: {errors}{_meaning(errors['local_error'])}")
        if r.ended == "stalled":
            notes.append(f"stopped by the bench: no byte for {results.options.stall_s:g} s")
        for at, report in r.reports:
            if report.get("event") == "path":
                since = (
                    "" if r.cut_time is None else f" ({(at - r.cut_time) * 1e3:+.0f} ms from cut)"
                )
                notes.append(f"path {report['unique_path_id']} {report['kind']}{since}")
        if r.spec.cut is not None and r.spec.cut in r.links:
            up, down = r.links[r.spec.cut]
            notes.append(
                f"blackholed on {r.spec.cut}: {up.dropped_blackhole} packets from the client, "
                f"{down.dropped_blackhole} from the edge"
            )
        if r.relay_drops:
            notes.append(f"relay send drops: {r.relay_drops}")
        notes += [f"edge log: {line}" for line in r.edge_log[:10]]
        if len(r.edge_log) > 10:
            notes.append(f"edge log: ... {len(r.edge_log) - 10} more lines")
        if notes:
            lines.append(f"{r.spec.name} (rep {r.rep + 1}):")
            lines += [f"  {note}" for note in notes]
    return ["3. Notes per run", "", *lines] if lines else []


def report_summary(results: Results) -> list[str]:
    def median_goodput(name: str) -> float:
        values = sorted(
            r.goodput_mbs for r in results.outcomes if r.spec.name == name and r.completed
        )
        return values[len(values) // 2] if values else math.nan

    one, two = median_goodput("one-path"), median_goodput("two-paths")
    lines = [f"two paths / one path goodput: {two / one:.2f}x" if one and two else ""]
    for name in ("two-paths-cut-A", "two-paths-cut-B", "one-path-cut-A"):
        mine = [r for r in results.outcomes if r.spec.name == name]
        if mine:
            done = sum(r.completed for r in mine)
            lines.append(
                f"{name}: {done}/{len(mine)} completed with the right SHA-256, goodput "
                f"{median_goodput(name):.1f} MB/s (two paths uncut: {two:.1f} MB/s)"
            )
    before, after = results.load
    lines.append(
        f"host: {os.cpu_count()} CPUs, 1-minute load average {before:.1f} before, {after:.1f} after"
    )
    return [line for line in lines if line]


def report(results: Results) -> str:
    sections = (
        report_transfers(results),
        report_cuts(results),
        report_summary(results),
        report_notes(results),
    )
    return "\n\n".join("\n".join(lines) for lines in sections if lines)


def _options(argv: Sequence[str] | None) -> Options:
    d = Options()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=float, default=d.size_mb, help="MiB")
    parser.add_argument("--reps", type=int, default=d.reps)
    parser.add_argument("--cut-at", type=float, default=d.cut_at, help="share of the file")
    parser.add_argument("--probe-at", type=float, default=d.probe_at, help="share of the file")
    parser.add_argument("--timeout", type=float, default=d.timeout_s, help="s per run")
    parser.add_argument("--stall-s", type=float, default=d.stall_s)
    parser.add_argument("--runs", default=",".join(d.runs), help="comma-separated run names")
    parser.add_argument(
        "--rate-mbps", type=float, default=d.rate_mbps, help="per path, each way; 0: unshaped"
    )
    parser.add_argument("--delay-ms", type=float, default=d.delay_ms, help="one way")
    parser.add_argument("--seed", type=int, default=d.seed)
    args = parser.parse_args(argv)
    runs = tuple(name.strip() for name in args.runs.split(",") if name.strip())
    unknown = [name for name in runs if name not in RUN_NAMES]
    if unknown or not runs:
        parser.error(f"--runs: unknown {unknown}; choose from {list(RUN_NAMES)}")
    if not 0 < args.probe_at < args.cut_at < 1:
        parser.error("need 0 < --probe-at < --cut-at < 1 (the second path is up before the cut)")
    if min(args.size_mb, args.timeout, args.stall_s) <= 0 or args.reps < 1:
        parser.error("--size-mb, --timeout and --stall-s must be > 0, --reps >= 1")
    if args.rate_mbps < 0 or args.delay_ms < 0:
        parser.error("--rate-mbps and --delay-ms must be >= 0")
    return Options(
        size_mb=args.size_mb,
        reps=args.reps,
        cut_at=args.cut_at,
        probe_at=args.probe_at,
        timeout_s=args.timeout,
        stall_s=args.stall_s,
        runs=runs,
        rate_mbps=args.rate_mbps,
        delay_ms=args.delay_ms,
        seed=args.seed,
    )


def main(argv: Sequence[str] | None = None) -> None:
    options = _options(argv)
    python = picoquic_python()
    started = time.monotonic()
    results = run(options, python, lambda step: print(f"... {step}", file=sys.stderr, flush=True))
    print(report(results))
    print(f"\n({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
