"""One stream of events over the sink's tables, in common columns, already filtered.

The sink keeps each event family in its own table (``events``, ``economy``, ``links``,
``messages``, ``experiments``, ``interactions``).  Most queries want them as one stream of
events with the same columns:

``id``, ``app``, ``type``, ``time`` (the corrected event time), ``device`` (the device tag;
for the generic API its ``user_id``), ``user`` (the user tag when known, else the device),
``app_ver``, ``os``, ``device_type``, ``country``, ``source``, the taxonomy levels
``kingdom`` … ``species`` and ``revenue_usd`` (economy events and generic purchases: the
converted amount, or the amount itself when it is in USD).

For the generic API, ``os`` and ``device_type`` are the enrichers' typed columns, else
``device_info``'s; revenue is ``amount_usd`` (the currency enricher's), else
``event_properties.amount`` when its currency is USD.  ``source`` is the generic API's ``source``; on Data Cortex events it is a ``source`` field
the SDK sent (kept in ``extra``).  The filters are applied inside each table's select, so
that the ``(org, event_time)`` index does the work.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable

import sqlalchemy as sa

from cortex.analytics.schemas import TAXONOMY
from cortex.analytics.scope import Scope

#: the track tables and the event types each holds
TRACK_TABLES = {
    "events": ("install", "dau", "event"),
    "economy": ("economy",),
    "links": ("link",),
    "messages": ("message_send", "message_click"),
    "experiments": ("experiment",),
}
#: the track tables whose events can carry revenue (the interactions table can too)
PAYING_TABLES = ("economy",)
#: every Data Cortex event type
TRACK_TYPES = frozenset(t for types in TRACK_TABLES.values() for t in types)

COLUMNS = ("id", "app", "type", "time", "device", "user", "app_ver", "os", "device_type",
           "country", "source", *TAXONOMY, "revenue_usd")

#: filter argument -> stream column
FILTER_COLUMNS = {"app": "app", "os": "os", "device_type": "device_type", "country": "country",
                  "app_ver": "app_ver", "source": "source", **{level: level for level in TAXONOMY}}


def _null(type_=sa.String):
    return sa.cast(sa.null(), type_)


def _track_columns(table: sa.Subquery, name: str) -> dict[str, Any]:
    c = table.c
    type_column = c.type if "type" in c else sa.literal(TRACK_TABLES[name][0])
    revenue = _null(sa.Float)
    if name == "economy":
        revenue = sa.func.coalesce(
            c.spend_amount_usd,
            sa.case((sa.func.upper(c.spend_currency) == "USD", c.spend_amount), else_=None),
        )
    columns = {
        "id": c.id, "app": c.app, "type": type_column, "time": c.event_time, "device": c.device_tag,
        "user": sa.func.coalesce(sa.func.nullif(c.user_tag, ""), c.device_tag),
        "app_ver": c.app_ver, "os": c.os, "device_type": c.device_type, "country": c.country,
        "source": c.extra["source"].as_string(),
    }
    for level in TAXONOMY:
        columns[level] = c[level] if level in c else _null()
    columns["revenue_usd"] = sa.cast(revenue, sa.Float)
    return columns


def _interaction_columns(table: sa.Subquery) -> dict[str, Any]:
    c = table.c
    currency = sa.func.upper(c.event_properties["currency"].as_string())
    revenue = sa.case((currency == "USD", c.event_properties["amount"].as_float()), else_=None)
    if "amount_usd" in c:  # set by the currency enricher
        revenue = sa.func.coalesce(c.amount_usd, revenue)
    os = c.device_info["os"].as_string()
    device_type = c.device_info["device_type"].as_string()
    if "os" in c:  # typed columns the device enricher fills
        os = sa.func.coalesce(c.os, os)
        device_type = sa.func.coalesce(c.device_type, device_type)
    columns = {
        "id": c.id, "app": c.app, "type": c.event_type, "time": c.event_time, "device": c.user_id,
        "user": c.user_id, "app_ver": c.device_info["app_version"].as_string(),
        "os": os, "device_type": device_type, "country": c.country, "source": c.source,
    }
    for level in TAXONOMY:
        columns[level] = _null()
    columns["revenue_usd"] = sa.cast(revenue, sa.Float)
    return columns


def _conditions(columns: dict[str, Any], filters: dict[str, Any], types: Iterable[str] | None) -> list:
    conditions = [columns["time"] >= filters["start"], columns["time"] < filters["end"]]
    for argument, column in FILTER_COLUMNS.items():
        values = filters.get(argument)
        if values:
            conditions.append(columns[column].in_(values))
    if types:
        conditions.append(columns["type"].in_(list(types)))
    return conditions


def event_stream(scope: Scope, filters: dict[str, Any], types: Iterable[str] | None = None,
                 with_time_range: bool = True, columns: Iterable[str] = COLUMNS,
                 paying_only: bool = False) -> sa.Subquery:
    """The scope's events matching ``filters`` (and of ``types``, when given) as one subquery.

    ``types`` defaults to ``filters["event_type"]``.  With ``with_time_range=False`` the
    date range is left out (for "first seen" questions that look at all history).
    ``columns`` names the stream columns to select (all by default): a query that needs
    only a few saves computing the others on every row.  ``paying_only`` keeps only the
    events with a ``revenue_usd`` (so only the tables that can hold one are read).
    """
    return _union(scope, filters, types, with_time_range, tuple(columns), paying_only).subquery("stream")


def _union(scope: Scope, filters: dict[str, Any], types: Iterable[str] | None, with_time_range: bool,
           names: tuple[str, ...], paying_only: bool) -> sa.CompoundSelect:
    types = list(types) if types is not None else filters.get("event_type")
    if not with_time_range:
        filters = {**filters, "start": _EPOCH, "end": _FAR}
    sources = []
    for name, table_types in TRACK_TABLES.items():
        if types and not set(types) & set(table_types):
            continue
        if paying_only and name not in PAYING_TABLES:
            continue
        sources.append(_track_columns(scope.table(name), name))
    if not types or set(types) - TRACK_TYPES:
        sources.append(_interaction_columns(scope.table("interactions")))
    selects = []
    for columns in sources:
        conditions = _conditions(columns, filters, types)
        if paying_only:
            conditions.append(columns["revenue_usd"].is_not(None))
        selects.append(sa.select(*(columns[n].label(n) for n in names)).where(*conditions))
    return sa.union_all(*selects)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_FAR = datetime(9999, 1, 1, tzinfo=timezone.utc)
