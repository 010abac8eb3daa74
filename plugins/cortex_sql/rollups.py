"""Rollups: per-day aggregates the ``sql`` sink keeps up to date as it writes events.

Dashboards ask the same questions over and over (events per day, daily active devices,
revenue).  Answering them from the raw tables means reading every event of the range;
the rollups hold the answers' building blocks instead, updated in the same transaction as
each batch the sink writes, for the records that batch really added (a batch the
dispatcher sends again adds nothing twice):

``rollup_events``
    the number of events and their USD revenue per org, UTC day, app, event type and
    ``kingdom``, in slices: ``dimension = ""`` holds the totals, and for each of ``os``,
    ``device_type``, ``country``, ``app_ver`` and ``source`` (:data:`SLICED`) the rows with
    ``dimension`` set to its name hold the numbers per ``value`` of it.  One slice per
    dimension, rather than one row per combination of all of them, keeps the table small
    (a combination of all five is nearly one row per event); a question about two of these
    dimensions at once is answered from the raw events.
``rollup_device_days``
    the exact daily active set: one row per org, day, app and device, with that day's
    events, revenue, the event types seen (a bit mask, :data:`TYPE_BITS`) and the device's
    ``os``, ``device_type``, ``country``, ``app_ver`` and ``source`` that day (the greatest
    value seen that day, so that the order events arrive in does not matter).  ``is_first``
    is 1 on the device's first day in the app (new devices are counted without a join).
``rollup_devices``
    one row per org, app and device: the first day it was seen and the day of its first
    ``install`` (for new-vs-returning and retention cohorts).

A device is the ``device_tag`` (for the generic interactions API, the ``user_id``).
Revenue is in USD: an economy event's ``spend_amount_usd``, else its ``spend_amount`` when
``spend_currency`` is USD; a generic event's ``event_properties.amount`` when
``event_properties.currency`` is USD.  Missing dimension values are stored as ``""``.

When rows are removed from the raw tables (a data subject's deletion) or rollups were off
for a while, :func:`recompute` rebuilds an org's rollups for a range of days from the raw
tables (``cortex rollups rebuild``).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timezone
from typing import Any, Iterable

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from cortex_sql.day_bitmaps import forget_org, invalidate_days

__all__ = ["DIMENSIONS", "ROLLUP_TABLES", "TYPE_BITS", "RollupWriter", "define_rollup_tables", "recompute"]

#: the key columns of ``rollup_events`` besides org, day and app
DIMENSIONS = ("type", "kingdom", "dimension", "value")
#: the dimensions sliced in ``rollup_events``, and carried by each device-day row
SLICED = ("os", "device_type", "country", "app_ver", "source")
DEVICE_DIMENSIONS = SLICED

#: event type -> its bit in ``rollup_device_days.types``; every other type (generic API) is OTHER
TYPE_BITS = {"install": 1, "dau": 2, "event": 4, "economy": 8, "link": 16, "message_send": 32,
             "message_click": 64, "experiment": 128}
OTHER_TYPE_BIT = 256

ROLLUP_TABLES = ("rollup_events", "rollup_device_days", "rollup_devices")

#: the raw tables rolled up, with the record kinds they hold
RAW_TABLES = ("events", "economy", "links", "messages", "experiments", "interactions")

_UPSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


def _dimension(name: str, length: int) -> sa.Column:
    return sa.Column(name, sa.String(length), nullable=False, server_default="")


def define_rollup_tables(metadata: sa.MetaData, prefix: str = "", schema: str | None = None) -> dict[str, sa.Table]:
    """Define the rollup tables in ``metadata``; returns them by unprefixed name."""
    events = sa.Table(
        prefix + "rollup_events", metadata,
        sa.Column("org", sa.String(64), nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        _dimension("app", 64), _dimension("type", 64), _dimension("kingdom", 32),
        _dimension("dimension", 16), _dimension("value", 256),
        sa.Column("events", sa.BigInteger, nullable=False),
        sa.Column("revenue_usd", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("org", "day", "app", *DIMENSIONS, name=f"pk_{prefix}rollup_events"),
        schema=schema,
    )
    device_days = sa.Table(
        prefix + "rollup_device_days", metadata,
        sa.Column("org", sa.String(64), nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        _dimension("app", 64),
        sa.Column("device", sa.String(128), nullable=False),
        _dimension("os", 16), _dimension("device_type", 16), _dimension("country", 2), _dimension("app_ver", 16),
        _dimension("source", 256),
        sa.Column("events", sa.BigInteger, nullable=False),
        sa.Column("revenue_usd", sa.Double, nullable=False),
        sa.Column("types", sa.Integer, nullable=False),
        sa.Column("is_first", sa.SmallInteger, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("org", "day", "app", "device", name=f"pk_{prefix}rollup_device_days"),
        sa.Index(f"ix_{prefix}rollup_device_days_org_device", "org", "device", "day"),
        # distinct devices per day without a sort: (day, device) in index order
        sa.Index(f"ix_{prefix}rollup_device_days_org_day_device", "org", "day", "device"),
        schema=schema,
    )
    devices = sa.Table(
        prefix + "rollup_devices", metadata,
        sa.Column("org", sa.String(64), nullable=False),
        _dimension("app", 64),
        sa.Column("device", sa.String(128), nullable=False),
        sa.Column("first_day", sa.Date, nullable=False),
        sa.Column("install_day", sa.Date, nullable=True),
        sa.PrimaryKeyConstraint("org", "app", "device", name=f"pk_{prefix}rollup_devices"),
        sa.Index(f"ix_{prefix}rollup_devices_org_install_day", "org", "install_day"),
        schema=schema,
    )
    return {"rollup_events": events, "rollup_device_days": device_days, "rollup_devices": devices}


# -- from records (as the sink writes them) ------------------------------------------------------
def _text(value: Any, length: int) -> str:
    if value is None or value is False:
        return ""
    return str(value)[:length]


def _day(value: Any) -> date:
    if isinstance(value, datetime):
        moment = value
    else:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.date()


def _usd(currency: Any, amount: Any) -> float:
    if isinstance(currency, str) and currency.upper() == "USD":
        try:
            return float(amount)
        except (TypeError, ValueError):
            return 0.0
    return 0.0


def normalise(record: dict[str, Any]) -> dict[str, Any] | None:
    """A record's rollup view (org, day, app, device, dimensions, revenue), or None."""
    kind = record.get("kind")
    time = record.get("event_time")
    if kind not in ("track", "interaction") or time is None:
        return None
    if kind == "track":
        device = record.get("device_tag")
        extra = record.get("extra") or {}
        source = extra.get("source") if isinstance(extra, dict) else None
        details = record
        if record.get("type") == "economy":
            usd = record.get("spend_amount_usd")
            revenue = float(usd) if usd is not None else _usd(record.get("spend_currency"), record.get("spend_amount"))
        else:
            revenue = 0.0
        kingdom = record.get("kingdom")
    else:
        device = record.get("user_id")
        source = record.get("source")
        details = record.get("device_info") if isinstance(record.get("device_info"), dict) else {}
        details = {"os": _first_present(record.get("os"), details.get("os")),
                   "device_type": _first_present(record.get("device_type"), details.get("device_type")),
                   "app_ver": details.get("app_version"), "country": record.get("country")}
        props = record.get("event_properties") if isinstance(record.get("event_properties"), dict) else {}
        usd = record.get("amount_usd")
        revenue = float(usd) if usd is not None else _usd(props.get("currency"), props.get("amount"))
        kingdom = None
    if not device:
        return None
    return {
        "org": record["org"], "day": _day(time), "app": _text(record.get("app"), 64), "device": str(device)[:128],
        "type": _text(record.get("type"), 64), "kingdom": _text(kingdom, 32),
        "os": _text(details.get("os"), 16), "device_type": _text(details.get("device_type"), 16),
        "country": _text(details.get("country"), 2), "app_ver": _text(details.get("app_ver"), 16),
        "source": _text(source, 256), "revenue_usd": revenue,
    }


