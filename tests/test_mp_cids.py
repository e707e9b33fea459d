"""The peer's connection IDs per path ID (RFC 9000 §5.1.1, §19.15; draft-21 per path).

First the pure rule (`cids.receive_cid`), with a property test that plays a
peer issuing CIDs by the rules, its frames duplicated and reordered; then the
connection: NEW_CONNECTION_ID and PATH_NEW_CONNECTION_ID for path 0 mixed, a
Retire Prior To that replaces every CID at once (what picoquic's client sent
when it opened its second path, issue #13), and path IDs not in use yet.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import pytest
from aioquic.buffer import Buffer, encode_uint_var
from aioquic.quic.connection import QuicConnectionId, QuicReceiveContext
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted
from aioquic.quic.packet import QuicErrorCode
from aioquic.tls import Epoch
from hypothesis import given, settings
from hypothesis import strategies as st
from mp_harness import Net, make_net

from netsched_client.proto.multipath import frames as mpf
from netsched_client.proto.multipath.cids import (
    CidConflictError,
    CidLimitError,
    PeerCids,
    receive_cid,
)
from netsched_client.proto.multipath.connection import MAX_PEER_CIDS_PER_PATH
from netsched_client.proto.multipath.path import UsedPathIds

LIMIT = MAX_PEER_CIDS_PER_PATH


def cid(seq: int, salt: bytes = b"") -> QuicConnectionId:
    """The peer's CID number `seq` (same seq, same bytes, unless salted)."""
    raw = seq.to_bytes(8, "big")
    return QuicConnectionId(cid=raw + salt, sequence_number=seq, stateless_reset_token=raw * 2)


def seqs(cids: PeerCids) -> list[int]:
    return [c.sequence_number or 0 for c in cids.held()]


# -- the rule ----------------------------------------------------------------------------------


def test_retire_prior_to_is_applied_before_counting() -> None:
    full = PeerCids(cid(0), tuple(cid(s) for s in range(1, LIMIT)))
    update = receive_cid(full, cid(LIMIT), retire_prior_to=1, limit=LIMIT)
    assert seqs(update.cids) == list(range(1, LIMIT + 1))
    assert update.retire == (0,)
    assert update.cids.current == cid(1)  # the one in use was retired: the next takes over


def test_more_than_the_limit_without_retiring_is_an_error() -> None:
    full = PeerCids(cid(0), tuple(cid(s) for s in range(1, LIMIT)))
    with pytest.raises(CidLimitError):
        receive_cid(full, cid(LIMIT), retire_prior_to=0, limit=LIMIT)


def test_a_repeat_changes_nothing_and_a_changed_repeat_is_a_violation() -> None:
    cids = PeerCids(cid(0), (cid(1), cid(2)))
    assert receive_cid(cids, cid(2), 0, LIMIT).cids == cids
    with pytest.raises(CidConflictError):
        receive_cid(cids, cid(2, salt=b"x"), 0, LIMIT)


def test_a_late_cid_below_retire_prior_to_is_retired_unused() -> None:
    cids = receive_cid(PeerCids(cid(0), ()), cid(5), 5, LIMIT).cids
    update = receive_cid(cids, cid(3), 0, LIMIT)  # sent before the jump, arrived after it
    assert seqs(update.cids) == [5] and update.retire == (3,)


def test_a_path_id_not_in_use_keeps_only_spares() -> None:
    pool = PeerCids(None, (cid(0), cid(1)))
    update = receive_cid(pool, cid(2), 2, LIMIT)
    assert update.cids.current is None and seqs(update.cids) == [2]
    assert update.retire == (0, 1)


@st.composite
def issued(draw: st.DrawFn, *, valid: bool) -> list[tuple[int, int]]:
    """(sequence, retire_prior_to) per NEW_CONNECTION_ID a peer sends; `valid`: one that
    never asks us to hold more than LIMIT (it may go over if Retire Prior To retires the
    excess, §5.1.1)."""
    frames, rpt = [], 0
    for seq in range(1, draw(st.integers(1, 40))):
        lowest = max(rpt, seq - LIMIT + 1) if valid else rpt
        rpt = draw(st.integers(lowest, seq))
        frames.append((seq, rpt))
    return frames


@st.composite
def delivered(draw: st.DrawFn, valid: bool) -> list[tuple[int, int]]:
    """The frames as the network delivers them: reordered, some twice, some lost."""
    frames = draw(issued(valid=valid))
    kept = [f for f in frames if draw(st.integers(0, 9)) > 0]
    repeats = draw(st.lists(st.sampled_from(frames), max_size=10)) if frames else []
    return draw(st.permutations(kept + repeats))


