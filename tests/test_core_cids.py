"""Connection-ID bookkeeping per path ID (#16 stage 4): RFC 9000 §5.1, §19.15, §19.16 and
draft-ietf-quic-multipath-21's per-path sequence numbers and limits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netsched_client.core.cids import (
    PENDING_RETIREMENTS_FACTOR,
    ConnectionId,
    LocalCids,
    PeerCids,
)
from netsched_client.core.errors import ConnectionIdLimitError, FrameError, ProtocolViolation


def cid(path_id: int, sequence: int) -> bytes:
    return bytes([path_id, sequence % 256, sequence // 256, 0xC1])


def token(path_id: int, sequence: int) -> bytes:
    return cid(path_id, sequence) * 4


def new(peer: PeerCids, path_id: int, sequence: int, retire_prior_to: int = 0) -> list[int]:
    return peer.on_new_cid(
        path_id, sequence, cid(path_id, sequence), token(path_id, sequence), retire_prior_to
    )


# -- our IDs -------------------------------------------------------------------------------------


def test_issued_ids_number_per_path_up_to_the_peers_limit() -> None:
    local = LocalCids(peer_limit=3)
    first = [local.issue(0, cid(0, n), token(0, n)) for n in range(3)]
    assert [issued.sequence for issued in first] == [0, 1, 2]
    assert local.room(0) == 0
    with pytest.raises(ConnectionIdLimitError):
        local.issue(0, cid(0, 3), token(0, 3))
    assert local.issue(1, cid(1, 0), token(1, 0)) == ConnectionId(1, 0, cid(1, 0), token(1, 0))
    assert local.lookup(cid(0, 2)) == first[2]
    assert local.lookup(b"none") is None


def test_the_limit_is_at_least_two() -> None:
    assert LocalCids(peer_limit=0).peer_limit == 2
    assert PeerCids(limit=1).limit == 2


def test_an_id_is_issued_once() -> None:
    local = LocalCids()
    local.issue(0, cid(0, 0), token(0, 0))
    with pytest.raises(ValueError):
        local.issue(1, cid(0, 0), token(0, 0))


@pytest.mark.parametrize(
    ("path_id", "value", "reset_token"),
    [
        (0, b"", b"t" * 16),
        (0, b"c" * 21, b"t" * 16),
        (0, b"c", b"t" * 15),
        (2**32, b"c", b"t" * 16),
    ],
)
def test_malformed_ids_are_frame_errors(path_id: int, value: bytes, reset_token: bytes) -> None:
    with pytest.raises(FrameError):
        LocalCids().issue(path_id, value, reset_token)
    with pytest.raises(FrameError):
        PeerCids(max_path_id=2**32).on_new_cid(path_id, 0, value, reset_token, 0)


def test_the_peer_retires_our_ids_and_room_opens() -> None:
    local = LocalCids(peer_limit=2)
    local.issue(0, cid(0, 0), token(0, 0))
    local.issue(0, cid(0, 1), token(0, 1))
    retired = local.on_retire(0, 0, packet_dcid=cid(0, 1))
    assert retired is not None and retired.sequence == 0
    assert local.lookup(cid(0, 0)) is None
    assert local.room(0) == 1
    assert local.on_retire(0, 0, packet_dcid=cid(0, 1)) is None  # a repeat
    assert [issued.sequence for issued in local.active(0)] == [1]


def test_retiring_an_unissued_sequence_or_the_packets_own_id_violates() -> None:
    local = LocalCids()
    local.issue(0, cid(0, 0), token(0, 0))
    with pytest.raises(ProtocolViolation):
        local.on_retire(0, 1, packet_dcid=b"x")
    with pytest.raises(ProtocolViolation):
        local.on_retire(5, 0, packet_dcid=b"x")
    with pytest.raises(ProtocolViolation):
        local.on_retire(0, 0, packet_dcid=cid(0, 0))


def test_removing_a_local_path_returns_its_ids() -> None:
    local = LocalCids()
    local.issue(3, cid(3, 0), token(3, 0))
    local.issue(3, cid(3, 1), token(3, 1))
    assert [issued.cid for issued in local.remove_path(3)] == [cid(3, 0), cid(3, 1)]
    assert local.lookup(cid(3, 0)) is None
    assert local.remove_path(3) == []


# -- the peer's IDs ------------------------------------------------------------------------------


def test_peer_ids_are_kept_per_path_and_chosen_lowest_first() -> None:
    peer = PeerCids(limit=2, max_path_id=1)
    assert new(peer, 0, 0) == []
    assert new(peer, 0, 1) == []
    assert new(peer, 1, 0) == []
    assert peer.choose(0) == ConnectionId(0, 0, cid(0, 0), token(0, 0))
    chosen = peer.choose(0)
    assert chosen is not None and chosen.sequence == 1
    assert peer.choose(0) is None  # every ID of path 0 is in use
    assert peer.choose(7) is None
    assert [c.sequence for c in peer.in_use(0)] == [0, 1]


def test_a_repeated_frame_is_ignored() -> None:
    peer = PeerCids()
    new(peer, 0, 0)
    assert new(peer, 0, 0) == []
    assert len(peer.active(0)) == 1


def test_past_the_limit_is_connection_id_limit_error() -> None:
    peer = PeerCids(limit=2)
    new(peer, 0, 0)
    new(peer, 0, 1)
    with pytest.raises(ConnectionIdLimitError):
        new(peer, 0, 2)


def test_the_limit_counts_after_retire_prior_to() -> None:
    """§5.1.2: IDs that Retire Prior To retires do not count against the limit."""
    peer = PeerCids(limit=2)
    new(peer, 0, 0)
    new(peer, 0, 1)
    assert new(peer, 0, 2, retire_prior_to=1) == [0]
    assert [c.sequence for c in peer.active(0)] == [1, 2]
    assert peer.pending_retirements(0) == [0]


def test_retire_prior_to_retires_ids_in_use() -> None:
    peer = PeerCids(limit=4)
    for sequence in range(3):
        new(peer, 0, sequence)
    assert peer.choose(0) is not None
    assert new(peer, 0, 3, retire_prior_to=3) == [0, 1, 2]
    assert peer.in_use(0) == []
    chosen = peer.choose(0)
    assert chosen is not None and chosen.sequence == 3


def test_an_id_below_retire_prior_to_is_retired_unused() -> None:
    """§5.1.2: a late NEW_CONNECTION_ID below Retire Prior To is retired at once, once."""
    peer = PeerCids(limit=2)
    new(peer, 0, 3, retire_prior_to=2)
    assert new(peer, 0, 1) == [1]
    assert new(peer, 0, 1) == []
    assert [c.sequence for c in peer.active(0)] == [3]


def test_a_stale_retire_prior_to_changes_nothing() -> None:
    peer = PeerCids(limit=3)
    new(peer, 0, 2, retire_prior_to=2)
    assert new(peer, 0, 3, retire_prior_to=1) == []
    assert [c.sequence for c in peer.active(0)] == [2, 3]


def test_retire_prior_to_above_the_sequence_is_a_frame_error() -> None:
    with pytest.raises(FrameError):
        new(PeerCids(), 0, 1, retire_prior_to=2)


def test_retire_prior_to_is_per_path() -> None:
    peer = PeerCids(limit=2, max_path_id=1)
    new(peer, 0, 0)
    new(peer, 1, 0)
    assert new(peer, 1, 1, retire_prior_to=1) == [0]
    assert [c.sequence for c in peer.active(0)] == [0]


def test_a_path_id_above_our_maximum_violates() -> None:
    with pytest.raises(ProtocolViolation):
        new(PeerCids(max_path_id=2), 3, 0)


def test_changed_sequence_or_reused_id_violates() -> None:
    peer = PeerCids(limit=4, max_path_id=1)
    new(peer, 0, 0)
    with pytest.raises(ProtocolViolation):
        peer.on_new_cid(0, 0, b"other", token(0, 0), 0)
    with pytest.raises(ProtocolViolation):
        peer.on_new_cid(0, 0, cid(0, 0), b"t" * 16, 0)
    with pytest.raises(ProtocolViolation):
        peer.on_new_cid(0, 1, cid(0, 0), token(0, 1), 0)
    with pytest.raises(ProtocolViolation):
        peer.on_new_cid(1, 0, cid(0, 0), token(0, 0), 0)


def test_migration_retires_the_old_id_and_a_repeat_does_not_revive_it() -> None:
    peer = PeerCids(limit=2)
    new(peer, 0, 0)
    new(peer, 0, 1)
    old = peer.choose(0)
    assert old is not None
    peer.retire(0, old.sequence)
    assert peer.pending_retirements(0) == [0]
    chosen = peer.choose(0)
    assert chosen is not None and chosen.sequence == 1
    assert new(peer, 0, 0) == []
    assert [c.sequence for c in peer.active(0)] == [1]
    peer.on_retire_acked(0, 0)
    assert peer.pending_retirements(0) == []
    with pytest.raises(ValueError):
        peer.retire(0, 0)


def test_too_many_retirements_pending_is_connection_id_limit_error() -> None:
    """§5.1.2: retirements are bounded at twice the limit; a peer forcing more is cut off."""
    peer = PeerCids(limit=2)
    bound = PENDING_RETIREMENTS_FACTOR * peer.limit
    for sequence in range(bound):
        new(peer, 0, sequence + 1, retire_prior_to=sequence + 1)
    assert len(peer.pending_retirements(0)) == bound - 1
    new(peer, 0, bound + 1, retire_prior_to=bound + 1)
    with pytest.raises(ConnectionIdLimitError):
        new(peer, 0, bound + 2, retire_prior_to=bound + 2)


def test_stateless_reset_tokens_of_ids_in_use_match() -> None:
    peer = PeerCids(limit=2)
    new(peer, 0, 0)
    new(peer, 0, 1)
    assert not peer.is_stateless_reset(token(0, 0))  # not in use yet
    assert peer.choose(0) is not None
    assert peer.is_stateless_reset(token(0, 0))
    assert not peer.is_stateless_reset(token(0, 1))


def test_a_removed_peer_path_forgets_its_ids_and_ignores_late_ones() -> None:
    peer = PeerCids(limit=2, max_path_id=1)
    new(peer, 1, 0)
    assert peer.choose(1) is not None
    peer.remove_path(1)
    assert peer.active(1) == []
    assert not peer.is_stateless_reset(token(1, 0))
    assert new(peer, 1, 1) == []
    assert peer.active(1) == []
    assert new(peer, 0, 0) == []  # other paths go on


# -- random frame sequences ----------------------------------------------------------------------

_peer_ops = st.lists(
    st.one_of(
        st.tuples(st.just("new"), st.integers(0, 2), st.integers(0, 12), st.integers(0, 12)),
        st.tuples(st.just("choose"), st.integers(0, 2), st.just(0), st.just(0)),
        st.tuples(st.just("retire"), st.integers(0, 2), st.integers(0, 12), st.just(0)),
        st.tuples(st.just("acked"), st.integers(0, 2), st.integers(0, 12), st.just(0)),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(st.integers(2, 4), _peer_ops)
def test_peer_ids_keep_their_invariants(
    limit: int, operations: list[tuple[str, int, int, int]]
) -> None:
    """Any frame sequence: never more active IDs than the limit per path, IDs in use
    are active, nothing below Retire Prior To stays, every retired ID is reported once;
    a violation is one of the core's errors and ends the connection (the test stops)."""
    peer = PeerCids(limit=limit, max_path_id=2)
    retired: set[tuple[int, int]] = set()
    floor = {path_id: 0 for path_id in range(3)}
    for name, path_id, sequence, extra in operations:
        try:
            if name == "new":
                rpt = min(extra, sequence)
                reported = new(peer, path_id, sequence, rpt)
                floor[path_id] = max(floor[path_id], rpt)
                assert not retired & {(path_id, s) for s in reported}
                retired |= {(path_id, s) for s in reported}
            elif name == "choose":
                peer.choose(path_id)
            elif name == "retire":
                if sequence in {c.sequence for c in peer.active(path_id)}:
                    peer.retire(path_id, sequence)
                    assert (path_id, sequence) not in retired
                    retired.add((path_id, sequence))
            else:
                peer.on_retire_acked(path_id, sequence)
        except (ConnectionIdLimitError, ProtocolViolation):
            return
        for p in range(3):
            active = {c.sequence for c in peer.active(p)}
            assert len(active) <= limit
            assert {c.sequence for c in peer.in_use(p)} <= active
            assert all(s >= floor[p] for s in active)
            assert not active & {s for q, s in retired if q == p}
            assert len(peer.pending_retirements(p)) <= PENDING_RETIREMENTS_FACTOR * limit
