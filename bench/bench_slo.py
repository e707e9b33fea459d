"""The SLO scheduler (issue #11): one path against two, old policy against new, same run.

Workload, as a user would run it: interactive 1 KB requests (40 ms deadline,
urgency 1) at 50 req/s, Poisson, to a backend that answers in 1 ms, beside
four back-to-back 256 KiB bulk downloads (no deadline, urgency 6). The edge
(with its backends) and the path lab relay run in processes of their own; the
client binds Wi-Fi (127.0.0.1) and cellular (127.0.0.2).

Setups: Wi-Fi alone; both paths with the earlier lowest-RTT scheduler; both
with the deadline scheduler. Scenarios (the demo's links unless said):
  clean          Wi-Fi 4 ms one way, 0.5 % loss, 40 Mbit/s; cellular 15 ms, 1 %, 15 Mbit/s
  wifi-bursty    Wi-Fi loses 5 % in bursts of ~4 packets (Gilbert-Elliott), both ways
  wifi-blackout  Wi-Fi drops everything from 3 s to 5 s
  cell-jitter    cellular delay 15 ± 12 ms
  long-rtt       cellular 50 ms one way (100 ms RTT): it should carry bulk only

Each (scenario, setup) runs `--reps` times, interleaved; the table gives the
median and the spread (min-max) of the runs. Interactive deadline-met share
over the whole run, and for wifi-blackout during the outage and after it;
p99 latency; bulk goodput; the share of edge bytes sent twice (urgent copies,
re-injection); paths that were abandoned; whether the connection survived.

    python bench/bench_slo.py [--duration 10] [--reps 3] [--scenario NAME ...]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from netsched_client import SLO, NetSchedError, Session
from netsched_edge.demo import (
    CELLULAR,
    PROFILES,
    SETUPS,
    WIFI,
    Event,
    Results,
    Sample,
    Setup,
    Workload,
    record,
    run_setup,
)
from netsched_edge.demo_stack import FILES
from netsched_edge.report import percentile, table
from netsched_lab.impairment import GilbertElliott, PathProfile

INTERACTIVE = SLO(deadline_ms=40, urgency=1, idempotent=True)
BULK = SLO(urgency=6, idempotent=True)
BULK_FILE = "bulk.bin"
BULK_SIZE = FILES[BULK_FILE]
OUTAGE = (3.0, 5.0)  # wifi-blackout: seconds into the run


def _both(profile: PathProfile, **changes: object) -> PathProfile:
    """The profile with the same changes to both directions."""
    up = replace(profile.up, **changes)  # type: ignore[arg-type]
    return PathProfile(up=up, down=replace(profile.down, **changes))  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    profiles: dict[str, PathProfile]
    events: tuple[Event, ...] = ()


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("clean", dict(PROFILES)),
        Scenario(
            "wifi-bursty",
            {
                **PROFILES,
                WIFI: _both(PROFILES[WIFI], bursty=GilbertElliott.from_loss_and_burst(0.05, 4)),
            },
        ),
        Scenario(
            "wifi-blackout",
            dict(PROFILES),
            (Event(OUTAGE[0], "blackhole", WIFI), Event(OUTAGE[1], "restore", WIFI)),
        ),
        Scenario("cell-jitter", {**PROFILES, CELLULAR: _both(PROFILES[CELLULAR], jitter_ms=12.0)}),
        Scenario("long-rtt", {**PROFILES, CELLULAR: _both(PROFILES[CELLULAR], delay_ms=50.0)}),
    )
}


async def _interactive(session: Session, results: Results, duration: float, seed: int) -> None:
    rng = random.Random(seed)
    start = time.monotonic()
    tasks: set[asyncio.Task[None]] = set()
    while (now := time.monotonic()) < start + duration:
        task = asyncio.create_task(_ask(session, results, now - start))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        await asyncio.sleep(rng.expovariate(50.0))
    if tasks:
        await asyncio.wait(tasks)


async def _ask(session: Session, results: Results, sent_at: float) -> None:
    request = session.request("echo", bytes(1024), slo=INTERACTIVE)
    await record(results, "interactive", sent_at, INTERACTIVE.deadline_ms, request)


async def _bulk(session: Session, results: Results, duration: float) -> None:
    start = time.monotonic()
    while (now := time.monotonic()) < start + duration:
        try:
            response = await session.request(
                "files", slo=BULK, meta={"method": "GET", "path": "/" + BULK_FILE}
            )
        except NetSchedError as exc:
            results.errors[type(exc).__name__] += 1
            await asyncio.sleep(0.05)
            continue
        ok = len(response.body) == BULK_SIZE
        results.samples.append(Sample(now - start, "bulk", ok, response.latency_ms))


def workload(duration: float, seed: int) -> Workload:
    async def run(session: Session, results: Results) -> None:
        await asyncio.gather(
            _interactive(session, results, duration, seed),
            *(_bulk(session, results, duration) for _ in range(4)),
        )

    return run


@dataclass(frozen=True, slots=True)
class Row:
    scenario: str
    setup: Setup
    met: float  # interactive deadline-met share, whole run
    met_outage: float
    met_after: float
    p99_ms: float
    bulk_mbps: float
    redundant: float
    abandoned: int
    alive: bool


def measure(results: Results, scenario: Scenario, duration: float) -> Row:
    lat = results.latencies("interactive")
    bulk = [s for s in results.samples if s.cls == "bulk" and s.met]
    abandoned = sum(p.state in ("closing", "closed") for p in results.paths)
    return Row(
        scenario=scenario.name,
        setup=results.setup,
        met=results.met_share("interactive"),
        met_outage=results.met_share("interactive", *OUTAGE),
        met_after=results.met_share("interactive", OUTAGE[1]),
        p99_ms=percentile(lat, 99),
        bulk_mbps=len(bulk) * BULK_SIZE * 8 / duration / 1e6,
        redundant=results.redundant_share,
        abandoned=abandoned,
        alive=results.alive,
    )


def _spread(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> str:
    values = [v * scale for v in values]
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def report(rows: Sequence[Row]) -> str:
    headers = [
        "scenario",
        "setup",
        "interactive met %",
        "during outage",
        "after outage",
        "p99 ms",
        "bulk Mbit/s",
        "sent twice %",
        "abandoned",
        "alive",
    ]
    out = []
    for name in dict.fromkeys(r.scenario for r in rows):
        for setup in SETUPS:
            runs = [r for r in rows if r.scenario == name and r.setup == setup]
            if not runs:
                continue
            outage = name == "wifi-blackout"
            out.append(
                [
                    name,
                    setup.label,
                    _spread([r.met for r in runs], 100),
                    _spread([r.met_outage for r in runs], 100) if outage else "",
                    _spread([r.met_after for r in runs], 100) if outage else "",
                    _spread([r.p99_ms for r in runs], digits=0),
                    _spread([r.bulk_mbps for r in runs]),
                    _spread([r.redundant for r in runs], 100),
                    sum(r.abandoned for r in runs),
                    f"{sum(r.alive for r in runs)}/{len(runs)}",
                ]
            )
    note = "median (min-max) over the runs; bulk: 4 back-to-back 256 KiB downloads"
    return table(headers, out) + "\n\n" + note


async def run(scenarios: Sequence[str], reps: int, duration: float, seed: int) -> list[Row]:
    rows = []
    for rep in range(reps):
        for name in scenarios:
            scenario = SCENARIOS[name]
            for setup in SETUPS:
                results = await run_setup(
                    setup,
                    workload(duration, seed + rep),
                    seed=seed + rep,
                    profiles=scenario.profiles,
                    events=scenario.events,
                )
                row = measure(results, scenario, duration)
                rows.append(row)
                print(
                    f"rep {rep + 1} {name:14} {setup.label:38} met {100 * row.met:5.1f}% "
                    f"p99 {row.p99_ms:5.0f} ms bulk {row.bulk_mbps:5.1f} Mbit/s "
                    f"alive {row.alive}" + ("" if row.alive else f" errors {dict(results.errors)}"),
                    flush=True,
                )
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    args = parser.parse_args(argv)
    scenarios = args.scenario or list(SCENARIOS)
    rows = asyncio.run(run(scenarios, args.reps, args.duration, args.seed))
    print()
    print(report(rows))


if __name__ == "__main__":
    main()
