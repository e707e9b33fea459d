"""The fleet front's routing by connection ID: the C router (AES-NI) against quic_lb.py and
the pure-Python router, and a routed relay on loopback sockets (both relays)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_quic_lb import ENCRYPTED_VECTORS, VECTOR_KEY

from netsched_client.proto.quic_lb import QuicLbScheme
from netsched_edge.forwarder import HAVE_NATIVE, PyQuicLbRouter, PyUdpRelay, UdpRelay
from netsched_edge.forwarder.routing import HostRoute, rendezvous_seed

if HAVE_NATIVE:
    from netsched_edge.forwarder._relay import QuicLbRouter

needs_native = pytest.mark.skipif(not HAVE_NATIVE, reason="Cython extension not built")
Router = Any  # QuicLbRouter or PyQuicLbRouter
FLEET = QuicLbScheme(server_id_length=2, nonce_length=5, key=VECTOR_KEY)  # the fleet's CIDs
SEED = rendezvous_seed(VECTOR_KEY)
ROUTES = (HostRoute(1, (0, 1)), HostRoute(5, (2,)), HostRoute(9, (3, 4, 5)))


def routers(scheme: QuicLbScheme) -> list[Router]:
    """The C router with AES-NI, without (quic_lb.py inside), and the Python one."""
    found: list[Router] = [PyQuicLbRouter(scheme, SEED)]
    if HAVE_NATIVE:
        found += [QuicLbRouter(scheme, SEED), QuicLbRouter(scheme, SEED, native_aes=False)]
    return found


def short_packet(cid: bytes) -> bytes:
    return bytes([0x40]) + cid + b"\x00" * 20


def initial(dcid: bytes) -> bytes:
    return bytes([0xC0]) + b"\x00\x00\x00\x01" + bytes([len(dcid)]) + dcid + b"\x08" + bytes(30)


@needs_native
@pytest.mark.parametrize(("rotation", "sid", "nonce", "cid"), ENCRYPTED_VECTORS)
def test_the_draft_vectors_decrypt_in_c(rotation: int, sid: str, nonce: str, cid: str) -> None:
    scheme = QuicLbScheme(len(sid) // 2, len(nonce) // 2, rotation, VECTOR_KEY)
    router = QuicLbRouter(scheme, SEED)
    assert router.native_aes  # this machine has AES-NI: the C path is the one tested
    assert router.server_id(bytes.fromhex(cid)) == bytes.fromhex(sid)


@needs_native
def test_the_draft_worked_example_and_plaintext_decrypt_in_c() -> None:
    key = bytes.fromhex("fdf726a9893ec05c0632d3956680baf0")
    worked = QuicLbScheme(server_id_length=3, nonce_length=4, key=key)
    assert QuicLbRouter(worked, 0).server_id(bytes.fromhex("0767947d29be054a")) == bytes.fromhex(
        "31441a"
    )
    plain = QuicLbScheme(server_id_length=3, nonce_length=4)
    assert QuicLbRouter(plain, 0).server_id(bytes.fromhex("07c4605e4504cc4f")) == bytes.fromhex(
        "c4605e"
    )


@st.composite
def scheme_and_cid(draw: st.DrawFn) -> tuple[QuicLbScheme, bytes]:
    sid = draw(st.integers(1, 15))
    nonce = draw(st.integers(4, 19 - sid))
    key = draw(st.none() | st.binary(min_size=16, max_size=16))
    scheme = QuicLbScheme(sid, nonce, draw(st.integers(0, 6)), key)
    tail = draw(st.binary(min_size=scheme.plaintext_length, max_size=scheme.plaintext_length + 3))
    first = draw(st.sampled_from([scheme.first_octet(), draw(st.integers(0, 255))]))
    return scheme, bytes([first]) + tail


@needs_native
@settings(max_examples=400, deadline=None)
@given(scheme_and_cid())
def test_c_decryption_equals_quic_lb_on_random_cids(case: tuple[QuicLbScheme, bytes]) -> None:
    """Every length pair (single pass at 16 bytes, four passes otherwise, the fourth when
    the server ID reaches the right half), with and without a key, other codepoints."""
    scheme, cid = case
    for router in routers(scheme):
        assert router.server_id(cid) == scheme.server_id(cid)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=40)
    | st.builds(initial, st.binary(max_size=22))
    | st.builds(short_packet, st.binary(min_size=8, max_size=8)),
    st.sampled_from([(), ROUTES[:1], ROUTES]),
)
def test_every_router_routes_a_datagram_alike(datagram: bytes, routes: tuple[HostRoute]) -> None:
    found = set()
    for router in routers(FLEET):
        router.set_routes(routes)
        found.add(router.route_datagram(datagram))
    assert len(found) == 1


@pytest.mark.parametrize("router", routers(FLEET), ids=type)
def test_a_members_cids_reach_its_workers_and_others_go_by_hash(router: Router) -> None:
    route = router.route_datagram
    router.set_routes(ROUTES)
    for host in ROUTES:
        for worker, backend in enumerate(host.backends):
            cids = [FLEET.encode(bytes([host.host_id, worker]), os.urandom(5)) for _ in range(20)]
            assert {route(short_packet(cid)) for cid in cids} == {backend}
            assert {route(initial(cid)) for cid in cids} == {backend}  # the server's CID
    dead = [FLEET.encode(bytes([7, 0]), os.urandom(5)) for _ in range(300)]  # no member 7
    spread = [route(short_packet(cid)) for cid in dead]
    assert set(spread) == {0, 1, 2, 3, 4, 5}  # over every member and worker
    assert spread == [route(short_packet(cid)) for cid in dead]  # and always alike
    assert route(b"") is None and route(b"\xc0\x00\x00\x00\x01\x14") is None  # too short
    router.set_routes(())
    assert route(short_packet(dead[0])) is None  # no member: dropped


def test_rendezvous_moves_only_what_a_member_wins_or_held() -> None:
    router = PyQuicLbRouter(FLEET, SEED)
    dcids = [os.urandom(8) for _ in range(600)]
    router.set_routes(ROUTES)
    before = [router.route_datagram(initial(d)) for d in dcids]
    router.set_routes(ROUTES[:2])  # host 9 (backends 3-5) leaves
    after = [router.route_datagram(initial(d)) for d in dcids]
    moved = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    assert moved and all(b in (3, 4, 5) for b, _ in moved)


def test_routes_are_checked() -> None:
    router = PyQuicLbRouter(FLEET, SEED)
    with pytest.raises(ValueError, match="one route per host ID"):
        router.set_routes([HostRoute(1, (0,)), HostRoute(1, (1,))])
    with pytest.raises(ValueError, match="1-octet host IDs"):
        router.set_routes([HostRoute(256, (0,))])
    with pytest.raises(ValueError, match="routes need"):
        PyQuicLbRouter(QuicLbScheme(5, 5, key=VECTOR_KEY), SEED).set_routes([HostRoute(1, (0,))])


# -- a routed relay on loopback --------------------------------------------------------


RelayFactory = Callable[..., Any]
RELAYS: list[Any] = [
    pytest.param((PyUdpRelay, PyQuicLbRouter), id="reference"),
    pytest.param(
        (UdpRelay, QuicLbRouter if HAVE_NATIVE else None), id="native", marks=needs_native
    ),
]


def _udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    return sock


@pytest.fixture
def sockets() -> Iterator[Callable[[], socket.socket]]:
    opened: list[socket.socket] = []

    def make() -> socket.socket:
        opened.append(_udp())
        return opened[-1]

    yield make
    for sock in opened:
        sock.close()


def pump(relay: Any, until: Callable[[], bool]) -> None:
    for _ in range(200):
        relay.relay_front(0.0)
        relay.relay_upstream(0.0)
        if until():
            return
    raise AssertionError(f"not reached: {relay.stats}")


@pytest.mark.parametrize("kind", RELAYS)
def test_a_routed_relay_sends_each_cid_to_its_host_and_replies_come_back(
    kind: tuple[RelayFactory, Any], sockets: Callable[[], socket.socket]
) -> None:
    relay_class, router_class = kind
    router = router_class(FLEET, SEED)
    hosts = [sockets() for _ in range(2)]
    relay = relay_class(("127.0.0.1", 0), [], lambda c: None, router=router, max_backends=4)
    try:
        for slot, host in enumerate(hosts):
            relay.set_backend(slot, host.getsockname())
        router.set_routes([HostRoute(1, (0,)), HostRoute(2, (1,))])
        client = sockets()
        for host_id in (1, 2, 1):
            client.sendto(short_packet(FLEET.encode(bytes([host_id, 0]), os.urandom(5))),
                          relay.local_address)  # fmt: skip
        pump(relay, lambda: relay.stats.to_backends == 3)
        assert len([hosts[0].recvfrom(100) for _ in range(2)]) == 2
        _, front_side = hosts[1].recvfrom(100)
        hosts[1].sendto(b"reply", front_side)  # through the client's flow to host 2
        pump(relay, lambda: relay.stats.to_clients == 1)
        assert client.recvfrom(100) == (b"reply", relay.local_address)
        assert relay.stats.active_flows == 2  # one client, two hosts: a flow each

        assert relay.set_backend(1, None) == 1  # host 2 leaves: its flow goes
        router.set_routes([HostRoute(1, (0,))])
        client.sendto(short_packet(FLEET.encode(b"\x02\x00", os.urandom(5))), relay.local_address)
        pump(relay, lambda: relay.stats.to_backends == 4)
        assert hosts[0].recvfrom(100)[0].startswith(b"\x40")  # by hash: the one left
        assert relay.stats.flows_retired == 1
        router.set_routes([])
        client.sendto(short_packet(os.urandom(8)), relay.local_address)
        pump(relay, lambda: relay.stats.no_backend == 1)
        assert relay.stats.unrouted == 1
    finally:
        relay.close()


@pytest.mark.parametrize("kind", RELAYS)
def test_set_backend_checks_its_slot(kind: tuple[RelayFactory, Any]) -> None:
    relay_class, router_class = kind
    relay = relay_class(("127.0.0.1", 0), [], lambda c: None, router=router_class(FLEET, 0),
                        max_backends=2)  # fmt: skip
    try:
        with pytest.raises(IndexError):
            relay.set_backend(2, ("127.0.0.1", 9))
        with pytest.raises(ValueError):
            relay.set_backend(0, ("not an address", 9))
    finally:
        relay.close()
    with pytest.raises(ValueError, match="backends must name"):
        relay_class(("127.0.0.1", 0), [], lambda c: None)
