"""`[edge] cipher_suites` reaches the QUIC handshake: real clients on loopback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.tls import CipherSuite

from netsched_edge.config import CIPHER_SUITES, parse_config
from netsched_edge.server import EdgeServer, cipher_suites


def _client_config(edge: EdgeServer, suites: list[CipherSuite]) -> QuicConfiguration:
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=["hq-interop"], server_name="localhost"
    )
    configuration.cipher_suites = suites
    configuration.load_verify_locations(str(edge.ca_certificate))
    return configuration


async def _negotiated(edge: EdgeServer, suites: list[CipherSuite]) -> CipherSuite:
    async with asyncio.timeout(10):
        async with connect(
            "127.0.0.1", edge.port, configuration=_client_config(edge, suites)
        ) as client:
            return _suite(client)


def _suite(client: QuicConnectionProtocol) -> CipherSuite:
    key_schedule = client._quic.tls.key_schedule
    assert key_schedule is not None
    return key_schedule.cipher_suite


def test_every_configurable_name_maps_to_an_aioquic_suite() -> None:
    assert cipher_suites(CIPHER_SUITES) == [
        CipherSuite.AES_128_GCM_SHA256,
        CipherSuite.AES_256_GCM_SHA384,
        CipherSuite.CHACHA20_POLY1305_SHA256,
    ]
    assert cipher_suites(None) is None


async def test_edge_accepts_only_its_configured_suites(start_edge, www: Path) -> None:
    config = parse_config('[edge]\ncipher_suites = ["TLS_CHACHA20_POLY1305_SHA256"]\n')
    edge = await start_edge(www=www, cipher_suites=config.cipher_suites)
    offered = [CipherSuite.AES_128_GCM_SHA256, CipherSuite.CHACHA20_POLY1305_SHA256]
    assert await _negotiated(edge, offered) == CipherSuite.CHACHA20_POLY1305_SHA256
    with pytest.raises(ConnectionError):
        await _negotiated(edge, [CipherSuite.AES_128_GCM_SHA256])


async def test_default_keeps_aioquic_suites(start_edge, www: Path) -> None:
    edge = await start_edge(www=www)
    for suite in (CipherSuite.AES_256_GCM_SHA384, CipherSuite.CHACHA20_POLY1305_SHA256):
        assert await _negotiated(edge, [suite]) == suite
