"""Dashboard queries answered from the sink's rollup tables instead of the raw events.

The rollups (:mod:`cortex_sql.rollups`) hold, per org and UTC day, event counts and revenue
by app, type, kingdom, os, device type, country, app version and source; the exact set of
devices active each day with their dimensions; and each device's first and install day.
A query can be answered from them when its filters and grouping are among those
dimensions and its range is whole days; :func:`usable` says so, or why not.  The answers
are the same as from the raw events (the test suite compares both).

Event counts and revenue are sums over ``rollup_events``; distinct devices are unions
and intersections of the day bitmaps of the daily active sets (:mod:`cortex.analytics.bitmaps`).
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from cortex.analytics import bitmaps
from cortex.analytics.scope import Scope
from cortex.analytics.sqlfuncs import day_bucket, count_distinct

TYPE_BITS = bitmaps.TYPE_BITS
EVENT_DIMENSIONS = ("app", "type", "kingdom", "os", "device_type", "country", "app_ver", "source")
DEVICE_DIMENSIONS = ("app", "os", "device_type", "country", "app_ver", "source")
#: the dimensions ``rollup_events`` keeps in slices of their own (one at a time)
SLICED = ("os", "device_type", "country", "app_ver", "source")
#: filter argument -> rollup column
FILTERS = {"app": "app", "os": "os", "device_type": "device_type", "country": "country",
           "app_ver": "app_ver", "source": "source", "event_type": "type", "kingdom": "kingdom"}
#: filters no rollup holds
RAW_ONLY_FILTERS = ("phylum", "class", "order", "family", "genus", "species")


def _whole_days(filters: dict[str, Any]) -> bool:
    return all(filters[k].time() == time.min for k in ("start", "end"))


def _days(filters: dict[str, Any]) -> tuple[date, date]:
    """The first and last day of the range (inclusive)."""
    return filters["start"].date(), (filters["end"] - timedelta(days=1)).date()


def usable(name: str, filters: dict[str, Any]) -> str | None:
    """None when query ``name`` can be answered from the rollups, else the reason why not."""
    if not _whole_days(filters):
        return "the range is not whole UTC days"
    if filters.get("bucket") == "hour":
        return "rollups are per day"
    if any(filters.get(k) for k in RAW_ONLY_FILTERS):
        return "rollups hold no taxonomy level but kingdom"
    types = filters.get("event_type") or []
    unknown_types = [t for t in types if t not in TYPE_BITS]
    group = {"counts": filters.get("by"), "breakdown": filters.get("dimension")}.get(name)
    if name in ("events", "counts", "breakdown") and len(_sliced(filters, group)) > 1:
        return "event counts are kept per one of os, device_type, country, app_ver and source at a time"
    if name in ("events", "counts"):
        if name == "counts" and filters["by"] not in EVENT_DIMENSIONS:
            return f"rollups are not grouped by {filters['by']}"
        if name == "events" and (unknown_types or filters.get("kingdom")):
            return "distinct devices per event type are kept for the Data Cortex types, without kingdom"
        return None
    if filters.get("kingdom"):
        return "the daily active sets have no kingdom"
    if name == "active-users":
        if filters["by"] != "device":
            return "the daily active sets are of devices"
        return "the daily active sets know the Data Cortex types only" if unknown_types else None
    if name == "revenue":
        return None
    if name == "breakdown":
        if filters["dimension"] not in DEVICE_DIMENSIONS:
            return f"distinct devices by {filters['dimension']} are not in the rollups"
        return "the daily active sets know the Data Cortex types only" if unknown_types else None
    if name == "retention":
        return None
    return "this query reads the raw events"


def _sliced(filters: dict[str, Any], group: str | None = None) -> set[str]:
    """The sliced dimensions a question involves (as a filter or a grouping)."""
    wanted = {name for name in SLICED if filters.get(name)}
    if group in SLICED:
        wanted.add(group)
    return wanted


def _event_where(events, filters: dict[str, Any], group: str | None = None) -> list:
    """Conditions on ``rollup_events``: the range, app, type, kingdom, and the one slice."""
    conditions = _where(events, filters, ("app", "type", "kingdom"))
    (dimension,) = _sliced(filters, group) or {""}
    conditions.append(events.c.dimension == dimension)
    if dimension and filters.get(dimension):
        conditions.append(events.c.value.in_(filters[dimension]))
    return conditions


def _event_column(events, name: str):
    """The column of ``rollup_events`` holding dimension ``name`` (a slice's ``value``)."""
    return events.c.value if name in SLICED else events.c[name]


def _where(table, filters: dict[str, Any], columns) -> list:
    start, end = _days(filters)
    conditions = [table.c.day >= start, table.c.day <= end]
    for argument, column in FILTERS.items():
        values = filters.get(argument)
        if values and column in columns:
            conditions.append(table.c[column].in_(values))
    return conditions


def _type_mask(filters: dict[str, Any]) -> int:
    return sum(TYPE_BITS[t] for t in set(filters.get("event_type") or []))


def _device_days(scope: Scope, filters: dict[str, Any]):
    """The daily active sets, filtered (event types through the type bits)."""
    table = scope.table("rollup_device_days")
    conditions = _where(table, filters, DEVICE_DIMENSIONS)
    mask = _type_mask(filters)
    if mask:
        conditions.append(table.c.types.op("&")(mask) != 0)
    return table, conditions


def _label(value) -> str:
    return value.isoformat() if isinstance(value, date) else str(value)


def event_summary(scope: Scope, filters: dict[str, Any]) -> dict[str, Any]:
    """As :func:`cortex.analytics.counts.event_summary`, from the rollups (distinct devices
    from the day bitmaps)."""
    events = scope.table("rollup_events")
    where = _event_where(events, filters)
    period = day_bucket(scope.dialect, events.c.day, filters["bucket"]).label("period")
    with scope.connect() as conn:
        counts = dict(conn.execute(sa.select(period, sa.func.sum(events.c.events)).where(*where).group_by(period)).all())
        total, revenue = conn.execute(sa.select(
            sa.func.coalesce(sa.func.sum(events.c.events), 0), sa.func.coalesce(sa.func.sum(events.c.revenue_usd), 0.0)
        ).where(*where)).one()
    active = _per_period(_active_by_day(scope, filters), filters["bucket"])
    users = {period: len(devices) for period, devices in active.items()}
    unique = len(bitmaps.union(active.values()))
    series = [{"period": _label(p), "count": int(counts[p]), "users": users.get(_label(p), 0)} for p in sorted(counts)]
    return {"total": int(total), "unique_users": unique, "revenue_usd": round(float(revenue), 6), "series": series}


def _load(scope: Scope, filters: dict[str, Any], slices) -> dict[date, bitmaps.DayBitmaps]:
    """The day bitmaps of ``slices`` over the range of ``filters``."""
    return bitmaps.load(scope, bitmaps.day_range(*_days(filters)), slices)


def _active_by_day(scope: Scope, filters: dict[str, Any], extra: str | None = None) -> dict[date, tuple]:
    """Per day, the devices passing ``filters`` (and, with ``extra``, those of them in that
    slice too, e.g. paying): ``{day: (devices, extra devices)}``, days with none left out."""
    slices = bitmaps.slices_for(filters) | ({extra} if extra else set())
    result = {}
    for day, day_bitmaps in _load(scope, filters, slices).items():
        per_app = bitmaps.matching(day_bitmaps, filters)
        if per_app:
            result[day] = (bitmaps.union(per_app.values()),
                           bitmaps.within(per_app, day_bitmaps, extra) if extra else None)
    return result


def _per_period(by_day: dict[date, tuple], bucket: str, part: int = 0) -> dict[str, Any]:
    """The union of each bucket's days' device sets (``part`` of each day's tuple)."""
    grouped: dict[str, list] = {}
    for day, sets in by_day.items():
        grouped.setdefault(bitmaps.period_of(day, bucket), []).append(sets[part])
    return {period: bitmaps.union(parts) for period, parts in grouped.items()}


def event_counts(scope: Scope, filters: dict[str, Any]) -> dict[str, Any]:
    """As :func:`cortex.analytics.counts.event_counts`, from the rollups."""
    events = scope.table("rollup_events")
    period = day_bucket(scope.dialect, events.c.day, filters["bucket"]).label("period")
    value = _event_column(events, filters["by"])
    query = (sa.select(value, period, sa.func.sum(events.c.events)).where(*_event_where(events, filters, filters["by"]))
             .group_by(value, period).order_by(value, period))
    groups: dict[Any, dict[str, Any]] = {}
    with scope.connect() as conn:
        for group_value, period_value, count in conn.execute(query):
            group_value = group_value or None  # "" is how the rollups store "none"
            group = groups.setdefault(group_value, {"value": group_value, "total": 0, "series": []})
            group["total"] += int(count)
            group["series"].append({"period": _label(period_value), "count": int(count)})
    for group in groups.values():
        group["series"].sort(key=lambda p: p["period"])
    ordered = sorted(groups.values(), key=lambda g: (-g["total"], str(g["value"])))
    return {"by": filters["by"], "bucket": filters["bucket"], "total": sum(g["total"] for g in ordered), "groups": ordered}


def _first_days(scope: Scope, filters: dict[str, Any], column: str):
    """Per device, its first (or install) day in the app(s) asked for."""
    devices = scope.table("rollup_devices")
    query = sa.select(devices.c.device, sa.func.min(devices.c[column]).label("day"))
    if filters.get("app"):
        query = query.where(devices.c.app.in_(filters["app"]))
    return query.group_by(devices.c.device)


def active_users(scope: Scope, filters: dict[str, Any]) -> dict[str, Any]:
    """As :func:`cortex.analytics.users.active_users` (by device), from the day bitmaps."""
    by_day = _active_by_day(scope, filters, bitmaps.NEW)
    active, new = _per_period(by_day, filters["bucket"]), _per_period(by_day, filters["bucket"], 1)
    series = []
    for period in sorted(active):
        a, n = len(active[period]), len(new[period])
        series.append({"period": period, "active": a, "new": n, "returning": a - n})
    return {"bucket": filters["bucket"], "by": "device", "series": series}


def _revenue_by_period(scope: Scope, filters: dict[str, Any]) -> dict[str, float]:
    """USD revenue per bucket: from ``rollup_events`` when it holds the filters (one sliced
    dimension at most), else summed over the daily active sets."""
    if len(_sliced(filters)) <= 1:
        table = scope.table("rollup_events")
        where = _event_where(table, filters)
    else:
        table, where = _device_days(scope, filters)
    period = day_bucket(scope.dialect, table.c.day, filters["bucket"]).label("period")
    with scope.connect() as conn:
        return {_label(p): float(r) for p, r in conn.execute(
            sa.select(period, sa.func.coalesce(sa.func.sum(table.c.revenue_usd), 0.0)).where(*where).group_by(period))}


def revenue(scope: Scope, filters: dict[str, Any]) -> dict[str, Any]:
    """As :func:`cortex.analytics.revenue.revenue`: revenue from the rollups, paying and
    active devices from the day bitmaps."""
    filters = {k: v for k, v in filters.items() if k != "event_type"}
    by_day = _active_by_day(scope, filters, bitmaps.PAYING)
    active, paying = _per_period(by_day, filters["bucket"]), _per_period(by_day, filters["bucket"], 1)
    revenue_of = _revenue_by_period(scope, filters)
    series = []
    for period in sorted(active):
        pu, au = len(paying[period]), len(active[period])
        series.append({"period": period, "revenue_usd": round(revenue_of.get(period, 0.0), 6), "paying_users": pu,
                       "active_users": au, "conversion_rate": round(pu / au, 6) if au else None})
    total = float(sum(revenue_of.get(period, 0.0) for period in active))
    active_users = len(bitmaps.union(active.values()))
    paying_users = len(bitmaps.union(paying.values()))
    dau_sum = sum(len(devices) for devices, _ in by_day.values())
    return {"revenue_usd": round(total, 6), "paying_users": paying_users, "active_users": active_users,
            "arpdau": round(total / dau_sum, 6) if dau_sum else None,
            "conversion_rate": round(paying_users / active_users, 6) if active_users else None, "series": series}


def breakdown(scope: Scope, filters: dict[str, Any]) -> dict[str, Any]:
    """As :func:`cortex.analytics.counts.breakdown`: events and revenue from the rollups,
    distinct devices per value from the day bitmaps."""
    dimension = filters["dimension"]
    events = scope.table("rollup_events")
    with scope.connect() as conn:
        totals = {v: (int(e), float(r)) for v, e, r in conn.execute(
            sa.select(_event_column(events, dimension), sa.func.sum(events.c.events), sa.func.sum(events.c.revenue_usd))
            .where(*_event_where(events, filters, dimension)).group_by(_event_column(events, dimension)))}
    slices = bitmaps.slices_for(filters) | ({dimension} if dimension != "app" else set())
    per_value: dict[str, list] = {}
    for day_bitmaps in _load(scope, filters, slices).values():
        per_app = bitmaps.matching(day_bitmaps, filters)
        if dimension == "app":
            for app, devices in per_app.items():
                per_value.setdefault(app, []).append(devices)
            continue
        for value in {v for app, s, v in day_bitmaps if s == dimension and app in per_app}:
            per_value.setdefault(value, []).append(bitmaps.within(per_app, day_bitmaps, dimension, value))
    users = {value: len(bitmaps.union(parts)) for value, parts in per_value.items()}
    rows = [{"value": value or None, "events": e, "users": users.get(value, 0), "revenue_usd": round(r, 6)}
            for value, (e, r) in totals.items()]
    rows.sort(key=lambda row: (-row["events"], row["value"] is None, str(row["value"])))
    return {"dimension": dimension, "rows": rows[: filters["limit"]]}


def retention(scope: Scope, filters: dict[str, Any]) -> dict[str, Any]:
    """As :func:`cortex.analytics.users.retention`, from the day bitmaps: a cohort is the
    devices whose first install (in the app asked for, or in any app) was that day, those
    of them whose row on that day has the dimensions asked for; retained on day N, those
    of them active on the N-th day after (in the app asked for)."""
    apps = filters.get("app") or []
    if len(set(apps)) > 1:
        # the first install over some apps but not all: not kept in a bitmap
        return _retention_from_rows(scope, filters)
    days_wanted = sorted({int(d) for d in filters["days"]})
    first, last = _days(filters)
    today = bitmaps.today()
    cohort_days = bitmaps.day_range(first, last)
    later = {day + timedelta(days=n) for day in cohort_days for n in days_wanted if day + timedelta(days=n) < today}
    dimensions = {k: v for k, v in filters.items() if k in bitmaps.DIMENSION_SLICES and v}
    loaded = bitmaps.load(scope, [*cohort_days, *later],
                          {bitmaps.ALL, bitmaps.INSTALL, bitmaps.COHORT, *dimensions})
    answer = []
    for cohort_day in cohort_days:
        day_bitmaps = loaded[cohort_day]
        if apps:
            cohort = day_bitmaps.get((apps[0], bitmaps.INSTALL, ""), bitmaps.BitMap())
        else:
            cohort = day_bitmaps.get(("", bitmaps.COHORT, ""), bitmaps.BitMap())
        if dimensions and cohort:
            # by their rows on the install day, in any app
            cohort = cohort & bitmaps.union(bitmaps.matching(day_bitmaps, dimensions, apps=()).values())
        if not cohort:
            continue
        size = len(cohort)
        row = {"cohort": cohort_day.isoformat(), "size": size, "retained": {}}
        for n in days_wanted:
            if cohort_day + timedelta(days=n) >= today:
                row["retained"][str(n)] = {"users": None, "rate": None}
                continue
            active = bitmaps.matching(loaded[cohort_day + timedelta(days=n)], {"app": apps})
            users = len(cohort & bitmaps.union(active.values()))
            row["retained"][str(n)] = {"users": users, "rate": round(users / size, 4) if size else None}
        answer.append(row)
    return {"days": days_wanted, "cohorts": answer}


def _retention_from_rows(scope: Scope, filters: dict[str, Any]) -> dict[str, Any]:
    """Retention from the devices' install days and the daily active sets (rows, not bitmaps)."""
    days_wanted = sorted({int(d) for d in filters["days"]})
    first, last = _days(filters)
    installs = _first_days(scope, filters, "install_day").subquery("installs")
    cohorts = sa.select(installs.c.device, installs.c.day).where(installs.c.day >= first, installs.c.day <= last)
    device_days = scope.table("rollup_device_days")
    dimensions = {k: v for k, v in filters.items() if k in DEVICE_DIMENSIONS and k != "app" and v}
    if dimensions:
        on_install = sa.select(device_days.c.device).where(
            device_days.c.day == installs.c.day, device_days.c.device == installs.c.device,
            *(device_days.c[k].in_(v) for k, v in dimensions.items()))
        cohorts = cohorts.where(sa.exists(on_install))
    cohorts = cohorts.subquery("cohorts")
    results: dict[tuple[date, int], int] = {}
    with scope.connect() as conn:
        sizes = dict(conn.execute(sa.select(cohorts.c.day, sa.func.count()).group_by(cohorts.c.day)).all())
        for day in days_wanted:
            shifted = _shift(scope.dialect, cohorts.c.day, day)
            on = (device_days.c.device == cohorts.c.device) & (device_days.c.day == shifted)
            if filters.get("app"):
                on = on & device_days.c.app.in_(filters["app"])
            query = (sa.select(cohorts.c.day, count_distinct(scope.dialect, cohorts.c.device))
                     .select_from(cohorts.join(device_days, on)).group_by(cohorts.c.day))
            for cohort, count in conn.execute(query):
                results[(bitmaps.as_date(cohort), day)] = count
    today = datetime.now(timezone.utc).date()
    answer = []
    for cohort in sorted(sizes, key=bitmaps.as_date):
        cohort_day, size = bitmaps.as_date(cohort), sizes[cohort]
        row = {"cohort": cohort_day.isoformat(), "size": size, "retained": {}}
        for day in days_wanted:
            if cohort_day + timedelta(days=day) >= today:
                row["retained"][str(day)] = {"users": None, "rate": None}
            else:
                users = results.get((cohort_day, day), 0)
                row["retained"][str(day)] = {"users": users, "rate": round(users / size, 4) if size else None}
        answer.append(row)
    return {"days": days_wanted, "cohorts": answer}


def _shift(dialect: str, day, offset: int):
    """``day`` plus ``offset`` days, as the rollups store days."""
    if dialect == "sqlite":
        return sa.func.date(day, f"+{offset} days")
    return day + offset
