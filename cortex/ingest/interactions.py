"""From decoded generic interaction events to queue-ready records and per-event fates.

The generic API shares the Data Cortex path from here on: the records go into the same
queue with their dedupe keys (:class:`cortex.ingest.pipeline.Outcome`), and the
dispatcher, enrichers and sinks treat them like any other record (``kind`` is
``"interaction"``).  Nothing here touches HTTP, so ``cortex replay`` uses it too.

Dedupe is by ``event_id`` within the org: the key is a digest of (org, event_id), so a
retried event is recognised whatever else changed in it.  When the ``event_id`` is a UUIDv7
(what the browser snippet and the server make) the key starts with its time, which keeps
the dedupe index and the SQL sink's primary key growing at one end.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from cortex.control import KeyOwner
from cortex.ingest.compiled import CompiledSchema
from cortex.ingest.interactions_schemas import InteractionSchema
from cortex.ingest.pipeline import Outcome, Timing, _digest, content_key, dedupe_key

INTERACTION = CompiledSchema(InteractionSchema)
ENDPOINT = "interactions"
#: milliseconds between 1970-01-01 (UUIDv7) and 2000-01-01 (the other keys' time prefix)
_EPOCH_2000_MS = 946_684_800_000
_NO_TIME = bytes(6)
#: fields never kept in ``extra``: the key must not be stored with the events
_NEVER_KEPT = ("api_key",)


def new_event_id() -> str:
    """A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then random bits."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return str(uuid.UUID(int=value))


def _uuid7_prefix(event_id: str) -> bytes:
    """The time prefix of a key made from ``event_id``: its milliseconds if it is a UUIDv7."""
    if len(event_id) != 36 or event_id[14] != "7":
        return _NO_TIME
    try:
        value = uuid.UUID(event_id)
    except ValueError:
        return _NO_TIME
    moment = (value.int >> 80) - _EPOCH_2000_MS
    if value.version != 7 or not 0 <= moment < 1 << 48:
        return _NO_TIME
    return moment.to_bytes(6, "big")


def event_key(org: str, event_id: str) -> bytes:
    """The dedupe key (and record id) of the generic event ``event_id`` of ``org``."""
    return _uuid7_prefix(event_id) + _digest(f"interaction\x1f{org}\x1f{event_id}")


@dataclass
class Fate:
    """What became of one event of a request (see ``EventFateSchema``)."""

    index: int
    event_id: str | None
    status: str = "accepted"
    key: bytes | None = None
    errors: dict[str, list[str]] | None = None
    warnings: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The fate as the answer shows it."""
        data: dict[str, Any] = {"index": self.index, "event_id": self.event_id, "status": self.status}
        if self.errors:
            data["errors"] = self.errors
        if self.warnings:
            data["warnings"] = self.warnings
        return data


@dataclass
class InteractionBatch:
    """The records of one request's events, keyed, and each event's fate (in order)."""

    outcome: Outcome
    fates: list[Fate]

    def settle(self, fresh_keys: set[bytes] | frozenset[bytes]) -> dict[str, int]:
        """Mark accepted events whose key the queue already had as duplicates; the counts."""
        counts = {"accepted": 0, "duplicate": 0, "rejected": 0}
        for fate in self.fates:
            if fate.status == "accepted" and fate.key not in fresh_keys:
                fate.status = "duplicate"
            counts[fate.status] += 1
        return counts


def build_interactions(
    events: list,
    owner: KeyOwner,
    timing: Timing,
    context: dict[str, Any],
    business_app: Callable[[str], int | None],
    strict: bool = False,
) -> InteractionBatch:
    """Validate each event and make the records of the valid and of the invalid ones.

    ``business_app(name)`` gives the id of the org's app ``name`` (None when the org has
    none).  With ``strict``, one invalid event refuses the whole request: every event is
    then rejected, the valid ones with a reason that says so.
    """
    outcome = Outcome()
    base = {
        "org": owner.org,
        "app": owner.app,
        "app_id": owner.app_id,
        "kind": "interaction",
        "received_at": timing.received_text,
    }
    outcome.shared.update(base)
    outcome.shared["context"] = context
    if timing.warnings:
        outcome.shared["warnings"] = list(timing.warnings)
    if timing.skew is not None:
        outcome.shared["clock_skew_seconds"] = timing.skew
    fates: list[Fate] = []
    seen: set[bytes] = set()
    occurrences: dict[bytes, int] = {}
    rejected_events: list[tuple[int, Any, dict[str, list[str]]]] = []

    for position, event in enumerate(events):
        sent_id = event.get("event_id") if isinstance(event, dict) else None
        fate = Fate(position, sent_id if type(sent_id) is str else None)
        fates.append(fate)
        if not isinstance(event, dict):
            fate.status, fate.errors = "rejected", {"_event": ["Each event must be a JSON object."]}
            rejected_events.append((position, event, fate.errors))
            continue
        values, extra, warnings, errors = INTERACTION.load(event)
        business = values.get("business_id")
        if business is not None and "business_id" not in errors:
            app_id = business_app(business)
            if app_id is None:
                errors["business_id"] = [f"No app named {business!r} in org {owner.org!r}; "
                                         "business_id must name an app of the API key's org."]
        if errors:
            fate.status, fate.errors, fate.warnings = "rejected", errors, warnings
            rejected_events.append((position, event, errors))
            continue
        if business is None:
            values["business_id"] = owner.app
        elif business != owner.app:
            values["app"], values["app_id"] = business, app_id
        if "event_id" not in values:
            values["event_id"] = fate.event_id = new_event_id()
        else:
            fate.event_id = values["event_id"]
        event_type = values["event_type"]
        values["type"] = event_type
        sent_time = values.get("timestamp")
        if sent_time is None:
            sent_time = values["timestamp"] = timing.received_text
        values["event_datetime"] = sent_time
        values["event_time"] = timing.event_time(sent_time, warnings)
        for name in _NEVER_KEPT:
            extra.pop(name, None)
        if extra:
            values["extra"] = extra
        if warnings:
            values["warnings"] = warnings
            fate.warnings = warnings
        key = event_key(owner.org, values["event_id"])
        fate.key = key
        if key in seen:  # the same event_id twice in one request
            fate.status = "duplicate"
            continue
        seen.add(key)
        values["id"] = key.hex()
        outcome.accepted.append((key, values))

    if strict and rejected_events and outcome.accepted:
        reason = {"_batch": ["Refused with its batch: the app is in strict mode and another event was invalid."]}
        accepted_positions = set()
        for fate in fates:
            if fate.status == "accepted":
                fate.status, fate.errors = "rejected", reason
                accepted_positions.add(fate.index)
        rejected_events.extend((p, events[p], reason) for p in sorted(accepted_positions))
        outcome.accepted = []

    for position, event, reasons in rejected_events:
        first = content_key(owner.app_id, ENDPOINT, event, 0)
        occurrence = occurrences.get(first, 0)
        occurrences[first] = occurrence + 1
        key = dedupe_key("rejected", ENDPOINT, content_key(owner.app_id, ENDPOINT, event, occurrence).hex())
        event_type = event.get("event_type") if isinstance(event, dict) else None
        outcome.rejected.append((key, {
            **base,
            "id": key.hex(),
            "kind": "rejected",
            "type": event_type if type(event_type) is str else None,
            "endpoint": ENDPOINT,
            "position": position,
            "reasons": reasons,
            "payload": {k: v for k, v in event.items() if k not in _NEVER_KEPT} if isinstance(event, dict) else event,
            "bundle": {},
            "current_time": timing.current_time,
        }))
    return InteractionBatch(outcome, fates)
