"""Shared keys (issue #12, fault 9): the keys file, Retry tokens any endpoint with
the key accepts, sealed session tickets, and stateless resets on the wire.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import os
import stat
import sys
from pathlib import Path

import pytest
from aioquic import tls
from intake_support import raw_peer, short_header
from support import http_backend, service
from ticket_support import session_ticket

from netsched_client import open_session
from netsched_client.runtime.endpoint import (
    MIN_RESET_BYTES,
    EndpointKeys,
    RetryTokens,
    stateless_reset,
)
from netsched_edge.demo_backends import DemoHTTPServer
from netsched_edge.keys import EdgeKeys, KeysError, TicketSealer, load_keys

ADDR = ("127.0.0.1", 50000)


# -- the keys file ----------------------------------------------------------------------------


def test_keys_file_round_trip_and_mode(tmp_path: Path) -> None:
    keys = EdgeKeys.generate()
    path = tmp_path / "keys.toml"
    keys.write(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_keys(path) == keys
    with pytest.raises(FileExistsError):
        keys.write(path)  # never replaces a file a fleet may share


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ("version = 2\n", ":1:", "version must be 1"),
        ("[broken\n", ":1:", "not a TOML keys file"),
        ("version = 1\nretry = 'abc'\n", ":2:", "retry must be 32 bytes"),
        ("version = 1\n\nextra = 1\n", ":3:", "unknown key 'extra'"),
        ("version = 1\n", ": ", "retry is missing"),
    ],
)
def test_malformed_keys_files_are_named_by_line(
    tmp_path: Path, text: str, where: str, what: str
) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(text)
    with pytest.raises(KeysError) as caught:
        load_keys(path)
    assert str(caught.value).startswith(f"{path}{where}") and what in str(caught.value)


def test_identical_keys_are_refused(tmp_path: Path) -> None:
    same = "ab" * 32
    path = tmp_path / "keys.toml"
    path.write_text(
        f'version = 1\nretry = "{same}"\nstateless_reset = "{same}"\nsession_ticket = "{same}"\n'
    )
    with pytest.raises(KeysError, match="must differ"):
        load_keys(path)


async def test_generate_keys_command(tmp_path: Path) -> None:
    path = tmp_path / "fleet.keys"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "netsched_edge.cli", "generate-keys", str(path)
    )
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    load_keys(path)
    again = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "netsched_edge.cli",
        "generate-keys",
        str(path),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(again.communicate(), 30)
    assert again.returncode == 2 and b"exists" in err


# -- Retry tokens -----------------------------------------------------------------------------


def test_retry_tokens_are_good_wherever_the_key_is() -> None:
    key = os.urandom(32)
    odcid, rscid = os.urandom(8), os.urandom(8)
    token = RetryTokens(key).create_token(ADDR, odcid, rscid, now=1000.0)
    assert RetryTokens(key).validate_token(ADDR, rscid, token, now=1001.0) == odcid
    for tokens, addr, dcid, now in [
        (RetryTokens(os.urandom(32)), ADDR, rscid, 1001.0),  # another key
        (RetryTokens(key), ("127.0.0.2", 50000), rscid, 1001.0),  # another address
        (RetryTokens(key), ("127.0.0.1", 50001), rscid, 1001.0),  # another port
        (RetryTokens(key), ADDR, odcid, 1001.0),  # not the Retry's CID
        (RetryTokens(key), ADDR, rscid, 1100.0),  # too old
    ]:
        with pytest.raises(ValueError):
            tokens.validate_token(addr, dcid, token, now)
    with pytest.raises(ValueError):
        RetryTokens(key).validate_token(ADDR, rscid, token[:-1] + bytes([token[-1] ^ 1]), 1001.0)


# -- session tickets --------------------------------------------------------------------------


def _ticket() -> tls.SessionTicket:
    return session_ticket(
        age_add=12345,
        max_early_data_size=0xFFFFFFFF >> 1,
        other_extensions=[(0x39, b"\x01\x02\x03")],
    )


def test_sealed_tickets_open_with_the_key_only() -> None:
    key = os.urandom(32)
    ticket = _ticket()
    identity = TicketSealer(key).seal(ticket)
    opened = TicketSealer(key).unseal(identity)
    assert opened is not None and opened.ticket == identity
    for name in ("age_add", "cipher_suite", "not_valid_after", "not_valid_before"):
        assert getattr(opened, name) == getattr(ticket, name), name
    assert opened.resumption_secret == ticket.resumption_secret
    assert opened.max_early_data_size == ticket.max_early_data_size
    assert opened.other_extensions == ticket.other_extensions
    assert TicketSealer(os.urandom(32)).unseal(identity) is None
    assert TicketSealer(key).unseal(identity[:-1] + bytes([identity[-1] ^ 1])) is None
    later = ticket.not_valid_after + datetime.timedelta(seconds=1)
    assert TicketSealer(key).unseal(identity, now=later) is None
    assert TicketSealer(key).unseal(os.urandom(64)) is None
    for_h3 = TicketSealer(key).seal(ticket, context=b"h3")
    assert TicketSealer(key).unseal(for_h3, context=b"h3") is not None
    assert TicketSealer(key).unseal(for_h3, context=b"netsched/1") is None  # another ALPN


# -- stateless resets -------------------------------------------------------------------------


def test_reset_is_shorter_than_its_trigger_and_never_answers_itself() -> None:
    keys = EndpointKeys.generate()
    cid = os.urandom(8)
    token = keys.reset_token(cid)
    assert token == hmac.new(keys.stateless_reset, cid, hashlib.sha256).digest()[:16]
    for size in (MIN_RESET_BYTES + 1, 30, 44, 1200):
        reset = stateless_reset(short_header(cid, size), token)
        assert reset is not None and len(reset) == min(size - 1, 43)
        assert reset[0] & 0xC0 == 0x40 and reset.endswith(token)
    assert stateless_reset(short_header(cid, MIN_RESET_BYTES), token) is None  # would not shrink
    reflected = short_header(cid, 60)[:-16] + token
    assert stateless_reset(reflected, token) is None


async def test_edge_resets_unknown_connection_ids_with_the_shared_key(
    start_edge, start_server, tmp_path: Path
) -> None:
    keys = EdgeKeys.generate()
    keys.write(tmp_path / "keys.toml")
    port = await start_server(DemoHTTPServer("b", base_ms=0, cold_ms=0))
    edge = await start_edge(
        service("api", http_backend("b", port)), keys_file=tmp_path / "keys.toml"
    )
    session = await open_session("127.0.0.1", edge.port, ca_file=str(edge.ca_certificate))
    peer = await raw_peer(edge.port)
    try:
        cid = os.urandom(8)
        peer.send(short_header(cid, 100))
        reset = await peer.recv(2.0)
        expected = hmac.new(keys.stateless_reset, cid, hashlib.sha256).digest()[:16]
        assert reset is not None and len(reset) == 43 and reset.endswith(expected)
        peer.send(short_header(os.urandom(8), MIN_RESET_BYTES))  # too small to answer
        assert await peer.recv(0.3) is None
        for _ in range(300):  # a flood gets at most the rate limit's worth
            peer.send(short_header(os.urandom(8), 100))
        answers = await peer.recv_all(quiet=0.3)
        assert 50 <= len(answers) <= 110
        # The live connection is no unknown CID: it keeps working.
        assert (await session.request("api", b"still here")).body == b"still here"
    finally:
        peer.close()
        await session.close()


async def test_the_tokens_the_edge_announces_are_those_of_the_shared_key(
    start_edge, start_server, tmp_path: Path
) -> None:
    """Every CID the edge gives a client (handshake, NEW_CONNECTION_ID and the multipath
    PATH_NEW_CONNECTION_IDs) carries the token the shared key derives from it, so the
    reset another worker or host sends for it is one the client recognises."""
    keys = EdgeKeys.generate()
    keys.write(tmp_path / "keys.toml")
    port = await start_server(DemoHTTPServer("b", base_ms=0, cold_ms=0))
    edge = await start_edge(
        service("api", http_backend("b", port)), keys_file=tmp_path / "keys.toml"
    )
    session = await open_session("127.0.0.1", edge.port, ca_file=str(edge.ca_certificate))
    try:
        assert (await session.request("api", b"x")).body == b"x"
        quic = session._driver.quic
        with quic._on_path(quic.paths[0]):
            held = [quic._peer_cid, *quic._peer_cid_available]
        held += [c for pool in quic._peer_pool.values() for c in pool]
        assert len(held) > 8
        derive = keys.endpoint_keys().reset_token
        assert all(c.stateless_reset_token == derive(c.cid) for c in held)
    finally:
        await session.close()
