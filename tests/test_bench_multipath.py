"""A small run of bench/bench_multipath.py: every section produces its rows, no byte is lost."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import bench_multipath as bench


@pytest.mark.timeout(60)
def test_small_run_reports_every_section() -> None:
    options = bench.Options(
        size_mb=1, failover_size_mb=2, failover_reps=1, cpu_size_mb=1, timeout_s=30
    )
    results = bench.run(options)

    assert [(r.scenario, len(r.paths)) for r in results.aggregation] == [
        ("symmetric", 1),
        ("symmetric", 2),
        ("asymmetric", 1),
        ("asymmetric", 2),
    ]
    for row in results.aggregation:
        assert row.lost == 0
        assert 0 < row.goodput_mbps < row.rate_mbps * 1.1  # the relay's shaping holds
        assert sum(row.shares) == pytest.approx(1.0)
    two_paths = [r for r in results.aggregation if len(r.paths) == 2]
    assert all(min(r.shares) > 0.05 for r in two_paths), two_paths  # both paths carried data

    (failover,) = results.failover
    assert failover.blackholed in (bench.PATH_A, bench.PATH_B)
    assert failover.lost == 0
    # An outage is not death: the blackholed path stalls and is probed, not abandoned
    # (that takes dead_after_s of silence, longer than this download).
    assert failover.abandon_seen_ms is None
    assert failover.resume_ms >= failover.stall_ms >= 0

    assert [len(r.paths) for r in results.cpu] == [1, 2]
    # The edge's CPU comes from /proc in clock ticks (10 ms): a 1 MiB loopback transfer can
    # take less than one; the client's process_time is finer.
    assert all(r.lost == 0 and r.client_s_per_gb > 0 and r.edge_s_per_gb >= 0 for r in results.cpu)

    text = bench.report(results)
    for heading in ("1. Aggregation", "2. Failover", "3. CPU per GB"):
        assert heading in text
