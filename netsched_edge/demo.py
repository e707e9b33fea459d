"""`netsched-edge demo`: client → relay → edge → three backends, on an embedded default.

The edge (with three built-in HTTP backends of different speed and warmth) and
the path lab relay run in processes of their own (`demo_stack.py`); the client
here binds Wi-Fi (127.0.0.1) and cellular (127.0.0.2), which the relay shapes
like real access links, and sends an open-loop mix of requests of three SLO
classes. The same workload runs, with the same seed, over Wi-Fi alone, over
both paths with the earlier lowest-RTT scheduler, and over both with the
deadline scheduler; the demo prints how each SLO class fared in each, so a
user sees what the second path and the scheduler buy. `run_setup` is also
what `bench/bench_slo.py` runs, with paths that degrade on a schedule.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from netsched_client import SLO, NetSchedError, PathStats, Response, Session, connect
from netsched_client.proto.fec_link import FecConfig
from netsched_lab.impairment import LinkSpec, PathProfile

from .demo_stack import BACKENDS, DemoStack, EdgeStats, demo_stack
from .report import percentile, table

WIFI = "127.0.0.1"
CELLULAR = "127.0.0.2"


def link(delay_ms: float, loss: float, rate_mbps: float) -> PathProfile:
    """Both directions of an access link: one-way delay (jitter a tenth of it), random
    loss, rate."""
    spec = LinkSpec(delay_ms=delay_ms, jitter_ms=delay_ms / 10, loss=loss, rate_mbps=rate_mbps)
    return PathProfile(up=spec, down=spec)


# Two paths on one machine: the client binds 127.0.0.1 and 127.0.0.2; the relay
# shapes each like a real access link (one-way delay, random loss, rate).
PATH_NAMES = {WIFI: "wifi", CELLULAR: "cellular"}
PROFILES = {
    WIFI: link(delay_ms=4, loss=0.005, rate_mbps=40),
    CELLULAR: link(delay_ms=15, loss=0.01, rate_mbps=15),
}


@dataclass(frozen=True, slots=True)
class SLOClass:
    name: str
    share: float
    slo: SLO
    payload: int
    users: int  # distinct affinity keys (cache working set)


CLASSES = (
    SLOClass("interactive", 0.5, SLO(deadline_ms=40, urgency=1, idempotent=True), 200, 200),
    SLOClass("standard", 0.35, SLO(deadline_ms=150, urgency=3, idempotent=True), 2_000, 400),
    SLOClass("bulk", 0.15, SLO(urgency=6), 32_000, 50),
)


@dataclass(frozen=True, slots=True)
class Setup:
    key: str
    label: str
    paths: tuple[str, ...]
    scheduler: str


SETUPS = (
    Setup("wifi", "Wi-Fi alone", (WIFI,), "deadline"),
    Setup("lowest-rtt", "Wi-Fi + cellular, lowest-RTT (old)", (WIFI, CELLULAR), "lowest-rtt"),
    Setup("deadline", "Wi-Fi + cellular, deadline (new)", (WIFI, CELLULAR), "deadline"),
)
SETUP_KEYS = tuple(s.key for s in SETUPS)


@dataclass(frozen=True, slots=True)
class Event:
    """Something the relay does to a path `at` seconds into the workload."""

    at: float
    action: str  # "blackhole", "restore" or "profile"
    ip: str
    profile: PathProfile | None = None


@dataclass(frozen=True, slots=True)
class Sample:
    sent_at: float  # seconds into the workload
    cls: str
    met: bool
    latency_ms: float | None  # None: failed


@dataclass(slots=True)
class Results:
    setup: Setup
    samples: list[Sample] = field(default_factory=list)
    by_backend: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: Counter[str] = field(default_factory=Counter)
    paths: list[PathStats] = field(default_factory=list)
    fec: str = ""
    edge: EdgeStats = field(default_factory=lambda: EdgeStats(cache={}))
    alive: bool = True  # the session outlived the workload

    def met_share(self, cls: str, since: float = 0.0, until: float = float("inf")) -> float:
        picked = [s for s in self.samples if s.cls == cls and since <= s.sent_at < until]
        return sum(s.met for s in picked) / len(picked) if picked else float("nan")

    def latencies(self, cls: str) -> list[float]:
        return [s.latency_ms for s in self.samples if s.cls == cls and s.latency_ms is not None]

    @property
    def redundant_share(self) -> float:
        """Edge bytes sent twice (urgent copies, re-injected packets) / all edge bytes."""
        edge = self.edge
        if not edge.bytes_sent:
            return 0.0
        per_packet = edge.bytes_sent / max(1, edge.packets_sent)
        redundant = edge.copy_bytes + edge.packets_reinjected * per_packet
        return redundant / edge.bytes_sent


Workload = Callable[[Session, "Results"], Awaitable[None]]


async def run_setup(
    setup: Setup,
    workload: Workload,
    *,
    seed: int,
    profiles: Mapping[str, PathProfile] = PROFILES,
    events: Sequence[Event] = (),
    fec: bool = True,
) -> Results:
    """One run of `workload` over `setup`'s paths, with fresh servers; `events` change
    the paths on a schedule (seconds from the workload's start)."""
    results = Results(setup)
    with demo_stack(profiles, scheduler=setup.scheduler, seed=seed) as stack:
        async with connect(
            "127.0.0.1",
            stack.relay_port,
            ca_file=stack.ca_file,
            paths=list(setup.paths),
            fec=FecConfig() if fec else None,
            scheduler=setup.scheduler,
        ) as session:
            await _wait_paths(session, len(setup.paths))
            events_task = asyncio.create_task(_play(stack, events))
            try:
                await workload(session, results)
            finally:
                events_task.cancel()
            results.paths = session.paths
            results.fec = _fec_report(session)
            results.alive = not session.closed
            results.edge = stack.edge_stats()
    return results


def demo_workload(duration: float, rate: float, seed: int) -> Workload:
    """The demo's open loop: `rate` requests per second of the three CLASSES."""
    return functools.partial(
        _workload, duration=duration, rate=rate, rng=random.Random(seed), classes=CLASSES
    )


async def _wait_paths(session: Session, count: int, timeout: float = 5.0) -> None:
    """Until `count` paths are active (the extra ones open after the handshake)."""
    end = time.monotonic() + timeout
    while sum(p.state == "active" for p in session.paths) < count and time.monotonic() < end:
        await asyncio.sleep(0.02)


async def _play(stack: DemoStack, events: Sequence[Event]) -> None:
    start = time.monotonic()
    for event in sorted(events, key=lambda e: e.at):
        await asyncio.sleep(max(0.0, start + event.at - time.monotonic()))
        if event.action == "profile":
            stack.relay.send(event.action, event.ip, event.profile)
        else:
            stack.relay.send(event.action, event.ip)


async def _workload(
    session: Session,
    results: Results,
    *,
    duration: float,
    rate: float,
    rng: random.Random,
    classes: Sequence[SLOClass],
) -> None:
    tasks: set[asyncio.Task[None]] = set()
    start = time.monotonic()
    end = start + duration
    while time.monotonic() < end:
        cls = rng.choices(classes, weights=[c.share for c in classes])[0]
        # Zipf-like popularity: a few hot users, a long tail of cold ones.
        user = int(cls.users ** rng.random())
        task = asyncio.create_task(
            _one(session, results, cls, f"{cls.name}-{user}", time.monotonic() - start)
        )
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        await asyncio.sleep(rng.expovariate(rate))
    if tasks:
        await asyncio.wait(tasks)


async def _one(
    session: Session, results: Results, cls: SLOClass, user: str, sent_at: float
) -> None:
    slo = SLO(affinity=user).merged(cls.slo)
    request = session.request("api", b"x" * cls.payload, slo=slo)
    response = await record(results, cls.name, sent_at, cls.slo.deadline_ms, request)
    if response is not None:
        results.by_backend[response.backend or "?"].append(response.latency_ms)


async def record(
    results: Results,
    cls: str,
    sent_at: float,
    deadline_ms: int | None,
    request: Awaitable[Response],
) -> Response | None:
    """Await one request and note how it went (a failure is a missed deadline)."""
    try:
        response = await request
    except NetSchedError as exc:
        results.errors[type(exc).__name__] += 1
        results.samples.append(Sample(sent_at, cls, False, None))
        return None
    met = deadline_ms is None or response.latency_ms <= deadline_ms
    results.samples.append(Sample(sent_at, cls, met, response.latency_ms))
    return response


async def run_demo(
    duration: float = 8.0, rate: float = 150.0, seed: int = 1, only: Sequence[str] | None = None
) -> int:
    setups = [s for s in SETUPS if only is None or s.key in only]
    runs = []
    for setup in setups:
        print(
            f"demo: {setup.label}: client -> relay -> edge -> 3 backends, "
            f"{rate:.0f} req/s for {duration:g} s ...",
            flush=True,
        )
        workload = demo_workload(duration, rate, seed)
        runs.append(await run_setup(setup, workload, seed=seed))
    print("\n" + compare(runs))
    last = runs[-1]
    print(f"\nThe last run ({last.setup.label}) in detail\n")
    print(_backend_report(last))
    print("\n" + _path_report(last))
    print("\n" + _edge_path_report(last))
    print("\n" + last.fec)
    return 0 if all(r.samples and r.alive for r in runs) else 1


def compare(runs: Sequence[Results]) -> str:
    """Per SLO class and setup: deadlines met, p50 and p99; then redundancy and errors."""
    headers = ["class", "deadline"] + [f"{r.setup.label}: met, p50/p99 ms" for r in runs]
    rows = []
    for cls in CLASSES:
        deadline = f"{cls.slo.deadline_ms} ms" if cls.slo.deadline_ms else "none"
        cells = []
        for run in runs:
            lat = run.latencies(cls.name)
            cells.append(
                f"{100 * run.met_share(cls.name):.1f}%  "
                f"{percentile(lat, 50):.0f}/{percentile(lat, 99):.0f}"
            )
        rows.append([cls.name, deadline, *cells])
    lines = ["Per SLO class, same workload and seed", "", table(headers, rows), ""]
    for run in runs:
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(run.errors.items())) or "no errors"
        lines.append(
            f"{run.setup.label}: {len(run.samples)} requests, {errors}; edge bytes sent twice "
            f"(urgent copies, re-injection): {100 * run.redundant_share:.1f}%"
        )
    return "\n".join(lines)


