"""Experiments: devices per variant, and each variant's conversion and revenue."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from cortex.analytics.scope import Scope
from cortex.analytics.sqlfuncs import bytewise, count_distinct
from cortex.analytics.stream import event_stream


def experiments(scope: Scope, filters: dict[str, Any]) -> dict[str, Any]:
    """Per experiment and variant: devices assigned in the range, how many then sent a
    ``conversion_event`` (at or after their assignment, within the range), and the USD
    revenue they brought after assignment.

    A device counts in the variant of its first assignment to the experiment in the range;
    an empty variant (``variant_name: false``, "left the experiment") is left out.
    """
    assignments = _assignments(scope, filters)
    base = {k: v for k, v in filters.items() if k != "event_type"}
    # conversions and revenue each join only the events that can count: the conversion
    # event's rows, and the rows with revenue (not every event of the range)
    conversions = event_stream(scope, base, types=[filters["conversion_event"]], columns=("device", "time"))
    converted = _per_variant(assignments, conversions,
                             count_distinct(scope.dialect, assignments.c.device).label("converted"))
    payments = event_stream(scope, base, columns=("device", "time", "revenue_usd"), paying_only=True)
    revenue = _per_variant(assignments, payments, sa.func.sum(payments.c.revenue_usd).label("revenue_usd"))
    assigned = (
        sa.select(assignments.c.experiment, assignments.c.variant, sa.func.count().label("users"))
        .group_by(assignments.c.experiment, assignments.c.variant).subquery("assigned")
    )

    def same_variant(other: sa.Subquery):
        return (other.c.experiment == assigned.c.experiment) & (other.c.variant == assigned.c.variant)

    query = (
        sa.select(assigned.c.experiment, assigned.c.variant, assigned.c.users,
                  sa.func.coalesce(converted.c.converted, 0), sa.func.coalesce(revenue.c.revenue_usd, 0.0))
        .select_from(assigned.outerjoin(converted, same_variant(converted)).outerjoin(revenue, same_variant(revenue)))
        .order_by(assigned.c.experiment, assigned.c.variant)
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


def _assignments(scope: Scope, filters: dict[str, Any]) -> sa.CTE:
    """Each device's first assignment to each experiment in the range: ``experiment``,
    ``device``, ``assigned`` (the time) and ``variant`` (the least, when several share
    that time), computed once (a materialised CTE)."""
    table = scope.table("experiments")
    conditions = [table.c.event_time >= filters["start"], table.c.event_time < filters["end"],
                  table.c.variant_name != ""]
    for argument in ("app", "os", "device_type", "country", "app_ver"):
        if filters.get(argument):
            conditions.append(table.c[argument].in_(filters[argument]))
    if filters.get("experiment"):
        conditions.append(table.c.experiment_name == filters["experiment"])
    experiment, device = bytewise(scope.dialect, table.c.experiment_name), bytewise(scope.dialect, table.c.device_tag)
    order = sa.func.row_number().over(partition_by=(experiment, device),
                                      order_by=(table.c.event_time, table.c.variant_name))
    ranked = (
        sa.select(experiment.label("experiment"), device.label("device"),
                  table.c.event_time.label("assigned"), table.c.variant_name.label("variant"), order.label("rank"))
        .where(*conditions).subquery("ranked")
    )
    return (
        sa.select(ranked.c.experiment, ranked.c.device, ranked.c.assigned, ranked.c.variant)
        .where(ranked.c.rank == 1).cte("assignments").prefix_with("MATERIALIZED")
    )


def _per_variant(assignments: sa.CTE, stream: sa.Subquery, measure) -> sa.Subquery:
    """``measure`` per experiment and variant over the ``stream`` events each assigned device
    sent at or after its assignment."""
    return (
        sa.select(assignments.c.experiment, assignments.c.variant, measure)
        .select_from(assignments.join(stream, stream.c.device == assignments.c.device))
        .where(stream.c.time >= assignments.c.assigned)
        .group_by(assignments.c.experiment, assignments.c.variant).subquery()
    )
