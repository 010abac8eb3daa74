"""Active users (new and returning) and install cohorts' retention."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from cortex.analytics.scope import Scope
from cortex.analytics.sqlfuncs import bucket, day_number, count_distinct
from cortex.analytics.stream import FILTER_COLUMNS, event_stream


def active_users(scope: Scope, filters: dict[str, Any]) -> dict[str, Any]:
    """Distinct active devices (or users) per bucket; ``new`` were first seen in that bucket.

    A device is new in the bucket of its first event ever in an app (any type, any date,
    whatever the other filters), counted when it was active in that app in the bucket, so
    that a filtered range still tells new from returning correctly.  The first time comes
    from a window over the app's whole history (one sort, no join).
    """
    who = filters["by"]
    history = event_stream(scope, _history_filters(filters), with_time_range=False)
    first = sa.func.min(history.c.time).over(partition_by=[history.c.app, history.c[who]])
    rows = sa.select(history, first.label("first_time")).subquery("history_rows")
    conditions = [rows.c.time >= filters["start"], rows.c.time < filters["end"]]
    for argument, column in FILTER_COLUMNS.items():
        if argument != "app" and filters.get(argument):
            conditions.append(rows.c[column].in_(filters[argument]))
    if filters.get("event_type"):
        conditions.append(rows.c.type.in_(filters["event_type"]))
    period = bucket(scope.dialect, rows.c.time, filters["bucket"]).label("period")
    new = sa.case((bucket(scope.dialect, rows.c.first_time, filters["bucket"]) == period, rows.c[who]), else_=None)
    query = (
        sa.select(period, count_distinct(scope.dialect, rows.c[who]), count_distinct(scope.dialect, new))
        .where(*conditions).group_by(period).order_by(period)
    )
    with scope.connect() as conn:
        series = [{"period": p, "active": a, "new": n, "returning": a - n} for p, a, n in conn.execute(query)]
    return {"bucket": filters["bucket"], "by": who, "series": series}


def _history_filters(filters: dict[str, Any]) -> dict[str, Any]:
    """The filters that decide a device's first day and install day: only the app."""
    return {key: value for key, value in filters.items()
            if key in ("app", "start", "end", "bucket")}


def retention(scope: Scope, filters: dict[str, Any]) -> dict[str, Any]:
    """Cohorts of devices by install day within the range, and how many came back on day N.

    A device's cohort is the day of its first ``install`` event ever (in the app(s) asked
    for); the cohorts whose day is in the range are shown.  A device is retained on day N
    when it sent any event on the N-th day after its cohort's.  Days not yet fully past
    are left out (``users`` is None).
    """
    days = sorted({int(d) for d in filters["days"]})
    dialect = scope.dialect
    history = _history_filters(filters)
    time_type = event_stream(scope, history).c.time.type
    low = day_number(dialect, sa.literal(filters["start"], type_=time_type))
    high = day_number(dialect, sa.literal(filters["end"], type_=time_type))
    # one pass over the history: each event with its device's first install day (a window)
    later = {**history, "end": filters["end"] + timedelta(days=max(days) + 1)}
    stream = event_stream(scope, later, with_time_range=False)
    day = day_number(dialect, stream.c.time)
    install_day = sa.case((stream.c.type == "install", day), else_=None)
    rows = sa.select(
        stream.c.device.label("device"), day.label("day"),
        sa.func.min(install_day).over(partition_by=stream.c.device).label("cohort"),
    ).subquery("rows")
    offset = (rows.c.day - rows.c.cohort).label("offset")
    conditions = [rows.c.cohort >= low, rows.c.cohort < high]
    dimensions = {k: filters[k] for k in FILTER_COLUMNS if k != "app" and filters.get(k)}
    if dimensions:
        # the other filters (os, country, ...) choose devices by their install events
        matching = event_stream(scope, {**history, **dimensions}, types=["install"], with_time_range=False)
        conditions.append(rows.c.device.in_(sa.select(matching.c.device)))
    retained_query = (
        sa.select(rows.c.cohort, offset, count_distinct(scope.dialect, rows.c.device))
        .where(*conditions, offset.in_([0, *days]))
        .group_by(rows.c.cohort, offset)
    )
    from datetime import date, datetime, timezone

    today = (datetime.now(timezone.utc).date() - date(1970, 1, 1)).days
    with scope.connect() as conn:
        retained = {(c, o): n for c, o, n in conn.execute(retained_query)}
    # a device is active on its install day: the cohort's size is its day-0 count
    sizes = {c: n for (c, o), n in sorted(retained.items()) if o == 0}
    result = []
    for cohort, size in sizes.items():
        row = {"cohort": (date(1970, 1, 1) + timedelta(days=cohort)).isoformat(), "size": size, "retained": {}}
        for day in days:
            if cohort + day >= today:
                row["retained"][str(day)] = {"users": None, "rate": None}
            else:
                users = retained.get((cohort, day), 0)
                row["retained"][str(day)] = {"users": users, "rate": round(users / size, 4) if size else None}
        result.append(row)
    return {"days": days, "cohorts": result}
