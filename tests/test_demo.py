"""The demo a new user runs first: its three setups end, and it prints their comparison."""

from __future__ import annotations

import pytest

from netsched_client.runtime.paths import PathStats
from netsched_edge import demo
from netsched_edge.cli import main


@pytest.mark.timeout(90)
def test_demo_compares_one_path_old_and_new_scheduler(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--duration", "1.5", "--rate", "60", "--loop", "asyncio"]) == 0
    out = capsys.readouterr().out
    for label in (
        "Wi-Fi alone",
        "Wi-Fi + cellular, lowest-RTT (old)",
        "Wi-Fi + cellular, deadline (new)",
    ):
        assert f"{label}: met, p50/p99 ms" in out  # a column of the comparison
    for name in ("interactive", "standard", "bulk"):
        assert any(line.startswith(name) for line in out.splitlines()), name
    assert "Per path (client side" in out and "1 cellular" in out


def test_paths_are_labelled_by_the_address_they_were_opened_from() -> None:
    def path(path_id: int, local: tuple[str, int] | None) -> PathStats:
        return PathStats(path_id, "active", local, ("127.0.0.1", 4433), False, 5.0, 0, 0, 0, 0, 0)

    results = demo.Results(demo.SETUPS[2])
    results.paths = [path(0, (demo.CELLULAR, 5000)), path(1, (demo.WIFI, 5001)), path(2, None)]
    rows = [line.split()[:2] for line in demo._path_report(results).splitlines()[4:]]
    # An unknown address is not taken for Wi-Fi (the demo once labelled such a path so).
    assert rows == [["0", "cellular"], ["1", "wifi"], ["2", "?"]]
