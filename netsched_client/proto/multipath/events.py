"""Path events, delivered through `next_event()` alongside aioquic's events."""

from __future__ import annotations

from dataclasses import dataclass

from aioquic.quic.events import QuicEvent


@dataclass
class PathAvailable(QuicEvent):
    """Server: the client started using a new path ID."""

    path_id: int


@dataclass
class PathValidated(QuicEvent):
    """Client: the peer answered our PATH_CHALLENGE; the path carries data now."""

    path_id: int


@dataclass
class PathAbandoned(QuicEvent):
    path_id: int
    error_code: int
    by_peer: bool


@dataclass
class PathStatusChanged(QuicEvent):
    """The peer prefers this path as backup (True) or available (False)."""

    path_id: int
    backup: bool


@dataclass
class PathIdReady(QuicEvent):
    """Client: both sides hold CIDs for this unused path ID; `open_path` can use it."""

    path_id: int
