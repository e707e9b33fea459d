"""Real UDP through the path lab relay: a NetSched server sending with reno, then with
bbr, to the SDK over 20 Mbit/s, 25 ms each way, 5 % random loss on the downlink (a
small run of bench/bench_cc.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import bench_cc as bench


@pytest.mark.timeout(90)
def test_bbr_finishes_at_5_percent_loss_where_reno_crawls() -> None:
    results = bench.run(("loss5",), ("reno", "bbr"), size_mb=2.0, timeout_s=8.0)
    reno, bbr = results
    assert (reno.cc, bbr.cc) == ("reno", "bbr")
    assert bbr.finished
    assert bbr.goodput_mbps > 4 * reno.goodput_mbps  # reno: ~1 Mbit/s, bbr: 10+
    assert bbr.goodput_mbps < 20.5  # the relay's shaping holds
    assert bbr.rtt_median_s is not None and bbr.rtt_median_s < 2 * bench.BASE_RTT_S
