"""Issue #11's blackout goal in virtual time (bench/bench_slo_sim.py): the relay's
impairment model, the SDK's and the edge's protocol objects, no host noise."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import bench_slo_sim as bench

from netsched_edge.demo import SETUPS
from netsched_lab.memory import Net


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


@pytest.mark.timeout(240)
def test_bbr_on_a_path_the_scheduler_holds_below_its_window_keeps_its_model() -> None:
    # Wi-Fi with bursty loss beside cellular: the deadline policy keeps Wi-Fi a few
    # datagrams below its window (room for deadline data). Its BBR never saw itself
    # window-limited, so the inflight_hi it cut at each lossy probe never grew back:
    # the model fell from 45 to 14-24 Mbit/s in 6 s and bulk to 28 Mbit/s, below
    # Wi-Fi alone (31-34). Rounds the scheduler held a path back are app-limited now.
    setup = next(s for s in SETUPS if s.key == "deadline")
    seen: dict[str, float] = {}

    def model(net: Net) -> None:
        controller = net.server._recovery_of(net.server.paths[0])._cc.controller
        seen["max_bw"] = controller.max_bw * 8

    row = bench.run_one(setup, bench.SCENARIOS["wifi-bursty"], 1, 6.0, at_end=model)
    assert seen["max_bw"] > 0.75 * 40e6, seen  # Wi-Fi's link: 40 Mbit/s
    assert row.bulk_mbps > 35.0, row