def _play(frames: list[tuple[int, int]]) -> tuple[PeerCids, set[int]]:
    """Deliver the frames; check the invariants after each; the end state and what was
    retired."""
    cids, retired, rpt_seen, got = PeerCids(cid(0), ()), set[int](), 0, {0}
    for seq, rpt in frames:
        update = receive_cid(cids, cid(seq), rpt, LIMIT)
        rpt_seen, got = max(rpt_seen, rpt), got | {seq}
        cids = update.cids
        assert cids.active <= LIMIT
        assert cids.current is not None and min(seqs(cids)) >= rpt_seen
        assert not retired & set(seqs(cids)), "a retired CID is in use again"
        retired |= set(update.retire)
        assert set(seqs(cids)) == {s for s in got if s >= rpt_seen}
    return cids, retired


@settings(max_examples=400, deadline=None)
@given(delivered(valid=True))
def test_a_peer_within_the_rules_is_never_refused(frames: list[tuple[int, int]]) -> None:
    cids, retired = _play(frames)
    rpt = cids.retire_prior_to
    # Every CID below Retire Prior To that reached us was retired, none twice in use.
    reached = {0} | {seq for seq, _ in frames}
    assert {s for s in reached if s < rpt} <= retired


@settings(max_examples=300, deadline=None)
@given(delivered(valid=False))
def test_errors_only_for_real_violations(frames: list[tuple[int, int]]) -> None:
    cids, got, rpt_seen = PeerCids(cid(0), ()), {0}, 0
    for seq, rpt in frames:
        rpt_seen, got = max(rpt_seen, rpt), got | {seq}
        active = len({s for s in got if s >= rpt_seen})
        if active > LIMIT:
            with pytest.raises(CidLimitError):
                receive_cid(cids, cid(seq), rpt, LIMIT)
            return
        cids = receive_cid(cids, cid(seq), rpt, LIMIT).cids


@given(st.lists(st.integers(0, 300), max_size=400))
def test_used_path_ids_stay_small_and_never_forget(ids: list[int]) -> None:
    used = UsedPathIds()
    for path_id in ids:
        used.add(path_id)
        assert path_id in used
    assert all(i in used for i in ids)
    assert len(used._above) <= UsedPathIds.MAX_ABOVE
    assert len(used) >= len(set(ids))


# -- the connection ----------------------------------------------------------------------------


def _connected(tmp_path: Path, **options: object) -> Net:
    net = make_net(tmp_path, **options)
    assert net.run(2.0, until=lambda: bool(net.events("client", HandshakeCompleted)))
    net.run(0.2)
    return net


def _path0_cids(net: Net) -> list[int]:
    client = net.client
    with client._on_path(client.paths[0]):
        held = [client._peer_cid, *client._peer_cid_available]
    return sorted(c.sequence_number or 0 for c in held)


def _server_issues_path0_cid(net: Net, retire_prior_to: int | None = None) -> int:
    """The server issues path 0 a new CID by PATH_NEW_CONNECTION_ID; retire_prior_to None:
    its sequence number (every earlier one is to be retired). The new sequence number."""
    server = net.server
    path0 = server.paths[0]
    seq = server._next_host_seq(path0)
    new = server._make_host_cid(0, seq)
    server._attr(path0, "_host_cids").append(new)
    frame = server._announce.pop()
    rpt = seq if retire_prior_to is None else retire_prior_to
    server._announce.append(dataclasses.replace(frame, retire_prior_to=rpt))
    return seq


def _transfer_works(net: Net) -> None:
    sid = net.client.get_next_available_stream_id()
    net.client.send_stream_data(sid, b"get", end_stream=True)
    net.run(1.0, until=lambda: any(getattr(e, "stream_id", None) == sid for e in net.server_events))
    net.server.send_stream_data(sid, b"x" * 200_000, end_stream=True)
    assert net.run(10.0, until=lambda: len(net.received.get(sid, b"")) >= 200_000)


def test_path0_cids_replaced_at_once_while_the_client_holds_its_limit(tmp_path: Path) -> None:
    """The server sends a PATH_NEW_CONNECTION_ID for path 0 whose Retire Prior To retires
    every CID it issued before, while the client holds the maximum: within the limit
    once the old ones are retired (before the fix: CONNECTION_ID_LIMIT_ERROR)."""
    net = _connected(tmp_path)
    before = _path0_cids(net)
    assert len(before) == LIMIT  # aioquic's NEW_CONNECTION_IDs filled the client's limit
    seq = _server_issues_path0_cid(net)
    net.run(0.5)
    assert not net.events("client", ConnectionTerminated)
    assert _path0_cids(net) == [seq]
    live = {c.sequence_number for c in net.server._attr(net.server.paths[0], "_host_cids")}
    assert not live & set(before), "the client did not retire the old CIDs"
    _transfer_works(net)


