"""Multipath in the sans-IO core: two connections, an in-memory network, a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest
from aioquic.quic.connection import NetworkAddress
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted
from mp_harness import C1, C2, C3, SERVER, Link, Net, make_net

from netsched_client.proto.connection import NetSchedConnection
from netsched_client.proto.multipath import events as mpe
from netsched_client.proto.multipath import frames as mpf
from netsched_client.proto.multipath.connection import (
    MAX_CLOSED_STATS,
    MultipathError,
    PathIdNotReady,
)
from netsched_client.proto.multipath.path import UsedPathIds
from netsched_lab import memory
from netsched_lab.seeded import fixed_configurations, seeded_randomness


def _connected(tmp_path: Path, **kwargs) -> Net:
    net = make_net(tmp_path, **kwargs)
    assert net.run(2.0, until=lambda: bool(net.events("client", HandshakeCompleted)))
    net.run(0.2)  # HANDSHAKE_DONE, CIDs for new paths
    return net


def _two_paths(tmp_path: Path, **kwargs) -> tuple[Net, int]:
    net = _connected(tmp_path, **kwargs)
    path_id = net.client.open_path(C2, SERVER, net.now)
    assert net.run(2.0, until=lambda: bool(net.events("client", mpe.PathValidated)))
    return net, path_id


def _download(net: Net, size: int) -> int:
    """Client asks on a stream; the server answers with `size` bytes."""
    sid = net.client.get_next_available_stream_id()
    net.client.send_stream_data(sid, b"get", end_stream=True)
    net.run(1.0, until=lambda: any(getattr(e, "stream_id", None) == sid for e in net.server_events))
    net.server.send_stream_data(sid, bytes(range(256)) * (size // 256), end_stream=True)
    return sid


def test_negotiated_both_ways(tmp_path: Path) -> None:
    net = _connected(tmp_path)
    assert net.client.multipath_enabled and net.server.multipath_enabled


def test_plain_peer_means_single_path(tmp_path: Path) -> None:
    net = _connected(tmp_path, server_max_path_id=None)
    assert not net.client.multipath_enabled
    with pytest.raises(MultipathError):
        net.client.open_path(C2, SERVER, net.now)


def test_second_path_validated_and_used(tmp_path: Path) -> None:
    net, path_id = _two_paths(tmp_path)
    assert path_id == 1
    assert net.events("server", mpe.PathAvailable) == [mpe.PathAvailable(1)]
    sid = _download(net, 2_000_000)
    assert net.run(30.0, until=lambda: len(net.received.get(sid, b"")) >= 1_999_872)
    assert net.received[sid] == bytes(range(256)) * (2_000_000 // 256)
    sent = {p["path_id"]: p["bytes_sent"] for p in net.server.path_info()}
    assert sent[0] > 200_000 and sent[1] > 200_000, sent  # both paths carried the transfer
    rtts = {p["path_id"]: p["rtt"] for p in net.server.path_info()}
    assert rtts[1] is not None  # PATH_ACK on path 1 gave RTT samples


def rate_limited() -> dict:
    """Fresh links (they carry state: a test may blackhole one)."""
    return {C1: Link(rate_bps=20e6), C2: Link(rate_bps=20e6), C3: Link()}


def test_blackholed_path_abandoned_and_transfer_completes(tmp_path: Path) -> None:
    net, _ = _two_paths(tmp_path, links=rate_limited())
    sid = _download(net, 3_000_000)
    net.run(0.3)
    net.links[C1].up = False  # path 0 dies mid-transfer
    done = net.run(60.0, until=lambda: len(net.received.get(sid, b"")) >= 2_999_808)
    assert done, f"got {len(net.received.get(sid, b''))} bytes"
    assert net.received[sid] == bytes(range(256)) * (3_000_000 // 256)  # no byte lost
    died = net.now

    def abandoned() -> list[mpe.PathAbandoned]:
        events = net.events("server", mpe.PathAbandoned) + net.events("client", mpe.PathAbandoned)
        return [e for e in events if e.path_id == 0]

    # Silence is not death at once (an outage may end): the path goes after dead_after_s.
    assert net.run(20.0, until=lambda: bool(abandoned()))
    assert net.now - died >= net.server.scheduler.dead_after_s - 1.0
    assert not net.events("client", ConnectionTerminated)


def test_failed_validation_costs_the_path_not_the_connection(tmp_path: Path) -> None:
    net = _connected(tmp_path)
    net.links[C2].up = False
    path_id = net.client.open_path(C2, SERVER, net.now)
    net.run(5.0, until=lambda: bool(net.events("client", mpe.PathAbandoned)))
    assert net.events("client", mpe.PathAbandoned)[0].path_id == path_id
    assert not net.events("client", ConnectionTerminated)
    sid = _download(net, 50_000)
    assert net.run(5.0, until=lambda: len(net.received.get(sid, b"")) >= 49_920)


def test_path_ids_run_out(tmp_path: Path) -> None:
    net = _connected(tmp_path, client_max_path_id=2, server_max_path_id=2)
    net.client.open_path(C2, SERVER, net.now)
    net.client.open_path(C3, SERVER, net.now)
    with pytest.raises(MultipathError):
        net.client.open_path(("127.0.0.5", 5004), SERVER, net.now)


def test_abandon_by_application_then_forgotten(tmp_path: Path) -> None:
    net, path_id = _two_paths(tmp_path)
    net.client.abandon_path(path_id, now=net.now)
    net.run(0.5)
    assert net.events("server", mpe.PathAbandoned)[0].by_peer
    net.run(5.0)
    assert path_id not in net.client.paths and path_id not in net.server.paths
    sid = _download(net, 100_000)
    assert net.run(5.0, until=lambda: len(net.received.get(sid, b"")) >= 99_840)


def test_backup_path_carries_data_only_when_needed(tmp_path: Path) -> None:
    net, path_id = _two_paths(tmp_path)
    net.server.set_path_backup(path_id, True)
    before = {p["path_id"]: p["bytes_sent"] for p in net.server.path_info()}
    sid = _download(net, 500_000)
    assert net.run(10.0, until=lambda: len(net.received.get(sid, b"")) >= 499_968)
    after = {p["path_id"]: p["bytes_sent"] for p in net.server.path_info()}
    assert after[path_id] - before[path_id] < 20_000  # ACKs and control only
    net.links[C1].up = False
    sid = _download(net, 300_000)
    assert net.run(30.0, until=lambda: len(net.received.get(sid, b"")) >= 299_776)


def test_key_update_across_paths(tmp_path: Path) -> None:
    net, _ = _two_paths(tmp_path)
    net.client.request_key_update()
    sid = _download(net, 1_000_000)
    assert net.run(20.0, until=lambda: len(net.received.get(sid, b"")) >= 999_936)
    assert not net.events("client", ConnectionTerminated)


def test_lossy_second_path(tmp_path: Path) -> None:
    net, _ = _two_paths(
        tmp_path, links={C1: Link(delay=0.005), C2: Link(delay=0.030, drop_every=10), C3: Link()}
    )
    sid = _download(net, 1_000_000)
    assert net.run(30.0, until=lambda: len(net.received.get(sid, b"")) >= 999_936)
    assert net.received[sid] == bytes(range(256)) * (1_000_000 // 256)


class _RawFrame(mpf.MaxPathId):
    """A frame we write verbatim, to feed the peer malformed input."""

    def __init__(self, frame_type: int, body: bytes) -> None:
        super().__init__(0)
        object.__setattr__(self, "raw", (frame_type, body))

    def split(self) -> tuple[int, bytes]:
        return self.raw  # type: ignore[attr-defined,no-any-return]


@pytest.mark.parametrize(
    ("frame_type", "body", "code"),
    [
        (mpf.PATH_NEW_CONNECTION_ID, bytes([1, 5, 0, 0]), 0x7),  # empty CID: FRAME_ENCODING_ERROR
        (mpf.MAX_PATH_ID, bytes.fromhex("c0000001ffffffff"), 0xA),  # above 2^32-1
        (mpf.PATH_ABANDON, bytes([9, 0]), 0xA),  # path ID above our maximum: PROTOCOL_VIOLATION
        (mpf.PATH_CIDS_BLOCKED, bytes([1, 9]), 0xA),  # sequence we never reached
    ],
)
def test_malformed_multipath_frames_close_with_the_right_code(
    tmp_path: Path, frame_type: int, body: bytes, code: int
) -> None:
    net, _ = _two_paths(tmp_path)
    net.client._control.append(_RawFrame(frame_type, body))
    net.client.send_ping(1)  # a packet to carry it
    net.run(2.0, until=lambda: bool(net.events("client", ConnectionTerminated)))
    closed = net.events("client", ConnectionTerminated)
    assert closed and closed[0].error_code == code, closed


def test_reordering_and_key_update_on_paths_of_different_delay(tmp_path: Path) -> None:
    # Reordering makes loss recovery declare spurious losses (aioquic has no
    # reordering tolerance), so this checks integrity, not speed.
    links = {
        C1: Link(delay=0.005, reorder_every=7),
        C2: Link(delay=0.040, reorder_every=5),
        C3: Link(),
    }
    net, _ = _two_paths(tmp_path, links=links)
    sid = _download(net, 300_000)
    net.run(0.05)
    net.server.request_key_update()  # packets in flight on the slow path use the old keys
    assert net.run(30.0, until=lambda: len(net.received.get(sid, b"")) >= 299_776)
    assert net.received[sid] == bytes(range(256)) * (300_000 // 256)
    assert not net.events("client", ConnectionTerminated)


def test_multipath_frames_are_unknown_without_negotiation(tmp_path: Path) -> None:
    net = _connected(tmp_path, server_max_path_id=None)  # the server never registered them
    net.client._control.append(_RawFrame(mpf.MAX_PATH_ID, bytes([4])))
    net.client._peer_max_path_id = 3  # a client that sends them anyway
    net.client.send_ping(1)
    net.run(2.0, until=lambda: bool(net.events("client", ConnectionTerminated)))
    closed = net.events("client", ConnectionTerminated)
    assert closed and closed[0].error_code == 0x7  # FRAME_ENCODING_ERROR: unknown frame type


def test_no_timer_in_the_past_after_path_0_is_abandoned(tmp_path: Path) -> None:
    net, _ = _two_paths(tmp_path, links=rate_limited())
    net.links[C1].up = False
    net.client.send_ping(1)
    assert net.run(10.0, until=lambda: bool(net.events("client", mpe.PathAbandoned)))
    net.run(3.0)  # past 3 x PTO
    for conn in (net.client, net.server):
        timer = conn.get_timer()
        assert timer is None or timer > net.now, (timer, net.now)  # no spinning on a stale deadline


def test_stalled_path_data_is_reinjected_before_the_path_is_abandoned(tmp_path: Path) -> None:
    links = {C1: Link(rate_bps=20e6, delay=0.005), C2: Link(rate_bps=20e6, delay=0.010), C3: Link()}
    net, _ = _two_paths(tmp_path, links=links)
    sid = _download(net, 4_000_000)
    net.run(0.3)
    net.links[C1].up = False
    before = len(net.received.get(sid, b""))
    # Within one PTO plus a couple of survivor RTTs, data flows again: well before abandonment.
    net.run(0.3)
    assert len(net.received.get(sid, b"")) > before + 50_000
    stats = {p.path_id: p.stats for p in net.server.paths.values()}
    assert stats[0].packets_reinjected > 0
    assert net.run(20.0, until=lambda: len(net.received.get(sid, b"")) >= 4_000_000)
    assert net.received[sid] == bytes(range(256)) * (4_000_000 // 256)


def _delivery_times(net: Net, sid: int) -> list[float]:
    """Record when the client's stream `sid` grows (the harness drains events each step)."""
    stamps: list[float] = []
    drain = net._drain_events

    def recording() -> None:
        before = len(net.received.get(sid, b""))
        drain()
        if len(net.received.get(sid, b"")) > before:
            stamps.append(net.now)

    net._drain_events = recording  # type: ignore[method-assign]
    return stamps


