"""The SQL tables of the ``sql`` sink, built from the ingest schemas.

One table per event family, as a reporting user expects to find them:

- ``events``: track ``install``, ``dau`` and ``event`` (column ``type``)
- ``economy``: track ``economy`` (plus ``spend_amount_usd``, ``usd_rate_date``)
- ``links``: track ``link``
- ``messages``: track ``message_send`` and ``message_click`` (column ``type``)
- ``experiments``: track ``experiment``
- ``app_logs``: app_log lines
- ``interactions``: the generic interactions API (its ``type`` is ``event_type``; plus
  ``amount_usd``, ``usd_rate_date`` of purchases and the device and language enrichers' fields)
- ``ingest_errors``: rejected events, with their reasons, payload and bundle

Besides these, the rollup tables of :mod:`cortex_sql.rollups` hold per-day aggregates.

The column of every spec field is derived from its marshmallow field in
:mod:`cortex.ingest.schemas` (``Text(n)`` → ``String(n)``, ``Number`` → ``Double`` (a ``Float``),
``Integer`` → ``BigInteger``, ``Timestamp`` → timezone-aware ``DateTime``, ``TagList`` →
``JSON``), so a field added there shows up here; the migrations are the frozen history of
these definitions, and the test suite checks that the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator

from cortex.ingest import fields as F
from cortex.ingest.schemas import (
    BUNDLE_FIELDS,
    COMMON_EVENT_FIELDS,
    EVENT_FIELDS,
    LOG_LINE_FIELDS,
)

__all__ = ["FAMILIES", "Family", "UtcDateTime", "build_tables", "family_of"]

#: strings longer than this become ``Text`` (unbounded) rather than ``VARCHAR(n)``
LONG_TEXT = 4000

class UtcDateTime(TypeDecorator):
    """``DateTime(timezone=True)`` that always gives back aware UTC datetimes.

    SQLite has no time zones: the sink binds UTC datetimes, SQLite keeps them naive, and
    this type marks them UTC again when read.  PostgreSQL stores ``timestamptz``.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        """Mark naive values as UTC and convert aware ones to UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def json_type() -> sa.JSON:
    """The JSON column type: SQL NULL (not JSON ``null``) for an absent value."""
    return sa.JSON(none_as_null=True)


def column_type(field: F.Coercing) -> sa.types.TypeEngine:
    """The SQLAlchemy column type for one marshmallow field of the ingest schemas."""
    if isinstance(field, F.Text):
        return sa.Text() if field.max_length > LONG_TEXT else sa.String(field.max_length)
    if isinstance(field, F.Number):
        return sa.Double()
    if isinstance(field, F.Integer):
        return sa.BigInteger()
    if isinstance(field, F.Timestamp):
        return UtcDateTime()
    if isinstance(field, F.TagList):
        return json_type()
    raise TypeError(f"no column type for {type(field).__name__}")


def _merge(*field_maps: dict[str, Any]) -> dict[str, Any]:
    """The union of field maps in order; a name in several keeps its longest ``Text``."""
    merged: dict[str, Any] = {}
    for field_map in field_maps:
        for name, field in field_map.items():
            known = merged.get(name)
            if known is None:
                merged[name] = field
            elif type(known) is not type(field):
                raise TypeError(f"field {name!r} has two different types in the schemas")
            elif isinstance(field, F.Text) and field.max_length > known.max_length:
                merged[name] = field
    return merged


#: the bundle fields stored with every event (the API key never is)
STORED_BUNDLE_FIELDS = {k: v for k, v in BUNDLE_FIELDS.items() if k != "api_key"}

#: fields every record has, handled by the common columns instead of the field maps
_COMMON_NAMES = {"type", "event_datetime"}


@dataclass(frozen=True)
class Family:
    """One table: which records go there and how their ``kind`` and ``type`` are stored."""

    #: table name without the configured prefix
    table: str
    #: the record kind stored
    kind: str
    #: event types stored (for track records), ``()`` for every type of the kind
    types: tuple[str, ...] = ()
    #: the column holding the record's ``type``; None when ``fixed_type`` applies
    type_column: str | None = None
    #: the ``type`` of every record in the table when it has no type column
    fixed_type: str | None = None


FAMILIES: tuple[Family, ...] = (
    Family("events", "track", ("install", "dau", "event"), type_column="type"),
    Family("economy", "track", ("economy",), fixed_type="economy"),
    Family("links", "track", ("link",), fixed_type="link"),
    Family("messages", "track", ("message_send", "message_click"), type_column="type"),
    Family("experiments", "track", ("experiment",), fixed_type="experiment"),
    Family("app_logs", "app_log", fixed_type="log"),
    Family("interactions", "interaction", type_column="event_type"),
    Family("ingest_errors", "rejected", type_column="type"),
)

_BY_KIND_TYPE = {
    (family.kind, type_): family for family in FAMILIES for type_ in family.types
}
_BY_KIND = {family.kind: family for family in FAMILIES if not family.types}


def family_of(kind: str | None, type_: str | None) -> Family | None:
    """The family (table) a record of ``kind`` and ``type`` belongs to, or None."""
    return _BY_KIND_TYPE.get((kind, type_)) or _BY_KIND.get(kind)


def _identity_columns() -> list[sa.Column]:
    return [
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("seq", sa.BigInteger),
        sa.Column("org", sa.String(64), nullable=False),
        sa.Column("app", sa.String(64)),
        sa.Column("app_id", sa.Integer),
    ]


def _time_columns() -> list[sa.Column]:
    return [
        sa.Column("received_at", UtcDateTime()),
        sa.Column("event_datetime", UtcDateTime()),
        sa.Column("event_time", UtcDateTime()),
        sa.Column("clock_skew_seconds", sa.Double),
    ]


def _field_columns(field_map: dict[str, Any]) -> list[sa.Column]:
    return [
        sa.Column(name, column_type(field))
        for name, field in field_map.items()
        if name not in _COMMON_NAMES
    ]


def _enrichment_columns() -> list[sa.Column]:
    """Filled by enrichers (``country`` is a bundle field already)."""
    return [sa.Column("region", sa.String(64)), sa.Column("city", sa.String(128))]


def _tail_columns() -> list[sa.Column]:
    return [sa.Column("extra", json_type()), sa.Column("warnings", json_type())]


def _event_columns(family: Family) -> list[sa.Column]:
    """The columns of a track-event or log-line table."""
    if family.kind == "app_log":
        fields = LOG_LINE_FIELDS
    else:
        # Every track table has the common event columns: the SDKs send event_index with
        # experiment events too, although the spec leaves it out there.
        fields = _merge(COMMON_EVENT_FIELDS, *(EVENT_FIELDS[t] for t in family.types))
    columns = _identity_columns()
    if family.type_column:
        columns.append(sa.Column(family.type_column, sa.String(32)))
    columns += _time_columns()
    columns += _field_columns(_merge(fields, STORED_BUNDLE_FIELDS))
    columns += _enrichment_columns()
    if family.table == "economy":
        columns += [sa.Column("spend_amount_usd", sa.Double), sa.Column("usd_rate_date", sa.Date)]
    return columns + _tail_columns()


def _interaction_columns() -> list[sa.Column]:
    """The generic interactions API (seed 000 event shape)."""
    return [
        *_identity_columns(),
        sa.Column("event_type", sa.String(64)),
        sa.Column("timestamp", UtcDateTime()),
        *_time_columns(),
        sa.Column("event_id", sa.String(128)),
        sa.Column("user_id", sa.String(128)),
        sa.Column("business_id", sa.String(128)),
        sa.Column("product_id", sa.String(128)),
        sa.Column("source", sa.String(256)),
        sa.Column("event_properties", json_type()),
        sa.Column("device_info", json_type()),
        sa.Column("country", sa.String(2)),
        *_enrichment_columns(),
        *_tail_columns(),
        # filled by the language, device and currency enrichers (migration 0002)
        *(sa.Column(name, sa.String(16)) for name in ("language", "browser", "browser_ver", "os", "os_ver",
                                                       "device_type")),
        sa.Column("amount_usd", sa.Double),
        sa.Column("usd_rate_date", sa.Date),
    ]


def _error_columns() -> list[sa.Column]:
    """Rejected events: why, and what was sent (API key already removed)."""
    return [
        *_identity_columns(),
        sa.Column("type", sa.String(64)),
        sa.Column("endpoint", sa.String(64)),
        sa.Column("received_at", UtcDateTime()),
        sa.Column("reasons", json_type()),
        sa.Column("payload", json_type()),
        sa.Column("bundle", json_type()),
        # the X-Request-Id of the request that sent the event (request logs, client support)
        sa.Column("request_id", sa.String(128)),
    ]


def build_tables(
    metadata: sa.MetaData, prefix: str = "", schema: str | None = None
) -> dict[str, sa.Table]:
    """Define every sink table in ``metadata``; returns them by unprefixed table name.

    ``prefix`` goes before every table and index name; ``schema`` is the database schema
    (PostgreSQL) or None for the default one.
    """
    tables = {}
    for family in FAMILIES:
        if family.kind == "interaction":
            columns = _interaction_columns()
        elif family.kind == "rejected":
            columns = _error_columns()
        else:
            columns = _event_columns(family)
        name = prefix + family.table
        time_column = "received_at" if family.kind == "rejected" else "event_time"
        tables[family.table] = sa.Table(
            name,
            metadata,
            *columns,
            sa.Index(f"ix_{name}_org_{time_column}", "org", time_column),
            *(sa.Index(f"ix_{name}_org_{'_'.join(c[:-1])}", "org", *c) for c in STEP_INDEXES.get(family.table, ())),
            schema=schema,
        )
    return tables


#: table -> the columns after ``org`` of its indexes for reading one kind of event in a time
#: range (a funnel's steps, an experiment's conversions), the device column last so that the
#: index alone answers "which devices, when" (migration 0006)
STEP_INDEXES = {
    "events": (("type", "event_time", "device_tag"), ("kingdom", "type", "event_time", "device_tag")),
    "messages": (("type", "event_time", "device_tag"),),
    "interactions": (("event_type", "event_time", "user_id"),),
}