def _first_present(value: Any, fallback: Any) -> Any:
    """``value`` unless it is None (as SQL's COALESCE)."""
    return fallback if value is None else value


def _greatest(dialect_name: str, a, b):
    """The greater of two non-NULL values (SQLite's two-argument max(), PostgreSQL's GREATEST)."""
    if dialect_name == "sqlite":  # BINARY collation: code point order, as Python compares
        return sa.func.max(a, b)
    return sa.func.greatest(a.collate("C"), b.collate("C"))


def _least(a, b):
    """The earlier of two dates, either of which may be NULL (SQLite's min() would give NULL)."""
    return sa.case((a.is_(None), b), (b.is_(None), a), (b < a, b), else_=a)


class RollupWriter:
    """Adds a batch's new records to the rollups, inside the sink's transaction."""

    def __init__(self, dialect_name: str, tables: dict[str, sa.Table], raw: dict[str, sa.Table]):
        insert = _UPSERTS[dialect_name]
        self.raw = {name: raw[name] for name in RAW_TABLES}
        events, device_days, devices = (tables[n] for n in ROLLUP_TABLES)
        stmt = insert(events)
        self.events = stmt.on_conflict_do_update(
            index_elements=["org", "day", "app", *DIMENSIONS],
            set_={"events": events.c.events + stmt.excluded.events,
                  "revenue_usd": events.c.revenue_usd + stmt.excluded.revenue_usd},
        )
        stmt = insert(device_days)
        self.device_days = stmt.on_conflict_do_update(
            index_elements=["org", "day", "app", "device"],
            set_={"events": device_days.c.events + stmt.excluded.events,
                  "revenue_usd": device_days.c.revenue_usd + stmt.excluded.revenue_usd,
                  "types": device_days.c.types.op("|")(stmt.excluded.types),
                  "is_first": sa.case((stmt.excluded.is_first > device_days.c.is_first, stmt.excluded.is_first),
                                      else_=device_days.c.is_first),
                  **{d: _greatest(dialect_name, device_days.c[d], stmt.excluded[d]) for d in DEVICE_DIMENSIONS}},
        )
        self.device_days_table = device_days
        self.devices_table = devices
        self.demote = (
            device_days.update()
            .where(device_days.c.org == sa.bindparam("b_org"), device_days.c.app == sa.bindparam("b_app"),
                   device_days.c.device == sa.bindparam("b_device"), device_days.c.day == sa.bindparam("b_day"))
            .values(is_first=0)
        )
        stmt = insert(devices)
        self.devices = stmt.on_conflict_do_update(
            index_elements=["org", "app", "device"],
            set_={"first_day": _least(devices.c.first_day, stmt.excluded.first_day),
                  "install_day": _least(devices.c.install_day, stmt.excluded.install_day)},
        )

    @staticmethod
    def supports(dialect_name: str) -> bool:
        """True for the databases whose upserts this class uses (SQLite, PostgreSQL)."""
        return dialect_name in _UPSERTS

    def stored_ids(self, connection: sa.Connection, records: list[dict[str, Any]]) -> set[str]:
        """The ids of ``records`` already in the raw tables (before this batch is written)."""
        ids: dict[str, list[str]] = defaultdict(list)
        from cortex_sql.tables import family_of

        for record in records:
            family = family_of(record.get("kind"), record.get("type"))
            if family is not None and family.table in self.raw:
                ids[family.table].append(record["id"])
        found: set[str] = set()
        for table_name, table_ids in ids.items():
            table = self.raw[table_name]
            for start in range(0, len(table_ids), 500):
                chunk = table_ids[start:start + 500]
                found.update(connection.scalars(sa.select(table.c.id).where(table.c.id.in_(chunk))))
        return found

    def apply(self, connection: sa.Connection, records: Iterable[dict[str, Any]], skip: set[str]) -> None:
        """Add ``records`` (but not those whose id is in ``skip``, nor repeats) to the rollups."""
        events: dict[tuple, list] = {}
        device_days: dict[tuple, dict] = {}
        devices: dict[tuple, list] = {}
        seen = set(skip)
        for record in records:
            record_id = record.get("id")
            if record_id in seen:
                continue
            seen.add(record_id)
            row = normalise(record)
            if row is None:
                continue
            head = (row["org"], row["day"], row["app"], row["type"], row["kingdom"])
            for key in (head + ("", ""), *(head + (d, row[d]) for d in SLICED)):
                totals = events.get(key)
                if totals is None:
                    events[key] = [1, row["revenue_usd"]]
                else:
                    totals[0] += 1
                    totals[1] += row["revenue_usd"]
            bit = TYPE_BITS.get(row["type"], OTHER_TYPE_BIT)
            key = (row["org"], row["day"], row["app"], row["device"])
            day = device_days.get(key)
            if day is None:
                device_days[key] = {**{d: row[d] for d in DEVICE_DIMENSIONS}, "events": 1,
                                    "revenue_usd": row["revenue_usd"], "types": bit, "is_first": 0}
            else:
                day["events"] += 1
                day["revenue_usd"] += row["revenue_usd"]
                day["types"] |= bit
                for name in DEVICE_DIMENSIONS:
                    if row[name] > day[name]:
                        day[name] = row[name]
            key = (row["org"], row["app"], row["device"])
            install = row["day"] if row["type"] == "install" else None
            first = devices.get(key)
            if first is None:
                devices[key] = [row["day"], install]
            else:
                first[0] = min(first[0], row["day"])
                if install is not None:
                    first[1] = install if first[1] is None else min(first[1], install)
        if not events:
            return
        self._mark_first_days(connection, device_days, devices)
        connection.execute(self.events, [
            {"org": k[0], "day": k[1], "app": k[2], **dict(zip(DIMENSIONS, k[3:])), "events": v[0], "revenue_usd": v[1]}
            for k, v in events.items()
        ])
        connection.execute(self.device_days, [
            {"org": k[0], "day": k[1], "app": k[2], "device": k[3], **v} for k, v in device_days.items()
        ])
        connection.execute(self.devices, [
            {"org": k[0], "app": k[1], "device": k[2], "first_day": v[0], "install_day": v[1]}
            for k, v in devices.items()
        ])
        invalidate_days(connection, self.device_days_table, {(org, app, day) for org, day, app, _ in device_days})


    def _first_days_stored(self, connection: sa.Connection, keys: list[tuple]) -> dict[tuple, date]:
        devices = self.devices_table
        found: dict[tuple, date] = {}
        columns = sa.tuple_(devices.c.org, devices.c.app, devices.c.device)
        for start in range(0, len(keys), 300):
            query = sa.select(devices.c.org, devices.c.app, devices.c.device, devices.c.first_day).where(
                columns.in_(keys[start:start + 300]))
            for org, app, device, first_day in connection.execute(query):
                found[(org, app, device)] = _as_date(first_day)
        return found

    def _mark_first_days(self, connection: sa.Connection, device_days: dict, devices: dict) -> None:
        """Set ``is_first`` on the batch's device-days that are a device's first, and clear
        it on the day that was first until now."""
        stored = self._first_days_stored(connection, list(devices))
        demoted = []
        for (org, app, device), (first_day, _) in devices.items():
            before = stored.get((org, app, device))
            if before is None or first_day < before:
                device_days[(org, first_day, app, device)]["is_first"] = 1
                if before is not None:
                    demoted.append({"b_org": org, "b_app": app, "b_device": device, "b_day": before})
        if demoted:
            connection.execute(self.demote, demoted)


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


