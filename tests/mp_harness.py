"""The in-memory network (netsched_lab.memory) with a certificate made per test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from netsched_edge.tls import generate_self_signed
from netsched_lab import memory
from netsched_lab.memory import C1, C2, C3, NETWORK_PMTUD, SERVER, Link, Net

__all__ = ["C1", "C2", "C3", "NETWORK_PMTUD", "SERVER", "Link", "Net", "make_net"]


def make_net(tmp: Path, **kwargs: Any) -> Net:
    """A client and a server with a fresh self-signed certificate, connecting."""
    pair = generate_self_signed(tmp)
    client_cfg, server_cfg = memory.quic_configurations(
        pair.ca_certificate, pair.certificate, pair.private_key
    )
    return memory.make_net(client_cfg, server_cfg, **kwargs)
