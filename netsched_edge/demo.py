"""`netsched-edge demo`: client → edge → three backends, on an embedded default.

Starts three built-in HTTP backends of different speed and warmth, an edge with
a generated certificate in front of them, and a client that sends an open-loop
mix of requests with different SLOs; then prints what each backend served and
how each SLO class fared, and what FEC recovered on the lossy paths (when the
edge negotiates it).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from netsched_client import SLO, NetSchedError, Session, connect
from netsched_client.proto.fec_link import FecConfig
from netsched_lab.impairment import LinkSpec, PathProfile
from netsched_lab.relay import UdpRelay

from .config import BackendConfig, EdgeConfig, ServiceConfig
from .demo_backends import DemoHTTPServer
from .report import percentile, table
from .server import EdgeServer

# name, base latency ms, extra latency on a cache miss ms, cache entries
BACKENDS = (("fast", 2.0, 20.0, 256), ("steady", 6.0, 25.0, 128), ("slow", 15.0, 40.0, 32))


def _link(delay_ms: float, loss: float, rate_mbps: float) -> PathProfile:
    spec = LinkSpec(delay_ms=delay_ms, jitter_ms=delay_ms / 10, loss=loss, rate_mbps=rate_mbps)
    return PathProfile(up=spec, down=spec)


# Two paths on one machine: the client binds 127.0.0.1 and 127.0.0.2; the relay
# shapes each like a real access link (one-way delay, random loss, rate).
PATHS = {
    "127.0.0.1": ("wifi", _link(delay_ms=4, loss=0.005, rate_mbps=40)),
    "127.0.0.2": ("cellular", _link(delay_ms=15, loss=0.01, rate_mbps=15)),
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


@dataclass(slots=True)
class Results:
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    by_backend: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    met: Counter[str] = field(default_factory=Counter)
    sent: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


async def run_demo(
    duration: float = 10.0, rate: float = 150.0, seed: int = 1, single_path: bool = False
) -> int:
    servers = [DemoHTTPServer(n, base_ms=b, cold_ms=c, cache_size=s) for n, b, c, s in BACKENDS]
    ports = [await server.start() for server in servers]
    edge = EdgeServer(demo_config(ports))
    await edge.start()
    relay = UdpRelay(
        ("127.0.0.1", edge.port), profiles={ip: p for ip, (_, p) in PATHS.items()}, seed=seed
    )
    _, relay_port = await relay.start()
    locals_ = list(PATHS)[:1] if single_path else list(PATHS)
    results = Results()
    try:
        async with connect(
            "127.0.0.1",
            relay_port,
            ca_file=str(edge.ca_certificate),
            paths=locals_,
            fec=FecConfig(),
        ) as session:
            print(
                f"demo: client -> relay 127.0.0.1:{relay_port} -> edge 127.0.0.1:{edge.port} "
                f"({session.alpn}, {len(session.paths)} path(s)), "
                f"{rate:.0f} req/s for {duration:.0f} s ...",
                flush=True,
            )
            await _workload(session, results, duration, rate, random.Random(seed))
            path_table = _path_report(session)
            fec_line = _fec_report(session)
    finally:
        await relay.stop()
        await edge.close()
        for server in servers:
            await server.stop()
    print(_report(results, servers))
    print("\n" + path_table)
    print("\n" + fec_line)
    return 0 if sum(results.met.values()) > 0 else 1


def _path_report(session: Session) -> str:
    rows = []
    for path in session.paths:
        host = path.local[0] if path.local else next(iter(PATHS))
        name, profile = PATHS.get(host, ("?", PathProfile()))
        spec = profile.up
        link = f"{spec.delay_ms:g} ms, {spec.loss:.1%}, {spec.rate_mbps or 0:g} Mbit/s"
        rtt = path.rtt_ms if path.rtt_ms is not None else float("nan")
        rows.append(
            [
                f"{path.path_id} {name}",
                host,
                path.state,
                link,
                rtt,
                f"{path.bytes_sent / 1e6:.2f}",
                f"{path.bytes_received / 1e6:.2f}",
                path.packets_lost,
            ]
        )
    headers = ["path", "local", "state", "link (one way)", "rtt ms", "MB sent", "MB recv", "lost"]
    return "Per path (client side)\n\n" + table(headers, rows)


def _fec_report(session: Session) -> str:
    stats = session.fec_stats
    if not session.fec_enabled or stats is None:
        return "FEC: offered by the client, not negotiated by the edge"
    return (
        f"FEC: {stats.symbols_recovered} lost packets recovered from "
        f"{stats.repairs_received} repairs ({stats.symbols_received} protected packets "
        f"received); {stats.capped_decisions} requests capped"
    )


def demo_config(ports: list[int]) -> EdgeConfig:
    backends = tuple(
        BackendConfig(name=name, kind="http", host="127.0.0.1", port=port, max_in_flight=16)
        for (name, *_), port in zip(BACKENDS, ports, strict=True)
    )
    service = ServiceConfig(name="api", backends=backends, policy="warm-first", load_cap=6)
    return EdgeConfig(host="127.0.0.1", port=0, services=(service,), source="<demo>")


async def _workload(
    session: Session, results: Results, duration: float, rate: float, rng: random.Random
) -> None:
    tasks: set[asyncio.Task[None]] = set()
    end = time.monotonic() + duration
    while time.monotonic() < end:
        cls = rng.choices(CLASSES, weights=[c.share for c in CLASSES])[0]
        # Zipf-like popularity: a few hot users, a long tail of cold ones.
        user = int(cls.users ** rng.random())
        task = asyncio.create_task(_one(session, results, cls, f"{cls.name}-{user}"))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        await asyncio.sleep(rng.expovariate(rate))
    if tasks:
        await asyncio.wait(tasks)


async def _one(session: Session, results: Results, cls: SLOClass, user: str) -> None:
    results.sent[cls.name] += 1
    slo = SLO(affinity=user).merged(cls.slo)
    try:
        response = await session.request("api", b"x" * cls.payload, slo=slo)
    except NetSchedError as exc:
        results.errors[type(exc).__name__] += 1
        return
    results.latency[cls.name].append(response.latency_ms)
    results.by_backend[response.backend or "?"].append(response.latency_ms)
    if cls.slo.deadline_ms is None or response.latency_ms <= cls.slo.deadline_ms:
        results.met[cls.name] += 1


def _report(results: Results, servers: list[DemoHTTPServer]) -> str:
    total = sum(len(v) for v in results.by_backend.values()) or 1
    backend_rows = []
    for server in servers:
        lat = results.by_backend.get(server.name, [])
        hit = 100 * server.hits / max(1, server.hits + server.misses)
        backend_rows.append(
            [
                server.name,
                len(lat),
                percentile(lat, 50),
                percentile(lat, 99),
                f"{100 * len(lat) / total:.0f}%",
                f"{hit:.0f}%",
            ]
        )
    class_rows = []
    for cls in CLASSES:
        sent = results.sent[cls.name]
        lat = results.latency[cls.name]
        met = 100 * results.met[cls.name] / max(1, sent)
        deadline = f"{cls.slo.deadline_ms} ms" if cls.slo.deadline_ms else "none"
        class_rows.append(
            [cls.name, deadline, sent, f"{met:.1f}%", percentile(lat, 50), percentile(lat, 99)]
        )
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(results.errors.items())) or "none"
    return "\n\n".join(
        [
            "Per backend (latency ms, seen by the client)",
            table(["backend", "requests", "p50", "p99", "choices", "cache hits"], backend_rows),
            "Per SLO class",
            table(["class", "deadline", "requests", "met", "p50 ms", "p99 ms"], class_rows),
            f"Errors: {errors}",
        ]
    )
