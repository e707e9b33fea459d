"""Loss recovery in use: the compiled `_ledger`, else its pure-Python reference `_ledger_py`.

`Ledger`: one packet-number space's sent packets (one per path for 1-RTT,
draft-21), indexed by packet number, each {pn, sent time, size, FLAG_* bits,
a handle the stream layer resolves to the packet's frames}; `on_ack(ranges,
ack_delay, now)` -> `AckResult` (newly acknowledged packets, bytes, the RTT
sample taken), `detect_lost(now)` -> `LossResult` (RFC 9002 §6.1's packet
and time thresholds, §7.6's persistent congestion), `loss_time` and
`pto_deadline()` (§6.2, with backoff). `RttEstimator`: a path's RTT (§5)
and PTO backoff, shared by its spaces. `Pacer`: a path's token bucket.
An ACK of a packet never sent raises `PacketError`. Time is passed in.
`COMPILED` says which backend is in use; `BACKENDS` holds both for the tests.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from netsched_client import _native
from netsched_client.core import _ledger_py
from netsched_client.core.errors import PacketError

if TYPE_CHECKING:
    from netsched_client.core._ledger import (
        FLAG_ACK_ELICITING,
        FLAG_FEC_REPAIR,
        FLAG_IN_FLIGHT,
        FLAG_PMTU_PROBE,
        GRANULARITY,
        INITIAL_RTT,
        MAX_ACK_DELAY,
        MAX_PN_GAP,
        PACKET_THRESHOLD,
        PERSISTENT_CONGESTION_THRESHOLD,
        TIME_THRESHOLD,
        AckResult,
        Ledger,
        LossResult,
        Pacer,
        RttEstimator,
    )

    COMPILED: bool
    BACKENDS: dict[str, ModuleType]
else:
    _compiled = _native.load("netsched_client.core._ledger")
    COMPILED = _compiled is not None
    BACKENDS = {"python": _ledger_py} | ({"cython": _compiled} if COMPILED else {})
    _core = _compiled if COMPILED else _ledger_py
    globals().update({name: getattr(_core, name) for name in _ledger_py.__all__})

__all__ = [
    "BACKENDS",
    "COMPILED",
    "FLAG_ACK_ELICITING",
    "FLAG_FEC_REPAIR",
    "FLAG_IN_FLIGHT",
    "FLAG_PMTU_PROBE",
    "GRANULARITY",
    "INITIAL_RTT",
    "MAX_ACK_DELAY",
    "MAX_PN_GAP",
    "PACKET_THRESHOLD",
    "PERSISTENT_CONGESTION_THRESHOLD",
    "TIME_THRESHOLD",
    "AckResult",
    "Ledger",
    "LossResult",
    "Pacer",
    "PacketError",
    "RttEstimator",
]
