"""Prometheus metrics of one server (its own registry, so that servers never share counters)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["Metrics", "start_metrics_endpoint"]


@dataclass
class Metrics:
    """The server's counters, gauges and histograms."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.frames_received = Counter(
            "trajstore_frames_received", "Frames received from writers.", registry=r
        )
        self.bytes_received = Counter(
            "trajstore_bytes_received", "Frame bytes received from writers.", registry=r
        )
        self.acknowledgements = Counter(
            "trajstore_acknowledgements", "Flushes acknowledged to writers.", registry=r
        )
        self.flush_seconds = Histogram(
            "trajstore_flush_seconds",
            "Time to write and flush a run's buffered frames.",
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10),
        )
        self.open_runs = Gauge("trajstore_open_runs", "Runs open for writing.", registry=r)
        self.queued_bytes = Gauge(
            "trajstore_queued_bytes", "Bytes received but not yet written, all runs.", registry=r
        )
        self.bytes_read = Counter("trajstore_bytes_read", "Bytes sent to readers.", registry=r)
        self.read_requests = Counter(
            "trajstore_read_requests", "Read and follow requests.", registry=r
        )

    def watch(self, open_runs: Callable[[], float], queued_bytes: Callable[[], float]) -> None:
        """Read the two gauges from the live server at every scrape."""
        self.open_runs.set_function(open_runs)
        self.queued_bytes.set_function(queued_bytes)


def start_metrics_endpoint(metrics: Metrics, listen: str) -> tuple[object, int]:
    """Serve ``/metrics`` over HTTP on ``host:port``; returns (server, bound port)."""
    host, _, port = listen.rpartition(":")
    server, _thread = start_http_server(
        int(port), addr=host or "127.0.0.1", registry=metrics.registry
    )
    return server, int(server.server_port)