def test_new_connection_id_and_path_new_connection_id_mixed_on_path0(tmp_path: Path) -> None:
    """A CID the server issued by NEW_CONNECTION_ID comes again by PATH_NEW_CONNECTION_ID
    for path 0 (the same CID: a repeat), then a different CID under a used number."""
    net = _connected(tmp_path)
    client = net.client
    with client._on_path(client.paths[0]):
        known = client._peer_cid_available[-1]
    repeat = mpf.PathNewConnectionId(
        0, known.sequence_number, 0, known.cid, known.stateless_reset_token
    )
    client._on_peer_cid(repeat)
    assert _path0_cids(net) == list(range(LIMIT))
    clash = dataclasses.replace(repeat, cid=os.urandom(8))
    with pytest.raises(Exception) as caught:
        client._on_peer_cid(clash)
    assert caught.value.error_code == QuicErrorCode.PROTOCOL_VIOLATION  # type: ignore[attr-defined]


def test_a_new_connection_id_below_path0s_retire_prior_to_is_retired(tmp_path: Path) -> None:
    """After a PATH_NEW_CONNECTION_ID moved path 0's Retire Prior To, a late
    NEW_CONNECTION_ID below it is retired at once and never used (RFC 9000 §19.15)."""
    net = _connected(tmp_path)
    seq = _server_issues_path0_cid(net)
    net.run(0.5)
    client = net.client
    late = seq - 1
    body = encode_uint_var(late) + encode_uint_var(0) + bytes([8]) + os.urandom(8) + os.urandom(16)
    context = QuicReceiveContext(
        epoch=Epoch.ONE_RTT,
        host_cid=b"",
        network_path=client._network_paths[0],
        quic_logger_frames=None,
        time=net.now,
        version=None,
    )
    client._handle_new_connection_id_frame(context, 0x18, Buffer(data=body))
    assert _path0_cids(net) == [seq]
    with client._on_path(client.paths[0]):
        assert late in client._retire_connection_ids
    assert not net.events("client", ConnectionTerminated)


def test_a_peer_over_the_limit_on_a_path_id_not_in_use_is_refused(tmp_path: Path) -> None:
    net = _connected(tmp_path)
    client = net.client
    path_id = max(client._peer_pool)
    first = len(client._peer_pool[path_id])
    with pytest.raises(Exception) as caught:
        for seq in range(first, first + LIMIT):
            client._on_peer_cid(mpf.PathNewConnectionId(path_id, seq, 0, os.urandom(8), bytes(16)))
    assert caught.value.error_code == QuicErrorCode.CONNECTION_ID_LIMIT_ERROR  # type: ignore[attr-defined]
    # Within the limit thanks to Retire Prior To: accepted, the retired ones announced.
    net = _connected(tmp_path / "again")
    client = net.client
    before = len(client._control)
    for seq in range(first, first + LIMIT):
        client._on_peer_cid(
            mpf.PathNewConnectionId(path_id, seq, seq - 1, os.urandom(8), bytes(16))
        )
    assert [c.sequence_number for c in client._peer_pool[path_id]] == [
        first + LIMIT - 2,
        first + LIMIT - 1,
    ]
    retired = [
        f for f in list(client._control)[before:] if isinstance(f, mpf.PathRetireConnectionId)
    ]
    assert sorted(f.sequence for f in retired) == list(range(first + LIMIT - 2))


def test_every_cid_the_server_issues_carries_the_reset_token_of_its_key(tmp_path: Path) -> None:
    """With `reset_token` (the edge's shared key), every CID's stateless reset token is
    derived from the CID (RFC 9000 §10.3): the handshake's, NEW_CONNECTION_ID's and
    PATH_NEW_CONNECTION_ID's alike, so any worker of the edge can reset the connection."""

    def token(raw: bytes) -> bytes:
        return hashlib.sha256(b"shared key" + raw).digest()[:16]

    net = _connected(tmp_path, reset_token=token)
    client = net.client
    seen = []
    with client._on_path(client.paths[0]):
        seen += [client._peer_cid, *client._peer_cid_available]  # the first: by parameter
    for pool in client._peer_pool.values():
        seen += pool
    assert len(seen) > LIMIT  # path 0's and the pooled path IDs'
    assert all(c.stateless_reset_token == token(c.cid) for c in seen)
