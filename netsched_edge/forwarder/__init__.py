"""The edge's UDP forwarder: a flow table and an mmsg relay between clients and backends.

`UdpRelay` is the Cython relay on Linux when the extension is built, else the
pure-Python `PyUdpRelay`; both have the `Relay` interface (rules in flows.py).
`UdpForwarder` drives either from an asyncio or uvloop event loop:

    relay = UdpRelay(("0.0.0.0", 5353), [("10.0.0.2", 53), ("10.0.0.3", 53)], choose)
    forwarder = UdpForwarder(relay)
    ...
    forwarder.close()

With a `QuicLbRouter` (`router=`) the relay is the edge fleet's front: each
QUIC datagram's backend comes from its connection ID (routing.py), flows are
per client and backend, and `set_backend` fills and empties backend slots as
members come and go (netsched_edge/fleet/front.py).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from netsched_client import _native

from .driver import UdpForwarder
from .flows import Choose, FlowTable, ForwarderStats, Relay
from .reference import PyUdpRelay
from .routing import HostRoute, PyQuicLbRouter

if TYPE_CHECKING:
    from ._relay import QuicLbRouter, UdpRelay

    HAVE_NATIVE: bool
else:
    # Not built (no compiler): stay usable, just slower; `_native` warns once.
    _compiled = _native.load("netsched_edge.forwarder._relay")
    NativeUdpRelay = None if _compiled is None else _compiled.UdpRelay
    HAVE_NATIVE = NativeUdpRelay is not None and sys.platform == "linux"
    UdpRelay = NativeUdpRelay if HAVE_NATIVE else PyUdpRelay
    # A routed relay takes the router of its own kind.
    QuicLbRouter = _compiled.QuicLbRouter if HAVE_NATIVE else PyQuicLbRouter

__all__ = [
    "HAVE_NATIVE",
    "Choose",
    "FlowTable",
    "ForwarderStats",
    "HostRoute",
    "PyQuicLbRouter",
    "PyUdpRelay",
    "QuicLbRouter",
    "Relay",
    "UdpForwarder",
    "UdpRelay",
]
