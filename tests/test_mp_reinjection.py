"""Urgent copies (XLINK) against a real aioquic stream sender."""

from __future__ import annotations

import pytest
from aioquic.quic.packet_builder import QuicDeliveryState
from aioquic.quic.stream import QuicStreamSender

from netsched_client.proto.multipath.reinjection import UrgentCopies, deliver_safely
from netsched_client.proto.multipath.scheduler import LossRisk, Scheduler
from netsched_client.proto.send_order import StreamPriority


def _sender_with_two_frames() -> tuple[
    QuicStreamSender, tuple[int, int, bool], tuple[int, int, bool]
]:
    sender = QuicStreamSender(0, writable=True)
    sender.write(bytes(2000), end_stream=True)
    first = sender.get_frame(1000)
    second = sender.get_frame(1000)
    assert first is not None and second is not None
    a = (first.offset, first.offset + len(first.data), first.fin)
    b = (second.offset, second.offset + len(second.data), second.fin)
    return sender, a, b


def test_copy_goes_to_another_path_and_back_to_the_stream() -> None:
    sender, a, _ = _sender_with_two_frames()
    copies = UrgentCopies(share=1.0)
    assert copies.offer(0, 0, sender, a, bytes_sent=10_000)
    assert copies.send_on(0, room=10_000, late=()) == []  # never on the path it came from
    handed = copies.send_on(1, room=10_000, late=())
    assert len(handed) == 1
    again = sender.get_frame(1000)  # the flush of path 1
    assert again is not None and again.offset == a[0] and len(again.data) == a[1] - a[0]
    copies.withdraw(handed)
    assert sender.get_frame(1000) is None


def test_a_copy_the_flush_did_not_send_is_withdrawn() -> None:
    """Otherwise the original's ACK could drop the bytes while the range waits in the
    queue, and aioquic would later send the wrong ones."""
    sender, a, _ = _sender_with_two_frames()
    copies = UrgentCopies(share=1.0)
    copies.offer(0, 0, sender, a, bytes_sent=10_000)
    copies.withdraw(copies.send_on(1, room=10_000, late=()))  # path 1 had no room after all
    sender.on_data_delivery(QuicDeliveryState.ACKED, *a)
    assert sender.get_frame(1000) is None


def test_acknowledged_data_is_never_copied() -> None:
    """The original's ACK can come before the copy leaves: aioquic dropped those bytes
    from its buffer, and re-queueing them made it send the wrong bytes (found by the demo:
    the peer closed with FINAL_SIZE_ERROR)."""
    sender, a, _ = _sender_with_two_frames()
    copies = UrgentCopies(share=1.0)
    copies.offer(0, 0, sender, a, bytes_sent=10_000)
    sender.on_data_delivery(QuicDeliveryState.ACKED, *a)
    assert copies.send_on(1, room=10_000, late=()) == []
    assert sender.get_frame(1000) is None  # nothing pending: b is still in flight


@pytest.mark.parametrize(("share", "expected"), [(0.0, [False, False]), (0.05, [True, False])])
def test_copies_stay_within_their_share(share: float, expected: list[bool]) -> None:
    sender, a, b = _sender_with_two_frames()
    copies = UrgentCopies(share=share)
    assert [copies.offer(0, 0, sender, r, bytes_sent=20_000) for r in (a, b)] == expected
    assert copies.copy_bytes <= share * 20_000


def test_a_range_is_copied_once() -> None:
    sender, a, _ = _sender_with_two_frames()
    copies = UrgentCopies(share=1.0)
    assert copies.offer(0, 0, sender, a, bytes_sent=10_000)
    assert not copies.offer(1, 0, sender, a, bytes_sent=10_000)  # the copy is not copied


def test_bad_share_is_refused() -> None:
    with pytest.raises(ValueError, match="share"):
        UrgentCopies(share=1.5)


def test_loss_of_one_carrier_after_the_other_was_acknowledged_requeues_nothing() -> None:
    """Original lost after the copy's ACK: the bytes are gone from aioquic's buffer, and
    re-queueing them would send the wrong ones (the peer: FINAL_SIZE_ERROR)."""
    sender, a, b = _sender_with_two_frames()
    deliver_safely(QuicDeliveryState.ACKED, sender, *a)  # the copy of a arrived
    deliver_safely(QuicDeliveryState.LOST, sender, *a)  # the original of a is lost
    assert sender.get_frame(1000) is None
    deliver_safely(QuicDeliveryState.LOST, sender, *b)  # a real loss is still re-queued
    again = sender.get_frame(1000)
    assert again is not None and (again.offset, again.fin) == (b[0], True)


def test_loss_requeues_only_the_unacknowledged_part() -> None:
    sender = QuicStreamSender(0, writable=True)
    sender.write(bytes(3000), end_stream=True)
    frames = [sender.get_frame(1000) for _ in range(3)]
    assert all(f is not None for f in frames)
    sender.on_data_delivery(QuicDeliveryState.ACKED, 1000, 2000, False)  # the middle arrived
    deliver_safely(QuicDeliveryState.LOST, sender, 0, 3000, True)  # a frame covering all
    sent = [sender.get_frame(5000), sender.get_frame(5000)]
    assert [(f.offset, len(f.data), f.fin) for f in sent if f] == [
        (0, 1000, False),
        (2000, 1000, True),
    ]


def test_once_copied_every_later_carrier_of_the_stream_reports_loss_safely() -> None:
    """A retransmission is a carrier too: aioquic takes the handler from the sender for
    each frame it writes, and after the first copy that handler is the safe one."""
    sender, a, _ = _sender_with_two_frames()
    UrgentCopies(share=1.0).offer(0, 0, sender, a, bytes_sent=10_000)
    handler = sender.on_data_delivery  # what aioquic stores for the next frame it writes
    sender.on_data_delivery(QuicDeliveryState.ACKED, *a)  # one carrier arrived
    handler(QuicDeliveryState.LOST, *a)  # another is lost
    assert sender.get_frame(1000) is None


def test_an_ack_takes_its_range_out_of_the_queue() -> None:
    """One carrier lost (range re-queued), then the other's ACK: the range must leave the
    queue before aioquic drops its bytes (found by the demo: pending below the buffer)."""
    sender, a, _ = _sender_with_two_frames()
    deliver_safely(QuicDeliveryState.LOST, sender, *a)
    deliver_safely(QuicDeliveryState.ACKED, sender, *a)
    assert sender.get_frame(1000) is None
    deliver_safely(QuicDeliveryState.ACKED, sender, *a)  # the late duplicate ACK: harmless
    assert sender.get_frame(1000) is None


def test_deadline_data_on_a_lossy_path_is_worth_a_copy_when_a_repair_would_be_late() -> None:
    scheduler = Scheduler()
    now, rtt = 10.0, 0.008
    request = StreamPriority(now + 0.040, 1)  # 40 ms: five RTTs, a retransmission fits
    assert not scheduler.is_urgent(request, now, rtt)
    slow_repair = 0.045  # a probe timeout (25 ms ACK delay) and one way
    assert scheduler.is_urgent(request, now, rtt, LossRisk(0.05, slow_repair))
    assert not scheduler.is_urgent(request, now, rtt, LossRisk(0.005, slow_repair))  # clean
    assert not scheduler.is_urgent(request, now, rtt, LossRisk(0.05, 0.030))  # repair fits
    assert not scheduler.is_urgent(StreamPriority(None, 6), now, rtt, LossRisk(0.5, 1.0))
    assert not scheduler.is_urgent(StreamPriority(now - 0.001, 1), now, rtt, LossRisk(0.5, 1.0))
