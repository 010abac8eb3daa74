"""Prometheus metrics: what Cortex counts, cheaply, in every process.

Counters and histograms are recorded where things happen (requests, ingest, dispatcher).
Under gunicorn every worker is a process of its own, so they run in prometheus-client's
multiprocess mode: each process writes its values to files in ``$PROMETHEUS_MULTIPROC_DIR``
and a scrape adds them up.  The gunicorn master sets the variable and removes the files of
dead processes before it forks the workers (:func:`prepare_multiprocess_dir`, called from the
``on_starting`` hook), and marks each worker dead when it exits (:func:`mark_worker_dead`).
Without that variable (tests, ``flask run``) the values live in the process.

What the queue holds is not counted here but measured when Prometheus scrapes
(:mod:`cortex.scrape`).

Recording is kept cheap (a few microseconds per request): a request only adds to
process-local sums (:class:`Tally`), which are added to the prometheus-client metrics in
bulk by a flush: at each scrape of the process, and every ``FLUSH_INTERVAL`` seconds from a
background thread in multiprocess mode (so another worker's scrape is at most that much
behind).  Events are counted per bundle, never one by one.
"""

from __future__ import annotations

import atexit
import bisect
import glob
import os
import re
import threading
import time
from typing import Any, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, values

from cortex.pid import current_pid

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: request latency buckets, seconds (ingest answers in milliseconds; 10 s means trouble)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: client clock skew buckets, seconds (absolute): from "in sync" to "a week off"
SKEW_BUCKETS = (1.0, 5.0, 30.0, 60.0, 300.0, 3600.0, 21600.0, 86400.0, 604800.0)
#: sink write buckets, seconds: a batch of a few records to a slow remote store
SINK_WRITE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: records per sink write: one record up to the largest ``dispatcher.batch_size`` worth having
SINK_BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000)

_FILE_PID = re.compile(r"_(\d+)\.db$")
#: seconds between flushes of a process's sums to the multiprocess files
FLUSH_INTERVAL = 1.0


