"""Funnels and experiments on a generated data set, on SQLite and on PostgreSQL, against a
plain Python reading of what their answers mean (the docstrings of
:func:`cortex.analytics.funnels.funnel` and :func:`cortex.analytics.experiments.experiments`).

The data has what makes these queries subtle: steps at the same second, repeated steps,
steps after the range ends (inside and outside the window), devices assigned twice or at
the same second to two variants, devices that left an experiment, and purchases before
and after assignment.
"""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import pytest

from analytics_data import get, make_user, post_bundle

START = datetime(2024, 6, 1, tzinfo=timezone.utc)
END = datetime(2024, 7, 1, tzinfo=timezone.utc)  # the range 2024-06-01 .. 2024-06-30, whole days
RANGE = {"business_id": "demo", "start_date": "2024-06-01", "end_date": "2024-06-30"}
KINDS = ("tutorial", "level_1", "level_2")
DEVICE_FIELDS = ({"os": "ios", "country": "US"}, {"os": "android", "country": "DE"})


def generate(seed: int = 5) -> dict[str, tuple[dict, list[dict]]]:
    """device -> (bundle fields, events): 60 devices, events from late May to mid July."""
    rng = random.Random(seed)
    devices = {}
    for number in range(60):
        fields = DEVICE_FIELDS[number % 2]
        base = START + timedelta(days=rng.randrange(-3, 33), seconds=rng.randrange(86400))
        events = []

        def at(offset_seconds: int) -> str:
            return (base + timedelta(seconds=offset_seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")

        for _ in range(rng.randrange(1, 3)):
            events.append({"type": "install", "event_datetime": at(rng.choice((0, 0, 30, 4000)))})
        for _ in range(rng.randrange(0, 6)):
            events.append({"type": "event", "kingdom": rng.choice(KINDS),
                           "event_datetime": at(rng.choice((0, 60, 600, 3000, 3600, 5000, 90000)))})
        for _ in range(rng.randrange(0, 3)):
            events.append({"type": "economy", "spend_amount": rng.choice((0.99, 4.99, 10)), "spend_currency": "USD",
                           "event_datetime": at(rng.choice((-100, 0, 120, 7200, 200000)))})
        for experiment in ("exp1", "exp2")[: rng.randrange(0, 3)]:
            for _ in range(rng.randrange(1, 3)):
                variant = rng.choice(("A", "B", "B", False))
                events.append({"type": "experiment", "experiment_name": experiment, "variant_name": variant,
                               "event_datetime": at(rng.choice((-50, 0, 0, 100)))})
        devices[f"g{number:02d}"] = (fields, events)
    # milliseconds: the second step exactly at the end of a 600-second window, and just after it
    for name, late in (("ms-at-end", "10:10:00.250"), ("ms-after-end", "10:10:00.251")):
        devices[name] = (DEVICE_FIELDS[0], [
            {"type": "install", "event_datetime": "2024-06-10T10:00:00.250Z"},
            {"type": "event", "kingdom": "tutorial", "event_datetime": f"2024-06-10T{late}Z"}])
    return devices


DATA = generate()


def _rows():
    """Every generated event as (device, fields, event, time)."""
    for device, (fields, events) in DATA.items():
        for event in events:
            yield device, fields, event, datetime.fromisoformat(event["event_datetime"].replace("Z", "+00:00"))


def _matches(event: dict, step: str) -> bool:
    event_type, _, kingdom = step.partition(":")
    return event["type"] == event_type and (not kingdom or event.get("kingdom") == kingdom)


def expected_funnel(steps: list[str], window: int, os: str | None = None) -> list[int]:
    """Devices reaching each step: the first first-step event in the range; each later step
    the earliest matching event at or after the step before, within ``window`` seconds of the
    first step (and so possibly after the range ends)."""
    reached = [0] * len(steps)
    for device in DATA:
        rows = [(t, e) for d, f, e, t in _rows() if d == device and (os is None or f["os"] == os)]
        firsts = [t for t, e in rows if _matches(e, steps[0]) and START <= t < END]
        if not firsts:
            continue
        entered = previous = min(firsts)
        reached[0] += 1
        for index, step in enumerate(steps[1:], start=1):
            later = [t for t, e in rows if _matches(e, step) and previous <= t < END + timedelta(seconds=window)
                     and t <= entered + timedelta(seconds=window)]
            if not later:
                break
            previous = min(later)
            reached[index] += 1
    return reached


def expected_experiments(conversion_event: str, os: str | None = None) -> list[dict]:
    """Per experiment and variant: devices whose first assignment in the range (ties: the
    least variant) was to it, how many then sent ``conversion_event`` in the range, and the
    revenue they brought in the range after assignment."""
    first: dict[tuple[str, str], tuple[datetime, str]] = {}
    for device, fields, event, time in _rows():
        if event["type"] != "experiment" or not event["variant_name"] or not START <= time < END:
            continue
        if os and fields["os"] != os:
            continue
        key = (event["experiment_name"], device)
        first[key] = min(first.get(key, (time, event["variant_name"])), (time, event["variant_name"]))
    users, converted, revenue = defaultdict(int), defaultdict(set), defaultdict(float)
    for (experiment, device), (assigned, variant) in first.items():
        users[(experiment, variant)] += 1
        for other, fields, event, time in _rows():
            if other != device or not assigned <= time < END:
                continue
            if event["type"] == conversion_event:
                converted[(experiment, variant)].add(device)
            if event["type"] == "economy":
                revenue[(experiment, variant)] += event["spend_amount"]
    found: dict[str, list] = defaultdict(list)
    for experiment, variant in sorted(users):
        count, done, money = users[(experiment, variant)], len(converted[(experiment, variant)]), revenue[(experiment, variant)]
        found[experiment].append({"variant": variant, "users": count, "converted": done,
                                  "conversion_rate": round(done / count, 6), "revenue_usd": round(money, 6),
                                  "revenue_per_user": round(money / count, 6)})
    return [{"experiment": name, "variants": variants} for name, variants in found.items()]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request, tmp_path_factory):
    """The generated data posted through the ingest API, on SQLite or PostgreSQL."""
    import uuid

    from conftest import Cortex, drop_schema, reachable_postgres_url

    data_dir = tmp_path_factory.mktemp(f"funnels-{request.param}") / "data"
    overrides, url, schema = None, None, None
    if request.param == "postgresql":
        url = reachable_postgres_url()
        schema = f"cortex_test_{uuid.uuid4().hex[:12]}"
        overrides = {"sinks": {"sql": {"type": "sql", "url": url, "schema": schema}}}
    try:
        cortex = Cortex(data_dir, overrides)
        for device, (fields, events) in DATA.items():
            post_bundle(cortex, cortex.api_key, "demo", device, fields, events)
        cortex.deliver()
        yield cortex, make_user(cortex, "analyst@demo.example", "demo", "analyst")
    finally:
        if schema:
            drop_schema(url, schema)


def ask(world, name: str, **params) -> dict:
    cortex, token = world
    answer = get(cortex, f"/api/v1/analytics/{name}", token, **{**RANGE, **params})
    assert answer.status_code == 200, answer.data
    return answer.json


def test_the_data_exercises_every_case():
    funnel = expected_funnel(["install", "event:tutorial", "event:level_1"], 3600)
    assert funnel[0] > funnel[1] > funnel[2] > 0
    assert any(e["variant_name"] is False for _, _, e, _ in _rows() if e["type"] == "experiment")


@pytest.mark.parametrize("steps, window, os", [
    ("install,event:tutorial,event:level_1", 3600, None),
    ("install,event:tutorial,event:level_1", 86400, None),
    ("install,event:level_1,event:level_1,economy", 7 * 86400, None),
    ("install,event:tutorial", 600, "ios"),
    ("economy,install", 86400, None),
    ("event:level_2,economy,event:tutorial", 3000, "android"),
])
def test_funnel_matches_its_definition(world, steps, window, os):
    params = {"steps": steps, "window": window, **({"os": os} if os else {})}
    answer = ask(world, "funnel", **params)
    assert [step["users"] for step in answer["steps"]] == expected_funnel(steps.split(","), window, os)


@pytest.mark.parametrize("conversion_event, os", [("economy", None), ("event", None), ("install", "android")])
def test_experiments_match_their_definition(world, conversion_event, os):
    params = {"conversion_event": conversion_event, **({"os": os} if os else {})}
    answer = ask(world, "experiments", **params)
    assert answer["experiments"] == expected_experiments(conversion_event, os)
