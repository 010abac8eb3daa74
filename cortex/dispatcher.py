"""The dispatcher: reads the queue, runs the enrichers and delivers to every sink.

Enrichment runs once per queue entry for all sinks (:class:`cortex.enrichment.EnrichedEntries`):
the first sink to read an entry enriches it, the others take the same outcome.  Records an
enricher dead-letters go to every sink's dead-letter store and do not hold up the cursors.

Each sink has its own thread and its own cursor in the queue, so one failing or slow sink
never holds up the others, and a sink that comes back catches up from where it stopped.
A batch is written, then the cursor moves: a crash in between re-sends the batch (at least
once), which the sinks' idempotent writes absorb.  Failures a sink calls permanent
(:class:`cortex.sinks.PermanentError`) are narrowed down by halving the batch until the
refused records are found; those go to the dead-letter store and the rest is delivered.
Each batch takes turns with the request commits of its process (:mod:`cortex.turns`).

Only one dispatcher works on a data directory at a time: it holds an exclusive lock on
``dispatcher.lock``.  Under gunicorn every worker starts an election thread and the one that
gets the lock dispatches; if its worker dies the lock is freed and another takes over.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import threading
import time
from typing import Any

from cortex.enrichers import Enricher
from cortex.enrichment import EnrichedEntries, EnricherErrors, Enrichment
from cortex.metrics import record_delivery, record_sink_write
from cortex.privacy_store import PrivacyStore, TombstoneFilter
from cortex.retention import SinkRetention, expire_queue_logs
from cortex.sinks import PermanentError, Sink, sink_can

log = logging.getLogger("cortex.dispatcher")

#: most prune batches (about 5,000 records each, see ``SQLiteQueue.prune``) per housekeeping
#: round; what is left waits for the next round
MAX_PRUNE_BATCHES = 200
#: seconds between two prune batches
PRUNE_PAUSE = 0.002


class Stopped(Exception):
    """The dispatcher was asked to stop while a batch was still being retried."""


class SinkRunner:
    """Delivers the queue to one sink."""

    def __init__(self, state, sink: Sink, enrichers: list[Enricher], stop: threading.Event,
                 enriched: EnrichedEntries | None = None):
        self.state = state
        self.queue = state.queue
        self.sink = sink
        self.stop = stop
        settings = state.config["dispatcher"]
        #: the enrichment shared by every sink of the dispatcher; a runner made on its own
        #: enriches with its own ``enrichers``
        self.owns_enrichment = enriched is None
        if enriched is None:
            enriched = EnrichedEntries(Enrichment.of(enrichers, EnricherErrors(state.queue)), settings["batch_size"])
        self.enriched = enriched
        self.batch_size = settings["batch_size"]
        self.poll_interval = settings["poll_interval"]
        self.batch_wait = settings["batch_wait"]
        self.retry_initial = settings["retry_initial"]
        self.retry_max = settings["retry_max"]
        self.metered = state.config["metrics"]["enabled"]
        self.opened = False
        self.privacy = PrivacyStore(state.queue)
        self.tombstones = TombstoneFilter(self.privacy, sink.name, state.config["privacy"]["drop_tombstoned"])
        self.retention = SinkRetention(state, sink)
        self.can_erase = sink_can(sink, "delete_subject")

    def open(self) -> None:
        """Open the sink (and enrichers of its own), retrying with backoff until it opens or stops."""
        delay = self.retry_initial
        if self.owns_enrichment and not self.opened:
            self.enriched.open()
        while not self.opened:
            try:
                self.sink.open()
                self.opened = True
            except Exception:
                log.exception("sink %s could not open; retrying in %.1fs", self.sink.name, delay)
                self._wait(delay)
                delay = min(delay * 2, self.retry_max)

    def close(self) -> None:
        """Close the sink (and enrichers of its own)."""
        try:
            self.sink.close()
        except Exception:
            log.exception("closing sink %s failed", self.sink.name)
        if self.owns_enrichment and self.opened:
            self.enriched.close()
        self.opened = False

    def run(self) -> None:
        """Deliver until stopped."""
        try:
            self.open()
            while not self.stop.is_set():
                delivered = self.step_in_turn()
                if delivered == 0:
                    self.stop.wait(self.poll_interval)
                elif delivered < self.batch_size // 2:
                    # a short wait lets the next batch fill up: fewer, larger sink writes
                    self.stop.wait(self.batch_wait)
        except Stopped:
            pass
        finally:
            self.close()

    def step_in_turn(self) -> int:
        """:meth:`step`, taking turns with the request commits of this process, when the
        queue has turns (:mod:`cortex.turns`)."""
        turn = getattr(self.queue, "turn", None)
        if turn is None or not turn.take():
            return self.step()
        try:
            return self.step()
        finally:
            turn.give_back(let_waiter_first=True)

    def step(self) -> int:
        """Deliver one batch; returns how many records it held (0: nothing to deliver).

        Between batches it also does the sink's share of data-subject deletions and of
        retention, so that they never run while the sink writes.
        """
        self.run_erasures()
        self.run_retention()
        cursor = self.queue.cursor(self.sink.name)
        entries = self.queue.read(cursor, self.batch_size)
        if not entries:
            return 0
        kept = self.records_to_deliver(entries)
        delivered = self.deliver(kept) if kept else 0
        self.queue.advance(self.sink.name, entries[-1].seq, delivered)
        if self.metered:
            record_delivery(self.sink.name, delivered=delivered)
        return sum(len(entry.records) for entry in entries)

    def records_to_deliver(self, entries: list) -> list[dict[str, Any]]:
        """The enriched records of ``entries`` to write to the sink: the ones an enricher
        dead-lettered go to the dead-letter store, a tombstoned person's are dropped."""
        records, dead = self.enrich(entries)
        for reason, refused in dead.items():
            # the records as read from the queue, request context included, so that a
            # replay can enrich them again; a tombstoned person's are not kept
            refused = self.tombstones.filter(refused)
            if refused:
                self.queue.dead_letter(self.sink.name, refused, reason)
        # after enrichment: tombstones hold every stored form of an identifier, the
        # pseudonyms included
        return self.tombstones.filter(records)

    def enrich(self, entries: list) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
        """The records of ``entries`` to deliver, enriched and without request context, and
        the ones an enricher dead-lettered (as read from the queue), by reason."""
        if not self.enriched.active:
            records = [record for entry in entries for record in entry.records]
            for record in records:
                record.pop("context", None)
            return records, {}
        outcomes = self.enriched.outcomes(entries)
        records = [outcome.record for outcome in outcomes if outcome.record is not None]
        dead: dict[str, list[dict[str, Any]]] = {}
        position = 0
        for entry in entries:
            for record in entry.records:
                reason = outcomes[position].dead_reason
                if reason is not None:
                    dead.setdefault(reason, []).append(record)
                position += 1
        return records, dead

    def run_erasures(self) -> int:
        """Delete the people whose deletion was requested from this sink; returns how many requests."""
        if not self.can_erase:
            return 0
        pending = self.privacy.pending_erasures(self.sink.name)
        for row_id, subject in pending:
            try:
                removed = self.sink.delete_subject(subject)
            except Exception as error:
                log.exception("sink %s could not delete a data subject's records", self.sink.name)
                self.privacy.finish_erasure(row_id, None, f"{type(error).__name__}: {error}")
            else:
                self.privacy.finish_erasure(row_id, removed)
        return len(pending)

    def run_retention(self, until_done: bool = False, force: bool = False) -> int:
        """Expire the sink's old records when a run is due (or ``force``); returns how many items went."""
        if not self.retention.capable or not (force or self.retention.due()):
            return 0
        try:
            return self.retention.run(until_done)
        except Exception:
            log.exception("retention on sink %s failed; will try again", self.sink.name)
            self.retention.next_run = self.retention.clock() + self.retention.interval
            return 0

    def deliver(self, records: list[dict[str, Any]]) -> int:
        """Write ``records`` to the sink; returns how many it stored (the rest dead-lettered)."""
        delay = self.retry_initial
        while True:
            try:
                started = time.perf_counter()
                self.sink.write(records)
                if self.metered:
                    record_sink_write(self.sink.name, len(records), time.perf_counter() - started)
                return len(records)
            except PermanentError as error:
                if len(records) == 1:
                    self.queue.dead_letter(self.sink.name, records, f"{type(error).__name__}: {error}")
                    if self.metered:
                        record_delivery(self.sink.name, dead_lettered=1)
                    log.error("sink %s refused record %s for good: %s", self.sink.name, records[0].get("id"), error)
                    return 0
                middle = len(records) // 2
                return self.deliver(records[:middle]) + self.deliver(records[middle:])
            except Exception as error:
                if self.metered:
                    record_delivery(self.sink.name, failed=1)
                log.warning(
                    "sink %s failed to write %d records (%s: %s); retrying in %.1fs",
                    self.sink.name, len(records), type(error).__name__, error, delay,
                )
                self._wait(delay)
                delay = min(delay * 2, self.retry_max)

    def _wait(self, delay: float) -> None:
        if self.stop.wait(delay * random.uniform(0.8, 1.2)):
            raise Stopped()

    def caught_up(self) -> bool:
        """True when the sink has every entry queued so far."""
        return self.queue.cursor(self.sink.name) >= self.queue.head()


