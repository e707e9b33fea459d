"""Choosing the congestion controller: the edge's config key and the SDK's argument."""

from __future__ import annotations

import pytest
from aioquic.quic.configuration import QuicConfiguration
from support import http_backend, service

from netsched_client import open_session
from netsched_client.proto.cc import CONGESTION_CONTROLS, ControllerAdapter
from netsched_edge.config import ConfigError, EdgeConfig, parse_config
from netsched_edge.demo_backends import DemoHTTPServer


@pytest.mark.parametrize("name", CONGESTION_CONTROLS)
def test_edge_key_takes_each_controller(name: str) -> None:
    config = parse_config(f'[edge]\ncongestion_control = "{name}"\n', file="edge.toml")
    assert config.congestion_control == name


def test_edge_default_is_bbr() -> None:
    assert parse_config("", file="edge.toml").congestion_control == "bbr"
    assert EdgeConfig().congestion_control == "bbr"


@pytest.mark.parametrize(("value", "shown"), [('"bbr2"', "'bbr2'"), ("1", "1"), ('"BBR"', "'BBR'")])
def test_edge_key_rejects_others_with_file_and_line(value: str, shown: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"[edge]\nmax_queue = 4\ncongestion_control = {value}\n", file="edge.toml")
    assert str(caught.value) == (
        "edge.toml:3: edge.congestion_control: "
        f"expected one of 'reno', 'cubic', 'bbr', 'lia', 'olia', got {shown}"
    )


async def test_sdk_rejects_an_unknown_controller_before_connecting() -> None:
    with pytest.raises(
        ValueError, match="congestion_control must be one of reno, cubic, bbr, lia, olia"
    ):
        await open_session("127.0.0.1", 9, congestion_control="vegas")


def test_every_name_is_registered_with_aioquic() -> None:
    from aioquic.quic.congestion.base import create_congestion_control

    for name in CONGESTION_CONTROLS:
        assert create_congestion_control(name, max_datagram_size=1200).congestion_window > 0
    assert QuicConfiguration().congestion_control_algorithm == "reno"


@pytest.mark.parametrize(("name", "adapted"), [("bbr", True), ("reno", False)])
async def test_the_edge_sends_with_its_configured_controller(
    start_server, start_edge, open_client, name: str, adapted: bool
) -> None:
    """Over real sockets: the edge's connections take the key's controller per path."""
    port = await start_server(DemoHTTPServer("b1", base_ms=1, cold_ms=1))
    edge = await start_edge(service("api", http_backend("b1", port)), congestion_control=name)
    session = await open_client(edge)
    assert (await session.request("api", b"x")).body == b"x"
    (quic,) = edge.quic_connections()
    assert isinstance(quic._recovery()._cc, ControllerAdapter) is adapted