def _backend_report(results: Results) -> str:
    total = sum(len(v) for v in results.by_backend.values()) or 1
    rows = []
    for name, *_ in BACKENDS:
        lat = results.by_backend.get(name, [])
        hits, misses = results.edge.cache.get(name, (0, 0))
        rows.append(
            [
                name,
                len(lat),
                percentile(lat, 50),
                percentile(lat, 99),
                f"{100 * len(lat) / total:.0f}%",
                f"{100 * hits / max(1, hits + misses):.0f}%",
            ]
        )
    headers = ["backend", "requests", "p50", "p99", "choices", "cache hits"]
    return "Per backend (latency ms, seen by the client)\n\n" + table(headers, rows)


def _path_report(results: Results) -> str:
    rows = []
    for path in results.paths:
        # By the address the path was opened from; one not known is not guessed.
        host = path.local[0] if path.local else "?"
        spec = PROFILES[host].up if host in PROFILES else LinkSpec()
        link = f"{spec.delay_ms:g} ms, {spec.loss:.1%}, {spec.rate_mbps or 0:g} Mbit/s"
        rtt = path.rtt_ms if path.rtt_ms is not None else float("nan")
        rows.append(
            [
                f"{path.path_id} {PATH_NAMES.get(host, '?')}",
                path.state,
                link,
                rtt,
                f"{path.bytes_sent / 1e6:.2f}",
                f"{path.bytes_received / 1e6:.2f}",
                path.packets_lost,
                _by_urgency(path.stream_bytes),
                _decisions(path.decisions),
            ]
        )
    headers = ["path", "state", "link (one way)", "rtt ms", "MB sent", "MB recv", "lost"]
    headers += ["stream kB sent, by urgency", "scheduler (16 kB handed out, by reason)"]
    return "Per path (client side: requests and uploads)\n\n" + table(headers, rows)