# -- from the raw tables ----------------------------------------------------------------------
def _sql_day(dialect: str, moment):
    if dialect == "sqlite":
        return sa.func.date(moment)
    return sa.cast(sa.func.timezone("UTC", moment), sa.Date)


def _blank(expression, length: int):
    return sa.func.substr(sa.func.coalesce(sa.cast(expression, sa.String), ""), 1, length)


def _raw_stream(dialect: str, raw: dict[str, sa.Table], org: str, start: date, end: date) -> sa.Subquery:
    """The org's raw events of days ``[start, end]`` in rollup form (see :func:`normalise`)."""
    from datetime import time as clock, timedelta

    low = datetime.combine(start, clock.min, tzinfo=timezone.utc)
    high = datetime.combine(end + timedelta(days=1), clock.min, tzinfo=timezone.utc)
    selects = []
    for name in RAW_TABLES:
        t = raw[name]
        if name == "interactions":
            info = t.c.device_info
            props = t.c.event_properties
            revenue = sa.case((sa.func.upper(props["currency"].as_string()) == "USD",
                               sa.func.coalesce(props["amount"].as_float(), 0.0)), else_=0.0)
            os, device_type = info["os"].as_string(), info["device_type"].as_string()
            if "amount_usd" in t.c:  # the enrichers' typed columns
                revenue = sa.func.coalesce(t.c.amount_usd, revenue)
                os, device_type = sa.func.coalesce(t.c.os, os), sa.func.coalesce(t.c.device_type, device_type)
            columns = {"app": t.c.app, "device": t.c.user_id, "type": t.c.event_type, "kingdom": sa.null(),
                       "os": os, "device_type": device_type,
                       "country": t.c.country, "app_ver": info["app_version"].as_string(), "source": t.c.source}
        else:
            type_column = t.c.type if "type" in t.c else sa.literal({"economy": "economy", "links": "link",
                                                                      "experiments": "experiment"}[name])
            if name == "economy":
                revenue = sa.func.coalesce(t.c.spend_amount_usd, sa.case(
                    (sa.func.upper(t.c.spend_currency) == "USD", t.c.spend_amount), else_=0.0), 0.0)
            else:
                revenue = sa.literal(0.0)
            columns = {"app": t.c.app, "device": t.c.device_tag, "type": type_column,
                       "kingdom": t.c.kingdom if "kingdom" in t.c else sa.null(),
                       "os": t.c.os, "device_type": t.c.device_type, "country": t.c.country,
                       "app_ver": t.c.app_ver, "source": t.c.extra["source"].as_string()}
        lengths = {"app": 64, "device": 128, "type": 64, "kingdom": 32, "os": 16, "device_type": 16,
                   "country": 2, "app_ver": 16, "source": 256}
        selects.append(
            sa.select(
                _sql_day(dialect, t.c.event_time).label("day"),
                *(_blank(columns[n], lengths[n]).label(n) for n in lengths),
                sa.cast(revenue, sa.Float).label("revenue_usd"),
            ).where(t.c.org == org, t.c.event_time >= low, t.c.event_time < high,
                    columns["device"].is_not(None), columns["device"] != "")
        )
    return sa.union_all(*selects).subquery("raw")


