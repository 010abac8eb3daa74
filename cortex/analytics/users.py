"""Active users (new and returning) and install cohorts' retention."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from cortex.analytics.scope import Scope
from cortex.analytics.sqlfuncs import bucket, day_number
from cortex.analytics.stream import event_stream


def active_users(scope: Scope, filters: dict[str, Any]) -> dict[str, Any]:
    """Distinct active devices (or users) per bucket; ``new`` were first seen in that bucket.

    A device is new in the bucket of its first event ever (any type, any date), so that a
    filtered range still tells new from returning correctly.
    """
    who = filters["by"]
    stream = event_stream(scope, filters)
    history = event_stream(scope, {k: v for k, v in filters.items() if k != "event_type"}, with_time_range=False)
    first_seen = (
        sa.select(history.c[who].label("who"), sa.func.min(history.c.time).label("first"))
        .group_by(history.c[who]).subquery("first_seen")
    )
    period = bucket(scope.dialect, stream.c.time, filters["bucket"]).label("period")
    active = sa.select(period, stream.c[who].label("who")).distinct().subquery("active")
    first_period = bucket(scope.dialect, first_seen.c.first, filters["bucket"])
    query = (
        sa.select(
            active.c.period,
            sa.func.count().label("active"),
            sa.func.sum(sa.case((first_period == active.c.period, 1), else_=0)).label("new"),
        )
        .select_from(active.join(first_seen, first_seen.c.who == active.c.who))
        .group_by(active.c.period).order_by(active.c.period)
    )
    with scope.connect() as conn:
        series = [
            {"period": p, "active": a, "new": int(n or 0), "returning": a - int(n or 0)}
            for p, a, n in conn.execute(query)
        ]
    return {"bucket": filters["bucket"], "by": who, "series": series}


def retention(scope: Scope, filters: dict[str, Any]) -> dict[str, Any]:
    """Cohorts of devices by install day within the range, and how many came back on day N.

    A device's cohort is the day of its first ``install`` event; it is retained on day N
    when it sent any event on the N-th day after it.  Days not yet fully past are left
    out (``users`` is None).
    """
    days = sorted({int(d) for d in filters["days"]})
    dialect = scope.dialect
    installs = event_stream(scope, {k: v for k, v in filters.items() if k != "event_type"}, types=["install"])
    cohort_day = day_number(dialect, sa.func.min(installs.c.time))
    cohorts = (
        sa.select(installs.c.device.label("device"), cohort_day.label("cohort"))
        .group_by(installs.c.device).subquery("cohorts")
    )
    later = {**filters, "end": filters["end"] + timedelta(days=max(days) + 1)}
    later.pop("event_type", None)
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
