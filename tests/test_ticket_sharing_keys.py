"""Rotated keys at the endpoint (EndpointKeys.previous): during a fleet's grace period
Retry tokens sealed with the previous key are accepted, and a packet for an unknown
connection ID gets a stateless reset for each key (the host cannot know which key was
in force when that CID was issued)."""

from __future__ import annotations

import os
import time

import pytest
from adversarial.intake_support import raw_peer, short_header
from support import http_backend, service

from netsched_client.runtime.endpoint import EndpointKeys, RetryTokens
from netsched_edge.demo_backends import DemoHTTPServer
from netsched_edge.fleet.shared_keys import KeyRing
from netsched_edge.keys import EdgeKeys

CLIENT = ("127.0.0.1", 50000)


def test_retry_tokens_of_the_previous_key_open_during_the_grace_only() -> None:
    old, new = os.urandom(32), os.urandom(32)
    now = time.time()
    token = RetryTokens(old).create_token(CLIENT, b"original", b"retry-cid", now)
    assert RetryTokens(new, previous=[old]).validate_token(CLIENT, b"retry-cid", token, now) == (
        b"original"
    )
    for after_the_grace in (RetryTokens(new), RetryTokens(new, previous=[os.urandom(32)])):
        with pytest.raises(ValueError, match="another key"):
            after_the_grace.validate_token(CLIENT, b"retry-cid", token, now)


def test_previous_keys_are_one_generation() -> None:
    older = EndpointKeys.generate()
    old = EndpointKeys(os.urandom(32), os.urandom(32), previous=older)
    assert old.generations() == [old, older]
    with pytest.raises(ValueError, match="previous keys have no previous keys"):
        EndpointKeys(os.urandom(32), os.urandom(32), previous=old)


async def test_an_unknown_cid_gets_a_reset_for_each_key_during_the_grace(
    start_edge, start_server
) -> None:
    port = await start_server(DemoHTTPServer("b", base_ms=0, cold_ms=0))
    edge = await start_edge(service("api", http_backend("b", port)))
    old, new = EdgeKeys.generate(), EdgeKeys.generate()
    peer = await raw_peer(edge.port)
    try:
        edge.install_keys(KeyRing(new, old, created=time.time(), revision=2))
        cid = os.urandom(8)
        peer.send(short_header(cid, 100))
        resets = await peer.recv_all(quiet=0.3)
        tokens = {reset[-16:] for reset in resets}
        assert tokens == {keys.endpoint_keys().reset_token(cid) for keys in (new, old)}
        edge.install_keys(KeyRing(new, None, created=time.time(), revision=3))  # grace over
        peer.send(short_header(cid, 100))
        (reset,) = await peer.recv_all(quiet=0.3)
        assert reset.endswith(new.endpoint_keys().reset_token(cid))
    finally:
        peer.close()
