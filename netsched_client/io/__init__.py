"""Batched UDP I/O shared by the client and the edge (DESIGN.md §1, layer 2).

`BatchedUdpSocket` is the Cython socket (recvmmsg/GRO, sendmmsg/GSO) on Linux
when the extension is built, else the pure-Python `PyUdpSocket`; both have
the `UdpSocket` interface. `attach` drives either from an event loop;
`read_waiting` reads what is queued without waiting for the loop to say so.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from .. import _native
from ._common import Address, Datagram, UdpSocket, UdpStats
from .fallback import PyUdpSocket
from .loop import MAX_BATCHES_PER_WAKEUP, attach, read_waiting

if TYPE_CHECKING:
    from ._udp import BatchedUdpSocket

    HAVE_NATIVE: bool
else:
    # Not built (no compiler): stay usable, just slower; `_native` warns once.
    _compiled = _native.load("netsched_client.io._udp")
    NativeUdpSocket = None if _compiled is None else _compiled.BatchedUdpSocket
    HAVE_NATIVE = NativeUdpSocket is not None and sys.platform == "linux"
    BatchedUdpSocket = NativeUdpSocket if HAVE_NATIVE else PyUdpSocket

__all__ = [
    "HAVE_NATIVE",
    "MAX_BATCHES_PER_WAKEUP",
    "Address",
    "BatchedUdpSocket",
    "Datagram",
    "PyUdpSocket",
    "UdpSocket",
    "UdpStats",
    "attach",
    "read_waiting",
]