class Dispatcher:
    """All the sink runners of one app, plus queue housekeeping."""

    def __init__(self, state):
        self.state = state
        self.stop = threading.Event()
        # enrichment runs once per queue entry, whichever sink reads it first
        sinks = state.make_sinks()
        self.enriched = EnrichedEntries(
            Enrichment.from_state(state), state.config["dispatcher"]["batch_size"] * (len(sinks) + 1)
        )
        # a queue backend may bring its own way of reading (Kafka: a consumer group per sink)
        runner_class = getattr(state.queue, "sink_runner_class", SinkRunner)
        self.runners = [runner_class(state, sink, [], self.stop, self.enriched) for sink in sinks]
        self.threads: list[threading.Thread] = []

    @property
    def sink_names(self) -> list[str]:
        return [runner.sink.name for runner in self.runners]

    def start(self) -> None:
        """Start one thread per sink and one for housekeeping."""
        self.enriched.open()
        for runner in self.runners:
            thread = threading.Thread(target=runner.run, name=f"cortex-sink-{runner.sink.name}", daemon=True)
            thread.start()
            self.threads.append(thread)
        housekeeping = threading.Thread(target=self._housekeeping, name="cortex-housekeeping", daemon=True)
        housekeeping.start()
        self.threads.append(housekeeping)

    def run(self) -> None:
        """Start and block until :meth:`shutdown` is called (from a signal handler, say)."""
        self.start()
        while not self.stop.wait(1.0):
            pass
        self.join()

    def shutdown(self) -> None:
        """Ask every thread to stop after its current batch."""
        self.stop.set()

    def join(self, timeout: float = 30.0) -> None:
        """Wait for the threads to finish."""
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if not any(thread.is_alive() for thread in self.threads):
            self.enriched.close()

    def drain(self, timeout: float = 60.0) -> None:
        """Deliver everything queued now, in the calling thread (for tests and ``--once``)."""
        deadline = time.monotonic() + timeout
        self.enriched.open()
        for runner in self.runners:
            runner.open()
        try:
            for runner in self.runners:
                while not runner.caught_up():
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"sink {runner.sink.name} did not catch up within {timeout}s")
                    runner.step()
                runner.run_erasures()
                runner.run_retention(until_done=True, force=True)
            self.housekeep()
            expire_queue_logs(self.state)
        finally:
            for runner in self.runners:
                runner.close()
            self.enriched.close()

    def housekeep(self) -> None:
        """Fold the new entries' counts into the counters, prune delivered (and counted)
        entries and expired dedupe keys (bounded work per call)."""
        queue = self.state.queue
        queue.fold_counts()
        for _ in range(MAX_PRUNE_BATCHES):
            if not queue.prune(self.sink_names):
                break
            # a pause between batches, so that the commits waiting for the writer lock get it
            # before the next batch does (a lock is not fair)
            time.sleep(PRUNE_PAUSE)
        window = self.state.config["ingest"]["dedupe_window_days"] * 86400
        queue.prune_dedupe(window)

    def _housekeeping(self) -> None:
        ticks = 0
        while not self.stop.wait(1.0):
            ticks += 1
            try:
                # checkpoints here keep them out of the requests' commits
                self.state.queue.checkpoint()
                if ticks % 5 == 0:
                    self.housekeep()
                if ticks % max(1, int(self.state.config["retention"]["interval"])) == 1:
                    expire_queue_logs(self.state)
            except Exception:
                log.exception("queue housekeeping failed; will try again")


