"""The edge's metrics, Prometheus-style (prefix `netsched_edge_`, base units, `_total`).

Each edge owns its own registry so that several edges (tests, workers) in one
process never share counters.

The UDP forwarders' counters live in C (the relay's data path does no Python
work per datagram); `ForwarderCollector` reads them once per scrape.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from netsched_client.proto.multipath.events import PathAbandoned, PathAvailable

from .balancing.health import HealthTracker, panic
from .balancing.policy import BackendSlot
from .config import ServiceConfig
from .forwarder.flows import ForwarderStats

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
        self.request_seconds = Histogram(
            "netsched_edge_request_seconds",
            "Time from a request's head to its response's last byte handed to QUIC, at the "
            "edge (queue, backend and sending), per service; every request, whatever status.",
            ["service"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        # The process: CPU, memory, descriptors (prometheus-client's collectors; each
        # edge's registry gets them, the global one is never used).
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)

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
        self.datagrams_dropped = Counter(
            "netsched_edge_datagrams_dropped_total",
            "QUIC DATAGRAMs not relayed (datagrams.py), by reason: to backends (no_backend, "
            "too_many_flows, opening, open_error, bad_request), replies to clients (oversized: "
            "larger than the connection can send; stale: queued over 1 s; queue_full: "
            "limits.max_datagram_queue replies already waiting).",
            ["reason"],
            registry=self.registry,
        )
        self.forwarders = ForwarderCollector()
        self.registry.register(self.forwarders)
        # Every multipath connection's scheduler adds its decisions here (by reason).
        self.scheduler_decisions: collections.Counter[str] = collections.Counter()
        self.registry.register(_DecisionCollector(self.scheduler_decisions))
        self._pools: _PoolCollector | None = None

    def add_forwarder(self, service: str, backends: Sequence[str], source: ForwarderSource) -> None:
        """Export a UDP forwarder's counters (`backends`: names by backend index)."""
        self.forwarders.add(service, backends, source)

    def remove_forwarder(self, service: str) -> None:
        self.forwarders.remove(service)

    def watch_pools(
        self, pools: Callable[[], Mapping[str, PoolSource]], clock: Callable[[], float]
    ) -> None:
        """Export the queues and backends of `pools()`, read at scrape time (reloads are
        seen); `clock` is the pools' (health is judged at its now). A second call
        replaces the first."""
        if self._pools is not None:
            self.registry.unregister(self._pools)
        self._pools = _PoolCollector(pools, clock)
        self.registry.register(self._pools)

    def observe_path(self, event: PathAvailable | PathAbandoned) -> None:
        if isinstance(event, PathAvailable):
            self.paths_opened.inc()
        else:
            self.paths_abandoned.labels("client" if event.by_peer else "edge").inc()

    def observe_response(self, service: str, status: int) -> None:
        self.responses.labels(service, str(status)).inc()

    def observe_backend(self, service: str, backend: str, seconds: float) -> None:
        self.backend_seconds.labels(service, backend).observe(seconds)

    def observe_request(self, service: str, seconds: float) -> None:
        self.request_seconds.labels(service).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _DecisionCollector(Collector):
    def __init__(self, decisions: collections.Counter[str]) -> None:
        self._decisions = decisions

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "netsched_edge_scheduler_decisions",
            "Multipath scheduler decisions by reason (proto/multipath/scheduler.py): "
            "per path and flush (data, stalled, backup-standby, validating), per 16 kB "
            "handed out (fastest, wait-for-fast, spread, deadline-only-path, "
            "no-path-in-time), per event (silent, back, urgent-copy).",
            labels=["reason"],
        )
        for reason, n in sorted(self._decisions.items()):
            family.add_metric([reason], n)
        yield family


