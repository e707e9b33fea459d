"""The in-memory network (netsched_lab.memory) with a certificate made per test."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aioquic.quic.events import StreamDataReceived

from netsched_edge.tls import generate_self_signed
from netsched_lab import memory
from netsched_lab.memory import C1, C2, C3, NETWORK_PMTUD, SERVER, Link, Net

__all__ = ["C1", "C2", "C3", "NETWORK_PMTUD", "SERVER", "Link", "Net", "TimedNet", "make_net"]


def make_net(tmp: Path, **kwargs: Any) -> Net:
    """A client and a server with a fresh self-signed certificate, connecting."""
    pair = generate_self_signed(tmp)
    client_cfg, server_cfg = memory.quic_configurations(
        pair.ca_certificate, pair.certificate, pair.private_key
    )
    return memory.make_net(client_cfg, server_cfg, **kwargs)


@dataclass
class TimedNet(Net):
    """A Net that records when each stream's FIN arrived at `receiver` ("server" or
    "client"), by stream ID, and drops every other event."""

    receiver: str = "server"
    done: dict[int, float] = field(default_factory=dict)

    def _drain_events(self) -> None:
        reader, other = (self.server, self.client)
        if self.receiver == "client":
            reader, other = other, reader
        while (event := reader.next_event()) is not None:
            if isinstance(event, StreamDataReceived) and event.end_stream:
                self.done[event.stream_id] = self.now
        while other.next_event() is not None:
            pass
