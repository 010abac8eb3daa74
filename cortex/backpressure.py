"""Backpressure: refuse bundles with 503 while the queue is too deep or the disk too full.

A 503 with ``Retry-After`` makes every SDK keep its events and send them again later, which
is better than accepting what Cortex cannot keep.  The measurement is cached for
``queue.pressure_check_interval`` seconds per process, so a request pays for a clock read,
not a query; as soon as the dispatcher has drained the queue (or space was freed) the next
measurement lets bundles in again.
"""

from __future__ import annotations

import logging
import shutil
import time

log = logging.getLogger("cortex.backpressure")


class Backpressure:
    """Decides whether ingest must refuse now; shared by a process's threads."""

    def __init__(self, queue, config: dict):
        settings = config["queue"]
        self.queue = queue
        self.data_dir = config["data_dir"]
        self.max_depth = settings["max_depth"]
        self.max_disk_fill = settings["max_disk_fill"]
        self.interval = settings["pressure_check_interval"]
        self.retry_after = str(settings["retry_after"])
        self._checked_at = float("-inf")
        self._reason: str | None = None

    def refusal(self) -> str | None:
        """Why ingest must refuse now (``queue_depth: ...`` or ``disk: ...``), or None."""
        now = time.monotonic()
        if now - self._checked_at >= self.interval:
            # set first: the other threads keep the previous answer while this one measures
            self._checked_at = now
            reason = self._measure()
            if reason != self._reason:
                if reason:
                    log.warning("refusing ingest with 503: %s", reason)
                else:
                    log.warning("accepting ingest again (was: %s)", self._reason)
            self._reason = reason
        return self._reason

    def _measure(self) -> str | None:
        if self.max_disk_fill:
            fill = disk_fill(self.data_dir)
            if fill >= self.max_disk_fill:
                return f"disk: the data directory's filesystem is {fill:.1%} full (limit {self.max_disk_fill:.1%})"
        if self.max_depth:
            try:
                records = self.queue.stats()["records"]
            except Exception as error:  # noqa: BLE001 - the queue's own errors answer 503 later anyway
                log.warning("could not measure the queue depth: %s", error)
                return None
            if records >= self.max_depth:
                return f"queue_depth: {records} records queued (limit {self.max_depth})"
        return None


def disk_fill(path: str) -> float:
    """How full the filesystem holding ``path`` is, as ``df`` counts it (0.0-1.0)."""
    usage = shutil.disk_usage(path)
    # the space reserved for root counts as unavailable, as in df's Use%
    room = usage.used + usage.free
    return usage.used / room if room else 1.0
