"""Running the configured enrichers: order, error policy, timeouts and error counts.

The dispatcher enriches each queue entry once for all sinks (:class:`EnrichedEntries`).  An
enricher that raises, takes longer than its ``timeout`` or cannot open never costs an event:
the records it failed on get the enricher's error policy:

``pass_through``
    the records go on as they were before this enricher, with a warning;
``drop_field``
    the same, without the fields the enricher owns (:attr:`Enricher.fields`);
``dead_letter``
    the records, as they were read from the queue, go to the dead-letter store of every sink;
    ``cortex replay --dead-letters`` enriches them again and delivers them.

An enricher that raises is given its batch again in halves until the records it fails on are
found, so one bad record does not cost its neighbours their enrichment.  Every failure is
logged with the enricher's name and counted (:meth:`EnricherErrors.record`); ``cortex status
--json`` shows the counts under ``enrichers``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from cortex.config import ConfigError
from cortex.enrichers import ERROR_POLICIES, Enricher
from cortex.metrics import record_enricher_error

log = logging.getLogger("cortex.enrichment")

#: keys of an ``[enrichers.NAME]`` table that the core reads; the rest are the enricher's
RESERVED_OPTIONS = frozenset({"type", "on_error", "timeout"})

#: dead letters written because of an enricher start with this; replay enriches them again
DEAD_LETTER_PREFIX = "enricher "

#: the outcomes counted per enricher
OUTCOMES = ("failures", "timeouts", "passed_through", "fields_dropped", "dead_lettered")

#: the error policy (``on_error``) that each outcome of a failure comes from
POLICY_OF_OUTCOME = {"passed_through": "pass_through", "fields_dropped": "drop_field", "dead_lettered": "dead_letter"}


@dataclass(frozen=True)
class EnricherSettings:
    """What the core does around one configured enricher."""

    on_error: str
    #: seconds one batch may take (0: no limit, the enricher runs in the dispatcher's thread)
    timeout: float


def enricher_settings(name: str, table: Mapping[str, Any], cls: type[Enricher], config: dict) -> EnricherSettings:
    """The settings of ``[enrichers.NAME]``, or a :class:`ConfigError` saying what is wrong."""
    on_error = table.get("on_error", cls.default_on_error)
    if on_error not in ERROR_POLICIES:
        raise ConfigError(
            f"[enrichers.{name}] on_error = {on_error!r} is not one of: {', '.join(ERROR_POLICIES)}"
        )
    if on_error not in cls.allowed_on_error:
        raise ConfigError(
            f"[enrichers.{name}] on_error = {on_error!r} is not allowed for type {cls.type_name!r}, "
            f"which must fail closed; use one of: {', '.join(cls.allowed_on_error)}"
        )
    timeout = table.get("timeout", config["dispatcher"]["enricher_timeout"])
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise ConfigError(f"[enrichers.{name}] timeout must be a number of seconds (0: none), not {timeout!r}")
    return EnricherSettings(on_error, float(timeout))


def enricher_options(table: Mapping[str, Any]) -> dict[str, Any]:
    """The enricher's own options: its table without the keys the core reads."""
    return {k: v for k, v in table.items() if k not in RESERVED_OPTIONS}


def check_enrichers(state) -> None:
    """Fail at startup when an enricher's settings or options are unusable.

    Builds every configured enricher once (constructors only check options; nothing is
    opened) so that a bad option is a startup error rather than a dispatcher that fails.
    """
    for name, table in state.config["enrichers"].items():
        cls = state.registry.enrichers[table["type"]]
        enricher_settings(name, table, cls, state.config)
        try:
            cls(name, enricher_options(table), state.sink_context("enricher", name))
        except (ValueError, TypeError) as error:
            raise ConfigError(f"[enrichers.{name}] {error}") from None


class EnricherErrors:
    """Counts and logs enricher failures; kept in the queue database for ``cortex status``."""

    def __init__(self, queue):
        self.queue = queue

    def record(self, enricher: str, outcome: str, records: int, error: str, timed_out: bool = False) -> None:
        """One failure of ``enricher`` on ``records`` records, handled as ``outcome``
        (``passed_through``, ``fields_dropped`` or ``dead_lettered``)."""
        log.warning("enricher %s failed on %d record(s): %s; %s", enricher, records, error, outcome.replace("_", " "))
        counts = {"failures": 1, outcome: records}
        if timed_out:
            counts["timeouts"] = 1
        try:
            self.queue.count_enricher_errors(enricher, counts)
            record_enricher_error(enricher, POLICY_OF_OUTCOME.get(outcome, outcome))
        except Exception:  # counting must never cost the records
            log.exception("could not count the failure of enricher %s", enricher)


class _Unavailable(Exception):
    """The enricher cannot run now (it did not open, or an earlier batch still runs)."""


class _TimedOut(Exception):
    """The enricher took longer than its timeout."""


