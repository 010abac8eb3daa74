"""Funnels: how many devices did each of an ordered list of events, within a window."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from cortex.analytics.scope import Scope
from cortex.analytics.sqlfuncs import bytewise, plus_seconds
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
    with scope.connect() as conn:
        counts = list(conn.execute(_counts_query(scope, filters)).one())
    steps = []
    for index, (step, users) in enumerate(zip(filters["steps"], counts)):
        steps.append({
            "step": step,
            "users": users,
            "conversion_from_first": round(users / counts[0], 6) if counts[0] else None,
            "conversion_from_previous": (round(users / counts[index - 1], 6) if counts[index - 1] else None)
            if index else 1.0 if users else None,
        })
    return {"window": filters["window"], "by": filters["by"], "steps": steps}


def _counts_query(scope: Scope, filters: dict[str, Any]) -> sa.Select:
    """One select of the number reaching each step.

    Each step is a materialised CTE of ``(who, at, deadline)``: when the device reached it,
    and until when the window lets it go on.  A later step's events are read through the
    ``(org, type, time)`` / ``(org, kingdom, type, time)`` indexes, only for the devices still in
    the funnel, and only their device and time; times are compared as stored (exact, and
    nothing is converted per event).  Every step is computed once.
    """
    who = filters["by"]
    window = filters["window"]
    base = {k: v for k, v in filters.items() if k != "event_type"}
    reached = None
    counts = []
    for index, step in enumerate(filters["steps"]):
        event_type, kingdom = parse_step(step)
        step_filters = dict(base)
        if kingdom:
            step_filters["kingdom"] = [kingdom]
        if index > 0:
            # later steps may happen after the range ends, within the window
            step_filters["end"] = base["end"] + timedelta(seconds=window)
        stream = event_stream(scope, step_filters, types=[event_type], columns=(who, "time"))
        device = bytewise(scope.dialect, stream.c[who])
        if reached is None:
            first = (sa.select(device.label("who"), sa.func.min(stream.c.time).label("at"))
                     .group_by(device).subquery("first"))
            reached = _materialised(
                sa.select(first.c.who, first.c.at, plus_seconds(scope.dialect, first.c.at, window).label("deadline")),
                f"step{index}")
        else:
            previous = reached
            events = _materialised(
                sa.select(device.label("who"), stream.c.time.label("at"))
                .where(device.in_(sa.select(previous.c.who))), f"events{index}")
            reached = _materialised(
                sa.select(previous.c.who, sa.func.min(events.c.at).label("at"), previous.c.deadline)
                .select_from(previous.join(events, events.c.who == previous.c.who))
                .where(events.c.at >= previous.c.at, events.c.at <= previous.c.deadline)
                .group_by(previous.c.who, previous.c.deadline), f"step{index}")
        counts.append(sa.select(sa.func.count()).select_from(reached).scalar_subquery())
    return sa.select(*counts)


def _materialised(select: sa.Select, name: str) -> sa.CTE:
    """``select`` as a CTE that the database computes once (both SQLite and PostgreSQL
    would otherwise inline one that is used once, and re-run it per outer row)."""
    return select.cte(name).prefix_with("MATERIALIZED")
