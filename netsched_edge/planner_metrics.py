"""The burst planner's metrics (prefix `netsched_edge_send_`), read at scrape time.

The counters live on the QUIC endpoint (its planner, its ticker, its socket);
`PlannerCollector` turns one snapshot of them into Prometheus families, so the
send path does no metrics work per datagram.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from netsched_client.io import UdpStats
from netsched_client.runtime.endpoint import ServerEndpoint
from netsched_client.runtime.planner import BURST_BUCKETS

_PREFIX = "netsched_edge_send_"

# Counters: (name, help, where: "planner" or "ticker" stats, attribute).
_COUNTERS = (
    (
        "ticks",
        "Planner ticks (each serves every connection with something to send).",
        "ticker",
        "ticks",
    ),
    (
        "flushes",
        "Connection flushes (pacer rounds built for one connection).",
        "planner",
        "flushes",
    ),
    ("datagrams", "Datagrams the planner sent.", "planner", "datagrams"),
    ("bytes", "Bytes the planner sent.", "planner", "bytes"),
    ("bursts", "Bursts: runs to one destination sent as one UDP GSO message.", "planner", "bursts"),
    (
        "budget_waits",
        "Ticks that left connections waiting for the egress budget.",
        "planner",
        "budget_waits",
    ),
    (
        "timer_wakeups",
        "Timer wake-ups (one timer serves every connection's deadline).",
        "ticker",
        "timer_wakeups",
    ),
)


class PlannerCollector(Collector):
    """The endpoint's send counters; nothing before the edge has started."""

    def __init__(self, endpoint: Callable[[], ServerEndpoint | None]) -> None:
        self._endpoint = endpoint

    def collect(self) -> Iterator[Metric]:
        endpoint = self._endpoint()
        if endpoint is None:
            return
        planner = endpoint.ticker.planner.stats
        sources = {"planner": planner, "ticker": endpoint.ticker.stats}
        for name, help_text, source, attribute in _COUNTERS:
            family = CounterMetricFamily(_PREFIX + name, help_text)
            family.add_metric([], getattr(sources[source], attribute))
            yield family
        yield _burst_histogram(planner.burst_histogram, planner.datagrams)
        udp = endpoint.udp_stats
        if udp is not None:
            yield from _syscalls(udp)


def _syscalls(udp: UdpStats) -> Iterator[Metric]:
    syscalls = CounterMetricFamily(
        _PREFIX + "syscalls", "Send system calls on the QUIC socket (sendmmsg)."
    )
    syscalls.add_metric([], udp.syscalls_send)
    yield syscalls
    per_syscall = GaugeMetricFamily(
        _PREFIX + "datagrams_per_syscall",
        "Datagrams per send system call on the QUIC socket, since start.",
    )
    per_syscall.add_metric([], udp.datagrams_sent / udp.syscalls_send if udp.syscalls_send else 0.0)
    yield per_syscall


def _burst_histogram(counts: tuple[int, ...], datagrams: int) -> Metric:
    family = HistogramMetricFamily(
        _PREFIX + "burst_datagrams", "Datagrams per burst (one UDP GSO message)."
    )
    cumulative = list(itertools.accumulate(counts))
    buckets = [
        (str(float(bound)), count) for bound, count in zip(BURST_BUCKETS, cumulative, strict=True)
    ]
    buckets.append(("+Inf", cumulative[-1]))
    family.add_metric([], buckets, sum_value=datagrams)
    return family