class _Worker:
    """One daemon thread that runs an enricher's calls, so the caller can stop waiting."""

    def __init__(self, name: str):
        self._lock = threading.Condition()
        self._job: tuple[Callable, Any, Future] | None = None
        self._thread = threading.Thread(target=self._loop, name=f"cortex-enricher-{name}", daemon=True)
        self._thread.start()

    def submit(self, function: Callable, argument: Any) -> Future:
        future: Future = Future()
        with self._lock:
            self._job = (function, argument, future)
            self._lock.notify()
        return future

    def _loop(self) -> None:
        while True:
            with self._lock:
                while self._job is None:
                    self._lock.wait()
                function, argument, future = self._job
                self._job = None
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(function(argument))
                except BaseException as error:  # handed to the waiting dispatcher
                    future.set_exception(error)


def copy_record(record: dict[str, Any]) -> dict[str, Any]:
    """A copy an enricher may change without touching ``record`` (its lists and dicts of
    warnings, extra fields and request context are copied too)."""
    copy = record.copy()
    for key in ("warnings", "extra", "context"):
        value = copy.get(key)
        if value is not None:
            copy[key] = value.copy()
    return copy


class Stage:
    """One configured enricher with its settings: runs it, isolates and times its failures."""

    def __init__(self, enricher: Enricher, settings: EnricherSettings, reopen_interval: float = 30.0):
        self.enricher = enricher
        self.settings = settings
        self.name = enricher.name
        self.reopen_interval = reopen_interval
        self.opened = False
        self.open_error: str | None = None
        self._next_open = 0.0
        self._busy: Future | None = None
        self._worker: _Worker | None = None

    def open(self) -> None:
        """Open the enricher; a failure is logged and the enricher tried again later."""
        try:
            self.enricher.open()
            self.opened, self.open_error = True, None
        except Exception as error:
            self.open_error = f"could not open: {type(error).__name__}: {error}"
            self._next_open = time.monotonic() + self.reopen_interval
            log.error("enricher %s %s; its records get on_error = %s until it opens (next try in %.0fs)",
                      self.name, self.open_error, self.settings.on_error, self.reopen_interval)

    def close(self) -> None:
        """Close the enricher (unless a timed-out call still runs in it: it is left to finish)."""
        if self._busy is not None and not self._busy.done():
            log.warning("enricher %s is still busy with a timed-out batch; not closed", self.name)
            self.opened = False
            return
        if self.opened:
            try:
                self.enricher.close()
            except Exception:
                log.exception("closing enricher %s failed", self.name)
            self.opened = False

    @property
    def busy(self) -> bool:
        """True while a call that timed out still runs in the enricher's thread."""
        return self._busy is not None and not self._busy.done()

    def _check_available(self) -> None:
        if not self.opened and time.monotonic() >= self._next_open:
            self.open()
        if not self.opened:
            raise _Unavailable(self.open_error or "not open")
        if self._busy is not None:
            if not self._busy.done():
                raise _Unavailable(
                    f"still busy with an earlier batch that took longer than {self.settings.timeout:g}s"
                )
            self._busy = None

    def _call(self, records: list[dict[str, Any]]) -> None:
        self._check_available()
        if not self.settings.timeout:
            self.enricher.enrich(records)
            return
        if self._worker is None:
            self._worker = _Worker(self.name)
        future = self._worker.submit(self.enricher.enrich, records)
        try:
            future.result(self.settings.timeout)
        except FutureTimeout:
            # the call goes on in its thread, on copies nobody will look at again
            self._busy = future
            raise _TimedOut(f"took longer than its timeout of {self.settings.timeout:g}s") from None

    def apply(self, records: list[dict[str, Any]]) -> list[dict[str, Any] | BaseException]:
        """Run the enricher on copies of ``records``: for each record, its enriched copy or
        the error that kept it from being enriched."""
        work = [copy_record(record) for record in records]
        try:
            self._call(work)
            return work
        except (_Unavailable, _TimedOut) as error:
            return [error] * len(records)
        except Exception as error:
            if len(records) == 1:
                return [error]
        # narrow the failure down: the halves are tried on fresh copies
        middle = len(records) // 2
        return self.apply(records[:middle]) + self.apply(records[middle:])


def describe_error(error: BaseException) -> str:
    """An error as one line for logs and warnings."""
    if isinstance(error, (_Unavailable, _TimedOut)):
        return str(error)
    return f"{type(error).__name__}: {error}"


@dataclass
class Enriched:
    """The outcome for one record: the record to deliver, or why it was dead-lettered."""

    record: dict[str, Any] | None
    dead_reason: str | None = None


