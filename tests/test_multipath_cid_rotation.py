"""Fresh CIDs for every path after a QUIC-LB rotation (docs/FLEET.md, issue #17), in memory
with a fake clock: the edge's connection re-issues path 0's CIDs (NEW_CONNECTION_ID) and
every other path ID's (PATH_NEW_CONNECTION_ID, `reissue_path_cids`) with a Retire Prior To
over the stale ones; our client moves each path to a fresh CID and retires the old ones
(RFC 9000 §5.1.2, per path ID in draft-21); a peer that never retires leaves the edge a
bounded set per path ID."""

from __future__ import annotations

import os
from pathlib import Path

from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted
from mp_harness import C1, C2, C3, NETWORK_PMTUD, SERVER, Link, Net

from netsched_client.proto.connection import NetSchedConnection
from netsched_client.proto.multipath import events as mpe
from netsched_client.proto.multipath.connection import MAX_HELD_PATH_CIDS
from netsched_edge.fleet.reissue import codepoint
from netsched_edge.server import EdgeQuicConnection
from netsched_edge.tls import generate_self_signed
from netsched_lab import memory


class Rotation:
    """The codepoint the CID factory issues under (the fleet's current QUIC-LB config)."""

    def __init__(self) -> None:
        self.issuing = 0

    def cid(self) -> bytes:
        return bytes([self.issuing << 5]) + os.urandom(7)

    def stale(self, cid: bytes) -> bool:
        return codepoint(cid) != self.issuing


def _two_paths(tmp_path: Path, rotation: Rotation) -> tuple[Net, EdgeQuicConnection]:
    """Our client and the edge's connection, both issuing CIDs under `rotation`, with a
    second path validated from C2."""
    pair = generate_self_signed(tmp_path)
    client_cfg, server_cfg = memory.quic_configurations(
        pair.ca_certificate, pair.certificate, pair.private_key
    )
    options = {"max_path_id": 3, "pmtud": NETWORK_PMTUD, "cid_factory": rotation.cid}
    client = NetSchedConnection(configuration=client_cfg, **options)
    server = EdgeQuicConnection(
        configuration=server_cfg,
        original_destination_connection_id=client.original_destination_connection_id,
        **options,
    )
    net = Net(client, server, {C1: Link(), C2: Link(), C3: Link()})
    client.connect(SERVER, now=net.now)
    assert net.run(2.0, until=lambda: bool(net.events("client", HandshakeCompleted)))
    net.run(0.2)  # HANDSHAKE_DONE, CIDs for the path IDs ahead
    assert client.open_path(C2, SERVER, net.now) == 1
    assert net.run(2.0, until=lambda: bool(net.events("client", mpe.PathValidated)))
    return net, server


def _request(net: Net, size: int) -> None:
    """A request and its answer of `size` bytes, over whichever paths the scheduler picks."""
    sid = net.client.get_next_available_stream_id()
    net.client.send_stream_data(sid, b"get", end_stream=True)
    assert net.run(1.0, until=lambda: any(getattr(e, "stream_id", None) == sid
                                          for e in net.server_events))  # fmt: skip
    net.server.send_stream_data(sid, bytes(size), end_stream=True)
    assert net.run(5.0, until=lambda: sid in net.stream_ends)


def _codepoints(cids: tuple[bytes, ...]) -> set[int]:
    return {codepoint(c) for c in cids}


