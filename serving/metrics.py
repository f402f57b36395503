"""Prometheus metrics of one server instance, in its own ``CollectorRegistry`` (never the global one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServerMetrics:
    """The server's counters, gauges and histograms (names prefixed ``rnnstream_serve_``)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        p = "rnnstream_serve_"
        self.connections_open = Gauge(p + "connections_open", "WebSocket connections open", registry=r)
        self.streams_open = Gauge(p + "streams_open", "streams (sessions) held by the server", registry=r)
        self.streams_started = Counter(p + "streams_started", "streams started (resumed ones included)", registry=r)
        self.chunks = Counter(p + "chunks", "chunks received", registry=r)
        self.predictions = Counter(p + "predictions", "chunk predictions sent", registry=r)
        self.frames = Counter(p + "frames", "model frames computed", registry=r)
        self.batch_size = Histogram(p + "batch_size", "streams per backend batch (step_streams call)",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_wait = Histogram(p + "queue_wait_seconds", "chunk received -> its batch starts",
                                    buckets=SECONDS_BUCKETS, registry=r)
        self.batch_seconds = Histogram(p + "batch_seconds", "one batch: featurize + backend call",
                                       buckets=SECONDS_BUCKETS, registry=r)
        self.latency = Histogram(p + "latency_seconds", "chunk received -> prediction handed to the socket",
                                 buckets=SECONDS_BUCKETS, registry=r)
        self.evictions = Counter(p + "evictions", "streams evicted for idleness", registry=r)
        self.errors = Counter(p + "errors", "errors sent to clients, by code", ["code"], registry=r)
        self.http_requests = Counter(p + "http_requests", "HTTP requests, by path and status", ["path", "status"],
                                     registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample's current value (0.0 when absent), e.g. ``value("rnnstream_serve_batch_size_count")``."""
        v = self.registry.get_sample_value(name, labels or {})
        return 0.0 if v is None else float(v)
