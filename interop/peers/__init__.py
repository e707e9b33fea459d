"""The peers the suite knows, in the order results list them."""

from __future__ import annotations

import os
from pathlib import Path

from ..results import NETSCHED
from .aioquic import Aioquic
from .base import Job, Peer, SetupError
from .netsched import NetSched
from .ngtcp2 import Ngtcp2
from .picoquic import Picoquic
from .qh3 import Qh3, Qh3Legacy
from .quicgo import QuicGo
from .quiche import Quiche
from .quinn import Quinn

__all__ = [
    "CI_PEERS",
    "NETSCHED",
    "Job",
    "Peer",
    "SetupError",
    "default_cache",
    "registry",
    "select",
]

PEER_CLASSES: tuple[type[Peer], ...] = (
    NetSched,
    Aioquic,
    Qh3,
    Qh3Legacy,
    Ngtcp2,
    Picoquic,
    QuicGo,
    Quinn,
    Quiche,
)
CI_PEERS = ("aioquic", "ngtcp2", "picoquic")
CACHE_ENV = "INTEROP_CACHE"


def default_cache() -> Path:
    """Where peers are installed: $INTEROP_CACHE, else the user's cache folder.

    Outside the checkout on purpose: the peers' venvs and aioquic's example
    scripts must not be linted, type-checked or collected as the project's code,
    and a fresh clone (as CI makes) reuses what an earlier setup installed.
    """
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "netsched-interop"


def registry(cache: Path) -> dict[str, Peer]:
    return {cls.name: cls(cache) for cls in PEER_CLASSES}


def select(peers: dict[str, Peer], names: list[str] | None) -> list[Peer]:
    """The named peers in registry order (all when None); ValueError names an unknown one."""
    if not names:
        return list(peers.values())
    unknown = [n for n in names if n not in peers]
    if unknown:
        raise ValueError(f"unknown peer(s) {', '.join(unknown)}; known: {', '.join(peers)}")
    return [peer for name, peer in peers.items() if name in names]