class Tally:
    """Process-local sums of counter increments and histogram observations, added to the
    prometheus-client metrics in bulk by :meth:`flush` (a dict update per record instead of
    a locked write per sample)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: dict[Any, float] = {}
        self._observations: dict[Any, list] = {}
        self._bounds: dict[Any, list[float]] = {}

    def count(self, child, amount: float = 1) -> None:
        """Add ``amount`` to a counter child."""
        with self._lock:
            self._counts[child] = self._counts.get(child, 0) + amount

    def observe(self, child, value: float) -> None:
        """Record one observation of a histogram child."""
        bounds = self._bounds.get(child)
        if bounds is None:
            bounds = self._bounds[child] = list(child._upper_bounds)
        index = bisect.bisect_left(bounds, value)
        with self._lock:
            sums = self._observations.get(child)
            if sums is None:
                sums = self._observations[child] = [0] * len(bounds) + [0.0]
            sums[index] += 1
            sums[-1] += value

    def flush(self) -> None:
        """Add what was recorded since the last flush to the metrics."""
        with self._lock:
            counts, self._counts = self._counts, {}
            observations, self._observations = self._observations, {}
        for child, amount in counts.items():
            child.inc(amount)
        for child, sums in observations.items():
            # a histogram child keeps one value per bucket (made cumulative when collected)
            # and the sum: the same values its observe() would have added, in one step
            for bucket, hits in zip(child._buckets, sums):
                if hits:
                    bucket.inc(hits)
            child._sum.inc(sums[-1])


class Metrics:
    """The metrics one process records, with cached label children for the hot path."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.requests = Counter(
            "cortex_http_requests", "HTTP requests answered, by endpoint, method and status code.",
            ["endpoint", "method", "status"], registry=registry,
        )
        self.latency = Histogram(
            "cortex_http_request_duration_seconds", "Time from the start of a request to its answer.",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.rate_limited = Counter(
            "cortex_http_rate_limited", "Requests answered 429 (over a rate limit), by endpoint.",
            ["endpoint"], registry=registry,
        )
        self.accepted = Counter(
            "cortex_events_accepted", "Events accepted into the queue, by org.", ["org"], registry=registry,
        )
        self.duplicate = Counter(
            "cortex_events_duplicate", "Events recognised as already accepted (retries), by org.",
            ["org"], registry=registry,
        )
        self.rejected = Counter(
            "cortex_events_rejected", "Events refused and kept in the ingest error log, by org and reason.",
            ["org", "reason"], registry=registry,
        )
        self.clock_skew = Histogram(
            "cortex_client_clock_skew_seconds",
            "Difference between the server's clock and the client's current_time (absolute).",
            buckets=SKEW_BUCKETS, registry=registry,
        )
        self.sink_delivered = Counter(
            "cortex_sink_delivered_records", "Records a sink stored, by sink.", ["sink"], registry=registry,
        )
        self.sink_failures = Counter(
            "cortex_sink_write_failures", "Failed sink writes that will be retried, by sink.",
            ["sink"], registry=registry,
        )
        self.sink_dead_lettered = Counter(
            "cortex_sink_dead_lettered_records", "Records a sink refused for good (moved to the dead-letter store).",
            ["sink"], registry=registry,
        )
        self.sink_write_seconds = Histogram(
            "cortex_sink_write_seconds", "Time a sink took to store one batch, by sink.",
            ["sink"], buckets=SINK_WRITE_BUCKETS, registry=registry,
        )
        self.sink_batch_records = Histogram(
            "cortex_sink_batch_records", "Records a sink stored in one write, by sink.",
            ["sink"], buckets=SINK_BATCH_BUCKETS, registry=registry,
        )
        self.enricher_errors = Counter(
            "cortex_enricher_errors", "Enricher failures, by enricher and the error policy applied.",
            ["enricher", "policy"], registry=registry,
        )
        self._children: dict[tuple, Any] = {}
        #: (endpoint, method, status) -> (requests child, latency child)
        self.request_children: dict[tuple, tuple] = {}
        self.tally = Tally()

    def child(self, metric, *labels: str):
        """The (cached) child of ``metric`` for ``labels``."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child


_lock = threading.Lock()
_metrics: Metrics | None = None
#: (multiprocess directory or None, pid) of the metrics made
_metrics_mode: tuple[str | None, int] = (None, 0)
_flusher_pid: int | None = None


def get_metrics() -> Metrics:
    """This process's metrics, made on first use (again after a fork, or after
    :func:`prepare_multiprocess_dir`) in the mode ``$PROMETHEUS_MULTIPROC_DIR`` says."""
    global _metrics, _metrics_mode
    metrics = _metrics
    if metrics is not None and _metrics_mode[1] == current_pid():
        return metrics
    with _lock:
        if _metrics is None or _metrics_mode[1] != current_pid():
            path = os.environ.get(MULTIPROC_ENV) or None
            # *_created series are not written in multiprocess mode: leave them out in both
            disable_created_metrics()
            # the value class is chosen when a metric is made: follow the environment
            values.ValueClass = values.get_value_class()
            _metrics = Metrics(CollectorRegistry(auto_describe=True))
            _metrics_mode = (path, current_pid())
            if path:
                _start_flusher()
        return _metrics


def _forget_metrics() -> None:
    """Make the next :func:`get_metrics` start afresh (the mode changed)."""
    global _metrics
    with _lock:
        _metrics = None


def flush() -> None:
    """Add this process's recent records to its metrics (before a scrape, before exit)."""
    if _metrics is not None and _metrics_mode[1] == current_pid():
        _metrics.tally.flush()


def _start_flusher() -> None:
    """In multiprocess mode: flush every ``FLUSH_INTERVAL`` seconds, and at exit."""
    global _flusher_pid
    if _flusher_pid == current_pid():
        return
    _flusher_pid = current_pid()

    def run() -> None:
        while True:
            time.sleep(FLUSH_INTERVAL)
            try:
                flush()
            except Exception:  # noqa: BLE001 - a failed flush is retried by the next one
                pass

    threading.Thread(target=run, name="cortex-metrics-flush", daemon=True).start()
    atexit.register(flush)


def multiprocess_dir() -> str | None:
    """The multiprocess directory in use, or None for in-process metrics."""
    return os.environ.get(MULTIPROC_ENV) or None


# recording -------------------------------------------------------------------------------------
def record_request(endpoint: str, method: str, status: int, seconds: float) -> None:
    """Count one answered request and its latency (and a 429 as rate-limited)."""
    metrics = get_metrics()
    tally = metrics.tally
    key = (endpoint, method, status)
    children = metrics.request_children.get(key)
    if children is None:
        children = metrics.request_children[key] = (
            metrics.child(metrics.requests, endpoint, method, str(status)),
            metrics.child(metrics.latency, endpoint),
        )
    tally.count(children[0])
    tally.observe(children[1], seconds)
    if status == 429:
        tally.count(metrics.child(metrics.rate_limited, endpoint))


