"""What a Prometheus scrape reads: the recorded metrics plus gauges measured from the queue.

What the queue holds (depth, age of the oldest entry, each sink's lag), the data
directory's disk and backpressure are not counted but measured at scrape time
(:class:`QueueCollector`), so they are right whichever process dispatches, and cost the
requests nothing.
"""

from __future__ import annotations

import shutil
import time
from typing import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from cortex.metrics import flush, get_metrics, multiprocess_dir


class QueueCollector:
    """Gauges measured from the queue and the data directory when Prometheus scrapes."""

    def __init__(self, queue, sinks: list[str], data_dir: str, backpressure=None):
        self.queue = queue
        self.sinks = sinks
        self.data_dir = data_dir
        self.backpressure = backpressure

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The queue's depth and age, each sink's lag, disk space, backpressure."""
        now = time.time()
        stats = self.queue.stats()
        yield GaugeMetricFamily("cortex_queue_records", "Records (events and rejected events) held in the queue.",
                                value=stats["records"])
        yield GaugeMetricFamily("cortex_queue_entries", "Entries (accepted requests) held in the queue.",
                                value=stats["entries"])
        oldest = stats["oldest_enqueued_at"]
        yield GaugeMetricFamily("cortex_queue_oldest_age_seconds",
                                "Age of the oldest entry still in the queue (0 when empty).",
                                value=max(0.0, now - oldest) if oldest else 0.0)
        lag = GaugeMetricFamily("cortex_sink_lag_seconds",
                                "Age of the oldest entry a sink has not stored yet (0 when caught up).",
                                labels=["sink"])
        pending = GaugeMetricFamily("cortex_sink_pending_entries", "Entries a sink has not stored yet.",
                                    labels=["sink"])
        for sink in self.sinks:
            state = self.queue.sink_lag(sink)
            lag.add_metric([sink], max(0.0, now - state["oldest_pending_at"]) if state["oldest_pending_at"] else 0.0)
            pending.add_metric([sink], state["pending_entries"])
        yield lag
        yield pending
        usage = shutil.disk_usage(self.data_dir)
        yield GaugeMetricFamily("cortex_data_dir_free_bytes", "Free space on the data directory's filesystem.",
                                value=usage.free)
        yield GaugeMetricFamily("cortex_data_dir_size_bytes", "Size of the data directory's filesystem.",
                                value=usage.total)
        if self.backpressure is not None:
            refusing = GaugeMetricFamily("cortex_ingest_backpressure",
                                         "1 while ingest refuses bundles with 503, by reason (queue_depth, disk).",
                                         labels=["reason"])
            reason = self.backpressure.refusal()
            for name in ("queue_depth", "disk"):
                refusing.add_metric([name], 1.0 if reason and reason.startswith(name) else 0.0)
            yield refusing


class _Collectors:
    """Several collectors scraped as one (what :func:`generate_latest` wants)."""

    def __init__(self, *collectors):
        self.collectors = collectors

    def collect(self):
        for collector in self.collectors:
            yield from collector.collect()


def scrape_registry(queue_collector: QueueCollector | None):
    """What a scrape reads: every process's values (multiprocess) or this process's, plus the
    queue's gauges."""
    path = multiprocess_dir()
    if path:
        from prometheus_client.multiprocess import MultiProcessCollector

        counted = MultiProcessCollector(None, path=path)
    else:
        counted = get_metrics().registry
    return _Collectors(counted, *([queue_collector] if queue_collector else []))


def render(queue_collector: QueueCollector | None) -> tuple[bytes, str]:
    """The Prometheus text exposition and its content type."""
    flush()
    return generate_latest(scrape_registry(queue_collector)), CONTENT_TYPE_LATEST
