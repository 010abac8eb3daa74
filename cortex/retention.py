"""Retention: stored events older than a configured age are deleted, in bounded batches.

The ``[retention]`` configuration gives ages in days (0: keep forever)::

    [retention]
    events_days = 0                 # every table of every org (off by default)
    dead_letter_days = 90           # the queue's dead-letter store
    ingest_error_days = 90          # the queue's ingest error log
    [retention.tables]
    app_logs = 30                   # a table of the sql sink; "files" for the file sink
    [retention.orgs.acme]
    events_days = 365               # this org's default
    tables = { economy = 0 }        # this org's table: kept forever

The dispatcher applies it: each sink's thread calls :meth:`cortex.sinks.Sink.expire`
between deliveries (a sink that cannot expire is left alone), one batch at a time, and
the housekeeping thread prunes the queue's logs.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Mapping

from cortex.sinks import Sink, sink_can

__all__ = ["RetentionPolicy", "SinkRetention", "expire_queue_logs"]

log = logging.getLogger("cortex.retention")

DAY = 86400


def _days(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{where} must be a number of days (0: keep forever), not {value!r}")
    return float(value)


class RetentionPolicy:
    """The configured ages, resolved per org and table, at one moment ``now``."""

    def __init__(self, settings: Mapping[str, Any], orgs: Iterable[str] = (), now: datetime | None = None):
        self.settings = settings
        self.now = now or datetime.now(timezone.utc)
        self.default_days = _days(settings.get("events_days", 0), "retention.events_days")
        self.table_days = {
            str(k): _days(v, f"retention.tables.{k}") for k, v in (settings.get("tables") or {}).items()
        }
        self.org_settings: dict[str, dict] = {}
        for org, table in (settings.get("orgs") or {}).items():
            self.org_settings[str(org)] = {
                "events_days": _days(table["events_days"], f"retention.orgs.{org}.events_days")
                if "events_days" in table else None,
                "tables": {
                    str(k): _days(v, f"retention.orgs.{org}.tables.{k}")
                    for k, v in (table.get("tables") or {}).items()
                },
            }
        #: the orgs a sink should look at: those of the control database and the configured ones
        self.orgs: list[str] = sorted(set(orgs) | set(self.org_settings))

    def days(self, org: str, table: str) -> float:
        """The age in days after which ``table``'s records of ``org`` go (0: never).

        The most specific setting wins: the org's table, the org's default, the table,
        the default.
        """
        own = self.org_settings.get(org)
        if own is not None:
            if table in own["tables"]:
                return own["tables"][table]
            if own["events_days"] is not None:
                return own["events_days"]
        if table in self.table_days:
            return self.table_days[table]
        return self.default_days

    def cutoff(self, org: str, table: str) -> datetime | None:
        """Records of ``org`` in ``table`` older than this moment go; None: all are kept."""
        days = self.days(org, table)
        return self.now - timedelta(days=days) if days > 0 else None

    def any_cutoff(self) -> bool:
        """True when some table of some org has a retention period."""
        return (
            self.default_days > 0
            or any(self.table_days.values())
            or any((o["events_days"] or 0) > 0 or any(o["tables"].values()) for o in self.org_settings.values())
        )


class SinkRetention:
    """Applies the policy to one sink from the sink's dispatcher thread, now and then."""

    def __init__(self, state, sink: Sink, clock: Callable[[], float] = time.monotonic):
        self.state = state
        self.sink = sink
        self.clock = clock
        settings = state.config["retention"]
        self.interval = float(settings["interval"])
        self.batch_size = int(settings["batch_size"])
        self.max_seconds = float(settings["max_seconds"])
        self.next_run = 0.0
        self.capable = sink_can(sink, "expire")

    def policy(self) -> RetentionPolicy:
        """The policy now, over the orgs of the control database."""
        orgs = [row["slug"] for row in self.state.control.list_orgs()]
        return RetentionPolicy(self.state.config["retention"], orgs)

    def due(self) -> bool:
        """True when a run is due (an unfinished run is due at once)."""
        return self.capable and self.clock() >= self.next_run

    def run(self, until_done: bool = False) -> int:
        """Expire batches for at most ``max_seconds`` (or until done); returns how many items."""
        policy = self.policy()
        if not policy.any_cutoff():
            self.next_run = self.clock() + self.interval
            return 0
        started = self.clock()
        removed = 0
        while True:
            count = self.sink.expire(policy, self.batch_size)
            removed += count
            if count < self.batch_size:
                self.next_run = self.clock() + self.interval
                break
            if not until_done and self.clock() - started >= self.max_seconds:
                self.next_run = self.clock()  # more to do: go on after the next delivery
                break
        if removed:
            log.info("retention: sink %s removed %d expired items", self.sink.name, removed)
        return removed


def expire_queue_logs(state, until_done: bool = True) -> dict[str, int]:
    """Delete dead letters and ingest-error-log rows past their ages, in batches."""
    from cortex.privacy_store import PrivacyStore
    from cortex.queue_shards import move_shards

    move_shards(state.queue)  # the ingest shards' error rows into the queue's log first
    store = PrivacyStore(state.queue)
    settings = state.config["retention"]
    batch = int(settings["batch_size"])
    now = time.time()
    removed = {"dead_letters": 0, "ingest_errors": 0}
    for name, key in (("dead_letters", "dead_letter_days"), ("ingest_errors", "ingest_error_days")):
        days = _days(settings[key], f"retention.{key}")
        if days <= 0:
            continue
        cutoff = now - days * DAY
        while True:
            count = store.expire_log(name, cutoff, batch)
            removed[name] += count
            if count < batch or not until_done:
                break
    return removed