class PoolSource(Protocol):
    """A service pool's queue and backends, as pool.py keeps them."""

    @property
    def queued(self) -> int: ...
    @property
    def queue_rejections(self) -> dict[str, int]: ...
    def held_ejections(self) -> dict[str, int]: ...
    @property
    def slots(self) -> Sequence[BackendSlot]: ...
    @property
    def health(self) -> Mapping[str, HealthTracker]: ...
    @property
    def config(self) -> ServiceConfig: ...


class _PoolCollector(Collector):
    def __init__(
        self, pools: Callable[[], Mapping[str, PoolSource]], clock: Callable[[], float]
    ) -> None:
        self._pools = pools
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        pools = sorted(self._pools().items())
        now = self._clock()
        queued = GaugeMetricFamily(
            "netsched_edge_queued_requests",
            "Requests waiting for a backend slot, per service (at most its max_queue).",
            labels=["service"],
        )
        rejected = CounterMetricFamily(
            "netsched_edge_queue_rejections",
            "Requests turned away by a service's queue: full (max_queue, per service) or "
            "timeout (limits.queue_timeout_s without a deadline); both answered 503.",
            labels=["service", "reason"],
        )
        held = CounterMetricFamily(
            "netsched_edge_ejections_held",
            "Passive ejections the ceiling (health.max_ejection_percent) held back, per backend.",
            labels=["service", "backend"],
        )
        in_flight = GaugeMetricFamily(
            "netsched_edge_backend_in_flight",
            "Requests at a backend now (at most its max_in_flight; more wait in the queue).",
            labels=["service", "backend"],
        )
        healthy = GaugeMetricFamily(
            "netsched_edge_backend_healthy",
            "1 while a backend takes traffic by its health (healthy or probing), 0 while ejected.",
            labels=["service", "backend"],
        )
        ejections = CounterMetricFamily(
            "netsched_edge_backend_ejections",
            "Ejections of a backend (after failed health checks or failed requests).",
            labels=["service", "backend"],
        )
        panicking = GaugeMetricFamily(
            "netsched_edge_service_panic",
            "1 while fewer than health.panic_threshold_percent of a service's backends are "
            "healthy: every backend takes traffic as if healthy.",
            labels=["service"],
        )
        for name, pool in pools:
            queued.add_metric([name], pool.queued)
            for reason, count in sorted(pool.queue_rejections.items()):
                rejected.add_metric([name, reason], count)
            for backend, count in sorted(pool.held_ejections().items()):
                held.add_metric([name, backend], count)
            for slot in pool.slots:
                in_flight.add_metric([name, slot.name], slot.in_flight)
            up = 0
            for backend, tracker in sorted(pool.health.items()):
                up += tracker.available(now)
                healthy.add_metric([name, backend], 1 if tracker.available(now) else 0)
                ejections.add_metric([name, backend], tracker.ejections)
            threshold = pool.config.health.panic_threshold_percent
            panicking.add_metric([name], 1 if panic(up, len(pool.health), threshold) else 0)
        yield from (queued, rejected, held, in_flight, healthy, ejections, panicking)


class ForwarderSource(Protocol):
    """A UDP forwarder or relay: its counters, read in C, as one snapshot."""

    @property
    def stats(self) -> ForwarderStats: ...


