"""Backend kinds the edge forwards to: HTTP/1.1, raw TCP, UDP datagrams, static files."""

from __future__ import annotations

from ..config import BackendConfig, HealthConfig
from .base import Backend, BackendRequest, BackendResponse, BackendUnavailable
from .http1 import HTTPBackend
from .static import StaticBackend
from .tcp import TCPBackend
from .udp import UDPBackend

__all__ = [
    "Backend",
    "BackendRequest",
    "BackendResponse",
    "BackendUnavailable",
    "HTTPBackend",
    "StaticBackend",
    "TCPBackend",
    "UDPBackend",
    "make_backend",
]


def make_backend(config: BackendConfig, health: HealthConfig) -> Backend:
    """The backend object a validated `BackendConfig` describes."""
    if config.kind == "static":
        assert config.root is not None
        return StaticBackend(config.name, config.root)
    assert config.host is not None and config.port is not None
    if config.kind == "http":
        return HTTPBackend(config.name, config.host, config.port, health_path=health.path)
    if config.kind == "tcp":
        return TCPBackend(config.name, config.host, config.port)
    if config.kind == "udp":
        return UDPBackend(config.name, config.host, config.port)
    raise ValueError(f"unknown backend kind {config.kind!r}")
