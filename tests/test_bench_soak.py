"""A small run of bench/bench_soak.py: real edge, backends and clients in their own processes.

Twenty connections (netsched/1 and h3) for three seconds: every request gets
its expected outcome, none is lost, and the edge gives back every backend slot,
request and connection once the clients leave.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import bench_soak as bench


@pytest.mark.timeout(120)
def test_a_short_soak_loses_nothing_and_leaks_no_slot() -> None:
    options = bench.Options(
        connections=20, duration_s=3.0, clients=2, think_ms=200, settle_s=1.0, quiet=True
    )
    results = bench.run(options)
    report = bench.report(results)
    stats = results.stats
    assert stats.connections == 20 and stats.connect_failed == 0, report
    assert stats.sent > 40 and stats.lost == 0, report
    assert not stats.failed, report
    assert stats.succeeded == stats.sent, report
    assert {kind.split(".")[0] for kind in stats.by_kind} == {"native", "h3"}, report
    assert results.unreported_clients == 0 and results.clients_closed_cleanly == 2, report
    assert results.leaked_slots == 0, report
    assert results.edge_end["requests"] == 0, report
    assert results.edge_end["connections"] == 0, report
    assert results.metrics_responses is not None and results.metrics_responses > 0, report
    assert 0 < results.rss_start_mb <= results.rss_peak_mb, report
