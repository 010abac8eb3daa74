"""Funnels: how many devices did each of an ordered list of events, within a window."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from cortex.analytics.scope import Scope
from cortex.analytics.sqlfuncs import epoch
from cortex.analytics.stream import event_stream


def parse_step(step: str) -> tuple[str, str | None]:
    """``type`` or ``type:kingdom`` (a custom event's name is its kingdom)."""
    event_type, _, kingdom = step.partition(":")
    return event_type, kingdom or None


def funnel(scope: Scope, filters: dict[str, Any]) -> dict[str, Any]:
    """Devices (or users) reaching each step in order, each step after the previous one and
    all within ``window`` seconds of the first step.

    A device enters at its first first-step event in the range; each later step is its
    earliest matching event after the step before.
    """
    who = filters["by"]
    window = filters["window"]
    dialect = scope.dialect
    base = {k: v for k, v in filters.items() if k != "event_type"}
    reached = None
    counts_queries = []
    for index, step in enumerate(filters["steps"]):
        event_type, kingdom = parse_step(step)
        step_filters = dict(base)
        if kingdom:
            step_filters["kingdom"] = [kingdom]
        if index > 0:
            # later steps may happen after the range ends, within the window
            step_filters["end"] = base["end"] + timedelta(seconds=window)
        stream = event_stream(scope, step_filters, types=[event_type])
        at = epoch(dialect, stream.c.time)
        if reached is None:
            reached = (
                sa.select(stream.c[who].label("who"), sa.func.min(at).label("start"), sa.func.min(at).label("at"))
                .group_by(stream.c[who]).subquery(f"step{index}")
            )
        else:
            previous = reached
            reached = (
                sa.select(previous.c.who, sa.func.min(previous.c.start).label("start"), sa.func.min(at).label("at"))
                .select_from(previous.join(stream, stream.c[who] == previous.c.who))
                .where(at >= previous.c.at, at <= previous.c.start + window)
                .group_by(previous.c.who).subquery(f"step{index}")
            )
        counts_queries.append(sa.select(sa.func.count()).select_from(reached))
    with scope.connect() as conn:
        counts = [conn.execute(query).scalar_one() for query in counts_queries]
    steps = []
    for index, (step, users) in enumerate(zip(filters["steps"], counts)):
        steps.append({
            "step": step,
            "users": users,
            "conversion_from_first": round(users / counts[0], 6) if counts[0] else None,
            "conversion_from_previous": (round(users / counts[index - 1], 6) if counts[index - 1] else None)
            if index else 1.0 if users else None,
        })
    return {"window": window, "by": who, "steps": steps}
