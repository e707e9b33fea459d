"""BBR against NewReno between two NetSchedConnections over the in-memory lab
(netsched_lab.memory, virtual time): 20 Mbit/s, 25 ms each way, the relay's
impairment model seeded, one path."""

from __future__ import annotations

from pathlib import Path

import pytest
from aioquic.quic.events import HandshakeCompleted

from netsched_edge.tls import generate_self_signed
from netsched_lab import memory
from netsched_lab.impairment import LinkSpec, PathProfile
from netsched_lab.memory import C1, ImpairedLink

SIZE = 2_000_000


def _goodput(tmp_path: Path, cc: str, loss: float) -> float:
    """Bits per second of a SIZE-byte download (server to client), or of what arrived
    within 60 virtual seconds."""
    pair = generate_self_signed(tmp_path)
    client_cfg, server_cfg = memory.quic_configurations(
        pair.ca_certificate, pair.certificate, pair.private_key
    )
    client_cfg.congestion_control_algorithm = server_cfg.congestion_control_algorithm = cc
    up = LinkSpec(delay_ms=25, rate_mbps=20)
    down = LinkSpec(delay_ms=25, rate_mbps=20, loss=loss)
    net = memory.make_net(
        client_cfg,
        server_cfg,
        links={C1: ImpairedLink(PathProfile(up, down), seed=3)},
        client_max_path_id=None,
        server_max_path_id=None,
    )
    assert net.run(2.0, until=lambda: bool(net.events("client", HandshakeCompleted)))
    sid = net.client.get_next_available_stream_id()
    net.client.send_stream_data(sid, b"get", end_stream=True)
    assert net.run(
        1.0, until=lambda: any(getattr(e, "stream_id", None) == sid for e in net.server_events)
    )
    started = net.now
    net.server.send_stream_data(sid, bytes(SIZE), end_stream=True)
    net.run(60.0, until=lambda: sid in net.stream_ends)
    return len(net.received.get(sid, b"")) * 8 / (net.now - started)


def test_bbr_holds_goodput_at_5_percent_random_loss_where_reno_collapses(
    tmp_path: Path,
) -> None:
    reno = _goodput(tmp_path / "reno", "reno", 0.05)
    bbr = _goodput(tmp_path / "bbr", "bbr", 0.05)
    assert bbr > 12e6  # of 20 Mbit/s, 5 % of it lost
    assert bbr > 5 * reno  # reno halves its window per loss: ~1 Mbit/s


@pytest.mark.parametrize("cc", ["reno", "bbr"])
def test_clean_path_goodput(tmp_path: Path, cc: str) -> None:
    assert _goodput(tmp_path, cc, 0.0) > 14e6


def test_a_round_that_runs_out_of_data_marks_the_model_app_limited(tmp_path: Path) -> None:
    """A small answer leaves the window with room and nothing more to send: the rate
    samples until it is delivered measure the application, not the path (the connection
    says so after the round, beyond the adapter's guess from gaps between sends)."""
    pair = generate_self_signed(tmp_path)
    client_cfg, server_cfg = memory.quic_configurations(
        pair.ca_certificate, pair.certificate, pair.private_key
    )
    client_cfg.congestion_control_algorithm = server_cfg.congestion_control_algorithm = "bbr"
    spec = LinkSpec(delay_ms=25, rate_mbps=20)
    net = memory.make_net(
        client_cfg, server_cfg, links={C1: ImpairedLink(PathProfile(spec, spec), seed=1)}
    )
    assert net.run(2.0, until=lambda: bool(net.events("client", HandshakeCompleted)))
    net.run(0.5)
    sid = net.client.get_next_available_stream_id()
    net.client.send_stream_data(sid, b"get", end_stream=True)
    assert net.run(
        1.0, until=lambda: any(getattr(e, "stream_id", None) == sid for e in net.server_events)
    )
    cc = net.server._recovery()._cc
    net.server.send_stream_data(sid, bytes(3000), end_stream=True)
    stream = net.server._streams[sid]
    for _ in range(20):  # the pacer lets it out within a few ms; no ACK comes back so soon
        net.now += 0.001
        net.server.datagrams_with_paths(net.now)  # dropped: only the sender's state counts
        if stream.sender.buffer_is_empty:
            break
    assert stream.sender.buffer_is_empty and cc.bytes_in_flight >= 3000
    assert cc.sampler.app_limited_until == cc.sampler.delivered + cc.bytes_in_flight
