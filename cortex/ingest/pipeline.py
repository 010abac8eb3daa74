"""From a decoded Data Cortex bundle to queue-ready records: validate, correct times, key.

Nothing here touches HTTP or the queue, so the same code serves the ingest views and
``cortex replay``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

import orjson
from marshmallow import ValidationError

from cortex.control import KeyOwner
from cortex.ingest.compiled import CompiledSchema
from cortex.ingest.fields import format_timestamp, parse_timestamp, strip_control
from cortex.ingest.schemas import EVENT_TYPES, SCHEMAS

BUNDLE = CompiledSchema(SCHEMAS["bundle"])
LOG_LINE = CompiledSchema(SCHEMAS["log"])
EVENTS = {event_type: CompiledSchema(SCHEMAS[event_type]) for event_type in EVENT_TYPES}
UNKNOWN_TYPE = "Unknown event type {}; expected one of: " + ", ".join(EVENT_TYPES) + "."
#: characters of a client's value shown in a message (messages are answered and stored)
SHOWN_CHARS = 64


def shown(value: Any) -> str:
    """A bounded, escaped rendering of a client's value for a message: a string's first
    characters in quotes, or only the JSON type of anything else."""
    if type(value) is str:
        return repr(value[:SHOWN_CHARS]) + ("..." if len(value) > SHOWN_CHARS else "")
    if value is None or type(value) in (int, float, bool):
        return repr(value)
    return f"of JSON type {'object' if isinstance(value, dict) else 'array'}"


class BundleError(Exception):
    """A defect of the whole bundle (answered 400); ``reasons`` maps fields to messages."""

    def __init__(self, message: str, reasons: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.reasons = reasons or {}


@dataclass
class Timing:
    """The times one request is judged by."""

    received: datetime
    client_now: datetime | None = None
    skew_threshold: float = 60.0
    future_tolerance: float = 300.0
    warnings: list[str] = field(default_factory=list)
    #: the raw ``current_time`` the client sent, kept with rejected events for replay
    current_time: str | None = None

    def __post_init__(self):
        self.received_text = format_timestamp(self.received)
        self.future_limit_text = format_timestamp(self.received + timedelta(seconds=self.future_tolerance))
        self.skew: float | None = None
        #: the difference between the clocks, whether or not it is corrected (for metrics)
        self.measured_skew: float | None = None
        self._corrected: dict[str, str] = {}
        if self.client_now is not None:
            skew = self.measured_skew = (self.received - self.client_now).total_seconds()
            if abs(skew) > self.skew_threshold:
                self.skew = skew

    @classmethod
    def parse(cls, received: datetime, current_time: str | None, **limits: float) -> "Timing":
        """Timing from the raw ``current_time`` query value; a bad value is a warning."""
        warnings = []
        client_now = None
        if current_time:
            try:
                client_now = parse_timestamp(current_time)
            except ValidationError:
                warnings.append(f"current_time: {current_time[:64]!r} is not ISO 8601; no clock correction")
        return cls(received, client_now, warnings=warnings, current_time=current_time, **limits)

    def event_time(self, event_datetime: str, warnings: list[str]) -> str:
        """The corrected time of an event whose client time is ``event_datetime`` (canonical)."""
        if self.skew is not None:
            text = self._corrected.get(event_datetime)
            if text is None:
                try:
                    corrected = parse_timestamp(event_datetime) + timedelta(seconds=self.skew)
                except OverflowError:
                    # before year 1 or after 9999: a client clock too far off to correct by
                    # (not cached, so that every such event gets the warning)
                    warnings.append("event_datetime: the clock correction would move it out of the years "
                                    "1-9999; kept as sent")
                    text = event_datetime
                else:
                    text = self._corrected[event_datetime] = format_timestamp(corrected)
        else:
            text = event_datetime
        # canonical timestamps compare correctly as strings
        if text > self.future_limit_text:
            warnings.append("event_datetime: in the future; clamped to the receive time")
            return self.received_text
        return text


@dataclass
class Outcome:
    """Records of one bundle, keyed for dedupe: the valid ones and the rejected ones."""

    accepted: list[tuple[bytes, dict]] = field(default_factory=list)
    rejected: list[tuple[bytes, dict]] = field(default_factory=list)
    #: what every accepted record shares (org, app, bundle fields, request context)
    shared: dict = field(default_factory=dict)
    #: the bundle's device's :func:`key_group` (empty: keys not grouped)
    key_group: bytes = b""


_DAY_MS: dict[str, int] = {}
_NO_TIME = bytes(6)
_EPOCH_ORDINAL = date(2000, 1, 1).toordinal()


def time_prefix(timestamp: str | None) -> bytes:
    """Six bytes: milliseconds since 2000-01-01 of a canonical timestamp (zeros for none).

    Keys that start with their event's time sort in (client) time order, so the dedupe index
    and the SQL sink's id index grow at one end: a commit touches a few pages at the end of
    the index instead of pages spread over all of it, however large it grows.
    """
    if not timestamp or len(timestamp) < 23:
        return _NO_TIME
    day_text = timestamp[:10]
    day_ms = _DAY_MS.get(day_text)
    try:
        if day_ms is None:
            day_ms = (date.fromisoformat(day_text).toordinal() - _EPOCH_ORDINAL) * 86_400_000
            if len(_DAY_MS) > 10_000:
                _DAY_MS.clear()
            _DAY_MS[day_text] = day_ms
        moment = (day_ms + int(timestamp[11:13]) * 3_600_000 + int(timestamp[14:16]) * 60_000
                  + int(timestamp[17:19]) * 1000 + int(timestamp[20:23]))
        return moment.to_bytes(6, "big")
    except (ValueError, OverflowError):
        return _NO_TIME


def dedupe_key(*parts: Any, at: str | None = None) -> bytes:
    """A 16-byte key: the time prefix of ``at`` (a canonical timestamp) and a 10-byte digest
    of the key material."""
    return time_prefix(at) + _digest("\x1f".join("" if p is None else str(p) for p in parts))


def _digest(material: str) -> bytes:
    return hashlib.blake2b(material.encode("utf-8", "surrogatepass"), digest_size=10).digest()


def key_group(app_id: int, device_tag: Any) -> bytes:
    """Four bytes shared by the dedupe keys of every event of one device of an app.

    The queue files each key behind its group, so the keys of one bundle sit side by side in
    the dedupe index: a commit then writes a page or two of it instead of one page per event
    (keys alone spread over the index by event time).  ``device_tag`` is the bundle's value
    as sent, which is also part of every key's material, so one event always gets the same
    group.
    """
    material = f"{app_id}\x1f{'' if device_tag is None else device_tag}"
    return hashlib.blake2b(material.encode("utf-8", "surrogatepass"), digest_size=4).digest()


def content_key(app_id: int, device_tag: Any, event: Any, occurrence: int, at: str | None = None) -> bytes:
    """Dedupe key of an event without ``event_index``: its content and how many identical
    events came before it in the same bundle."""
    try:
        content = orjson.dumps(event, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        content = repr(event)
    return dedupe_key(app_id, device_tag, content, occurrence, at=at)


def check_bundle_shape(body: Any, endpoint: str, max_events: int) -> tuple[dict, list]:
    """The bundle and its raw event list, or :class:`BundleError` for a bundle-level defect."""
    if not isinstance(body, dict):
        raise BundleError("the body must be a JSON object (a bundle)")
    api_key = body.get("api_key")
    if not isinstance(api_key, str) or not api_key:
        raise BundleError("the bundle has no api_key", {"api_key": ["Missing data for required field."]})
    events = body.get("events")
    if endpoint == "app_log" and events is None:
        # the bundle itself is one log line
        line = {k: v for k, v in body.items() if k in LOG_LINE.fields}
        return body, [line]
    if not isinstance(events, list):
        raise BundleError("events must be a list of event objects", {"events": ["Not a valid list."]})
    if not events:
        raise BundleError("events must hold at least one event", {"events": ["Empty list."]})
    if len(events) > max_events:
        raise BundleError(
            f"a bundle holds at most {max_events} events; this one has {len(events)}",
            {"events": [f"Longer than {max_events} items."]},
        )
    return body, events


class _BundleRecords:
    """Makes the records of one bundle, valid and rejected, and their dedupe keys."""

    def __init__(self, bundle: dict, endpoint: str, owner: KeyOwner, timing: Timing):
        self.endpoint = endpoint
        self.owner = owner
        self.timing = timing
        self.bundle_fields = {k: v for k, v in bundle.items() if k != "events"}
        self.device_tag = bundle.get("device_tag")
        self.base = {
            "org": owner.org,
            "app": owner.app,
            "app_id": owner.app_id,
            "kind": endpoint,
            "received_at": timing.received_text,
        }
        self.outcome = Outcome(key_group=key_group(owner.app_id, self.device_tag))
        self._occurrences: dict[bytes, int] = {}

    def content_key(self, event: Any, at: str | None = None) -> bytes:
        """The key of an event without ``event_index``: its content and its occurrence."""
        first = content_key(self.owner.app_id, self.device_tag, event, 0, at)
        seen = self._occurrences.get(first, 0)
        self._occurrences[first] = seen + 1
        return first if seen == 0 else content_key(self.owner.app_id, self.device_tag, event, seen, at)

    def accept(self, record: dict, key: bytes) -> None:
        """Add a valid record."""
        record["id"] = key.hex()
        self.outcome.accepted.append((key, record))

    def reject(self, position: int, event: Any, reasons: dict[str, list[str]]) -> None:
        """Add an invalid event, kept with its reasons for the ingest error log."""
        key = dedupe_key("rejected", self.endpoint, self.content_key(event).hex())
        event_type = event.get("type") if isinstance(event, dict) else None
        record = {
            **self.base,
            "id": key.hex(),
            "kind": "rejected",
            "type": strip_control(event_type[:SHOWN_CHARS]) if type(event_type) is str else None,
            "endpoint": self.endpoint,
            "position": position,
            "reasons": reasons,
            "payload": event,
            "bundle": {k: v for k, v in self.bundle_fields.items() if k != "api_key"},
            "current_time": self.timing.current_time,
        }
        self.outcome.rejected.append((key, record))


def build_records(
    bundle: dict,
    events: list,
    endpoint: str,
    owner: KeyOwner,
    timing: Timing,
    context: dict[str, Any],
) -> Outcome:
    """Validate every event of a bundle and make the records of the valid and invalid ones.

    Raises :class:`BundleError` when the bundle's own fields are invalid (every event then
    shares the defect).
    """
    records = _BundleRecords(bundle, endpoint, owner, timing)
    bundle_values, bundle_extra, bundle_warnings, bundle_errors = BUNDLE.load(records.bundle_fields)
    if endpoint == "app_log":
        # log-line fields sent at bundle level belong to the line, not the bundle
        for key in LOG_LINE.fields:
            bundle_extra.pop(key, None)
    if bundle_errors:
        raise BundleError("the bundle's fields are invalid: " + _summary(bundle_errors), bundle_errors)
    del bundle_values["api_key"]
    if endpoint == "track" and not bundle_values.get("device_tag"):
        raise BundleError(
            "the bundle has no device_tag (required by the ingest API)",
            {"device_tag": ["Missing data for required field."]},
        )
    bundle_warnings = timing.warnings + bundle_warnings
    shared = records.outcome.shared
    shared.update(records.base)
    shared.update(bundle_values)
    shared["context"] = context
    if bundle_warnings:
        shared["warnings"] = bundle_warnings
    if bundle_extra:
        shared["extra"] = bundle_extra
    if timing.skew is not None:
        shared["clock_skew_seconds"] = timing.skew
    for position, event in enumerate(events):
        if not isinstance(event, dict):
            records.reject(position, event, {"_event": ["Each event must be a JSON object."]})
            continue
        if endpoint == "app_log":
            schema, event_type = LOG_LINE, "log"
        else:
            event_type = event.get("type")
            schema = EVENTS.get(event_type) if type(event_type) is str else None
            if schema is None:
                records.reject(position, event, {"type": [UNKNOWN_TYPE.format(shown(event_type))]})
                continue
        values, extra, warnings, errors = schema.load(event)
        if errors:
            records.reject(position, event, errors)
            continue
        # the record holds only its own fields; the queue stores the shared ones once
        record = values
        record["type"] = event_type
        event_datetime = values.get("event_datetime")
        if event_datetime is None:  # optional on log lines
            event_datetime = record["event_datetime"] = timing.received_text
        record["event_time"] = timing.event_time(event_datetime, warnings)
        if extra:
            record["extra"] = extra
        if warnings:
            record["warnings"] = warnings
        if "event_index" in values:
            material = f"{owner.app_id}\x1f{records.device_tag}\x1f{values['event_index']}\x1f{event_type}\x1f{event_datetime}"
            key = time_prefix(event_datetime) + _digest(material)
        else:
            key = records.content_key(event, event_datetime)
        records.accept(record, key)
    return records.outcome


def reject_all(
    bundle: dict, events: list, endpoint: str, owner: KeyOwner, timing: Timing, reasons: dict
) -> Outcome:
    """Every event of a bundle as rejected with the same reasons (bundle defect, strict mode)."""
    records = _BundleRecords(bundle, endpoint, owner, timing)
    for position, event in enumerate(events):
        records.reject(position, event, reasons)
    return records.outcome


def _summary(errors: dict[str, list[str]]) -> str:
    return "; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items())


def now_utc() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(timezone.utc)
