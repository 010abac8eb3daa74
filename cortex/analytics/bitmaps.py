"""Exact distinct devices from per-day roaring bitmaps of the daily active sets.

Each device of an org has a number (``rollup_device_ids``); each day, app and slice of
the daily active sets (all devices, one value of ``os`` … ``source``, an event type,
paying, new, first install) is a bitmap of those numbers (``rollup_bitmaps``, see
:mod:`cortex_sql.day_bitmaps`).  A device-day has one value per dimension, so "the
devices of app A on day D with os ios and country US" is an intersection of that day's
bitmaps, and "distinct devices over 30 days" a union of 30 of them: a few thousand
bytes a day to read, instead of a row per active device.

A day that is over is built from ``rollup_device_days`` the first time a query needs it
and stored; today (and any later day) is built for each query and not stored, as its
events are still coming.  The sink drops stored days when their rollups change.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta, timezone
from typing import Any, Iterable

import sqlalchemy as sa
from pyroaring import BitMap
from sqlalchemy.dialects import postgresql, sqlite

from cortex.analytics.scope import Scope

#: event type -> its bit in ``rollup_device_days.types`` (as :mod:`cortex_sql.rollups`);
#: every other type (generic API) has ``OTHER_TYPE_BIT``
TYPE_BITS = {"install": 1, "dau": 2, "event": 4, "economy": 8, "link": 16, "message_send": 32,
             "message_click": 64, "experiment": 128}
OTHER_TYPE_BIT = 256
DIMENSION_SLICES = ("os", "device_type", "country", "app_ver", "source")
ALL, TYPE, PAYING, NEW, INSTALL = "", "type", "paying", "new", "install"
#: rows of ``app = ""``: first install in any app, and the mark that a day was built
COHORT, BUILT = "cohort", "day"

_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}
#: how long after its end a day's bitmaps may be stored
STORE_AFTER = timedelta(hours=1)
#: days built per transaction (bounds the rows held in memory, and how long the sink's
#: batches of past days wait: about 0.1 s a day at 10,000 active devices)
_DAYS_PER_BUILD = 8

DayBitmaps = dict[tuple[str, str, str], BitMap]  # (app, slice, value) -> devices


def today() -> date:
    """The current UTC day."""
    return datetime.now(timezone.utc).date()


def first_live_day() -> date:
    """The first day whose bitmaps are not stored but built for each query: today, and
    yesterday in the first hour of today (a batch of yesterday may still be committing,
    or come from a box whose clock is a little behind)."""
    return (datetime.now(timezone.utc) - STORE_AFTER).date()


def day_range(first: date, last: date) -> list[date]:
    """Every day from ``first`` to ``last``, inclusive."""
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def load(scope: Scope, days: Iterable[date], slices: Iterable[str]) -> dict[date, DayBitmaps]:
    """The bitmaps of ``slices`` (every value of each) for each of ``days``.

    Days that are over and not stored yet are built and stored first; today's are built.
    """
    wanted = sorted(set(days))
    if not wanted:
        return {}
    slices = {*slices, BUILT}
    live_from = first_live_day()
    past = [d for d in wanted if d < live_from]
    live = [d for d in wanted if d >= live_from]
    bitmaps_table = scope.filled_table("rollup_bitmaps")
    with scope.connect() as conn:
        found = _stored(conn, bitmaps_table, scope.org, past, slices)
        missing = [d for d in past if (("", BUILT, "") not in found.get(d, {}))]
        # a few days per transaction: the sink's batches of past days wait for each
        from cortex_sql.day_bitmaps import lock_for_building

        for start in range(0, len(missing), _DAYS_PER_BUILD):
            lock_for_building(conn, bitmaps_table, scope.org)
            built = _build(conn, scope, missing[start:start + _DAYS_PER_BUILD])
            _store(conn, bitmaps_table, scope.org, built)
            conn.commit()
            for day, bitmaps in built.items():
                found[day] = {k: v for k, v in bitmaps.items() if k[1] in slices}
        if live:
            for day, bitmaps in _build(conn, scope, live, slices).items():
                found[day] = bitmaps
            conn.commit()
    return {day: found.get(day, {}) for day in wanted}


def prepare(scope: Scope, first: date, last: date) -> int:
    """Build and store the bitmaps of the days from ``first`` to ``last`` that are over and
    not stored yet (so that no dashboard waits for them); returns how many were built."""
    days = [d for d in day_range(first, last) if d < first_live_day()]
    if not days:
        return 0
    bitmaps = scope.filled_table("rollup_bitmaps")
    with scope.connect() as conn:
        built_days = {as_date(d) for d in conn.scalars(sa.select(bitmaps.c.day).where(
            bitmaps.c.org == scope.org, bitmaps.c.day >= days[0], bitmaps.c.day <= days[-1], bitmaps.c.slice == BUILT))}
    missing = [d for d in days if d not in built_days]
    load(scope, missing, ())
    return len(missing)


def _stored(conn: sa.Connection, bitmaps: sa.Table, org: str, days: list[date], slices: set[str]) -> dict[date, DayBitmaps]:
    if not days:
        return {}
    wanted_days = set(days)
    query = sa.select(bitmaps.c.day, bitmaps.c.app, bitmaps.c.slice, bitmaps.c.value, bitmaps.c.bitmap).where(
        bitmaps.c.org == org, bitmaps.c.day >= days[0], bitmaps.c.day <= days[-1], bitmaps.c.slice.in_(sorted(slices)))
    found: dict[date, DayBitmaps] = defaultdict(dict)
    for day, app, slice_, value, blob in conn.execute(query):
        day = as_date(day)
        if day in wanted_days:
            found[day][(app, slice_, value)] = BitMap.deserialize(blob)
    return found


def _build(conn: sa.Connection, scope: Scope, days: list[date], slices: set[str] | None = None) -> dict[date, DayBitmaps]:
    """Number the devices of ``days`` and make the bitmaps of ``slices`` (default: every
    slice, to be stored) of those days from the rollups."""
    org = scope.org
    device_days, device_ids = scope.table("rollup_device_days"), scope.filled_table("rollup_device_ids")
    members: dict[date, dict[tuple[str, str, str], list[int]]] = {day: defaultdict(list) for day in days}
    query = (
        sa.select(device_days.c.day, device_days.c.app, device_days.c.device, device_ids.c.id,
                  *(device_days.c[d] for d in DIMENSION_SLICES), device_days.c.types, device_days.c.is_first,
                  device_days.c.revenue_usd)
        .select_from(device_days.outerjoin(
            device_ids, (device_ids.c.org == org) & (device_ids.c.device == device_days.c.device)))
        .where(device_days.c.org == org, device_days.c.day.in_(days))
    )
    rows = conn.execute(query).all()
    numbers = _number(conn, device_ids, org, {row[2] for row in rows if row[3] is None})
    rows = ((day, app, numbers[device] if number is None else number, *rest)
            for day, app, device, number, *rest in rows)
    def wanted(name: str) -> bool:
        return slices is None or name in slices

    dimensions = [(i, name) for i, name in enumerate(DIMENSION_SLICES) if wanted(name)]
    type_bits = (*TYPE_BITS.items(), ("other", OTHER_TYPE_BIT)) if wanted(TYPE) else ()
    new, paying = wanted(NEW), wanted(PAYING)
    for day, app, number, *values, types, is_first, revenue in rows:
        day_members = members[as_date(day)]
        day_members[(app, ALL, "")].append(number)
        for i, name in dimensions:
            day_members[(app, name, values[i])].append(number)
        for name, bit in type_bits:
            if types & bit:
                day_members[(app, TYPE, name)].append(number)
        if new and is_first:
            day_members[(app, NEW, "")].append(number)
        if paying and revenue > 0:
            day_members[(app, PAYING, "")].append(number)
    if wanted(INSTALL) or wanted(COHORT):
        _add_installs(conn, scope, days, members)
    built = {}
    for day, day_members in members.items():
        bitmaps = {key: BitMap(numbers) for key, numbers in day_members.items()}
        bitmaps[("", BUILT, "")] = BitMap()
        built[day] = bitmaps
    return built


def _number(conn: sa.Connection, device_ids: sa.Table, org: str, devices: set[str]) -> dict[str, int]:
    """Give ``devices`` (of ``org``, not numbered yet) their numbers; returns them."""
    if not devices:
        return {}
    ordered = sorted(devices)
    conn.execute(_INSERTS[conn.dialect.name](device_ids).on_conflict_do_nothing(),
                 [{"org": org, "device": device} for device in ordered])
    numbers = {}
    for start in range(0, len(ordered), 500):
        numbers.update(conn.execute(sa.select(device_ids.c.device, device_ids.c.id).where(
            device_ids.c.org == org, device_ids.c.device.in_(ordered[start:start + 500]))).all())
    return numbers


def _add_installs(conn: sa.Connection, scope: Scope, days: list[date],
                  members: dict[date, dict[tuple[str, str, str], list[int]]]) -> None:
    """Add each day's first installs, per app and in any app, to ``members``."""
    org = scope.org
    device_ids, devices = scope.filled_table("rollup_device_ids"), scope.table("rollup_devices")
    numbered = device_ids.c.org == org
    earlier = scope.table("rollup_device_days", alias="earlier")
    installed_before = sa.exists().where(
        earlier.c.org == devices.c.org, earlier.c.device == devices.c.device, earlier.c.day < devices.c.install_day,
        earlier.c.types.op("&")(TYPE_BITS["install"]) != 0)
    installs = (
        sa.select(devices.c.install_day, devices.c.app, device_ids.c.id, sa.case((installed_before, 0), else_=1))
        .select_from(devices.join(device_ids, numbered & (device_ids.c.device == devices.c.device)))
        .where(devices.c.org == org, devices.c.install_day.in_(days))
    )
    for day, app, number, first_anywhere in conn.execute(installs):
        day_members = members[as_date(day)]
        day_members[(app, INSTALL, "")].append(number)
        if first_anywhere:
            day_members[("", COHORT, "")].append(number)


