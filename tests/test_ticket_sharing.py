"""Session tickets shared by workers and hosts: resumption and 0-RTT wherever the key is.

Real sockets: edges on ports of their own sharing a keys file (what fleet workers
and hosts do), the workers of `--workers 2` on one port, our client, a relay that
records a client's first flight to replay it verbatim. And the contract of
`netsched_edge.tls_tickets` with aioquic.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import inspect
import os
import time
from pathlib import Path
from typing import cast

import pytest
from aioquic import tls
from support import service
from ticket_support import session_ticket

from netsched_client import open_session
from netsched_client.runtime.session import ResumptionTicket, TicketStore
from netsched_edge.config import BackendConfig, EdgeConfig
from netsched_edge.fleet.shared_keys import KeyRing
from netsched_edge.keys import EdgeKeys, TicketSealer
from netsched_edge.server import EdgeServer
from netsched_edge.tls_tickets import EdgeTickets
from netsched_edge.workers import WorkerPool

GET = {"method": "GET", "path": "/hello.txt"}


async def _edge(start_edge, www: Path, keys_file: Path | None = None) -> EdgeServer:
    files = service("files", BackendConfig(name="f", kind="static", root=www))
    edge: EdgeServer = await start_edge(files, keys_file=keys_file)
    return edge


async def _ticket(session) -> ResumptionTicket:
    async with asyncio.timeout(5):
        while session.session_ticket is None:
            await asyncio.sleep(0.01)
    ticket: ResumptionTicket = session.session_ticket
    return ticket


def _early_served(edge: EdgeServer) -> float:
    value = edge.dispatcher.metrics.registry.get_sample_value(
        "netsched_edge_early_data_requests_total", {"action": "served"}
    )
    return value or 0.0


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.toml"
    EdgeKeys.generate().write(path)
    return path


async def test_a_ticket_from_one_edge_resumes_with_0rtt_on_another(
    start_edge, open_client, www, keys_file
) -> None:
    edge_a = await _edge(start_edge, www, keys_file)
    edge_b = await _edge(start_edge, www, keys_file)
    store = TicketStore()
    await _ticket(await open_client(edge_a, ticket_store=store))
    session = await open_client(edge_b, ticket_store=store, early_data=True)
    assert session.early_data == "pending"
    response = await session.request("files", meta=GET)
    assert response.body == b"hello from the edge\n"
    assert session.early_data == "accepted" and session.session_resumed
    assert _early_served(edge_b) == 1 and _early_served(edge_a) == 0


async def test_a_ticket_sealed_with_another_key_is_a_full_handshake(
    start_edge, open_client, www, keys_file
) -> None:
    edge_a = await _edge(start_edge, www, keys_file)
    edge_b = await _edge(start_edge, www)  # keys of its own
    ticket = await _ticket(await open_client(edge_a))
    session = await open_client(edge_b, session_ticket=ticket, early_data=True)
    assert (await session.request("files", meta=GET)).status == 200
    assert not session.session_resumed and session.early_data == "rejected"


class _Recorder(asyncio.DatagramProtocol):
    """A UDP relay between one client and an edge that keeps what the client sent."""

    def __init__(self, edge_port: int) -> None:
        self.edge = ("127.0.0.1", edge_port)
        self.sent: list[bytes] = []
        self.client: tuple[str, int] | None = None
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is no subclass

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        if addr == self.edge:
            if self.client is not None:
                self.transport.sendto(data, self.client)
            return
        self.client = addr
        self.sent.append(data)
        self.transport.sendto(data, self.edge)


async def _replay(datagrams: list[bytes], port: int) -> None:
    """Send a recorded flight again, from an address of the attacker's."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    try:
        for data in datagrams:
            transport.sendto(data, ("127.0.0.1", port))
        await asyncio.sleep(0.3)  # the edge handles the flight and answers nobody
    finally:
        transport.close()


async def _forgotten(edge: EdgeServer) -> None:
    async with asyncio.timeout(5):
        while edge.connections:
            await asyncio.sleep(0.02)


async def test_a_replayed_0rtt_flight_is_not_served_twice(
    start_edge, open_client, www, keys_file
) -> None:
    edge_a = await _edge(start_edge, www, keys_file)
    edge_b = await _edge(start_edge, www, keys_file)
    loop = asyncio.get_running_loop()
    relay, recorder = await loop.create_datagram_endpoint(
        lambda: _Recorder(edge_b.port), local_addr=("127.0.0.1", 0)
    )
    try:
        store = TicketStore()
        await _ticket(await open_client(edge_a, ticket_store=store))
        port = relay.get_extra_info("sockname")[1]
        session = await open_client(edge_b, port=port, ticket_store=store, early_data=True)
        assert (await session.request("files", meta=GET)).status == 200
        assert session.early_data == "accepted" and _early_served(edge_b) == 1
        flight = list(recorder.sent)
        await session.close()
        await _forgotten(edge_b)  # the replay makes a new connection, not a duplicate
        await _replay(flight, edge_b.port)
        await _replay(flight, edge_b.port)
        assert _early_served(edge_b) == 1
        assert edge_b.tickets is not None and edge_b.tickets.recorded == 1
        # The record is per process: an edge that never saw the ticket serves the
        # flight once (why steering by CID matters, docs/OPERATIONS.md).
        edge_c = await _edge(start_edge, www, keys_file)
        await _replay(flight, edge_c.port)
        assert _early_served(edge_c) == 1
    finally:
        relay.close()


