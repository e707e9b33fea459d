"""A client's handshake under heavy loss is not given up between two backed-off probes
(RFC 9000 §10.1: the idle timeout is at least three times the current PTO)."""

from __future__ import annotations

import ssl
from itertools import pairwise

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated

from netsched_client.proto.connection import NetSchedConnection


def _probe_times(client: QuicConnection, until: float) -> tuple[list[float], float | None]:
    """Drive a client whose every datagram is lost: when it sent, and when it ended."""
    client.connect(("127.0.0.1", 4433), now=0.0)
    sent = [0.0] if client.datagrams_to_send(now=0.0) else []
    now = 0.0
    while (timer := client.get_timer()) is not None and timer <= until:
        now = max(now, timer)
        client.handle_timer(now)
        if client.datagrams_to_send(now=now):
            sent.append(now)
        while (event := client.next_event()) is not None:
            if isinstance(event, ConnectionTerminated):
                return sent, now
    return sent, None


def _config() -> QuicConfiguration:
    return QuicConfiguration(
        is_client=True,
        alpn_protocols=["hq-interop"],
        server_name="localhost",
        idle_timeout=5.0,
        verify_mode=ssl.CERT_NONE,
    )


def test_plain_aioquic_gives_a_probing_handshake_up_at_the_flat_idle_timeout() -> None:
    _, ended = _probe_times(QuicConnection(configuration=_config()), until=60.0)
    assert ended is not None and ended <= 6.0  # while its probes were still growing apart


def test_our_client_keeps_probing_past_the_idle_timeout() -> None:
    sent, ended = _probe_times(NetSchedConnection(configuration=_config()), until=60.0)
    assert ended is None  # only the caller's handshake timeout ends it
    later = [t for t in sent if t > 5.0]
    assert len(later) >= 2, sent  # probes went on, each twice as far apart
    gaps = [b - a for a, b in pairwise(sent)]
    assert gaps[-1] >= 4 * gaps[0], gaps  # the backoff stays: no faster probing than RFC 9002