def _store(conn: sa.Connection, bitmaps: sa.Table, org: str, built: dict[date, DayBitmaps]) -> None:
    rows = []
    for day, day_bitmaps in built.items():
        for (app, slice_, value), bitmap in day_bitmaps.items():
            bitmap.run_optimize()
            rows.append({"org": org, "day": day, "app": app, "slice": slice_, "value": value,
                         "bitmap": bitmap.serialize()})
    if rows:
        statement = _INSERTS[conn.dialect.name](bitmaps).on_conflict_do_nothing(
            index_elements=["org", "day", "app", "slice", "value"])
        conn.execute(statement, rows)


def as_date(value: Any) -> date:
    """A day as the database gives it back (a ``date``, or ISO text on SQLite)."""
    return value if isinstance(value, date) else date.fromisoformat(str(value))


# -- set algebra over one day's bitmaps ------------------------------------------------------------
def slices_for(filters: dict[str, Any]) -> set[str]:
    """The slices a filter needs (all devices, each filtered dimension, event types)."""
    wanted = {ALL, *(name for name in DIMENSION_SLICES if filters.get(name))}
    if filters.get("event_type"):
        wanted.add(TYPE)
    return wanted


def apps_of(bitmaps: DayBitmaps) -> set[str]:
    """The apps active that day."""
    return {app for app, slice_, _ in bitmaps if slice_ == ALL}


