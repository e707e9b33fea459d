"""Session resumption, 0-RTT and key updates: our client ↔ the edge, real sockets and TLS."""

from __future__ import annotations

import asyncio
import datetime
import pickle
from pathlib import Path

import pytest
from aioquic import tls
from support import service

from netsched_client import SLO, ConnectionLost, Session
from netsched_client.proto.multipath import events as mpe
from netsched_client.runtime.session import (
    ResumptionTicket,
    TicketCache,
    TicketStore,
    client_configuration,
)
from netsched_edge.config import BackendConfig
from netsched_edge.demo_backends import TCPEchoServer
from netsched_edge.keys import EdgeKeys
from netsched_edge.server import EdgeServer

BIG = bytes(range(256)) * 2048  # 512 KiB


async def _edge(start_edge, start_server, www: Path, **config: object) -> EdgeServer:
    port = await start_server(TCPEchoServer())
    (www / "big.bin").write_bytes(BIG)
    edge: EdgeServer = await start_edge(
        service("echo", BackendConfig(name="e", kind="tcp", host="127.0.0.1", port=port)),
        service("files", BackendConfig(name="f", kind="static", root=www), max_body=2 << 20),
        **config,
    )
    return edge


async def _ticket(session: Session) -> ResumptionTicket:
    """The session's ticket: the edge sends it once it has the client's Finished."""
    async with asyncio.timeout(5):
        while session.session_ticket is None:
            await asyncio.sleep(0.01)
    return session.session_ticket


def _early(edge: EdgeServer, action: str) -> float:
    value = edge.dispatcher.metrics.registry.get_sample_value(
        "netsched_edge_early_data_requests_total", {"action": action}
    )
    return value or 0.0


async def test_ticket_issued_and_resumed(start_edge, start_server, open_client, www) -> None:
    edge = await _edge(start_edge, start_server, www)
    first = await open_client(edge)
    assert not first.session_resumed and first.early_data == "off"
    ticket = await _ticket(first)
    assert ticket.alpn == "netsched/1" and ticket.server_name == "127.0.0.1"
    assert ticket.allows_early_data
    second = await open_client(edge, session_ticket=pickle.loads(pickle.dumps(ticket)))
    assert second.session_resumed  # a PSK handshake
    assert second.early_data == "off"  # resumption alone sends nothing early
    assert (await second.request("echo", b"resumed")).body == b"resumed"


async def test_store_resumes_each_connection(start_edge, start_server, open_client, www) -> None:
    edge = await _edge(start_edge, start_server, www)
    store = TicketStore()
    first = await open_client(edge, ticket_store=store)
    await _ticket(first)
    assert len(store) == 1
    second = await open_client(edge, ticket_store=store)
    assert second.session_resumed
    assert await _ticket(second) != await _ticket(first)  # a fresh one for the next connection
    assert len(store) == 1  # it replaced the one taken
    third = await open_client(edge, ticket_store=store)
    assert third.session_resumed


async def test_idempotent_zero_rtt_is_served_before_the_handshake(
    start_edge, start_server, open_client, www
) -> None:
    # "idempotent": the safe GET and the request whose SLO says idempotent.
    edge = await _edge(start_edge, start_server, www, early_data="idempotent")
    store = TicketStore()
    await _ticket(await open_client(edge, ticket_store=store))
    session = await open_client(edge, ticket_store=store, early_data=True)
    assert session.early_data == "pending" and not session.handshake_complete
    get = session.request("files", meta={"method": "GET", "path": "/big.bin"})
    echo = session.request("echo", b"safe to replay", slo=SLO(idempotent=True))
    big, small = await asyncio.gather(get, echo)
    assert big.body == BIG and small.body == b"safe to replay"
    assert session.early_data == "accepted" and session.session_resumed
    assert _early(edge, "served") == 2 and _early(edge, "held") == 0


async def test_non_idempotent_zero_rtt_waits_for_the_handshake(
    start_edge, start_server, open_client, www
) -> None:
    edge = await _edge(start_edge, start_server, www)
    store = TicketStore()
    await _ticket(await open_client(edge, ticket_store=store))
    session = await open_client(edge, ticket_store=store, early_data=True)
    response = await session.request("echo", b"charge the card once")
    assert response.body == b"charge the card once"
    assert session.early_data == "accepted"
    assert _early(edge, "held") == 1 and _early(edge, "served") == 0