@pytest.mark.parametrize("delays", [(0.005, 0.005), (0.010, 0.005), (0.005, 0.010)])
def test_failover_resumes_within_three_survivor_rtts(
    tmp_path: Path, delays: tuple[float, float]
) -> None:
    links = {
        C1: Link(rate_bps=20e6, delay=delays[0]),
        C2: Link(rate_bps=20e6, delay=delays[1]),
        C3: Link(),
    }
    net, path_id = _two_paths(tmp_path, links=links)
    size = 6 << 20
    sid = _download(net, size)
    stamps = _delivery_times(net, sid)
    net.run(0.5)
    blackhole = net.now
    net.links[C1].up = False
    assert net.run(30.0, until=lambda: len(net.received.get(sid, b"")) >= size)
    assert net.received[sid] == bytes(range(256)) * (size // 256)  # no byte lost
    after = [t for t in stamps if t >= blackhole]
    gap = max(b - a for a, b in zip([blackhole, *after], after, strict=False))
    survivor = net.client.path_rtt(net.client.paths[path_id])
    assert survivor is not None
    assert gap <= 3 * survivor, (gap, survivor)
    # The silence rule, not a PTO, stalled the path (one decision, on the dead path only).
    silent = {k: v for k, v in net.server.scheduler.decisions.items() if k[1] == "silent"}
    assert silent == {(0, "silent"): 1}


class _PausedClient:
    """The client process not running: datagrams wait in its socket, nothing is sent."""

    def __init__(self, client: NetSchedConnection) -> None:
        self.client = client
        self.backlog: list[tuple[bytes, tuple[str, int]]] = []
        self.paths = client.paths

    def receive_datagram(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        self.backlog.append((data, addr))

    def datagrams_with_paths(self, now: float) -> list:
        return []

    def get_timer(self) -> None:
        return None

    def next_event(self) -> None:
        return None


@pytest.mark.parametrize("pause_at", [0.2, 0.3, 0.45])
def test_a_paused_peer_costs_no_path_and_no_byte(tmp_path: Path, pause_at: float) -> None:
    """A client that stops for 80 ms looks silent on every path at once: no evidence, so no
    path is lost. It can still cost one re-injection: when the pause falls between a
    packet's arrival and its ACK timer on one path while the other path's ACK already left,
    the sender sees exactly what an outage of that path looks like."""
    links = {C1: Link(rate_bps=20e6), C2: Link(rate_bps=20e6), C3: Link()}
    net, _ = _two_paths(tmp_path, links=links, pmtud=None)
    size = 3 << 20
    sid = _download(net, size)
    net.run(pause_at)
    client = net.client
    net.client = paused = _PausedClient(client)  # type: ignore[assignment]
    net.run(0.08)
    net.client = client
    for data, addr in paused.backlog:
        client.receive_datagram(data, addr, net.now)
    assert net.run(30.0, until=lambda: len(net.received.get(sid, b"")) >= size)
    assert net.received[sid] == bytes(range(256)) * (size // 256)
    silent = [v for k, v in net.server.scheduler.decisions.items() if k[1] == "silent"]
    assert sum(silent) <= 1
    assert not net.events("server", mpe.PathAbandoned)
    assert not net.events("client", mpe.PathAbandoned)


def _urgent_messages(
    tmp_path: Path, share: float, scheduler: str = "lowest-rtt"
) -> tuple[Net, int, int]:
    """The server sends 1 KB messages with a deadline 12 ms out (RTT 10 ms on the fast path,
    which loses every 9th datagram; 16 ms on the other). Returns (net, on time, copies)."""
    links = {C1: Link(delay=0.005, drop_every=9), C2: Link(delay=0.008), C3: Link()}
    net, _ = _two_paths(tmp_path, links=links, scheduler=scheduler)
    net.server.urgent_copies.share = share
    deadlines: dict[int, float] = {}
    arrived: dict[int, float] = {}
    for _ in range(60):
        sid = net.client.get_next_available_stream_id()
        net.client.send_stream_data(sid, b"ask", end_stream=True)
        net.run(
            0.2,
            until=lambda sid=sid: any(  # type: ignore[misc]
                getattr(e, "stream_id", None) == sid for e in net.server_events
            ),
        )
        deadlines[sid] = net.now + 0.012
        net.server.set_stream_priority(sid, deadlines[sid], 3)
        net.server.send_stream_data(sid, bytes(1000), end_stream=True)
        net.run(0.05, until=lambda sid=sid: len(net.received.get(sid, b"")) >= 1000)  # type: ignore[misc]
        arrived[sid] = net.now
        net.run(0.03)
    on_time = sum(arrived[sid] <= deadlines[sid] for sid in deadlines)
    copies = sum(v for k, v in net.server.scheduler.decisions.items() if k[1] == "urgent-copy")
    return net, on_time, copies


def test_urgent_data_is_copied_on_a_second_path(tmp_path: Path) -> None:
    _, plain_on_time, plain_copies = _urgent_messages(tmp_path / "plain", share=0.0)
    net, on_time, copies = _urgent_messages(tmp_path / "xlink", share=1.0)
    assert plain_copies == 0 and copies >= 30
    # Every 9th datagram on the fast path is lost: about half the messages miss the deadline
    # when they wait for a retransmission, (almost) none when a copy took the other path.
    assert plain_on_time <= 45 and on_time >= 57, (plain_on_time, on_time)
    sent = sum(p.stats.bytes_sent for p in net.server.paths.values())
    assert net.server.urgent_copies.copy_bytes <= sent


def test_deadline_policy_weighs_a_lossy_fast_path_without_copies(tmp_path: Path) -> None:
    """Same messages, no copies: by RTT order they ride the lossy fast path and about half
    wait for a retransmission; the deadline policy counts the loss a retransmission would
    cost and meets (almost) every deadline with no redundant byte."""
    _, rtt_order, _ = _urgent_messages(tmp_path / "rtt", share=0.0, scheduler="lowest-rtt")
    _, deadline, copies = _urgent_messages(tmp_path / "edf", share=0.0, scheduler="deadline")
    assert copies == 0
    assert rtt_order <= 45 and deadline >= 55, (rtt_order, deadline)


def test_the_deadline_policy_copies_urgent_data_to_the_path_the_hand_out_skipped(
    tmp_path: Path,
) -> None:
    """The hand-out gives each message to one path; its copy must still leave on the
    other one (before, that path held the stream back, copies never left with the
    deadline policy, and a lost message on the path it rode came late)."""
    net, on_time, copies = _urgent_messages(tmp_path, share=1.0, scheduler="deadline")
    assert copies >= 30 and on_time >= 57, (copies, on_time)
    assert min(p.stats.bytes_sent for p in net.server.paths.values()) > 30_000


def test_urgent_copies_are_capped_as_a_share_of_bytes(tmp_path: Path) -> None:
    net, _, _ = _urgent_messages(tmp_path, share=0.1)
    sent = sum(p.stats.bytes_sent for p in net.server.paths.values())
    assert 0 < net.server.urgent_copies.copy_bytes <= 0.1 * sent


def test_slow_path_leaves_alone_a_stream_it_would_deliver_late(tmp_path: Path) -> None:
    links = {C1: Link(delay=0.005, rate_bps=20e6), C2: Link(delay=0.040), C3: Link()}
    net, path_id = _two_paths(tmp_path, links=links)
    sid = net.client.get_next_available_stream_id()
    net.client.send_stream_data(sid, b"ask", end_stream=True)
    net.run(1.0, until=lambda: any(getattr(e, "stream_id", None) == sid for e in net.server_events))
    slow = net.server.paths[path_id]
    before = slow.stats.bytes_sent
    # 300 kB fill the fast path's window and more; the slow path (40 ms one way) would be
    # late for a deadline 30 ms out, so it carries none of it.
    net.server.set_stream_priority(sid, net.now + 0.030, 3)
    net.server.send_stream_data(sid, bytes(300_000), end_stream=True)
    net.run(0.03)
    assert slow.stats.bytes_sent - before < 2_000  # ACKs and control only
    assert net.server.scheduler.decisions[(0, "data")] > 0


def _open_when_ready(net: Net, local: tuple[str, int]) -> int:
    for _ in range(300):
        try:
            return net.client.open_path(local, SERVER, net.now)
        except PathIdNotReady:
            net.run(0.01)
    raise AssertionError("no path ID became ready")


def _open_and_abandon(
    net: Net, count: int, forgotten_by: NetSchedConnection, first: int = 0
) -> list[int]:
    """Open `count` paths one after the other (from ports 6000 + first, ...), each abandoned
    (by the client) and forgotten by `forgotten_by` before the next; their path IDs."""
    ids = []
    for n in range(first, first + count):
        local = ("127.0.0.2", 6000 + n)
        net.links[local] = Link()
        path_id = _open_when_ready(net, local)
        assert net.run(2.0, until=lambda p=path_id: bool(net.client.paths[p].usable)), n
        net.client.abandon_path(path_id, now=net.now)
        assert net.run(5.0, until=lambda p=path_id: p not in forgotten_by.paths), n
        ids.append(path_id)
    return ids


def test_retired_path_ids_are_replaced_by_max_path_id(tmp_path: Path) -> None:
    """Open and abandon more paths than the initial limit allows at once: each retired path
    ID makes room for one more (MAX_PATH_ID), so the number open at once stays bounded."""
    net = _connected(tmp_path, client_max_path_id=2, server_max_path_id=2)
    *_, path_id = _open_and_abandon(net, 6, forgotten_by=net.client)
    assert path_id == 6  # IDs 1..6, never more than 2 of them open at once
    assert not net.events("client", ConnectionTerminated)


def test_a_peer_that_keeps_opening_paths_leaves_bounded_state(tmp_path: Path) -> None:
    """Per-path decisions and closed-path totals do not grow with every path ID a client
    ever used: the server keeps those of live paths and of the latest closed ones."""
    net = _connected(tmp_path, client_max_path_id=2, server_max_path_id=2)
    closed = _open_and_abandon(net, MAX_CLOSED_STATS + 2, forgotten_by=net.server)
    server = net.server
    assert {path_id for path_id, _ in server.scheduler.decisions} <= set(server.paths)
    assert list(server.closed_stats) == closed[-MAX_CLOSED_STATS:]


def _footprint(conn: NetSchedConnection) -> dict[str, int]:
    """The length of every container the connection and its scheduler hold."""
    scheduler = conn.scheduler
    held = {name: getattr(scheduler, name) for name in scheduler.__slots__}
    sizes = {}
    for owner, attrs in (("", vars(conn)), ("scheduler.", held)):
        for name, value in attrs.items():
            if isinstance(value, UsedPathIds):
                value = value._above  # a count and a floor besides: what it holds
            if hasattr(value, "__len__") and not isinstance(value, str | bytes):
                sizes[owner + name] = len(value)
    return sizes


@pytest.mark.timeout(300)  # ~50 s on an idle 2-core host; past the default 120 s under load
def test_ten_thousand_paths_on_one_connection_leave_bounded_state(tmp_path: Path) -> None:
    """Over a long connection that opens and closes 10,000 paths, nothing either side keeps
    grows with the number of paths: what they hold after 10,000 is what they held after
    1,000 (issue #13)."""
    net = _connected(tmp_path, client_max_path_id=2, server_max_path_id=2)
    _open_and_abandon(net, 1_000, forgotten_by=net.server)
    net.run(1.0)
    before = {side: _footprint(getattr(net, side)) for side in ("client", "server")}
    *_, last = _open_and_abandon(net, 9_000, forgotten_by=net.server, first=1_000)
    net.run(1.0)
    assert last == 10_000
    for side, sizes in before.items():
        after = _footprint(getattr(net, side))
        grown = {k: (v, after[k]) for k, v in sizes.items() if after.get(k, 0) > max(v, 4)}
        assert not grown, (side, grown)
    assert not net.events("client", ConnectionTerminated)


def test_idle_backup_path_is_kept_alive_while_the_connection_is_in_use(tmp_path: Path) -> None:
    net, path_id = _two_paths(tmp_path)
    net.client.set_path_backup(path_id, True)
    net.run(0.5)
    before = net.server.paths[path_id].stats.packets_received
    for n in range(8):  # the connection is in use (path 0); the backup carries nothing
        net.client.send_ping(n)
        net.run(5.0)
    pings = net.server.paths[path_id].stats.packets_received - before
    assert 2 <= pings <= 4  # one PING per 15 s interval, no more
    assert net.client.paths[path_id].state.value == "active"


def test_keepalives_do_not_keep_an_idle_connection_alive(tmp_path: Path) -> None:
    net, path_id = _two_paths(tmp_path)
    net.client.send_ping(1)
    net.run(0.5)
    assert net.run(120.0, until=lambda: bool(net.events("client", ConnectionTerminated)))
    assert net.server.paths[path_id].stats.packets_received < 6


def test_a_filling_queue_is_no_silence(tmp_path: Path) -> None:
    """Slow start into a deep queue: every packet waits longer than the one before, yet
    each is acknowledged within 9/8 of the latest RTT and the ACKs keep their rhythm:
    no stall, nothing re-injected."""
    links = {
        C1: Link(rate_bps=20e6, delay=0.005, max_queue_s=0.4),
        C2: Link(rate_bps=20e6, delay=0.005, max_queue_s=0.4),
        C3: Link(),
    }
    net, _ = _two_paths(tmp_path, links=links, pmtud=None)
    size = 3 << 20
    sid = _download(net, size)
    assert net.run(30.0, until=lambda: len(net.received.get(sid, b"")) >= size)
    silent = sum(v for k, v in net.server.scheduler.decisions.items() if k[1] == "silent")
    reinjected = sum(p.stats.packets_reinjected for p in net.server.paths.values())
    assert (silent, reinjected) == (0, 0)


def _interactive_beside_bulk(scheduler: str, two_paths: bool) -> tuple[float, int]:
    """The server answers a 1 KB message (30 ms deadline, urgency 1) every 20 ms beside four
    256 KiB bulk downloads kept running, over Wi-Fi (4 ms, 40 Mbit/s, 1 in 200 datagrams
    lost) and optionally cellular (15 ms, 15 Mbit/s). Returns (share of messages on time,
    bulk bytes received) after 2 s. Seeded, with handshakes of fixed sizes: every run replays
    the same packets (a bulk count once moved 17 <-> 20 between runs with the signature size)."""
    links = {
        C1: Link(delay=0.004, rate_bps=40e6, max_queue_s=0.013, drop_every=200),
        C2: Link(delay=0.015, rate_bps=15e6, max_queue_s=0.034),
        C3: Link(),
    }
    with seeded_randomness(1):
        return _run_interactive_beside_bulk(links, scheduler, two_paths)


def _run_interactive_beside_bulk(
    links: dict[NetworkAddress, Link], scheduler: str, two_paths: bool
) -> tuple[float, int]:
    net = memory.make_net(*fixed_configurations(), links=links, scheduler=scheduler)
    assert net.run(2.0, until=lambda: bool(net.events("client", HandshakeCompleted)))
    net.run(0.2)
    if two_paths:
        net.client.open_path(C2, SERVER, net.now)
        assert net.run(2.0, until=lambda: bool(net.events("client", mpe.PathValidated)))
    sizes: dict[int, int] = {}  # stream -> response size
    served: dict[int, float] = {}  # stream -> when the server answered
    bulk: set[int] = set()
    asked_bulk: list[int] = []
    done = net.stream_ends

    def ask(size: int) -> int:
        sid = net.client.get_next_available_stream_id()
        net.client.send_stream_data(sid, b"q", end_stream=True)
        sizes[sid] = size
        if size > 1000:
            asked_bulk.append(sid)
        return sid

    for _ in range(4):
        bulk.add(ask(256 * 1024))
    end, next_message = net.now + 2.0, net.now
    while net.now < end:
        for sid in [s for s in sizes if s not in served]:
            if any(getattr(e, "stream_id", None) == sid for e in net.server_events):
                if sid in bulk:
                    net.server.set_stream_priority(sid, None, 6)
                else:
                    net.server.set_stream_priority(sid, net.now + 0.030, 1)
                net.server.send_stream_data(sid, bytes(sizes[sid]), end_stream=True)
                served[sid] = net.now
        for sid in [s for s in bulk if s in done]:
            bulk.discard(sid)
            bulk.add(ask(256 * 1024))
        if net.now >= next_message:
            ask(1000)
            next_message += 0.020
        net.run(0.002)
    messages = [s for s in served if sizes[s] == 1000]
    on_time = sum(done.get(s, 1e9) - served[s] <= 0.030 for s in messages)
    return on_time / len(messages), sum(len(net.received.get(s, b"")) for s in asked_bulk)


def test_a_second_path_never_costs_urgent_data_and_carries_bulk() -> None:
    """Issue #11's goal without host noise: two paths with the deadline scheduler meet as
    many deadlines as Wi-Fi alone and move far more bulk; by RTT order, cellular takes
    urgent data the moment Wi-Fi's window is full and many messages come late."""
    alone, alone_bulk = _interactive_beside_bulk("deadline", two_paths=False)
    rtt_order, _ = _interactive_beside_bulk("lowest-rtt", two_paths=True)
    deadline, bulk = _interactive_beside_bulk("deadline", two_paths=True)
    assert deadline >= alone - 0.02, (alone, deadline)
    assert deadline >= rtt_order + 0.1, (rtt_order, deadline)
    assert bulk >= 1.3 * alone_bulk, (alone_bulk, bulk)
