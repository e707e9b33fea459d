"""The per-path ACK history that the multipath scheduler's silence rule reads."""

from __future__ import annotations

import pytest

from netsched_client.proto.multipath.recovery import ACK_GAPS, CountingRecovery, LossAverage


def _recovery() -> CountingRecovery:
    return CountingRecovery(
        congestion_control_algorithm="reno",
        initial_rtt=0.1,
        max_datagram_size=1200,
        peer_completed_address_validation=True,
        send_probe=lambda: None,
    )


def test_ack_gap_is_the_longest_recent_gap_between_acks() -> None:
    recovery = _recovery()
    assert recovery.ack_gap is None
    recovery.acks.append((0.0, 1.000))
    assert recovery.ack_gap is None  # one ACK has no rhythm yet
    for i, arrival in enumerate([1.001, 1.004, 1.005]):
        recovery.acks.append((0.001 * (i + 1), arrival))
    assert recovery.ack_gap is not None and abs(recovery.ack_gap - 0.003) < 1e-9


def test_ack_gap_forgets_gaps_older_than_its_window() -> None:
    recovery = _recovery()
    recovery.acks.append((0.0, 0.0))
    recovery.acks.append((0.001, 0.5))  # an idle half second, long ago
    for i in range(ACK_GAPS):
        recovery.acks.append((0.002 + i * 0.001, 0.501 + i * 0.001))
    assert recovery.ack_gap is not None and abs(recovery.ack_gap - 0.001) < 1e-9


def test_a_young_paths_loss_is_the_plain_share_then_a_moving_average() -> None:
    average = LossAverage(memory=256)
    average.add(9, lost=False)
    average.add(1, lost=True)
    assert average.value == pytest.approx(0.1)  # 1 of 10, not 1/256 as an EMA from 0 says
    average.add(246, lost=False)
    assert average.value == pytest.approx(1 / 256)
    average.add(256, lost=False)  # past its memory it forgets at 1/256 per packet
    assert average.value == pytest.approx((1 / 256) * (1 - 1 / 256) ** 256)