def record_events(org: str, accepted: int, duplicate: int, rejected: dict[str, int] | None = None) -> None:
    """Count one bundle's events: accepted, duplicates and rejected (by reason)."""
    metrics = get_metrics()
    tally = metrics.tally
    if accepted:
        tally.count(metrics.child(metrics.accepted, org), accepted)
    if duplicate:
        tally.count(metrics.child(metrics.duplicate, org), duplicate)
    if rejected:
        for reason, count in rejected.items():
            tally.count(metrics.child(metrics.rejected, org, reason), count)


def record_clock_skew(seconds: float) -> None:
    """Observe the (absolute) difference between the client's and the server's clock."""
    metrics = get_metrics()
    metrics.tally.observe(metrics.clock_skew, abs(seconds))


def record_delivery(sink: str, delivered: int = 0, dead_lettered: int = 0, failed: int = 0) -> None:
    """Count what one sink write did: records stored, records dead-lettered, failed attempts."""
    metrics = get_metrics()
    tally = metrics.tally
    if delivered:
        tally.count(metrics.child(metrics.sink_delivered, sink), delivered)
    if dead_lettered:
        tally.count(metrics.child(metrics.sink_dead_lettered, sink), dead_lettered)
    if failed:
        tally.count(metrics.child(metrics.sink_failures, sink), failed)


def record_sink_write(sink: str, records: int, seconds: float) -> None:
    """Observe one successful sink write: how many records it stored and how long it took."""
    metrics = get_metrics()
    metrics.tally.observe(metrics.child(metrics.sink_batch_records, sink), records)
    metrics.tally.observe(metrics.child(metrics.sink_write_seconds, sink), seconds)


def record_enricher_error(enricher: str, policy: str, count: int = 1) -> None:
    """Count an enricher failure; ``policy`` names what was done about it (e.g. ``skip``,
    ``drop``, ``dead_letter``, ``retry``): one call per failure, ``count`` for many at once."""
    metrics = get_metrics()
    metrics.tally.count(metrics.child(metrics.enricher_errors, enricher, policy), count)


def rejection_reasons(records: Iterable[dict], default: str | None = None) -> dict[str, int]:
    """Rejected records counted by reason: ``default`` for all of them when given, else
    ``not_an_object``, ``unknown_type``, ``strict_mode`` (a valid event refused with its
    bundle) or ``invalid_field``."""
    tally: dict[str, int] = {}
    for record in records:
        if default is not None:
            reason = default
        else:
            reasons = record.get("reasons") or {}
            if "_event" in reasons:
                reason = "not_an_object"
            elif "_bundle" in reasons:
                reason = "strict_mode"
            elif len(reasons) == 1 and str((reasons.get("type") or [""])[0]).startswith("Unknown event type"):
                reason = "unknown_type"
            else:
                reason = "invalid_field"
        tally[reason] = tally.get(reason, 0) + 1
    return tally


# gunicorn multiprocess bookkeeping -----------------------------------------------------------
def default_multiprocess_dir(config: dict) -> str:
    """Where worker processes keep their values: ``metrics.multiprocess_dir`` or
    ``{data_dir}/metrics``."""
    return config["metrics"].get("multiprocess_dir") or os.path.join(config["data_dir"], "metrics")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prepare_multiprocess_dir(config: dict, clean: bool) -> str | None:
    """Use multiprocess mode in this process and the processes it forks; with ``clean``
    (the gunicorn master, at start) remove the values of processes that are gone.

    A running ``cortex worker`` writes to the same directory; its files are kept, so the
    server's ``/metrics`` shows its dispatcher's counters too.  Returns the directory, or
    None when metrics are disabled.
    """
    if not config["metrics"]["enabled"]:
        return None
    path = os.environ.get(MULTIPROC_ENV) or default_multiprocess_dir(config)
    os.makedirs(path, exist_ok=True)
    if clean:
        for name in glob.glob(os.path.join(path, "*.db")):
            match = _FILE_PID.search(name)
            if match is None or not _alive(int(match.group(1))) or int(match.group(1)) == current_pid():
                try:
                    os.remove(name)
                except FileNotFoundError:
                    pass
    if os.environ.get(MULTIPROC_ENV) != path or _metrics_mode[0] != path:
        os.environ[MULTIPROC_ENV] = path
        _forget_metrics()
    return path


def mark_worker_dead(pid: int) -> None:
    """Forget a dead worker's live gauges (its counters stay in the totals)."""
    path = multiprocess_dir()
    if path:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, path)