def _ring(current: EdgeKeys, previous: EdgeKeys | None, revision: int) -> KeyRing:
    return KeyRing(current, previous, created=time.time(), revision=revision)


async def test_a_ticket_of_a_rotated_out_key_resumes_during_the_grace_only(
    start_edge, open_client, www
) -> None:
    old, new, newer = EdgeKeys.generate(), EdgeKeys.generate(), EdgeKeys.generate()
    edge = await _edge(start_edge, www)
    edge.install_keys(_ring(old, None, 1))
    ticket = await _ticket(await open_client(edge))
    edge.install_keys(_ring(new, old, 2))  # rotated: old is in its grace period
    during = await open_client(edge, session_ticket=ticket)
    assert during.session_resumed
    edge.install_keys(_ring(new, None, 3))  # the grace is over
    after = await open_client(edge, session_ticket=ticket)
    assert (await after.request("files", meta=GET)).status == 200
    assert not after.session_resumed
    edge.install_keys(_ring(newer, new, 4))
    fresh = await _ticket(after)  # issued under `new`, which is now the previous key
    assert (await open_client(edge, session_ticket=fresh)).session_resumed


# -- the early-data record, without a network ---------------------------------------------


def _sealed(sealer: TicketSealer, issued: datetime.datetime) -> tls.SessionTicket:
    ticket = session_ticket(issued, age_add=1, server_name="", max_early_data_size=0xFFFFFFFF)
    ticket.ticket = sealer.seal(ticket, b"h3")
    return ticket


def test_early_data_once_per_ticket_recent_tickets_only_and_bounded() -> None:
    sealer = TicketSealer(os.urandom(32))
    tickets = EdgeTickets(sealer, early_window_s=60, capacity=2)
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    first, second, third = (_sealed(sealer, now) for _ in range(3))
    assert tickets.admit_early_data(first, now)
    assert not tickets.admit_early_data(first, now)  # a replay
    assert not tickets.admit_early_data(_sealed(sealer, now - datetime.timedelta(seconds=61)), now)
    assert tickets.admit_early_data(second, now)
    assert not tickets.admit_early_data(third, now)  # full: refused, nothing forgotten
    later = now + datetime.timedelta(seconds=200)  # both entries aged out with their tickets
    assert tickets.admit_early_data(_sealed(sealer, later), later) and tickets.recorded == 1
    opened = tickets.open(first.ticket, "h3")
    assert opened is not None and opened.max_early_data_size == 0xFFFFFFFF
    assert tickets.open(first.ticket, "netsched/1") is None  # bound to its ALPN


# -- the aioquic names tls_tickets relies on -----------------------------------------------

# Source of each aioquic function whose behaviour the adapter relies on: on a change,
# read the upstream diff, check tls_tickets.py against it, then record the new hash.
TLS_SOURCE_HASHES = {
    # Sends NewSessionTicket only when new_session_ticket_cb is set and the client can
    # resume (_psk_key_exchange_mode), after committing the 1-RTT read key.
    "_server_handle_finished": "6333c1d300ad9c6a3d6d70bb77bb2494000f2dae72f3c3acc7e75689fdfcea63",
    # Derives the resumption secret from the ticket nonce; reads ticket fields only.
    "_build_session_ticket": "cf78d2d167075a5383a347b430f91ad92348b68e3d47832830714ea571ae0c57",
}


def _source_hash(name: str) -> str:
    return hashlib.sha256(inspect.getsource(getattr(tls.Context, name)).encode()).hexdigest()


@pytest.mark.parametrize("name", sorted(TLS_SOURCE_HASHES))
def test_the_tls_methods_the_adapter_overrides_or_calls_are_unchanged(name: str) -> None:
    assert _source_hash(name) == TLS_SOURCE_HASHES[name], _source_hash(name)


def test_the_tls_attributes_the_adapter_sets_exist() -> None:
    context = tls.Context(is_client=False)
    assert context._psk_key_exchange_mode is None
    assert "_max_early_data" in vars(context)  # what tickets offer (QuicConnection sets it)
    assert context.get_session_ticket_cb is None and context.new_session_ticket_cb is None


@pytest.mark.skipif(os.uname().sysname != "Linux", reason="SO_REUSEPORT steering is Linux-only")
async def test_workers_resume_each_others_tickets_with_0rtt(start_server, www) -> None:
    """`--workers 2` on one port: the kernel picks a worker by the client's random CID,
    so a client's next connection often lands on the other worker; it resumes there
    with 0-RTT all the same."""
    files = service("files", BackendConfig(name="f", kind="static", root=www))
    pool = WorkerPool(EdgeConfig(host="127.0.0.1", port=0, services=(files,)), 2)
    loop = asyncio.get_running_loop()
    port = await loop.run_in_executor(None, pool.start)
    try:
        store = TicketStore()
        ca = str(pool.ca_certificate)
        issuer: str | None = None  # the worker whose ticket the store holds
        crossed = 0
        for _ in range(16):
            session = await open_session(
                "127.0.0.1", port, ca_file=ca, ticket_store=store, early_data=issuer is not None
            )
            try:
                worker = (await session.request("files", meta=GET)).meta["edge-worker"]
                if issuer is not None:
                    assert session.session_resumed and session.early_data == "accepted"
                    crossed += worker != issuer
                await _ticket(session)
                issuer = worker
            finally:
                await session.close()
            if crossed >= 2:
                break
        assert crossed >= 2  # each connection picks a worker by chance: 16 tries
    finally:
        await loop.run_in_executor(None, pool.stop)
