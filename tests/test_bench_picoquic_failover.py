"""A small run of bench/bench_picoquic_failover.py: picoquic's client survives a cut path.

Needs the picoquic peer (`python -m interop setup --peers picoquic`, done here
when missing); without Python 3.12 or PyPI the test skips.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from interop.peers import SetupError, default_cache
from interop.peers.picoquic import Picoquic

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import bench_picoquic_failover as bench


@pytest.fixture(scope="module")
def picoquic_python() -> Path:
    peer = Picoquic(default_cache())
    if peer.status() is not None:
        try:
            peer.install(lambda line: None)
        except SetupError as exc:
            pytest.skip(f"picoquic peer unavailable: {exc}")
    return peer.home / "venv" / "bin" / "python"


@pytest.mark.timeout(90)
def test_two_paths_with_one_cut_complete_with_the_right_hash(picoquic_python: Path) -> None:
    options = bench.Options(
        size_mb=4, reps=1, runs=("two-paths-cut-A", "two-paths-cut-B"), timeout_s=30
    )
    results = bench.run(options, picoquic_python)

    assert [r.spec.name for r in results.outcomes] == ["two-paths-cut-A", "two-paths-cut-B"]
    detail = bench.report(results)
    for outcome in results.outcomes:
        assert outcome.completed, detail  # exit 0, all 4 MiB, SHA-256 of the file
        assert outcome.fetched is not None and outcome.fetched["bytes"] == 4 << 20
        assert outcome.cut_time is not None, detail  # the cut fell before the last byte
        survivor = outcome.survivor
        assert survivor is not None
        # Both paths carried data before the cut; the rest came over the survivor.
        assert all(outcome.at_cut(ip) > 0 for ip in outcome.spec.paths), detail
        assert outcome.relay_bytes(survivor) > outcome.at_cut(survivor), detail
        cut_link_up, cut_link_down = outcome.links[outcome.spec.cut or ""]
        assert cut_link_up.dropped_blackhole + cut_link_down.dropped_blackhole > 0, detail

    for heading in ("1. Transfers", "2. Cuts"):
        assert heading in detail
