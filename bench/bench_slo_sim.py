"""The SLO scheduler's comparison (bench_slo.py) in virtual time: no host noise.

The same scenarios (`bench_slo.SCENARIOS`: the demo's Wi-Fi and cellular
profiles, bursty loss, a 2 s blackout, jitter, a long RTT), the same setups
(Wi-Fi alone; both paths with the lowest-RTT policy; both with the deadline
policy) and the same workload shape: interactive 1 KB requests at 50 req/s
(Poisson, 40 ms deadline, urgency 1) answered 1 ms after they arrive, beside
four back-to-back 256 KiB downloads (urgency 6). Client and server are the
protocol objects the SDK and the edge drive (`NetSchedConnection`), joined
by `netsched_lab.memory` through the relay's impairment model with a fake
clock: what is measured is the scheduling, not the CPU (which on this
2-core host, with client, relay and edge in Python, decides much of
bench_slo's spread: there the edge's loop lags 10-15 ms at this load). The
server sends with the edge's default controller (BBR), the client with the
SDK's (reno). A seed replays exactly (`netsched_lab.seeded`: the same
datagrams at the same instants), so setups compare pairwise per seed;
`--seeds` runs several.

    python bench/bench_slo_sim.py [--duration 8] [--seeds 1 2 3] [--scenario NAME ...]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aioquic.quic.events import HandshakeCompleted, StreamDataReceived
from bench_slo import OUTAGE, SCENARIOS, Scenario

from netsched_client.proto.multipath import events as mpe
from netsched_edge.config import EDGE_CONGESTION_CONTROL
from netsched_edge.demo import CELLULAR, SETUPS, WIFI, Setup
from netsched_edge.report import percentile, table
from netsched_lab import memory
from netsched_lab.memory import C1, C2, SERVER, ImpairedLink, Net
from netsched_lab.seeded import fixed_configurations, seeded_randomness

DEADLINE_S = 0.040
RATE = 50.0  # interactive requests per second
BACKEND_S = 0.001
BULK_SIZE = 256 * 1024
BULK_STREAMS = 4
STEP_S = 0.001  # the workload looks at the connections this often (virtual time)
ADDRESSES = {WIFI: C1, CELLULAR: C2}


@dataclass(slots=True)
class Workload:
    """Requests in flight and what became of them, by client stream ID."""

    net: Net
    start: float
    asked: dict[int, float] = field(default_factory=dict)  # interactive: when sent
    bulk: set[int] = field(default_factory=set)
    due: dict[int, float] = field(default_factory=dict)  # server: when to answer
    bulk_done: int = 0
    _seen: int = 0  # server events already looked at

    def ask(self, interactive: bool) -> None:
        client = self.net.client
        sid = client.get_next_available_stream_id()
        if interactive:
            client.set_stream_priority(sid, self.net.now + DEADLINE_S, 1)
            self.asked[sid] = self.net.now
        else:
            self.bulk.add(sid)
        client.send_stream_data(sid, bytes(1024 if interactive else 16), end_stream=True)

    def serve(self) -> None:
        """The server answers each request BACKEND_S after its last byte, as the edge
        would: deadline from when it arrived, urgency from its class."""
        events = self.net.server_events
        for event in events[self._seen :]:
            if isinstance(event, StreamDataReceived) and event.end_stream:
                self.due[event.stream_id] = self.net.now + BACKEND_S
        self._seen = len(events)
        server = self.net.server
        for sid, at in list(self.due.items()):
            if at > self.net.now:
                continue
            del self.due[sid]
            if sid in self.bulk:
                server.set_stream_priority(sid, None, 6)
                server.send_stream_data(sid, bytes(BULK_SIZE), end_stream=True)
            else:
                server.set_stream_priority(sid, at - BACKEND_S + DEADLINE_S, 1)
                server.send_stream_data(sid, bytes(1024), end_stream=True)

    def restart_bulk(self) -> None:
        for sid in [s for s in self.bulk if s in self.net.stream_ends]:
            self.bulk.discard(sid)
            self.bulk_done += 1
            self.ask(interactive=False)

    def latencies(self, since: float = 0.0, until: float = float("inf")) -> list[float]:
        """Interactive latencies of requests sent in [since, until) seconds into the run
        (a request never answered counts as infinitely late)."""
        ends = self.net.stream_ends
        return [
            ends.get(sid, float("inf")) - at
            for sid, at in self.asked.items()
            if since <= at - self.start < until
        ]


@dataclass(frozen=True, slots=True)
class Row:
    scenario: str
    setup: Setup
    met: float
    met_outage: float
    met_after: float
    p99_ms: float
    bulk_mbps: float
    copies: float  # share of server bytes that were urgent copies
    cpu: float  # CPU seconds of both connections (and this loop) per second of traffic


def _met(latencies: Sequence[float]) -> float:
    return sum(x <= DEADLINE_S for x in latencies) / max(1, len(latencies))


def connect(setup: Setup, scenario: Scenario, seed: int) -> Net:
    configs = fixed_configurations()
    configs[1].congestion_control_algorithm = EDGE_CONGESTION_CONTROL  # as the edge sends
    links = {
        address: ImpairedLink(scenario.profiles[host], seed + 10 * n)
        for n, (host, address) in enumerate(ADDRESSES.items())
    }
    net = memory.make_net(*configs, links=dict(links), scheduler=setup.scheduler)
    if not net.run(2.0, until=lambda: bool(net.events("client", HandshakeCompleted))):
        raise RuntimeError("no handshake")
    net.run(0.2)
    if CELLULAR in setup.paths:
        net.client.open_path(C2, SERVER, net.now)
        if not net.run(2.0, until=lambda: bool(net.events("client", mpe.PathValidated))):
            raise RuntimeError("the second path was not validated")
    return net


def run_one(
    setup: Setup,
    scenario: Scenario,
    seed: int,
    duration: float,
    at_end: Callable[[Net], None] | None = None,
) -> Row:
    """One seeded run: the same seed replays the same packets (netsched_lab.seeded);
    `at_end` sees the connections once the traffic stops (for tests)."""
    with seeded_randomness(seed):
        return _run(setup, scenario, seed, duration, at_end)


def _run(
    setup: Setup,
    scenario: Scenario,
    seed: int,
    duration: float,
    at_end: Callable[[Net], None] | None,
) -> Row:
    net = connect(setup, scenario, seed)
    cpu_start = time.process_time()
    work = Workload(net, net.now)
    rng = random.Random(seed)
    events = sorted(scenario.events, key=lambda e: e.at)
    for _ in range(BULK_STREAMS):
        work.ask(interactive=False)
    next_ask = net.now
    while (elapsed := net.now - work.start) < duration:
        while events and events[0].at <= elapsed:
            event = events.pop(0)
            link = net.links[ADDRESSES[event.ip]]
            assert isinstance(link, ImpairedLink)
            link.set_blackhole(event.action == "blackhole")
        if net.now >= next_ask:
            work.ask(interactive=True)
            next_ask += rng.expovariate(RATE)
        work.serve()
        work.restart_bulk()
        net.run(STEP_S)
    cpu = (time.process_time() - cpu_start) / duration
    if at_end is not None:
        at_end(net)
    for _ in range(int(0.5 / STEP_S)):  # the last requests' answers (served as before)
        work.serve()
        net.run(STEP_S)
    late = [x for x in work.latencies(until=duration)]
    sent = sum(p.stats.bytes_sent for p in net.server.paths.values())
    return Row(
        scenario=scenario.name,
        setup=setup,
        met=_met(late),
        met_outage=_met(work.latencies(*OUTAGE)),
        met_after=_met(work.latencies(OUTAGE[1], duration)),
        p99_ms=1000 * percentile(late, 99),
        bulk_mbps=work.bulk_done * BULK_SIZE * 8 / duration / 1e6,
        copies=net.server.urgent_copies.copy_bytes / max(1, sent),
        cpu=cpu,
    )


def _mean_range(values: Sequence[float], scale: float = 1.0) -> str:
    values = [v * scale for v in values]
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def report(rows: Sequence[Row]) -> str:
    headers = ["scenario", "setup", "interactive met %", "during outage", "after outage"]
    headers += ["p99 ms", "bulk Mbit/s", "copies %", "CPU s/s"]
    out = []
    for name in dict.fromkeys(r.scenario for r in rows):
        outage = name == "wifi-blackout"
        for setup in SETUPS:
            runs = [r for r in rows if r.scenario == name and r.setup == setup]
            if not runs:
                continue
            out.append(
                [
                    name,
                    setup.label,
                    _mean_range([r.met for r in runs], 100),
                    _mean_range([r.met_outage for r in runs], 100) if outage else "",
                    _mean_range([r.met_after for r in runs], 100) if outage else "",
                    _mean_range([r.p99_ms for r in runs]),
                    _mean_range([r.bulk_mbps for r in runs]),
                    _mean_range([r.copies for r in runs], 100),
                    _mean_range([r.cpu for r in runs]),
                ]
            )
    note = "mean (min-max) over the seeds; virtual time: the protocol's decisions, no CPU cost"
    return table(headers, out) + "\n\n" + note


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    parser.add_argument("--setup", action="append", choices=[s.key for s in SETUPS])
    args = parser.parse_args(argv)
    setups = [s for s in SETUPS if args.setup is None or s.key in args.setup]
    rows = []
    for name in args.scenario or list(SCENARIOS):
        for seed in args.seeds:
            for setup in setups:
                row = run_one(setup, SCENARIOS[name], seed, args.duration)
                rows.append(row)
                print(
                    f"{name:14} seed {seed} {setup.label:36} met {100 * row.met:5.1f}% "
                    f"p99 {row.p99_ms:6.1f} ms bulk {row.bulk_mbps:5.1f} Mbit/s "
                    f"CPU {row.cpu:4.2f} s/s",
                    flush=True,
                )
    print()
    print(report(rows))


if __name__ == "__main__":
    main()
