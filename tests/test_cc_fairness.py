"""bench/bench_cc.py's fairness rows: Jain's index and the share ratio, and a short real
run of a coupled multipath connection against a NewReno flow through one relay path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import bench_cc as bench


def _flow(cc: str, mbps: float) -> bench.Flow:
    return bench.Flow(cc, 0, (), int(mbps * 1e6 / 8), 1.0)


def test_jain_index_and_ratio() -> None:
    pair = bench.PAIRS["bbr/cubic"]
    even = bench.Fairness(pair, (_flow("bbr", 9.0), _flow("cubic", 9.0)))
    assert even.ratio == pytest.approx(1.0) and even.jain == pytest.approx(1.0)
    skewed = bench.Fairness(pair, (_flow("bbr", 5.0), _flow("cubic", 15.0)))
    # (5 + 15)^2 / (2 * (25 + 225)) = 400 / 500
    assert skewed.ratio == pytest.approx(1 / 3) and skewed.jain == pytest.approx(0.8)
    starved = bench.Fairness(pair, (_flow("bbr", 10.0), _flow("cubic", 0.0)))
    assert starved.jain == pytest.approx(0.5)


@pytest.mark.timeout(90)
def test_a_coupled_connection_and_a_reno_flow_share_one_bottleneck() -> None:
    _, (share,) = bench.run_all((), (), 6.0, 10.0, pairs=("lia/reno",), warmup_s=1.0, fair_s=3.0)
    coupled, reno = share.flows
    assert (coupled.cc, coupled.coupled_paths, reno.cc) == ("lia", 2, "reno")
    assert len(coupled.path_bytes) == 2  # both paths carried data
    assert coupled.goodput_mbps > 1.0 and reno.goodput_mbps > 1.0
    # Both flows, all three paths, through the one 20 Mbit/s token bucket.
    assert coupled.goodput_mbps + reno.goodput_mbps < bench.RATE_MBPS * 1.02
