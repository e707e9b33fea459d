"""FEC across paths (issue #15): repairs for one path's sources on another path.

Two paths of the in-memory lab with the same delay (20/21 ms each way): the
server's path 0 has Gilbert-Elliott bursts (5 % loss, mean burst 4) on the
downlink, path 1 none. 1 KB deadline messages every 10 ms with 50 ms slack,
protected by FEC, ride path 0 (lowest-RTT scheduling; the deadline scheduler
would move them to the clean path, leaving nothing to recover). The same runs,
seeded alike, with repairs on the other path (`cross_path_repairs`, the default)
and on the sources' own path: there a burst takes the repairs sent within it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from mp_harness import C1, C2, SERVER, TimedNet

from netsched_client.proto.connection import NetSchedConnection
from netsched_client.proto.fec_link import FecConfig, FecStats
from netsched_edge.tls import generate_self_signed
from netsched_lab import memory
from netsched_lab.impairment import GilbertElliott, LinkSpec, PathProfile
from netsched_lab.memory import ImpairedLink

ONE_WAY_MS = 20.0
SLACK = 0.05
MESSAGES = 400
SEEDS = (1, 2, 3)


@dataclass(frozen=True)
class _Run:
    late: int  # late or never delivered
    recovered: int  # by the client's decoder
    stats: FecStats  # the server's


def _run(tmp: Path, seed: int, cross: bool) -> _Run:
    pair = generate_self_signed(tmp)
    client_cfg, server_cfg = memory.quic_configurations(
        pair.ca_certificate, pair.certificate, pair.private_key
    )
    for cfg in (client_cfg, server_cfg):
        cfg.congestion_control_algorithm = "bbr"
    fec = FecConfig(cross_path_repairs=cross)
    client = NetSchedConnection(
        configuration=client_cfg,
        fec=fec,
        scheduler="lowest-rtt",
        max_path_id=3,
        pmtud=memory.NETWORK_PMTUD,
    )
    server = NetSchedConnection(
        configuration=server_cfg,
        original_destination_connection_id=client.original_destination_connection_id,
        fec=fec,
        scheduler="lowest-rtt",
        max_path_id=3,
        pmtud=memory.NETWORK_PMTUD,
    )
    bursts = GilbertElliott.from_loss_and_burst(0.05, 4.0)
    lossy = PathProfile(
        up=LinkSpec(delay_ms=ONE_WAY_MS),
        down=LinkSpec(delay_ms=ONE_WAY_MS, bursty=bursts, rate_mbps=20),
    )
    clean = PathProfile(
        up=LinkSpec(delay_ms=ONE_WAY_MS + 1), down=LinkSpec(delay_ms=ONE_WAY_MS + 1, rate_mbps=20)
    )
    links = {C1: ImpairedLink(lossy, seed), C2: ImpairedLink(clean, seed + 7)}
    net = TimedNet(client, server, links, receiver="client")  # type: ignore[arg-type]
    client.connect(SERVER, now=net.now)
    net.run(0.5)
    path_id = client.open_path(C2, SERVER, net.now)
    net.run(0.5)
    assert client.paths[path_id].state.value == "active"
    deadlines = {}
    for index in range(MESSAGES):
        stream_id = server.get_next_available_stream_id(is_unidirectional=True)
        server.send_stream_data(stream_id, random.Random(index).randbytes(1000), end_stream=True)
        deadline = net.now + ONE_WAY_MS / 1000 + SLACK
        server.set_stream_priority(stream_id, deadline, 0)
        server.set_stream_fec(stream_id, deadline_at=deadline, loss_tolerance=0.001)
        deadlines[stream_id] = deadline
        net.run(0.01)
    net.run(1.0)
    late = sum(1 for s, at in deadlines.items() if net.done.get(s, float("inf")) > at)
    return _Run(late, client.fec_stats().symbols_recovered, server.fec_stats())


def _on_path(pairs: tuple[tuple[int, int], ...], path_id: int) -> int:
    return dict(pairs).get(path_id, 0)


def test_repairs_across_paths_survive_bursts_on_the_sources_path(tmp_path: Path) -> None:
    across = [_run(tmp_path, seed, cross=True) for seed in SEEDS]
    alongside = [_run(tmp_path, seed, cross=False) for seed in SEEDS]
    for run in across:  # the sources ride path 0, their repairs path 1
        stats = run.stats
        assert _on_path(stats.symbols_by_path, 0) > 0.8 * stats.symbols_sent, stats
        assert _on_path(stats.repairs_by_path, 1) > 0.8 * stats.repairs_sent, stats
    for run in alongside:  # the sources' own path carries the repairs
        assert _on_path(run.stats.repairs_by_path, 0) > 0.8 * run.stats.repairs_sent, run.stats
    late_across, late_alongside = sum(r.late for r in across), sum(r.late for r in alongside)
    recovered_across = sum(r.recovered for r in across)
    recovered_alongside = sum(r.recovered for r in alongside)
    summary = (late_across, late_alongside, recovered_across, recovered_alongside)
    # Measured: 31 vs 33 late of 1200, 52 vs 28 recovered (1.9x), repairs 43 % vs 45 %
    # of the sources. Before repairs reached back to every source within its slack
    # (#15): 29 vs 45 late, 53 vs 16 recovered; since then a repair sent after a burst on
    # the sources' own path also covers the burst, which narrowed the gap in lateness.
    assert recovered_across >= 1.5 * recovered_alongside, summary
    assert late_across <= late_alongside, summary
    overhead_across = sum(r.stats.repairs_sent for r in across)
    overhead_alongside = sum(r.stats.repairs_sent for r in alongside)
    assert overhead_across <= 1.15 * overhead_alongside, (overhead_across, overhead_alongside)