def _union_of(bitmaps: DayBitmaps, app: str, slice_: str, values: Iterable[str]) -> BitMap:
    return union(bitmaps[(app, slice_, v)] for v in values if (app, slice_, v) in bitmaps)


def matching(bitmaps: DayBitmaps, filters: dict[str, Any], apps: Iterable[str] | None = None) -> dict[str, BitMap]:
    """Per app, the devices active that day that pass ``filters`` (app, dimensions, event types).

    Per app, because a device's dimensions are those of its row in each app.
    """
    chosen = apps_of(bitmaps)
    wanted_apps = filters.get("app") if apps is None else apps
    if wanted_apps:
        chosen &= set(wanted_apps)
    result = {}
    for app in chosen:
        devices = bitmaps[(app, ALL, "")]
        for name in DIMENSION_SLICES:
            if filters.get(name):
                devices = devices & _union_of(bitmaps, app, name, filters[name])
        if filters.get("event_type"):
            devices = devices & _union_of(bitmaps, app, TYPE, filters["event_type"])
        if devices:
            result[app] = devices
    return result


def within(per_app: dict[str, BitMap], bitmaps: DayBitmaps, slice_: str, value: str = "") -> BitMap:
    """The union over apps of each app's devices that are also in ``slice_ = value`` of that app."""
    return union(devices & bitmaps[(app, slice_, value)] for app, devices in per_app.items()
                 if (app, slice_, value) in bitmaps)


def union(parts: Iterable[BitMap]) -> BitMap:
    """The union of ``parts`` (empty when there are none)."""
    parts = list(parts)
    return BitMap.union(*parts) if parts else BitMap()


def period_of(day: date, bucket: str) -> str:
    """The label of the day/week/month bucket ``day`` falls in (as the SQL buckets give it)."""
    if bucket == "week":
        day = day - timedelta(days=day.weekday())
    elif bucket == "month":
        day = day.replace(day=1)
    return day.isoformat()
