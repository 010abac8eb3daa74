"""``/metrics`` on an address of its own (``metrics.bind``), served by the gunicorn master.

The master does not serve requests, never dies with a worker, and sees every worker's
values through the multiprocess directory, so its answer is complete even while workers
restart.  The listener is a small HTTP server thread of prometheus-client's.
"""

from __future__ import annotations

import logging

from cortex.scrape import QueueCollector, scrape_registry


def _split(bind: str) -> tuple[str, int]:
    host, _, port = bind.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"metrics.bind must be HOST:PORT, not {bind!r}")
    return (host.strip("[]") or "0.0.0.0"), int(port)


def start_metrics_listener(config: dict, log: logging.Logger | None = None):
    """Start serving ``/metrics`` on ``metrics.bind`` (nothing when it is empty or metrics are
    off); returns the server, or None."""
    bind = config["metrics"]["bind"]
    if not bind or not config["metrics"]["enabled"]:
        return None
    from prometheus_client import start_http_server

    from cortex.backpressure import Backpressure
    from cortex.queue import make_queue

    queue = make_queue({**config, "queue": {**config["queue"], "backend": "sqlite"}})
    collector = QueueCollector(queue, list(config["sinks"]), config["data_dir"], Backpressure(queue, config))
    host, port = _split(bind)
    server, _thread = start_http_server(port, addr=host, registry=_Scrape(collector))
    (log or logging.getLogger("cortex.metrics")).info("serving /metrics on %s", bind)
    return server


class _Scrape:
    """A registry-like object that reads every worker's values at each scrape."""

    def __init__(self, collector: QueueCollector):
        self.collector = collector

    def collect(self):
        yield from scrape_registry(self.collector).collect()
