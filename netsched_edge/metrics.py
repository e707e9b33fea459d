"""The edge's metrics, Prometheus-style (prefix `netsched_edge_`, base units, `_total`).

Each edge owns its own registry so that several edges (tests, workers) in one
process never share counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from netsched_client.proto.multipath.events import PathAbandoned, PathAvailable

_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class EdgeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.responses = Counter(
            "netsched_edge_responses_total",
            "Responses sent, by service and status.",
            ["service", "status"],
            registry=self.registry,
        )
        self.retries = Counter(
            "netsched_edge_retries_total",
            "Idempotent requests retried on another backend.",
            ["service"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "netsched_edge_rejected_requests_total",
            "Requests refused before dispatch (malformed head or SLO), by status.",
            ["status"],
            registry=self.registry,
        )
        self.backend_seconds = Histogram(
            "netsched_edge_backend_seconds",
            "Time from dispatch to a backend's complete response.",
            ["service", "backend"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

        self.deadline_missed = Counter(
            "netsched_edge_deadline_missed_total",
            "Response streams reset because their deadline passed with data still queued.",
            registry=self.registry,
        )
        self.paths_opened = Counter(
            "netsched_edge_paths_opened_total",
            "Extra paths clients opened on multipath connections.",
            registry=self.registry,
        )
        self.paths_abandoned = Counter(
            "netsched_edge_paths_abandoned_total",
            "Paths abandoned, by who abandoned them.",
            ["by"],
            registry=self.registry,
        )

    def observe_path(self, event: PathAvailable | PathAbandoned) -> None:
        if isinstance(event, PathAvailable):
            self.paths_opened.inc()
        else:
            self.paths_abandoned.labels("client" if event.by_peer else "edge").inc()

    def observe_response(self, service: str, status: int) -> None:
        self.responses.labels(service, str(status)).inc()

    def observe_backend(self, service: str, backend: str, seconds: float) -> None:
        self.backend_seconds.labels(service, backend).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