# ForwarderStats counters by metric: (name, help, label, {label value: counter}).
_DIRECTIONS = ("from_clients", "to_backends", "from_backends", "to_clients")
_FAMILIES: tuple[tuple[str, str, str, dict[str, str]], ...] = (
    ("datagrams", "Datagrams relayed, by direction.", "direction", {d: d for d in _DIRECTIONS}),
    (
        "bytes",
        "Payload bytes relayed, by direction.",
        "direction",
        {d: f"bytes_{d}" for d in _DIRECTIONS},
    ),
    (
        "flows_closed",
        "Flows closed: idle (expired or evicted for room), never answered and evicted for "
        "room, socket error, silent backend, client unanswered by a backend that answered "
        "others (ignored: not a failure), retired (its backend slot emptied: a fleet member "
        "gone).",
        "reason",
        {
            "idle": "flows_expired",
            "evicted": "flows_evicted",
            "error": "flows_failed",
            "silent": "flows_silent",
            "ignored": "flows_ignored",
            "retired": "flows_retired",
        },
    ),
    (
        "dropped_datagrams",
        "Datagrams dropped, by reason.",
        "reason",
        {
            "table_full": "flows_refused",
            "source_limit": "source_refused",
            "fd_reserve": "fd_refused",
            "no_backend": "no_backend",
            "choose_error": "choose_errors",
            "open_error": "open_errors",
            "send_error": "send_errors",
            "truncated": "recv_truncated",
        },
    ),
    (
        "syscalls",
        "Receive and send system calls (mmsg: one per batch).",
        "op",
        {"recv": "syscalls_recv", "send": "syscalls_send"},
    ),
)
_PLAIN: tuple[tuple[str, str, str], ...] = (
    ("flows_opened", "Flows opened (one backend choice each).", "flows_opened"),
    (
        "gso_sends",
        "Send messages that carried a run of datagrams as one UDP GSO send.",
        "gso_sends",
    ),
    ("gso_fallbacks", "Times the kernel refused UDP GSO (then switched off).", "gso_fallbacks"),
    ("report_errors", "Health reports that raised.", "report_errors"),
)
_PREFIX = "netsched_edge_forwarder_"


class ForwarderCollector(Collector):
    """The UDP forwarders' counters, labelled by service, read at scrape time."""

    def __init__(self) -> None:
        self._sources: dict[str, tuple[tuple[str, ...], ForwarderSource]] = {}

    def add(self, service: str, backends: Sequence[str], source: ForwarderSource) -> None:
        if service in self._sources:
            raise ValueError(f"service {service!r} already has a forwarder")
        self._sources[service] = (tuple(backends), source)

    def remove(self, service: str) -> None:
        self._sources.pop(service, None)

    def collect(self) -> Iterator[Metric]:
        snapshots = [
            (service, backends, source.stats)
            for service, (backends, source) in self._sources.items()
        ]
        for name, help_text, label, counters in _FAMILIES:
            family = CounterMetricFamily(_PREFIX + name, help_text, labels=["service", label])
            for service, _, stats in snapshots:
                for value, counter in counters.items():
                    family.add_metric([service, value], getattr(stats, counter))
            yield family
        for name, help_text, counter in _PLAIN:
            family = CounterMetricFamily(_PREFIX + name, help_text, labels=["service"])
            for service, _, stats in snapshots:
                family.add_metric([service], getattr(stats, counter))
            yield family
        yield from _gauges(snapshots)
        yield _backend_failures(snapshots)


def _gauges(
    snapshots: list[tuple[str, tuple[str, ...], ForwarderStats]],
) -> Iterator[Metric]:
    active = GaugeMetricFamily(_PREFIX + "flows_active", "Flows open now.", labels=["service"])
    per_datagram = GaugeMetricFamily(
        _PREFIX + "syscalls_per_datagram",
        "System calls per datagram received, since start (each is relayed once: "
        "2 would be one receive and one send per datagram).",
        labels=["service"],
    )
    for service, _, stats in snapshots:
        active.add_metric([service], stats.active_flows)
        received = stats.from_clients + stats.from_backends
        calls = stats.syscalls_recv + stats.syscalls_send
        per_datagram.add_metric([service], calls / received if received else 0.0)
    yield active
    yield per_datagram


def _backend_failures(
    snapshots: list[tuple[str, tuple[str, ...], ForwarderStats]],
) -> Metric:
    family = CounterMetricFamily(
        _PREFIX + "backend_failures",
        "Flows that found their backend failing, reported to its health tracking.",
        labels=["service", "backend", "reason"],
    )
    for service, backends, stats in snapshots:
        for reason, counts in (
            ("refused", stats.refused_by_backend),
            ("silent", stats.silent_by_backend),
        ):
            for backend, count in zip(backends, counts, strict=True):
                family.add_metric([service, backend, reason], count)
    return family