def test_every_path_moves_to_fresh_cids_and_the_old_ones_are_retired(tmp_path: Path) -> None:
    rotation = Rotation()
    net, server = _two_paths(tmp_path, rotation)
    client = net.client
    ahead = sorted(set(range(2, 4)) - set(server.paths))  # path IDs issued ahead
    assert ahead == [2, 3] and all(server.path_cids(p).host for p in ahead)
    for to in (1, 2):
        rotation.issuing = to
        assert server.reissue_cids(rotation.stale) == 8  # path 0: aioquic's 8
        # Path 1's two and two for each path ID issued ahead, as many as were stale.
        assert server.reissue_path_cids(rotation.stale) == 2 + 2 * len(ahead)
        assert server.reissue_path_cids(rotation.stale) == 0  # nothing stale left
        _request(net, 300_000)
        for path_id in (0, 1):
            sent_to = client.path_cids(path_id).peer_in_use
            assert sent_to is not None and codepoint(sent_to) == to, path_id
            seen = server.path_cids(path_id)
            assert seen.host_in_use is not None and codepoint(seen.host_in_use) == to
        # The client retired every stale CID: the edge holds only fresh ones, the path IDs
        # issued ahead included.
        for path_id in (0, 1, *ahead):
            assert _codepoints(server.path_cids(path_id).host) == {to}, path_id
        for path_id in (0, 1):  # the edge still sends to CIDs the client holds
            assert server.path_cids(path_id).peer_in_use in client.path_cids(path_id).host
    assert all(p["bytes_received"] > 0 for p in client.path_info())
    assert not net.events("client", ConnectionTerminated)
    assert not net.events("client", mpe.PathAbandoned)


def test_a_peer_that_never_retires_leaves_each_path_id_a_bounded_set(tmp_path: Path) -> None:
    """Nothing reaches the client between rotations: the edge forgets the CIDs it asked to
    have retired beyond MAX_HELD_PATH_CIDS per path ID, never the one the client uses."""
    rotation = Rotation()
    net, server = _two_paths(tmp_path, rotation)
    path_ids = (1, 2, 3)
    in_use = server.path_cids(1).host_in_use
    largest = 0
    for n in range(1, 16):
        rotation.issuing = n % 7
        assert server.reissue_path_cids(rotation.stale) == 2 * len(path_ids)
        held = [len(server.path_cids(p).host) for p in path_ids]
        largest = max(largest, *held)
        assert largest <= MAX_HELD_PATH_CIDS, (n, held)
        assert in_use in server.path_cids(1).host
    assert largest == MAX_HELD_PATH_CIDS  # reached, then held there
    # Once heard, the client still retires what it was asked to and goes on.
    _request(net, 100_000)
    assert _codepoints(server.path_cids(1).host) == {rotation.issuing}
    assert not net.events("client", ConnectionTerminated)


def test_a_cid_given_up_on_another_path_is_retired_on_that_path(tmp_path: Path) -> None:
    """aioquic queues a CID it stops using (`change_connection_id`, and the switch it makes
    when the peer switched) for RETIRE_CONNECTION_ID, which names path 0's CIDs: on path 1
    that retired path 0's CID of the same sequence number (the request then stalled) and
    kept path 1's. It goes in PATH_RETIRE_CONNECTION_ID for path 1 instead."""
    net, server = _two_paths(tmp_path, Rotation())
    client = net.client
    path0 = server.path_cids(0).host
    before = client.path_cids(1).peer_in_use
    with client._on_path(client.paths[1]):  # what aioquic does on the path swapped in
        client.change_connection_id()
    assert client.path_cids(1).peer_in_use != before
    _request(net, 100_000)
    assert before not in server.path_cids(1).host  # retired, on its own path
    assert server.path_cids(0).host == path0  # path 0's untouched
    assert server.path_cids(1).host_in_use == client.path_cids(1).peer_in_use
    assert not net.events("client", ConnectionTerminated)


def test_a_reissue_whose_datagrams_are_lost_is_sent_again(tmp_path: Path) -> None:
    """The flush carrying the PATH_NEW_CONNECTION_IDs reaches nobody: they are declared lost
    and announced again, with their Retire Prior To, and the client still moves."""
    rotation = Rotation()
    net, server = _two_paths(tmp_path, rotation)
    rotation.issuing = 1
    assert server.reissue_path_cids(rotation.stale) == 6
    links = [net.links[C1], net.links[C2]]
    before = [link.sent for link in links]
    for link in links:
        link.up = False
    net.run(0.05)
    assert sum(link.sent for link in links) > sum(before)  # the frames went, and were dropped
    for link in links:
        link.up = True
    _request(net, 100_000)
    net.run(1.0)
    sent_to = net.client.path_cids(1).peer_in_use
    assert sent_to is not None and codepoint(sent_to) == 1
    for path_id in (1, 2, 3):
        assert _codepoints(server.path_cids(path_id).host) == {1}, path_id
    assert not net.events("client", ConnectionTerminated)
