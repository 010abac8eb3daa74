"""Realistic sink records for tests, in the format documented in :mod:`cortex.sinks`.

::

    from cortex.testing import make_record, sample_records

    make_record()                                   # a track "install" event
    make_record("track", "economy", org="globex", spend_amount=4.99)
    make_record("app_log", "log", log_line="x" * 65535)
    sample_records()                                # one record of every kind and type

Every record gets a fresh ``id`` (32 lowercase hex characters) and a ``seq`` taken from a
process-wide counter, so records made later have a higher ``seq``, as records later in the
queue do.  Pass ``seq=`` to put several records in one queue entry.  Every record carries a
``context`` dict (the request's client address, ``User-Agent`` and ``Accept-Language``),
which sinks must never store; its values are the sentinels :data:`CONTEXT_VALUES` so that a
test can look for them in whatever a sink stored.
"""

from __future__ import annotations

import copy
import itertools
import threading
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from cortex.ingest.schemas import EVENT_TYPES

__all__ = [
    "CONTEXT_VALUES",
    "KINDS",
    "iso",
    "make_record",
    "new_id",
    "next_seq",
    "sample_records",
]

#: every record kind a sink receives
KINDS = ("track", "app_log", "interaction", "rejected")

#: the values of every record's ``context``; none of them may appear in stored data
CONTEXT_VALUES = {
    "client_ip": "198.51.100.231",
    "user_agent": "CortexConformance/1.0 (context-sentinel; never-store-me)",
    "accept_language": "x-sentinel;q=0.9, en-GB;q=0.8",
}

_seq_counter = itertools.count(1)
_seq_lock = threading.Lock()


def next_seq() -> int:
    """The next queue position: higher than every ``seq`` handed out before in this process."""
    with _seq_lock:
        return next(_seq_counter)


def new_id() -> str:
    """A fresh record id: 32 lowercase hex characters."""
    return uuid.uuid4().hex


