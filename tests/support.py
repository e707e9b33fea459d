"""Small builders shared by the tests."""

from __future__ import annotations

from netsched_edge.config import BackendConfig, ServiceConfig


def http_backend(name: str, port: int, **kwargs: object) -> BackendConfig:
    return BackendConfig(name=name, kind="http", host="127.0.0.1", port=port, **kwargs)  # type: ignore[arg-type]


def service(name: str, *backends: BackendConfig, **kwargs: object) -> ServiceConfig:
    return ServiceConfig(name=name, backends=backends, **kwargs)  # type: ignore[arg-type]
