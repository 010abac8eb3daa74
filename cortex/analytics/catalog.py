"""The queries of the analytics API: their argument schema, the role they need, the
function answering them and how their answer flattens into rows for an export."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from marshmallow import Schema

from functools import partial

from cortex.analytics import experiments, funnels
from cortex.analytics import schemas as S
from cortex.analytics.planner import answer


@dataclass(frozen=True)
class Query:
    """One query of the API."""

    name: str
    arguments: type[Schema]
    answer: type[Schema]
    role: str
    run: Callable[..., dict[str, Any]]
    rows: Callable[[dict[str, Any]], Iterable[dict[str, Any]]]
    summary: str


def _series(result):
    return result["series"]


def _groups(result):
    for group in result["groups"]:
        for point in group["series"]:
            yield {"value": group["value"], **point}


def _cohorts(result):
    for cohort in result["cohorts"]:
        for day, numbers in cohort["retained"].items():
            yield {"cohort": cohort["cohort"], "size": cohort["size"], "day": int(day), **numbers}


def _variants(result):
    for experiment in result["experiments"]:
        for variant in experiment["variants"]:
            yield {"experiment": experiment["experiment"], **variant}


QUERIES: dict[str, Query] = {q.name: q for q in (
    Query("counts", S.CountsSchema, S.CountsAnswerSchema, "viewer", partial(answer, "counts"), _groups,
          "Event counts per bucket, by event type, taxonomy level or another dimension"),
    Query("active-users", S.ActiveUsersSchema, S.ActiveUsersAnswerSchema, "viewer", partial(answer, "active-users"), _series,
          "Active devices or users per hour, day, week or month; new and returning"),
    Query("revenue", S.FilterSchema, S.RevenueAnswerSchema, "viewer", partial(answer, "revenue"), _series,
          "Revenue in USD, paying users, ARPDAU and conversion rate"),
    Query("retention", S.RetentionSchema, S.RetentionAnswerSchema, "analyst", partial(answer, "retention"), _cohorts,
          "Install cohorts and their day-N retention"),
    Query("funnel", S.FunnelSchema, S.FunnelAnswerSchema, "analyst", funnels.funnel, lambda r: r["steps"],
          "Devices reaching each step of an ordered list of events within a time window"),
    Query("experiments", S.ExperimentsSchema, S.ExperimentsAnswerSchema, "analyst", experiments.experiments,
          _variants, "Users per experiment variant, with conversion and revenue"),
    Query("breakdown", S.BreakdownSchema, S.BreakdownAnswerSchema, "analyst", partial(answer, "breakdown"),
          lambda r: r["rows"], "Top N values of a dimension by events, with users and revenue"),
)}