def iso(moment: datetime) -> str:
    """``moment`` as a canonical Cortex timestamp: ISO 8601 UTC, milliseconds, ``Z``."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _parse_iso(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    text = str(value)
    return datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)


def _now() -> datetime:
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=(now.microsecond // 1000) * 1000)


_BUNDLE_FIELDS: dict[str, Any] = {
    "app_ver": "2.14.0",
    "server_ver": "1.3",
    "config_ver": "7",
    "user_tag": "user-8f3a2c",
    "device_tag": "dev-5b7e1d9c",
    "device_type": "phone",
    "device_family": "iPhone14,2",
    "os": "iOS",
    "os_ver": "17.5.1",
    "marketplace": "app_store",
    "country": "de",
    "language": "de-DE",
}

_TAXONOMY: dict[str, Any] = {
    "kingdom": "shop",
    "phylum": "bundles",
    "class": "gems",
    "order": "größe_m",
    "family": "starter",
    "genus": "ios",
    "species": "v2",
    "float1": 1.5,
    "float2": 0.1 + 0.2,
    "float3": -273.15,
}

_TYPE_FIELDS: dict[str, dict[str, Any]] = {
    "install": {**_TAXONOMY, "online_status": "online"},
    "dau": {"kingdom": "session", "online_status": "online"},
    "event": {
        **_TAXONOMY,
        "kingdom": "level_complete",
        "phylum": "Welt 3 – Ödland",
        "float4": 12345.678,
        "online_status": "offline",
    },
    "economy": {
        **_TAXONOMY,
        "spend_amount": 4.99,
        "spend_currency": "EUR",
        "spend_type": "iap",
        "online_status": "online",
    },
    "link": {
        "user_tag": "user-8f3a2c",
        "facebook_tag": "fb-100004211",
        "google_tag": "g-77ab",
    },
    "message_send": {
        "kingdom": "invite",
        "class": "friends",
        "order": "first",
        "network": "facebook",
        "channel": "feed",
        "from_tag": "user-8f3a2c",
        "to_list": ["user-11", "user-22", "ユーザー-33"],
    },
    "message_click": {
        "kingdom": "invite",
        "network": "facebook",
        "channel": "feed",
        "from_tag": "user-11",
        "to_tag": "user-8f3a2c",
    },
    "experiment": {
        "experiment_name": "onboarding_v3",
        "variant_name": "short-tutorial",
    },
}


def _base(kind: str, type_: str, received: datetime, seq: int) -> dict[str, Any]:
    return {
        "id": new_id(),
        "seq": seq,
        "org": "acme",
        "app": "game",
        "app_id": 7,
        "kind": kind,
        "type": type_,
        "received_at": iso(received),
        "context": dict(CONTEXT_VALUES),
    }


def _track(type_: str, received: datetime, seq: int) -> dict[str, Any]:
    sent = received - timedelta(seconds=93, milliseconds=250)
    record = _base("track", type_, received, seq)
    record.update(_BUNDLE_FIELDS)
    record.update(
        event_datetime=iso(sent),
        event_time=iso(sent),
        event_index=EVENT_TYPES.index(type_) if type_ in EVENT_TYPES else 0,
        group_tag="cohort-α",
    )
    record.update(copy.deepcopy(_TYPE_FIELDS.get(type_, {})))
    if type_ == "experiment":
        del record["event_index"]
    record["extra"] = {"sdk": "unity-4.2", "debug": False, "nested": {"tags": ["a", "ü"]}}
    record["warnings"] = ["app_ver: truncated to 16 characters"] if type_ == "install" else []
    return record


def _app_log(received: datetime, seq: int) -> dict[str, Any]:
    record = _base("app_log", "log", received, seq)
    record.update(
        app_ver="2.14.0",
        device_tag="srv-web-03",
        os="Linux",
        event_datetime=iso(received - timedelta(seconds=2)),
        event_time=iso(received - timedelta(seconds=2)),
        log_line='GET /shop?item=gems™ 200 "Mozilla/5.0" — naïve café ☕',
        log_level="info",
        hostname="web-03.example.net",
        filename="/var/log/app/access.log",
        remote_address="192.0.2.10",
        response_bytes=5120,
        response_ms=12.75,
        extra={},
        warnings=[],
    )
    return record


def _interaction(type_: str, received: datetime, seq: int) -> dict[str, Any]:
    record = _base("interaction", type_, received, seq)
    record.update(
        event_type=type_,
        timestamp=iso(received - timedelta(seconds=1)),
        event_datetime=iso(received - timedelta(seconds=1)),
        event_time=iso(received - timedelta(seconds=1)),
        user_id="anon-xyz123",
        business_id="biz-98765",
        product_id="prod-12345",
        event_properties={
            "amount": 49.99,
            "currency": "USD",
            "payment_method": "credit_card",
            "note": "Grüße aus Köln 🎉",
        },
        source="email_campaign_2024",
        device_info={"browser": "Chrome", "os": "Windows", "screen": [1920, 1080]},
        extra={},
        warnings=[],
    )
    return record


def _rejected(type_: str, received: datetime, seq: int) -> dict[str, Any]:
    record = _base("rejected", type_, received, seq)
    record.update(
        reasons={
            "spend_amount": ["Not a valid number."],
            "event_datetime": ["Missing data for required field."],
        },
        payload={"type": type_, "spend_amount": "lots", "spend_currency": "€"},
        bundle={"app_ver": "2.14.0", "device_tag": "dev-5b7e1d9c", "os": "Android"},
    )
    return record


def make_record(kind: str = "track", type: str = "install", **overrides: Any) -> dict[str, Any]:
    """One realistic record of ``kind`` (``track``, ``app_log``, ``interaction``, ``rejected``).

    ``type`` is the event type (for ``app_log`` always ``log``; for ``interaction`` the
    ``event_type``, e.g. ``purchase``).  ``overrides`` replace or add fields; an override of
    ``None`` removes the field.  ``received_at`` defaults to now; the event times are set
    shortly before it.  ``seq`` defaults to :func:`next_seq`.
    """
    given = overrides.get("received_at")
    received = _now() if given is None else _parse_iso(given)
    seq = overrides["seq"] if overrides.get("seq") is not None else next_seq()
    if kind == "track":
        record = _track(type, received, seq)
    elif kind == "app_log":
        record = _app_log(received, seq)
    elif kind == "interaction":
        record = _interaction(type, received, seq)
    elif kind == "rejected":
        record = _rejected(type, received, seq)
    else:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {', '.join(KINDS)}")
    for key, value in overrides.items():
        if value is None:
            record.pop(key, None)
        else:
            record[key] = value
    return record


def sample_records(org: str = "acme", app: str = "game") -> list[dict[str, Any]]:
    """One record of every kind and event type, in queue order, for ``org``/``app``.

    The eight track events and the rejected one share a ``seq`` (one bundle: one queue
    entry); the log line and the interaction come in entries of their own after it.
    """
    bundle_seq, received = next_seq(), iso(_now())
    records = [make_record("track", t, seq=bundle_seq, received_at=received) for t in EVENT_TYPES]
    records.append(make_record("rejected", "economy", seq=bundle_seq, received_at=received))
    records.append(make_record("app_log", "log"))
    records.append(make_record("interaction", "purchase"))
    for record in records:
        record["org"] = org
        record["app"] = app
    return records