class Enrichment:
    """The configured enrichers in order, with their error policies."""

    def __init__(self, stages: list[Stage], errors: EnricherErrors | None):
        self.stages = stages
        self.errors = errors

    @classmethod
    def from_state(cls, state) -> "Enrichment":
        """The enrichment of an app's configuration (enrichers made, not opened)."""
        config = state.config
        stages = []
        for enricher in state.make_enrichers():
            table = config["enrichers"][enricher.name]
            settings = enricher_settings(enricher.name, table, type(enricher), config)
            stages.append(Stage(enricher, settings, config["dispatcher"]["enricher_reopen_interval"]))
        return cls(stages, EnricherErrors(state.queue))

    @classmethod
    def of(cls, enrichers: list[Enricher], errors: EnricherErrors | None = None) -> "Enrichment":
        """Enrichment by plain enricher instances with their types' default settings."""
        return cls([Stage(e, EnricherSettings(type(e).default_on_error, 0.0)) for e in enrichers], errors)

    def open(self) -> None:
        """Open every enricher (one that cannot open is tried again later)."""
        for stage in self.stages:
            stage.open()

    def close(self) -> None:
        """Close every enricher."""
        for stage in self.stages:
            stage.close()

    def run(self, records: list[dict[str, Any]]) -> list[Enriched]:
        """Enrich ``records``; one outcome per record, in order.  Delivered records lose their
        request ``context``; dead-lettered ones are the records as given (context kept, so
        that a replay can enrich them again)."""
        outcomes = [Enriched(record) for record in records]
        if not self.stages:
            for outcome in outcomes:
                outcome.record.pop("context", None)
            return outcomes
        live = list(range(len(records)))
        rejected = {i for i in live if records[i].get("kind") == "rejected"}
        current = {i: records[i] for i in live}
        for stage in self.stages:
            given = live if stage.enricher.enriches_rejected else [i for i in live if i not in rejected]
            if not given:
                continue
            results = stage.apply([current[i] for i in given])
            failed: dict[str, list[int]] = {}
            timed_out: set[str] = set()
            for i, result in zip(given, results):
                if isinstance(result, BaseException):
                    reason = describe_error(result)
                    failed.setdefault(reason, []).append(i)
                    if isinstance(result, _TimedOut):
                        timed_out.add(reason)
                else:
                    current[i] = result
            for reason, indexes in failed.items():
                self._fail(stage, reason, indexes, current, outcomes, reason in timed_out)
            live = [i for i in live if outcomes[i].dead_reason is None]
        for i in live:
            outcomes[i].record = current[i]
        for outcome in outcomes:
            if outcome.record is not None:
                outcome.record.pop("context", None)
        return outcomes

    def _fail(self, stage: Stage, reason: str, indexes: list[int], current: dict, outcomes: list[Enriched],
              timed_out: bool) -> None:
        policy = stage.settings.on_error
        if policy == "dead_letter":
            for i in indexes:
                outcomes[i].record = None
                outcomes[i].dead_reason = f"{DEAD_LETTER_PREFIX}{stage.name} failed: {reason}"
            outcome = "dead_lettered"
        else:
            drop = stage.enricher.fields if policy == "drop_field" else ()
            note = f"enricher {stage.name} failed ({reason})"
            note += f"; dropped {', '.join(drop)}" if drop else "; passed through"
            for i in indexes:
                record = copy_record(current[i])
                for name in drop:
                    record.pop(name, None)
                if drop and record.get("kind") == "rejected":
                    # a rejected record holds the event and the bundle as sent
                    for part in ("payload", "bundle"):
                        if isinstance(record.get(part), dict):
                            record[part] = {k: v for k, v in record[part].items() if k not in drop}
                record.setdefault("warnings", []).append(note)
                current[i] = record
            outcome = "fields_dropped" if drop else "passed_through"
        if self.errors is not None:
            self.errors.record(stage.name, outcome, len(indexes), reason, timed_out)
        else:
            log.warning("enricher %s failed on %d record(s): %s", stage.name, len(indexes), reason)


class EnrichedEntries:
    """Enriches each queue entry once, whichever sink reads it first; the other sinks get the
    same outcome from a small cache (a sink far behind the others enriches again)."""

    def __init__(self, enrichment: Enrichment, capacity: int):
        self.enrichment = enrichment
        self.capacity = capacity
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, list[Enriched]] = OrderedDict()
        self._cached_records = 0

    @property
    def active(self) -> bool:
        """False when no enricher is configured (records then go to the sinks as read)."""
        return bool(self.enrichment.stages)

    def open(self) -> None:
        """Open the enrichers."""
        with self._lock:
            self.enrichment.open()

    def close(self) -> None:
        """Close the enrichers and forget the cache."""
        with self._lock:
            self.enrichment.close()
            self._cache.clear()
            self._cached_records = 0

    def outcomes(self, entries: list) -> list[Enriched]:
        """The enrichment outcomes of every record of ``entries`` (queue order).  Each call
        gets records of its own (shallow copies), so sinks never share a dict."""
        with self._lock:
            missing = [entry for entry in entries if entry.seq not in self._cache]
            if missing:
                results = self.enrichment.run([record for entry in missing for record in entry.records])
                start = 0
                for entry in missing:
                    count = len(entry.records)
                    self._cache[entry.seq] = results[start:start + count]
                    self._cached_records += count
                    start += count
                while self._cached_records > self.capacity and len(self._cache) > 1:
                    _, dropped = self._cache.popitem(last=False)
                    self._cached_records -= len(dropped)
            found = [self._cache[entry.seq] for entry in entries]
        return [
            Enriched(o.record.copy() if o.record is not None else None, o.dead_reason)
            for outcomes in found for o in outcomes
        ]
