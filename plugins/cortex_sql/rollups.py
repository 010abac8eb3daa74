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

from cortex_sql.bulk import PLACEHOLDERS
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

#: the databases whose upserts (``INSERT ... ON CONFLICT``) the writer uses
UPSERT_DIALECTS = frozenset({"sqlite", "postgresql"})


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


def _add(totals: dict[tuple, list], key: tuple, count: int, revenue: float) -> None:
    """Add ``count`` events and ``revenue`` to the totals of ``key``."""
    found = totals.get(key)
    if found is None:
        totals[key] = [count, revenue]
    else:
        found[0] += count
        found[1] += revenue


def _earlier(a: Any, b: Any) -> Any:
    """The earlier of two days, either of which may be None."""
    if a is None:
        return b
    if b is None or a <= b:
        return a
    return b


def _earlier_sql(column: str) -> str:
    """The earlier of the stored and the new day of ``column``, either of which may be NULL."""
    return (f"CASE WHEN cur.{column} IS NULL THEN excluded.{column} WHEN excluded.{column} IS NULL"
            f" THEN cur.{column} WHEN excluded.{column} < cur.{column} THEN excluded.{column}"
            f" ELSE cur.{column} END")


class _Statements:
    """The rollup writer's SQL, as text for the driver's ``executemany`` (plain tuples).

    SQLAlchemy's per-row work (a dict per row, bind processors, an ``IN`` compiled per
    batch) cost more than the database's; see :mod:`cortex_sql.bulk` for the same choice
    on the raw tables.  Days are ``YYYY-MM-DD`` text on SQLite (as SQLAlchemy's ``Date``
    stores them) and ``date`` objects on PostgreSQL.
    """

    def __init__(self, dialect: sa.Dialect, tables: dict[str, sa.Table]):
        q = dialect.identifier_preparer.quote
        mark = PLACEHOLDERS[dialect.paramstyle]
        events, device_days, devices = (dialect.identifier_preparer.format_table(tables[n]) for n in ROLLUP_TABLES)
        if dialect.name == "sqlite":
            def greatest(column: str) -> str:
                return f"max(cur.{q(column)}, excluded.{q(column)})"
        else:
            def greatest(column: str) -> str:
                return f'GREATEST(cur.{q(column)} COLLATE "C", excluded.{q(column)} COLLATE "C")'

        def insert(table: str, columns: tuple[str, ...], keys: tuple[str, ...], updates: dict[str, str]) -> str:
            sets = ", ".join(f"{q(c)} = {expression}" for c, expression in updates.items())
            return (f"INSERT INTO {table} AS cur ({', '.join(q(c) for c in columns)})"
                    f" VALUES ({', '.join([mark] * len(columns))})"
                    f" ON CONFLICT ({', '.join(q(k) for k in keys)}) DO UPDATE SET {sets}")

        def added(column: str) -> str:
            return f"cur.{q(column)} + excluded.{q(column)}"

        event_keys = ("org", "day", "app", *DIMENSIONS)
        #: rows (org, day, app, type, kingdom, dimension, value, events, revenue_usd)
        self.events = insert(events, (*event_keys, "events", "revenue_usd"), event_keys,
                             {"events": added("events"), "revenue_usd": added("revenue_usd")})
        day_keys = ("org", "day", "app", "device")
        #: rows (org, day, app, device, *DEVICE_DIMENSIONS, events, revenue_usd, types, is_first)
        self.device_days = insert(
            device_days, (*day_keys, *DEVICE_DIMENSIONS, "events", "revenue_usd", "types", "is_first"), day_keys,
            {"events": added("events"), "revenue_usd": added("revenue_usd"),
             "types": f"cur.{q('types')} | excluded.{q('types')}",
             "is_first": f"CASE WHEN excluded.{q('is_first')} > cur.{q('is_first')}"
                         f" THEN excluded.{q('is_first')} ELSE cur.{q('is_first')} END",
             **{d: greatest(d) for d in DEVICE_DIMENSIONS}})
        #: rows (org, app, device, first_day, install_day): only the devices new to the
        #: rollups or whose days move earlier are sent (the update still keeps the earlier
        #: day, for writers of one database that run at the same time)
        self.devices = insert(devices, ("org", "app", "device", "first_day", "install_day"),
                              ("org", "app", "device"),
                              {"first_day": _earlier_sql(q("first_day")), "install_day": _earlier_sql(q("install_day"))})
        #: rows (org, day, app, device): the device-day that is no longer the device's first
        self.demote = (f"UPDATE {device_days} SET {q('is_first')} = 0 WHERE {q('org')} = {mark}"
                       f" AND {q('day')} = {mark} AND {q('app')} = {mark} AND {q('device')} = {mark}")
        self._devices_table = devices
        self._mark = mark
        self._q = q

    def known_devices(self, count: int) -> str:
        """SELECT device, first_day, install_day of ``count`` devices of one org and app."""
        q = self._q
        return (f"SELECT {q('device')}, {q('first_day')}, {q('install_day')} FROM {self._devices_table}"
                f" WHERE {q('org')} = {self._mark} AND {q('app')} = {self._mark}"
                f" AND {q('device')} IN ({', '.join([self._mark] * count)})")


