"""The fleet front's router beyond the basics (test_forwarder_routing.py): workers down
(their port refused) are routed around; during a QUIC-LB config rotation the current and
the previous configuration route, each by its codepoint; every router does it alike."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_forwarder_routing import FLEET, initial, routers, short_packet

from netsched_client.proto.quic_lb import QuicLbScheme
from netsched_edge.forwarder.routing import DOWN, HostRoute

# Host 1: worker 1 down; host 5: its only worker down; host 9: all up.
WITH_DOWN = (HostRoute(1, (0, DOWN)), HostRoute(5, (DOWN,)), HostRoute(9, (3, 4, 5)))


def _cid(host: int, worker: int) -> bytes:
    return FLEET.encode(bytes([host, worker]), os.urandom(FLEET.nonce_length))


def test_a_down_workers_cids_go_by_hash_to_workers_up() -> None:
    for router in routers(FLEET):
        router.set_routes(WITH_DOWN)
        route = router.route_datagram
        assert {route(short_packet(_cid(1, 0))) for _ in range(20)} == {0}  # up: its own
        for host, worker in ((1, 1), (5, 0)):
            cids = [_cid(host, worker) for _ in range(60)]
            landed = [route(short_packet(cid)) for cid in cids]
            assert set(landed) <= {0, 3, 4, 5} and len(set(landed)) > 1  # spread, never down
            assert landed == [route(short_packet(cid)) for cid in cids]  # always alike
        # A client's Initials never go to host 5 (no worker up) nor to a worker down.
        assert {route(initial(os.urandom(8))) for _ in range(200)} == {0, 3, 4, 5}
        router.set_routes(WITH_DOWN[1:2])  # the only member is down: nowhere to go
        assert route(short_packet(_cid(5, 0))) is None


@settings(max_examples=200, deadline=None)
@given(
    st.builds(initial, st.binary(min_size=8, max_size=20))
    | st.builds(_cid, st.sampled_from([1, 5, 9, 3]), st.integers(0, 3)).map(short_packet),
    st.sampled_from([WITH_DOWN, WITH_DOWN[:2], WITH_DOWN[1:]]),
)
def test_every_router_routes_around_down_workers_alike(
    datagram: bytes, routes: tuple[HostRoute, ...]
) -> None:
    found = set()
    for router in routers(FLEET):
        router.set_routes(routes)
        found.add(router.route_datagram(datagram))
    assert len(found) == 1


# -- config rotation: the current configuration and the previous one, by codepoint --------

NEXT = QuicLbScheme(server_id_length=2, nonce_length=6, config_rotation=1, key=bytes(range(16)))
ROUTES = (HostRoute(1, (0, 1)), HostRoute(5, (2,)), HostRoute(9, (3, 4, 5)))


def _next_cid(host: int, worker: int) -> bytes:
    return NEXT.encode(bytes([host, worker]), os.urandom(NEXT.nonce_length))


def test_both_codepoints_route_during_a_rotation_then_only_the_current_one() -> None:
    for router in routers(FLEET):
        router.set_routes(ROUTES)
        router.set_schemes([NEXT, FLEET])  # rotated: NEXT in force, FLEET still accepted
        assert router.scheme is NEXT and tuple(router.schemes) == (NEXT, FLEET)
        route = router.route_datagram
        for host, worker, backend in ((1, 1, 1), (5, 0, 2), (9, 2, 5)):
            for make in (_cid, _next_cid):  # the 8-byte CIDs and the 9-byte ones
                cids = [make(host, worker) for _ in range(10)]
                assert {route(short_packet(cid)) for cid in cids} == {backend}
                assert {route(initial(cid)) for cid in cids} == {backend}
        old = [_cid(1, 0) for _ in range(60)]
        router.set_schemes([NEXT])  # the grace is over
        assert router.server_id(old[0]) is None
        assert len({route(short_packet(cid)) for cid in old}) > 1  # by hash, like a dead host's
        assert {route(short_packet(_next_cid(5, 0))) for _ in range(10)} == {2}


def test_schemes_are_checked() -> None:
    for router in routers(FLEET):
        with pytest.raises(ValueError, match="one configuration per codepoint"):
            router.set_schemes([FLEET, FLEET])
        with pytest.raises(ValueError, match="2-octet server IDs"):
            router.set_schemes([QuicLbScheme(3, 5, config_rotation=1)])
        with pytest.raises(ValueError, match="needs a configuration"):
            router.set_schemes([])
        assert router.scheme is FLEET  # unchanged


@settings(max_examples=200, deadline=None)
@given(
    st.builds(initial, st.binary(min_size=8, max_size=20))
    | st.builds(_cid, st.sampled_from([1, 5, 9, 3]), st.integers(0, 3)).map(short_packet)
    | st.builds(_next_cid, st.sampled_from([1, 5, 9]), st.integers(0, 3)).map(short_packet)
    | st.binary(max_size=30),
    st.sampled_from([(NEXT, FLEET), (NEXT,), (FLEET, NEXT)]),
)
def test_every_router_routes_two_configurations_alike(
    datagram: bytes, schemes: tuple[QuicLbScheme, ...]
) -> None:
    found = set()
    for router in routers(FLEET):
        router.set_routes(ROUTES)
        router.set_schemes(schemes)
        found.add(router.route_datagram(datagram))
    assert len(found) == 1
