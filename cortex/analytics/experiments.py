"""Experiments: devices per variant, and each variant's conversion and revenue."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from cortex.analytics.scope import Scope
from cortex.analytics.sqlfuncs import count_distinct
from cortex.analytics.stream import event_stream


def experiments(scope: Scope, filters: dict[str, Any]) -> dict[str, Any]:
    """Per experiment and variant: devices assigned in the range, how many then sent a
    ``conversion_event`` (at or after their assignment, within the range), and the USD
    revenue they brought after assignment.

    A device counts in the variant of its first assignment to the experiment in the range;
    an empty variant (``variant_name: false``, "left the experiment") is left out.
    """
    table = scope.table("experiments")
    conditions = [table.c.event_time >= filters["start"], table.c.event_time < filters["end"],
                  table.c.variant_name != ""]
    for argument in ("app", "os", "device_type", "country", "app_ver"):
        if filters.get(argument):
            conditions.append(table.c[argument].in_(filters[argument]))
    if filters.get("experiment"):
        conditions.append(table.c.experiment_name == filters["experiment"])
    first = (
        sa.select(table.c.experiment_name.label("experiment"), table.c.device_tag.label("device"),
                  sa.func.min(table.c.event_time).label("assigned"))
        .where(*conditions).group_by(table.c.experiment_name, table.c.device_tag).subquery("first")
    )
    assignments = (
        sa.select(first.c.experiment, first.c.device, first.c.assigned, sa.func.min(table.c.variant_name).label("variant"))
        .select_from(first.join(table, (table.c.device_tag == first.c.device)
                                & (table.c.experiment_name == first.c.experiment)
                                & (table.c.event_time == first.c.assigned)))
        .group_by(first.c.experiment, first.c.device, first.c.assigned).subquery("assignments")
    )
    base = {k: v for k, v in filters.items() if k != "event_type"}
    stream = event_stream(scope, base)
    after = stream.c.time >= assignments.c.assigned
    converted = sa.case(((stream.c.type == filters["conversion_event"]) & after, stream.c.device), else_=None)
    revenue = sa.case((after, stream.c.revenue_usd), else_=None)
    query = (
        sa.select(assignments.c.experiment, assignments.c.variant,
                  count_distinct(scope.dialect, assignments.c.device),
                  count_distinct(scope.dialect, converted),
                  sa.func.coalesce(sa.func.sum(revenue), 0.0))
        .select_from(assignments.outerjoin(stream, stream.c.device == assignments.c.device))
        .group_by(assignments.c.experiment, assignments.c.variant)
        .order_by(assignments.c.experiment, assignments.c.variant)
    )
    found: dict[str, dict[str, Any]] = {}
    with scope.connect() as conn:
        for experiment, variant, users, conversions, revenue_usd in conn.execute(query):
            entry = found.setdefault(experiment, {"experiment": experiment, "variants": []})
            entry["variants"].append({
                "variant": variant, "users": users, "converted": conversions,
                "conversion_rate": round(conversions / users, 6) if users else None,
                "revenue_usd": round(float(revenue_usd), 6),
                "revenue_per_user": round(float(revenue_usd) / users, 6) if users else None,
            })
    return {"conversion_event": filters["conversion_event"], "experiments": list(found.values())}