def _edge_path_report(results: Results) -> str:
    """The responses' side: what the edge's scheduler put on each path, per class."""
    per_path: dict[int, dict[int, int]] = defaultdict(dict)
    for (path_id, urgency), n in results.edge.stream_bytes.items():
        per_path[path_id][urgency] = n
    rows = [[path_id, _by_urgency(per_path[path_id])] for path_id in sorted(per_path)]
    headers = ["path", "stream kB sent, by urgency"]
    return "Per path (edge side: responses)\n\n" + table(headers, rows)


def _by_urgency(stream_bytes: Mapping[int, int]) -> str:
    """The classes' data on a path: interactive is urgency 1, standard 3, bulk 6."""
    return ", ".join(f"u{u} {n / 1000:.0f}" for u, n in sorted(stream_bytes.items())) or "-"


def _decisions(decisions: Mapping[str, int]) -> str:
    per_flush = {"data", "stalled", "validating", "backup-standby", "backup-in-use"}
    shown = {k: v for k, v in decisions.items() if k not in per_flush}
    return ", ".join(f"{k} {v}" for k, v in sorted(shown.items())) or "-"


def _fec_report(session: Session) -> str:
    stats = session.fec_stats
    if not session.fec_enabled or stats is None:
        return "FEC: offered by the client, not negotiated by the edge"
    return (
        f"FEC: {stats.symbols_recovered} lost packets recovered from "
        f"{stats.repairs_received} repairs ({stats.symbols_received} protected packets "
        f"received); {stats.capped_decisions} requests capped"
    )
