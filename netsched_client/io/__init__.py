"""Batched UDP I/O shared by the client and the edge (DESIGN.md §1, layer 2).

`BatchedUdpSocket` is the Cython socket (recvmmsg/GRO, sendmmsg/GSO) on Linux
when the extension is built, else the pure-Python `PyUdpSocket`; both have
the `UdpSocket` interface. `attach` drives either from an event loop.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ._common import Address, Datagram, UdpSocket, UdpStats
from .fallback import PyUdpSocket
from .loop import MAX_BATCHES_PER_WAKEUP, attach

if TYPE_CHECKING:
    from ._udp import BatchedUdpSocket

    HAVE_NATIVE: bool
else:
    try:
        from ._udp import BatchedUdpSocket as NativeUdpSocket
    except ImportError:  # not built (no compiler): stay usable, just slower
        NativeUdpSocket = None
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
]
