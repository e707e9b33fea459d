"""The fleet front's router beyond the basics (test_forwarder_routing.py): workers down
(their port refused) are routed around, and every router does it alike."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from test_forwarder_routing import FLEET, initial, routers, short_packet

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
