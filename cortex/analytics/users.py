"""Active users (new and returning) and install cohorts' retention."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from cortex.analytics.scope import Scope
from cortex.analytics.sqlfuncs import bucket, day_number
from cortex.analytics.stream import FILTER_COLUMNS, event_stream


def active_users(scope: Scope, filters: dict[str, Any]) -> dict[str, Any]:
    """Distinct active devices (or users) per bucket; ``new`` were first seen in that bucket.

    A device is new in the bucket of its first event ever in an app (any type, any date,
    whatever the other filters), counted when it was active in that app in the bucket, so
    that a filtered range still tells new from returning correctly.
    """
    who = filters["by"]
    stream = event_stream(scope, filters)
    history = event_stream(scope, _history_filters(filters), with_time_range=False)
    first_seen = (
        sa.select(history.c.app.label("app"), history.c[who].label("who"), sa.func.min(history.c.time).label("first"))
        .group_by(history.c.app, history.c[who]).subquery("first_seen")
    )
    period = bucket(scope.dialect, stream.c.time, filters["bucket"]).label("period")
    active = sa.select(period, stream.c.app.label("app"), stream.c[who].label("who")).distinct().subquery("active")
    first_period = bucket(scope.dialect, first_seen.c.first, filters["bucket"])
    new = sa.case((first_period == active.c.period, active.c.who), else_=None)
    query = (
        sa.select(active.c.period, sa.func.count(sa.distinct(active.c.who)), sa.func.count(sa.distinct(new)))
        .select_from(active.join(first_seen, (first_seen.c.who == active.c.who) & (first_seen.c.app == active.c.app)))
        .group_by(active.c.period).order_by(active.c.period)
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
    installs = event_stream(scope, history, types=["install"], with_time_range=False)
    cohort_day = day_number(dialect, sa.func.min(installs.c.time))
    low = day_number(dialect, sa.literal(filters["start"], type_=installs.c.time.type))
    high = day_number(dialect, sa.literal(filters["end"], type_=installs.c.time.type))
    cohorts = (
        sa.select(installs.c.device.label("device"), cohort_day.label("cohort"))
        .group_by(installs.c.device)
        .having(cohort_day >= low).having(cohort_day < high)
    )
    dimensions = {k: filters[k] for k in FILTER_COLUMNS if k != "app" and filters.get(k)}
    if dimensions:
        # the other filters (os, country, ...) choose devices by their install events
        matching = event_stream(scope, {**history, **dimensions}, types=["install"], with_time_range=False)
        cohorts = cohorts.where(installs.c.device.in_(sa.select(matching.c.device)))
    cohorts = cohorts.subquery("cohorts")
    later = {**history, "end": filters["end"] + timedelta(days=max(days) + 1)}
    activity_stream = event_stream(scope, later)
    activity = (
        sa.select(activity_stream.c.device.label("device"), day_number(dialect, activity_stream.c.time).label("day"))
        .distinct().subquery("activity")
    )
    offset = (activity.c.day - cohorts.c.cohort).label("offset")
    retained_query = (
        sa.select(cohorts.c.cohort, offset, sa.func.count(sa.distinct(cohorts.c.device)))
        .select_from(cohorts.join(activity, activity.c.device == cohorts.c.device))
        .where(offset.in_(days))
        .group_by(cohorts.c.cohort, offset)
    )
    size_query = sa.select(cohorts.c.cohort, sa.func.count()).group_by(cohorts.c.cohort).order_by(cohorts.c.cohort)
    from datetime import date, datetime, timezone

    today = (datetime.now(timezone.utc).date() - date(1970, 1, 1)).days
    with scope.connect() as conn:
        sizes = {c: n for c, n in conn.execute(size_query)}
        retained = {(c, o): n for c, o, n in conn.execute(retained_query)}
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
