"""Event counts: the seed's ``/analytics/events`` answer, counts by dimension, breakdowns."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from cortex.analytics.scope import Scope
from cortex.analytics.sqlfuncs import bucket, count_distinct
from cortex.analytics.stream import event_stream


def _period(scope: Scope, stream, size: str):
    return bucket(scope.dialect, stream.c.time, size).label("period")


def event_summary(scope: Scope, filters: dict[str, Any]) -> dict[str, Any]:
    """Events of the range (of ``event_type``, if given): total, distinct devices (``unique_users``),
    USD revenue and a series."""
    stream = event_stream(scope, filters)
    period = _period(scope, stream, filters["bucket"])
    series_query = (
        sa.select(period, sa.func.count().label("count"), count_distinct(scope.dialect, stream.c.device).label("users"))
        .group_by(period).order_by(period)
    )
    totals_query = sa.select(
        sa.func.count(), count_distinct(scope.dialect, stream.c.device), sa.func.coalesce(sa.func.sum(stream.c.revenue_usd), 0.0)
    )
    with scope.connect() as conn:
        series = [{"period": p, "count": n, "users": u} for p, n, u in conn.execute(series_query)]
        total, users, revenue = conn.execute(totals_query).one()
    return {"total": total, "unique_users": users, "revenue_usd": round(float(revenue), 6), "series": series}


def event_counts(scope: Scope, filters: dict[str, Any]) -> dict[str, Any]:
    """Counts per bucket grouped by ``filters["by"]`` (event type or a taxonomy level, ...)."""
    stream = event_stream(scope, filters)
    period = _period(scope, stream, filters["bucket"])
    value = stream.c[filters["by"]].label("value")
    query = (
        sa.select(value, period, sa.func.count().label("count"))
        .group_by(value, period).order_by(value, period)
    )
    groups: dict[Any, dict[str, Any]] = {}
    with scope.connect() as conn:
        for group_value, period_value, count in conn.execute(query):
            group = groups.setdefault(group_value, {"value": group_value, "total": 0, "series": []})
            group["total"] += count
            group["series"].append({"period": period_value, "count": count})
    ordered = sorted(groups.values(), key=lambda g: (-g["total"], str(g["value"])))
    return {"by": filters["by"], "bucket": filters["bucket"], "total": sum(g["total"] for g in ordered), "groups": ordered}


def breakdown(scope: Scope, filters: dict[str, Any]) -> dict[str, Any]:
    """The top ``limit`` values of ``dimension`` by number of events, with distinct devices (``users``)."""
    stream = event_stream(scope, filters)
    value = stream.c[filters["dimension"]].label("value")
    events = sa.func.count().label("events")
    query = (
        sa.select(value, events, count_distinct(scope.dialect, stream.c.device).label("users"),
                  sa.func.coalesce(sa.func.sum(stream.c.revenue_usd), 0.0).label("revenue_usd"))
        .group_by(value).order_by(events.desc(), value).limit(filters["limit"])
    )
    with scope.connect() as conn:
        rows = [{"value": v, "events": e, "users": u, "revenue_usd": round(float(r), 6)} for v, e, u, r in conn.execute(query)]
    return {"dimension": filters["dimension"], "rows": rows}
