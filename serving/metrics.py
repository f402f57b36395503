"""Prometheus metrics of one server instance, in its own ``CollectorRegistry`` (never the global one).

The registry also carries the process' own metrics (``process_*``: CPU, RSS, open files; ``python_info``)
and a ``rnnstream_serve_model_info`` series naming the model served. No ``*_created`` series are exported
(:func:`prometheus_client.disable_created_metrics`).

Under ``rnnstream serve --workers N`` (:mod:`rnnstream.serving.workers`) the supervisor sets
``PROMETHEUS_MULTIPROC_DIR`` before the workers start: ``prometheus_client`` then keeps every value in a file
of that directory, and :meth:`ServerMetrics.render` answers with the sum over all workers (counters and
histograms of every worker that ran, gauges of the live ones) plus the model-info series; the per-process
``process_*`` series are left out there, as they describe one worker only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

prometheus_client.disable_created_metrics()


def observe_many(hist: Histogram, amounts: Sequence[float]) -> None:
    """``hist.observe(a)`` for every amount (a batch's latencies), taking one lock per bucket touched instead of
    two per amount: the server observes two histograms per chunk. Falls back to ``observe`` on a
    ``prometheus_client`` whose Histogram keeps its values elsewhere."""
    if not len(amounts):
        return
    buckets, bounds, total = (getattr(hist, name, None) for name in ("_buckets", "_upper_bounds", "_sum"))
    if buckets is None or bounds is None or total is None or bool(getattr(hist, "_labelnames", None)):
        for amount in amounts:
            hist.observe(amount)
        return
    counts = np.bincount(np.searchsorted(bounds, amounts, side="left"), minlength=len(bounds))  # amount <= bound
    total.inc(float(np.sum(amounts)))
    for i in np.flatnonzero(counts).tolist():
        buckets[i].inc(int(counts[i]))


class _Single:
    """One collector of another registry, to render it alone."""

    def __init__(self, collector: Collector):
        self._collector = collector

    def collect(self) -> Iterable[Metric]:
        return self._collector.collect()


class ServerMetrics:
    """The server's counters, gauges and histograms (names prefixed ``rnnstream_serve_``)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        p = "rnnstream_serve_"
        self.model_info = Info(p + "model", "the model served: weights hash, task, version, input kind", registry=r)
        # these three gauges: summed over the live workers (ignored in one process)
        self.workers_up = Gauge(p + "workers_up", "server processes serving", registry=r, multiprocess_mode="livesum")
        self.workers_up.set(1)
        self.connections_open = Gauge(p + "connections_open", "WebSocket connections open", registry=r,
                                      multiprocess_mode="livesum")
        self.streams_open = Gauge(p + "streams_open", "streams (sessions) held by the server", registry=r,
                                  multiprocess_mode="livesum")
        self.streams_started = Counter(p + "streams_started", "streams started (resumed ones included)", registry=r)
        self.chunks = Counter(p + "chunks", "chunks accepted into a stream's queue", registry=r)
        self.predictions = Counter(p + "predictions", "chunk predictions sent", registry=r)
        self.chunk_errors = Counter(p + "chunk_errors", "accepted chunks answered with an error (model failure)",
                                    registry=r)
        self.chunks_dropped = Counter(p + "chunks_dropped", "accepted chunks dropped unprocessed, by reason "
                                      "(the connection closed or failed first)", ["reason"], registry=r)
        self.duplicates = Counter(p + "duplicates", "chunks answered 'duplicate' (seq already processed)", registry=r)
        self.frames = Counter(p + "frames", "model frames computed", registry=r)
        self.batch_size = Histogram(p + "batch_size", "streams per backend batch (step_streams call)",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_splits = Counter(p + "batch_splits", "failed backend calls split in two to find the culprit",
                                    registry=r)
        self.queue_wait = Histogram(p + "queue_wait_seconds", "chunk received -> its batch starts",
                                    buckets=SECONDS_BUCKETS, registry=r)
        self.batch_cpu = Counter(p + "batch_cpu_seconds", "CPU time of the batch threads in featurize + backend",
                                 registry=r)
        self.batch_seconds = Histogram(p + "batch_seconds", "one batch: featurize + backend call",
                                       buckets=SECONDS_BUCKETS, registry=r)
        self.latency = Histogram(p + "latency_seconds", "chunk received -> prediction handed to the socket",
                                 buckets=SECONDS_BUCKETS, registry=r)
        self.evictions = Counter(p + "evictions", "streams evicted for idleness", registry=r)
        self.snapshot_writes = Counter(p + "snapshot_writes", "snapshot writes, by result (ok, retry, failed)",
                                       ["result"], registry=r)
        self.snapshots_expired = Counter(p + "snapshots_expired", "saved snapshots removed after their TTL",
                                         registry=r)
        self.errors = Counter(p + "errors", "errors sent to clients, by code", ["code"], registry=r)
        self.http_requests = Counter(p + "http_requests", "HTTP requests, by path and status", ["path", "status"],
                                     registry=r)

    def set_model(self, info: object) -> None:
        """Fill ``rnnstream_serve_model_info`` from a :class:`~rnnstream.pipeline.model_info.ModelInfo`."""
        fields = {"weights_hash": "weights_hash", "task": "task", "version": "version", "input_kind": "input_kind"}
        labels = {k: str(getattr(info, attr, "") or "") for k, attr in fields.items()}
        fc = getattr(info, "feature_config", None)
        labels["kind"] = str(getattr(fc, "kind", ""))
        self.model_info.info(labels)

    def render(self) -> bytes:
        """The Prometheus text: this process' registry, or every worker's sum under ``--workers N``."""
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        info = CollectorRegistry()
        info.register(_Single(self.model_info))
        return generate_latest(merged) + generate_latest(info)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample's current value (0.0 when absent), e.g. ``value("rnnstream_serve_batch_size_count")``."""
        v = self.registry.get_sample_value(name, labels or {})
        return 0.0 if v is None else float(v)

    def dropped(self) -> float:
        """All dropped chunks, every reason together."""
        total = 0.0
        for metric in self.chunks_dropped.collect():
            total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
        return total
