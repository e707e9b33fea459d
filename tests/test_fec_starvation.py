"""FEC on a lossy, well-used path (issue #15): repairs do not starve behind bulk data.

One path of the in-memory lab (20 Mbit/s, 25 ms each way, 5 % random loss on the
uplink, a 32 KB drop-tail queue: 13 ms), BBR. The client sends a bulk stream that keeps the
congestion window full, and 1 KB deadline messages every 10 ms with 50 ms slack,
protected by FEC. Before the fix aioquic's sending round stopped at the full window
before the connection wrote its repairs, so no repair left while the bulk ran.
"""

from __future__ import annotations

import random
from pathlib import Path

from mp_harness import C1, SERVER, TimedNet
from test_fec_connection import Calls, sent_packet

from netsched_client.fec.frames import Repair
from netsched_client.fec.params import NegotiatedFec
from netsched_client.proto.connection import NetSchedConnection
from netsched_client.proto.fec_link import FecConfig, FecSender
from netsched_edge.tls import generate_self_signed
from netsched_lab import memory
from netsched_lab.impairment import LinkSpec, PathProfile
from netsched_lab.memory import ImpairedLink

ONE_WAY = 0.025
SLACK = 0.05
MESSAGES = 150


class _CountingTimers(NetSchedConnection):
    wakeups = 0

    def handle_timer(self, now: float) -> None:
        self.wakeups += 1
        super().handle_timer(now)


def _run(tmp: Path, cc: str, seed: int = 1) -> tuple[int, TimedNet, _CountingTimers]:
    pair = generate_self_signed(tmp)
    client_cfg, server_cfg = memory.quic_configurations(
        pair.ca_certificate, pair.certificate, pair.private_key
    )
    client_cfg.congestion_control_algorithm = cc
    client = _CountingTimers(
        configuration=client_cfg, fec=FecConfig(), max_path_id=3, pmtud=memory.NETWORK_PMTUD
    )
    server = NetSchedConnection(
        configuration=server_cfg,
        original_destination_connection_id=client.original_destination_connection_id,
        fec=FecConfig(),
        max_path_id=3,
        pmtud=memory.NETWORK_PMTUD,
    )
    lossy = LinkSpec(delay_ms=ONE_WAY * 1000, loss=0.05, rate_mbps=20, queue_bytes=32_000)
    profile = PathProfile(up=lossy, down=LinkSpec(delay_ms=ONE_WAY * 1000))
    net = TimedNet(client, server, {C1: ImpairedLink(profile, seed)})
    client.connect(SERVER, now=net.now)
    net.run(1.0)
    bulk = client.get_next_available_stream_id()
    client.send_stream_data(bulk, bytes(20_000_000))  # more than the run can carry
    net.run(1.0)  # the bulk fills the window
    client.wakeups = 0
    deadlines = {}
    for index in range(MESSAGES):
        stream_id = client.get_next_available_stream_id(is_unidirectional=True)
        client.send_stream_data(stream_id, random.Random(index).randbytes(1000), end_stream=True)
        deadline = net.now + ONE_WAY + SLACK
        client.set_stream_priority(stream_id, deadline, 0)
        client.set_stream_fec(stream_id, deadline_at=deadline, loss_tolerance=0.01)
        deadlines[stream_id] = deadline
        net.run(0.01)
    net.run(0.5)
    late = sum(1 for s, at in deadlines.items() if net.done.get(s, float("inf")) > at)
    assert client._streams[bulk].sender.buffer_is_empty is False  # the window stayed full
    return late, net, client


def test_repairs_leave_while_bulk_fills_the_window(tmp_path: Path) -> None:
    late, net, client = _run(tmp_path, "bbr")
    stats = client.fec_stats()
    # Seeds 1-3, before the fix: 0 repairs, 0 recovered, 46 / 47 / 35 late of 150 (the
    # queue's drops and the random loss waited for retransmission); after: 82-86
    # repairs, 24-44 recovered, 27 / 25 / 24 late.
    assert stats.repairs_sent >= stats.symbols_sent // 3, stats
    assert net.server.fec_stats().symbols_recovered >= 10
    assert late <= MESSAGES * 0.22, late
    # Waiting for room is not spinning: well under one wake-up per millisecond.
    assert client.wakeups < 1500 * 2, client.wakeups


def test_a_due_repair_has_no_timer_until_room_opens() -> None:
    """A repair whose flush time passed waits for window room: no timer stays due."""
    fec = FecSender(NegotiatedFec(64, 8, 8), max_coding_window=8, protect_all=False)
    fec.now = 10.0
    fec.note_request(4, 0.05)  # a flush after 0.8 of it
    fec.take_symbol(sent_packet(0, Calls()), b"only", 0.25)
    assert not fec.repair_due() and fec.timer() == 10.04
    fec.now = 10.05  # a sending round after the flush time, the window still full
    assert fec.repair_due()
    assert fec.timer() is None  # nothing that is due already: the loop does not spin
    repair = fec.next_repair()
    assert isinstance(repair, Repair) and (repair.first_id, repair.count) == (0, 1)
    fec.commit_repair(repair, 100)
    assert not fec.repair_due() and fec.timer() is None