async def test_rejected_zero_rtt_is_resent(start_edge, start_server, open_client, www) -> None:
    edge = await _edge(start_edge, start_server, www)
    first = await open_client(edge)
    ticket = await _ticket(first)
    # Offering 0-RTT uses the ticket's one early flight up (this process keeps the record).
    await open_client(edge, session_ticket=ticket, early_data=True)
    session = await open_client(edge, session_ticket=ticket, early_data=True)
    assert session.early_data == "pending"
    response = await session.request("files", meta={"method": "GET", "path": "/big.bin"})
    assert response.body == BIG  # sent again in 1-RTT by aioquic
    # A sealed ticket resumes as often as it is shown; only its early data is single-use.
    assert session.early_data == "rejected" and session.session_resumed
    assert _early(edge, "served") == 0


async def test_early_data_off(start_edge, start_server, open_client, www) -> None:
    edge = await _edge(start_edge, start_server, www, early_data="off")
    ticket = await _ticket(await open_client(edge))
    assert not ticket.allows_early_data
    session = await open_client(edge, session_ticket=ticket, early_data=True)
    assert session.handshake_complete and session.session_resumed
    assert session.early_data == "off"  # the ticket does not allow it: a normal handshake


async def test_no_tickets_when_disabled(start_edge, start_server, open_client, www) -> None:
    edge = await _edge(start_edge, start_server, www, session_tickets=False)
    session = await open_client(edge)
    # The edge would send its ticket as soon as it has the client's Finished, before
    # it answers a request sent after it.
    assert (await session.request("echo", b"x")).body == b"x"
    assert session.session_ticket is None and edge.tickets is None


async def test_edge_with_early_data_off_rejects_zero_rtt(
    start_edge, start_server, open_client, www
) -> None:
    # Edge B opens edge A's ticket (they share a keys file, as workers do) but takes no 0-RTT.
    keys_file = www.parent / "keys.toml"
    EdgeKeys.generate().write(keys_file)
    edge_a = await _edge(start_edge, start_server, www, keys_file=keys_file)
    edge_b = await _edge(start_edge, start_server, www, early_data="off", keys_file=keys_file)
    ticket = await _ticket(await open_client(edge_a))
    session = await open_client(edge_b, session_ticket=ticket, early_data=True)
    assert session.early_data == "pending"
    assert (await session.request("echo", b"once", slo=SLO(idempotent=True))).body == b"once"
    assert session.early_data == "rejected" and session.session_resumed
    assert _early(edge_b, "served") == 0 and _early(edge_b, "held") == 0


async def test_zero_rtt_over_h3(start_edge, start_server, open_client, www) -> None:
    edge = await _edge(start_edge, start_server, www)
    ca = str(edge.ca_certificate)
    store = TicketStore()
    h3_only = client_configuration("127.0.0.1", ("h3",), ca_file=ca)
    await _ticket(await open_client(edge, configuration=h3_only, ticket_store=store))
    session = await open_client(edge, configuration=h3_only, ticket_store=store, early_data=True)
    assert session.alpn == "h3" and session.early_data == "pending"
    response = await session.request("files", meta={"method": "GET", "path": "/big.bin"})
    assert response.body == BIG and session.early_data == "accepted"
    assert _early(edge, "served") >= 1


async def test_zero_rtt_then_extra_paths(start_edge, start_server, open_client, www) -> None:
    edge = await _edge(start_edge, start_server, www)
    store = TicketStore()
    await _ticket(await open_client(edge, ticket_store=store))
    session = await open_client(
        edge, ticket_store=store, early_data=True, paths=["127.0.0.1", "127.0.0.2"]
    )
    assert (await session.request("echo", b"e", slo=SLO(idempotent=True))).body == b"e"
    await session.wait_handshake()
    async with asyncio.timeout(5):
        while len(session.paths) < 2:
            await asyncio.sleep(0.01)
    assert session.multipath and session.early_data == "accepted"


def _edge_key_phase(edge: EdgeServer) -> int:
    (connection,) = edge.connections
    return int(connection._driver.quic._cryptos[tls.Epoch.ONE_RTT].key_phase)


