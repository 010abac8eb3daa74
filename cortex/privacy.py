"""Data-subject requests: export every stored record of a person, or delete them all.

Both take a :class:`cortex.subjects.Subject` (an org and the person's identifiers in every
form they may be stored under) and work on every configured sink that can
(:func:`cortex.sinks.sink_can`), on the queue's ingest error log and dead-letter store, and
(export only) on the records still queued.

A deletion is done for each sink by the dispatcher's thread of that sink, between two
batches, since that thread holds the sink open (the ``file`` sink's directory lock, for
one); the request is recorded in the queue database and :func:`erase_subject` waits for
it.  When no dispatcher runs, the requester takes the dispatcher lock and does it itself.
Before that, a tombstone can be recorded: with ``privacy.drop_tombstoned`` on, the
dispatcher then drops the person's events still queued or arriving later.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterator

from cortex.dispatcher import DispatcherLock
from cortex.privacy_store import PrivacyStore
from cortex.queue_shards import move_shards
from cortex.sinks import sink_can
from cortex.subjects import Subject

__all__ = ["SubjectExport", "erase_subject", "known_org"]

log = logging.getLogger("cortex.privacy")


def known_org(state, org: str) -> bool:
    """True when ``org`` is in the control database."""
    return any(row["slug"] == org for row in state.control.list_orgs())


class SubjectExport:
    """Iterates over every stored record of a subject, each once (by id); then
    :attr:`sources` says how many came from where and which sinks could not export."""

    def __init__(self, state, subject: Subject):
        self.state = state
        self.subject = subject
        #: sink name (or "queue", "ingest_errors", "dead_letters") -> records found, or
        #: "unsupported" / "failed: ..." for a sink that could not export
        self.sources: dict[str, Any] = {}
        self.count = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        seen: set[str] = set()

        def fresh(records, source: str):
            found = 0
            for record in records:
                record_id = record.get("id")
                if record_id is not None and record_id in seen:
                    continue
                seen.add(record_id)
                found += 1
                self.count += 1
                yield record
            self.sources[source] = self.sources.get(source, 0) + found

        for sink in self.state.make_sinks():
            if not sink_can(sink, "export_subject"):
                self.sources[sink.name] = "unsupported"
                continue
            try:
                sink.open_for_export()
                yield from fresh(sink.export_subject(self.subject), sink.name)
            except Exception as error:  # one broken sink must not hide what the others hold
                log.exception("sink %s could not export a data subject's records", sink.name)
                self.sources[sink.name] = f"failed: {type(error).__name__}: {error}"
            finally:
                sink.close()
        move_shards(self.state.queue)  # the ingest shards' error rows into the queue's log first
        store = PrivacyStore(self.state.queue)
        yield from fresh(store.log_records(self.subject, "ingest_errors"), "ingest_errors")
        yield from fresh(store.log_records(self.subject, "dead_letters"), "dead_letters")
        yield from fresh(self._queued(), "queue")

    def _queued(self) -> Iterator[dict[str, Any]]:
        after = 0
        while True:
            entries = self.state.queue.read(after, 1000)
            if not entries:
                return
            for entry in entries:
                if entry.org == self.subject.org:
                    for record in entry.records:
                        if self.subject.matches(record):
                            record.pop("context", None)
                            yield record
            after = entries[-1].seq


def erase_subject(state, subject: Subject, tombstone: bool = True, wait_seconds: float | None = None) -> dict[str, Any]:
    """Delete every stored record of ``subject``; returns what was removed where.

    ``{"org", "tombstone", "sinks": {name: {"status", "removed", "error"}}, "queue":
    {"ingest_errors": n, "dead_letters": n}}``; a sink's status is ``done``, ``failed``,
    ``pending`` (the dispatcher has not done it within ``wait_seconds``; it still will) or
    ``unsupported`` (the sink cannot delete: its copies remain).
    """
    if wait_seconds is None:
        wait_seconds = float(state.config["privacy"]["wait_seconds"])
    store = PrivacyStore(state.queue)
    result: dict[str, Any] = {"org": subject.org, "tombstone": False, "sinks": {}, "queue": {}}
    if tombstone:
        # first, so that nothing of the person reaches a sink after its deletion
        store.add_tombstone(subject)
        result["tombstone"] = True
    sinks = state.make_sinks()
    capable = [sink for sink in sinks if sink_can(sink, "delete_subject")]
    for sink in sinks:
        if sink not in capable:
            result["sinks"][sink.name] = {"status": "unsupported", "removed": None, "error": None}
    request = store.request_erasure(subject, [sink.name for sink in capable])
    if capable:
        lock = DispatcherLock(state.config["data_dir"])
        if lock.acquire(blocking=False):
            try:
                for sink in capable:
                    _erase_here(store, sink)
            finally:
                lock.release()
        else:
            _wait(store, request, wait_seconds)
    result["sinks"].update(store.erasure_status(request))
    move_shards(state.queue)  # the ingest shards' error rows into the queue's log first
    result["queue"] = store.erase_logs(subject)
    log.info("data subject of org %s deleted: %s", subject.org,
             {name: s["removed"] for name, s in result["sinks"].items()})
    return result


def _erase_here(store: PrivacyStore, sink) -> None:
    """Do a sink's pending deletions in this process (no dispatcher runs)."""
    pending = store.pending_erasures(sink.name)
    if not pending:
        return
    try:
        sink.open()
    except Exception as error:
        for row_id, _ in pending:
            store.finish_erasure(row_id, None, f"could not open the sink: {type(error).__name__}: {error}")
        return
    try:
        for row_id, subject in pending:
            try:
                store.finish_erasure(row_id, sink.delete_subject(subject))
            except Exception as error:
                log.exception("sink %s could not delete a data subject's records", sink.name)
                store.finish_erasure(row_id, None, f"{type(error).__name__}: {error}")
    finally:
        sink.close()


def _wait(store: PrivacyStore, request: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(s["status"] != "pending" for s in store.erasure_status(request).values()):
            return
        time.sleep(0.2)