class DispatcherLock:
    """The exclusive lock that makes one process the dispatcher of a data directory."""

    def __init__(self, data_dir: str):
        self.path = os.path.join(data_dir, "dispatcher.lock")
        self.handle = None

    def acquire(self, blocking: bool) -> bool:
        """Take the lock; with ``blocking=False`` return False at once if another has it."""
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self.handle = handle
        return True

    def holder(self) -> str:
        """The pid written by the current holder, if any."""
        try:
            with open(self.path) as handle:
                return handle.read().strip() or "unknown"
        except OSError:
            return "unknown"

    def release(self) -> None:
        """Give the lock up."""
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


_embedded: dict[int, tuple[threading.Event, threading.Thread]] = {}


def start_embedded(state) -> threading.Thread | None:
    """Start the election thread in this process (once); the winner runs the dispatcher."""
    if not state.config["dispatcher"]["embedded"] or os.getpid() in _embedded:
        return None
    stop = threading.Event()

    def elect_and_run() -> None:
        lock = DispatcherLock(state.config["data_dir"])
        while not lock.acquire(blocking=False):
            if stop.wait(1.0):
                return
        log.info("process %d is the dispatcher", os.getpid())
        dispatcher = Dispatcher(state)
        dispatcher.start()
        stop.wait()
        dispatcher.shutdown()
        dispatcher.join(10.0)
        lock.release()

    thread = threading.Thread(target=elect_and_run, name="cortex-dispatcher-election", daemon=True)
    _embedded[os.getpid()] = (stop, thread)
    thread.start()
    return thread


def stop_embedded(timeout: float = 10.0) -> None:
    """Stop this process's embedded dispatcher, if it runs one, letting its batch finish."""
    stop, thread = _embedded.pop(os.getpid(), (None, None))
    if stop is not None:
        stop.set()
        thread.join(timeout)
