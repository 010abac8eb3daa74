"""Revenue in USD, paying users, ARPDAU and conversion."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from cortex.analytics.scope import Scope
from cortex.analytics.sqlfuncs import bucket, count_distinct
from cortex.analytics.stream import event_stream


def revenue(scope: Scope, filters: dict[str, Any]) -> dict[str, Any]:
    """Revenue (USD), paying and active users per bucket and over the range.

    ARPDAU is revenue divided by the sum of daily active devices (the average day's revenue
    per active device); the conversion rate is paying devices over active devices.
    """
    everything = {k: v for k, v in filters.items() if k != "event_type"}
    stream = event_stream(scope, everything)
    dialect = scope.dialect
    paying = sa.case((stream.c.revenue_usd > 0, stream.c.device), else_=None)
    period = bucket(dialect, stream.c.time, filters["bucket"]).label("period")
    series_query = (
        sa.select(period, sa.func.coalesce(sa.func.sum(stream.c.revenue_usd), 0.0),
                  count_distinct(scope.dialect, paying), count_distinct(scope.dialect, stream.c.device))
        .group_by(period).order_by(period)
    )
    totals_query = sa.select(sa.func.coalesce(sa.func.sum(stream.c.revenue_usd), 0.0),
                             count_distinct(scope.dialect, paying), count_distinct(scope.dialect, stream.c.device))
    day = bucket(dialect, stream.c.time, "day").label("day")
    daily = sa.select(day, count_distinct(scope.dialect, stream.c.device).label("dau")).group_by(day).subquery("daily")
    dau_query = sa.select(sa.func.coalesce(sa.func.sum(daily.c.dau), 0))
    with scope.connect() as conn:
        series = [
            {"period": p, "revenue_usd": round(float(r), 6), "paying_users": pu, "active_users": au,
             "conversion_rate": round(pu / au, 6) if au else None}
            for p, r, pu, au in conn.execute(series_query)
        ]
        total, paying_users, active = conn.execute(totals_query).one()
        dau_sum = int(conn.execute(dau_query).scalar_one())
    total = float(total)
    return {
        "revenue_usd": round(total, 6),
        "paying_users": paying_users,
        "active_users": active,
        "arpdau": round(total / dau_sum, 6) if dau_sum else None,
        "conversion_rate": round(paying_users / active, 6) if active else None,
        "series": series,
    }