#: devices per lookup of their first days (bound parameters per statement stay well
#: under SQLite's and PostgreSQL's limits)
LOOKUP_CHUNK = 500


class RollupWriter:
    """Adds a batch's new records to the rollups, inside the sink's transaction.

    A batch's records are first summed per device, day and every dimension (one dict
    update per record), then spread into the three tables' rows, and each table gets one
    ``executemany`` of plain tuples.
    """

    def __init__(self, dialect: sa.Dialect, tables: dict[str, sa.Table], raw: dict[str, sa.Table]):
        self.raw = {name: raw[name] for name in RAW_TABLES}
        self.sql = _Statements(dialect, tables)
        self.postgres = dialect.name == "postgresql"
        #: names the stored day bitmaps' table (dropped when a batch adds to a past day)
        self.device_days_table = tables["rollup_device_days"]

    @staticmethod
    def supports(dialect: sa.Dialect) -> bool:
        """True for the databases whose upserts this class uses (SQLite, PostgreSQL), with
        a driver whose parameter style it writes."""
        return dialect.name in UPSERT_DIALECTS and dialect.paramstyle in PLACEHOLDERS

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

    def _sums(self, records: Iterable[dict[str, Any]], skip: set[str]) -> dict[tuple, list]:
        """Events and revenue per (org, day, app, device, type, kingdom, *DEVICE_DIMENSIONS)
        of ``records`` (not those whose id is in ``skip``, nor repeats)."""
        raw_sums: dict[tuple, list] = {}
        seen = set(skip)
        for record in records:
            record_id = record.get("id")
            if record_id in seen:
                continue
            seen.add(record_id)
            kind = record.get("kind")
            time = record.get("event_time")
            if time is None:
                continue
            if time.__class__ is str and time[10:11] == "T" and time[-1:] == "Z":
                time = time[:10]  # canonical: its day is all a rollup keeps
            if kind == "track":
                device = record.get("device_tag")
                if not device:
                    continue
                event_type = record.get("type")
                if event_type == "economy":
                    usd = record.get("spend_amount_usd")
                    revenue = float(usd) if usd is not None else _usd(record.get("spend_currency"),
                                                                      record.get("spend_amount"))
                else:
                    revenue = 0.0
                extra = record.get("extra")
                source = extra.get("source") if extra.__class__ is dict else None
                key = (record["org"], time, record.get("app"), device, event_type, record.get("kingdom"),
                       record.get("os"), record.get("device_type"), record.get("country"), record.get("app_ver"),
                       source)
            elif kind == "interaction":
                row = normalise(record)
                if row is None:
                    continue
                revenue = row["revenue_usd"]
                key = (row["org"], row["day"], row["app"], row["device"], row["type"], row["kingdom"],
                       *(row[d] for d in DEVICE_DIMENSIONS))
            else:
                continue
            sums = raw_sums.get(key)
            if sums is None:
                raw_sums[key] = [1, revenue]
            else:
                sums[0] += 1
                sums[1] += revenue
        # the same values rollups store (days; strings fitted, missing ones ""), per group;
        # _fit inline, as calls would cost more than the checks
        sums: dict[tuple, list] = {}
        day_of = self._day
        days: dict[str, Any] = {}
        for (org, time, app, device, event_type, kingdom, os, device_type, country, app_ver, source), (
                count, revenue) in raw_sums.items():
            fitted = (
                org, day_of(time, days),
                app if app.__class__ is str and len(app) <= 64 else _text(app, 64),
                device[:128] if device.__class__ is str else str(device)[:128],
                event_type if event_type.__class__ is str and len(event_type) <= 64 else _text(event_type, 64),
                kingdom if kingdom.__class__ is str and len(kingdom) <= 32 else _text(kingdom, 32),
                os if os.__class__ is str and len(os) <= 16 else _text(os, 16),
                device_type if device_type.__class__ is str and len(device_type) <= 16 else _text(device_type, 16),
                country if country.__class__ is str and len(country) <= 2 else _text(country, 2),
                app_ver if app_ver.__class__ is str and len(app_ver) <= 16 else _text(app_ver, 16),
                source if source.__class__ is str and len(source) <= 256 else _text(source, 256),
            )
            _add(sums, fitted, count, revenue)
        return sums

    def _day(self, time: Any, days: dict[str, Any]) -> Any:
        """A record time's UTC day, as the database's ``Date`` column takes it (``days``
        keeps the conversions of one batch)."""
        if time.__class__ is str and len(time) == 10:  # a canonical time's day (see _sums)
            text = time
        else:  # normalise() made a date; any other form is parsed
            text = (time if time.__class__ is date else _day(time)).isoformat()
        if not self.postgres:
            return text
        day = days.get(text)
        if day is None:
            day = days[text] = date.fromisoformat(text)
        return day

    def apply(self, connection: sa.Connection, records: Iterable[dict[str, Any]], skip: set[str]) -> None:
        """Add ``records`` (but not those whose id is in ``skip``, nor repeats) to the rollups."""
        sums = self._sums(records, skip)
        if not sums:
            return
        groups: dict[tuple, list] = {}  # the sums without the device
        device_days: dict[tuple, list] = {}
        devices: dict[tuple, list] = {}
        for key, (count, revenue) in sums.items():
            org, day, app, device, event_type = key[:5]
            dimensions = key[6:]
            _add(groups, key[:3] + key[4:], count, revenue)
            bit = TYPE_BITS.get(event_type, OTHER_TYPE_BIT)
            day_key = (org, day, app, device)
            row = device_days.get(day_key)
            if row is None:
                device_days[day_key] = [*dimensions, count, revenue, bit, 0]
            else:
                for index, value in enumerate(dimensions):
                    if value > row[index]:
                        row[index] = value
                row[5] += count
                row[6] += revenue
                row[7] |= bit
            device_key = (org, app, device)
            install = day if event_type == "install" else None
            first = devices.get(device_key)
            if first is None:
                devices[device_key] = [day, install]
            else:
                first[0] = _earlier(first[0], day)
                first[1] = _earlier(first[1], install)
        events: dict[tuple, list] = {}
        for key, (count, revenue) in groups.items():
            head = key[:5]  # org, day, app, type, kingdom
            for slice_key in (head + ("", ""), *(head + pair for pair in zip(SLICED, key[5:]))):
                _add(events, slice_key, count, revenue)
        self._first_days(connection, device_days, devices)
        connection.exec_driver_sql(self.sql.events, [(*key, *totals) for key, totals in events.items()])
        connection.exec_driver_sql(self.sql.device_days, [(*key, *row) for key, row in device_days.items()])
        invalidate_days(connection, self.device_days_table, {(org, app, day) for org, day, app, _ in device_days})

    def _first_days(self, connection: sa.Connection, device_days: dict, devices: dict) -> None:
        """Store the batch's devices that are new or whose first (or install) day moves
        earlier; set ``is_first`` on the device-days that are now a device's first, and
        clear it on the day that was first until now."""
        by_app: dict[tuple, list] = defaultdict(list)
        for org, app, device in devices:
            by_app[(org, app)].append(device)
        stored: dict[tuple, tuple] = {}
        for (org, app), names in by_app.items():
            for start in range(0, len(names), LOOKUP_CHUNK):
                chunk = names[start:start + LOOKUP_CHUNK]
                result = connection.exec_driver_sql(self.sql.known_devices(len(chunk)), (org, app, *chunk))
                for device, first_day, install_day in result:
                    stored[(org, app, device)] = (first_day, install_day)
        changed, demoted = [], []
        for key, (first_day, install_day) in devices.items():
            before = stored.get(key)
            org, app, device = key
            if before is None:
                device_days[(org, first_day, app, device)][8] = 1
                changed.append((*key, first_day, install_day))
                continue
            first_before, install_before = before
            earliest_install = _earlier(install_before, install_day)
            if first_day < first_before:
                device_days[(org, first_day, app, device)][8] = 1
                demoted.append((org, first_before, app, device))
                changed.append((*key, first_day, earliest_install))
            elif earliest_install != install_before:
                changed.append((*key, first_before, earliest_install))
        if demoted:
            connection.exec_driver_sql(self.sql.demote, demoted)
        if changed:
            connection.exec_driver_sql(self.sql.devices, changed)


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