def _code_point_order(dialect: str, expression):
    return expression.collate("C") if dialect == "postgresql" else expression


def _type_bit(type_column):
    return sa.case(*((type_column == name, bit) for name, bit in TYPE_BITS.items()), else_=OTHER_TYPE_BIT)


def recompute(connection: sa.Connection, tables: dict[str, sa.Table], raw: dict[str, sa.Table],
              org: str, start: date, end: date) -> None:
    """Rebuild ``org``'s rollups for the days ``start`` to ``end`` (inclusive) from the raw
    tables, in the caller's transaction, and its devices' first and install days."""
    dialect = connection.dialect.name
    events, device_days, devices = (tables[n] for n in ROLLUP_TABLES)
    for table in (events, device_days):
        connection.execute(table.delete().where(table.c.org == org, table.c.day >= start, table.c.day <= end))
    stream = _raw_stream(dialect, raw, org, start, end)
    head = [stream.c.day, stream.c.app, stream.c.type, stream.c.kingdom]
    for dimension in ("", *SLICED):
        value = stream.c[dimension] if dimension else sa.literal("")
        connection.execute(events.insert().from_select(
            ["org", "day", "app", *DIMENSIONS, "events", "revenue_usd"],
            sa.select(sa.literal(org), *head, sa.literal(dimension), value, sa.func.count(),
                      sa.func.coalesce(sa.func.sum(stream.c.revenue_usd), 0.0))
            .group_by(*head, value),
        ))
    bit = _type_bit(stream.c.type)
    mask = sum(sa.func.max(sa.case((bit == value, value), else_=0)) for value in (*TYPE_BITS.values(), OTHER_TYPE_BIT))
    day_keys = [stream.c.day, stream.c.app, stream.c.device]
    connection.execute(device_days.insert().from_select(
        ["org", "day", "app", "device", *DEVICE_DIMENSIONS, "events", "revenue_usd", "types"],
        sa.select(sa.literal(org), *day_keys, *(sa.func.max(_code_point_order(dialect, stream.c[d]))
                                                for d in DEVICE_DIMENSIONS),
                  sa.func.count(), sa.func.coalesce(sa.func.sum(stream.c.revenue_usd), 0.0), mask)
        .group_by(*day_keys),
    ))
    # first and install days over all of the org's device days
    connection.execute(devices.delete().where(devices.c.org == org))
    install = sa.case((device_days.c.types.op("&")(TYPE_BITS["install"]) != 0, device_days.c.day), else_=None)
    connection.execute(devices.insert().from_select(
        ["org", "app", "device", "first_day", "install_day"],
        sa.select(sa.literal(org), device_days.c.app, device_days.c.device, sa.func.min(device_days.c.day),
                  sa.func.min(install))
        .where(device_days.c.org == org)
        .group_by(device_days.c.app, device_days.c.device),
    ))
    first_day = (
        sa.select(devices.c.first_day)
        .where(devices.c.org == device_days.c.org, devices.c.app == device_days.c.app,
               devices.c.device == device_days.c.device)
        .scalar_subquery()
    )
    connection.execute(device_days.update().where(device_days.c.org == org)
                       .values(is_first=sa.case((device_days.c.day == first_day, 1), else_=0)))
    forget_org(connection, device_days, org)
