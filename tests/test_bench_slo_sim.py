"""Issue #11's blackout goal in virtual time (bench/bench_slo_sim.py): the relay's
impairment model, the SDK's and the edge's protocol objects, no host noise."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import bench_slo_sim as bench

from netsched_edge.demo import SETUPS


@pytest.mark.timeout(240)
def test_a_second_path_carries_the_deadlines_through_a_wifi_blackout() -> None:
    scenario = bench.SCENARIOS["wifi-blackout"]
    rows = {s.key: bench.run_one(s, scenario, seed=1, duration=6.0) for s in SETUPS}
    alone, old, new = rows["wifi"], rows["lowest-rtt"], rows["deadline"]
    # Wi-Fi alone meets nothing while it is dark; the deadline policy moves urgent data
    # to cellular within a few RTTs and meets most of it; the old policy, far less.
    assert alone.met_outage == 0.0
    assert new.met_outage >= 0.6 and new.met_outage >= old.met_outage + 0.15, rows
    assert new.met >= alone.met + 0.15, rows
    assert new.met_after >= 0.8, rows  # Wi-Fi is used again once it answers (~50 samples)
    print("\n" + bench.report(list(rows.values())))
