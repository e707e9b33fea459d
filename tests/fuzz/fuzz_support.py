"""Shared by the fuzz tests: hypothesis settings and the parser contracts of bench/fuzz_long.py.

`NETSCHED_FUZZ_EXAMPLES=N` raises every test's example count (CI keeps the
default, a few hundred); bench/fuzz_long.py is the million-input run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from aioquic.quic.configuration import QuicConfiguration
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from support import MemoryPair, events_of

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import fuzz_long

from netsched_client.proto import slo as slo_mod
from netsched_client.proto.connection import NetSchedConnection
from netsched_edge.tls import CertificatePair

TARGETS = fuzz_long.TARGETS
mutate = fuzz_long.mutate


def fuzz_settings(examples: int = 200) -> settings:
    return settings(
        max_examples=int(os.environ.get("NETSCHED_FUZZ_EXAMPLES", examples)),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )


def holds_contract(name: str, data: bytes) -> object:
    """Run target `name` on `data`: its value, or None when it raised a documented error."""
    target = TARGETS[name]
    try:
        return target.run(data)
    except target.errors:
        return None


SLOS = st.builds(
    slo_mod.SLO,
    deadline_ms=st.none() | st.integers(1, slo_mod.MAX_DEADLINE_MS),
    urgency=st.none() | st.integers(0, 7),
    incremental=st.none() | st.booleans(),
    loss_tolerance=st.none() | st.floats(0.0, 1.0),
    min_rate=st.none() | st.integers(0, slo_mod.MAX_MIN_RATE),
    service=st.none() | st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True),
    affinity=st.none()
    | st.text(min_size=1, max_size=32).filter(lambda s: len(s.encode("utf-8", "replace")) <= 128),
    idempotent=st.none() | st.booleans(),
)


def connected_pair(cert: CertificatePair, alpn: str, *, datagrams: bool = False) -> MemoryPair:
    """A client and a server connection over memory, handshake done, the client's
    events drained (`datagrams`: both offer QUIC DATAGRAM frames)."""
    extra = {"max_datagram_frame_size": 65536} if datagrams else {}
    client_cfg = QuicConfiguration(
        is_client=True, alpn_protocols=[alpn], server_name="localhost", **extra
    )
    client_cfg.load_verify_locations(str(cert.ca_certificate))
    server_cfg = QuicConfiguration(is_client=False, alpn_protocols=[alpn], **extra)
    server_cfg.load_cert_chain(cert.certificate, cert.private_key)
    client = NetSchedConnection(configuration=client_cfg)
    server = NetSchedConnection(
        configuration=server_cfg,
        original_destination_connection_id=client.original_destination_connection_id,
    )
    pair = MemoryPair(client, server)
    pair.flush()
    events_of(pair.client)
    return pair