@pytest.mark.parametrize("paths", [None, ["127.0.0.1", "127.0.0.2"]])
async def test_key_update_during_a_transfer(
    start_edge, start_server, open_client, www, paths: list[str] | None
) -> None:
    edge = await _edge(start_edge, start_server, www)
    session = await open_client(edge, paths=paths)
    assert session.key_phase == 0
    download = asyncio.create_task(
        session.request("files", meta={"method": "GET", "path": "/big.bin"})
    )
    await asyncio.sleep(0)  # the request is out; the update lands mid-transfer
    session.request_key_update()
    assert (await download).body == BIG
    assert (await session.request("echo", b"after")).body == b"after"
    assert session.key_phase == 1 and _edge_key_phase(edge) == 1
    if paths is not None:
        assert session.multipath
        received = [p.bytes_received for p in session.paths]
        assert len(received) == 2 and all(n > 0 for n in received), received
        assert not [e for e in session.path_events if isinstance(e, mpe.PathAbandoned)]


async def test_request_key_update_on_a_closed_session(
    start_edge, start_server, open_client, www
) -> None:
    edge = await _edge(start_edge, start_server, www)
    session = await open_client(edge)
    await session.close()
    with pytest.raises(ConnectionLost):
        session.request_key_update()


async def test_ticket_for_another_server_or_protocol(
    start_edge, start_server, open_client, www
) -> None:
    edge = await _edge(start_edge, start_server, www)
    ticket = await _ticket(await open_client(edge))
    localhost = client_configuration("localhost", ca_file=str(edge.ca_certificate))
    with pytest.raises(ValueError, match=r"server name '127\.0\.0\.1'.*'localhost'"):
        await open_client(edge, configuration=localhost, session_ticket=ticket)
    h3_only = client_configuration("127.0.0.1", ("h3",), ca_file=str(edge.ca_certificate))
    with pytest.raises(ValueError, match="ALPN 'netsched/1', not among h3"):
        await open_client(edge, configuration=h3_only, session_ticket=ticket)


# -- the stores, without a network -----------------------------------------------------


def _session_ticket(name: str = "edge", *, valid_for_s: float = 3600) -> tls.SessionTicket:
    now = datetime.datetime.now(datetime.UTC)
    return tls.SessionTicket(
        age_add=0,
        cipher_suite=tls.CipherSuite.AES_128_GCM_SHA256,
        not_valid_after=now + datetime.timedelta(seconds=valid_for_s),
        not_valid_before=now - datetime.timedelta(seconds=1),
        resumption_secret=bytes(32),
        server_name=name,
        ticket=name.encode(),
    )


def test_ticket_cache_is_bounded_single_use_and_expiring() -> None:
    cache: TicketCache[str] = TicketCache(2)
    for key in ("a", "b", "c"):
        cache.put(key, _session_ticket(key))
    assert len(cache) == 2
    assert cache.take("a") is None  # the oldest went
    assert cache.take("b") is not None and cache.take("b") is None  # single use
    cache.put("old", _session_ticket(valid_for_s=-1))
    assert cache.take("old") is None and len(cache) == 1  # expired, and gone
    with pytest.raises(ValueError, match="capacity must be at least 1, got 0"):
        TicketCache(0)


def test_ticket_store_by_server_name_and_alpn() -> None:
    store = TicketStore(capacity=2)
    store.put(ResumptionTicket(_session_ticket("a"), "h3"))
    store.put(ResumptionTicket(_session_ticket("a"), "netsched/1"))
    assert store.take("b", ["h3", "netsched/1"]) is None
    taken = store.take("a", ["netsched/1", "h3"])
    assert taken is not None and taken.alpn == "netsched/1"  # the first ALPN that has one
    store.put(ResumptionTicket(_session_ticket("a"), "h3"))  # replaces the older one
    assert len(store) == 1
    store.put(ResumptionTicket(_session_ticket("b"), "h3"))
    store.put(ResumptionTicket(_session_ticket("c"), "h3"))
    assert len(store) == 2 and store.take("a", ["h3"]) is None


async def test_zero_rtt_session_gives_up_without_a_handshake(
    start_edge, start_server, open_client, www, stack
) -> None:
    edge = await _edge(start_edge, start_server, www)
    ticket = await _ticket(await open_client(edge))
    silent, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    stack.callback(silent.close)
    port = silent.get_extra_info("sockname")[1]
    session = await open_client(
        edge, port=port, session_ticket=ticket, early_data=True, timeout=0.3
    )
    assert session.early_data == "pending"
    with pytest.raises(ConnectionLost, match="no handshake"):
        await session.request("echo", b"x", slo=SLO(idempotent=True))
    with pytest.raises(ConnectionLost, match="no handshake"):
        await session.wait_handshake()
    assert not session.handshake_complete and session.closed
