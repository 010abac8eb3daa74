"""Choosing where a query is answered from: the rollups when they can, else the raw events.

``?use=auto`` (the default) answers from the rollups whenever
:func:`cortex.analytics.from_rollups.usable` allows it; ``?use=raw`` always reads the raw
events; ``?use=rollups`` insists on the rollups and is a 400 when they cannot answer.
Every answer says which it was in ``answered_from``.
"""

from __future__ import annotations

from typing import Any, Callable

from marshmallow import ValidationError

from cortex.analytics import counts, from_rollups, revenue, users
from cortex.analytics.scope import Scope

#: query name -> (answer from the raw events, answer from the rollups)
IMPLEMENTATIONS: dict[str, tuple[Callable, Callable]] = {
    "events": (counts.event_summary, from_rollups.event_summary),
    "counts": (counts.event_counts, from_rollups.event_counts),
    "active-users": (users.active_users, from_rollups.active_users),
    "revenue": (revenue.revenue, from_rollups.revenue),
    "breakdown": (counts.breakdown, from_rollups.breakdown),
    "retention": (users.retention, from_rollups.retention),
}


def answer(name: str, scope: Scope, filters: dict[str, Any], raw: Callable | None = None) -> dict[str, Any]:
    """Run query ``name`` from the rollups or the raw events, as ``filters["use"]`` allows."""
    raw_run, rollup_run = IMPLEMENTATIONS.get(name, (raw, None))
    use = filters.get("use", "auto")
    if use != "raw":
        if rollup_run is None:
            reason = "this query reads the raw events"
        elif not scope.store.rollups:
            reason = "the SQL sink keeps no rollups (its rollups option is off, or the database is neither SQLite nor PostgreSQL)"
        else:
            reason = from_rollups.usable(name, filters)
        if reason is None:
            return {"answered_from": "rollups", **rollup_run(scope, filters)}
        if use == "rollups":
            raise ValidationError(f"This cannot be answered from the rollups: {reason}.", "use")
    return {"answered_from": "raw", **raw_run(scope, filters)}
