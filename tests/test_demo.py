"""The demo a new user runs first: its three setups end, and it prints their comparison."""

from __future__ import annotations

import pytest

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
