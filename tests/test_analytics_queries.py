"""The query API's answers on a known data set, on SQLite and on PostgreSQL."""

from __future__ import annotations

import csv
import io

import orjson
import pytest

from analytics_data import DEMO_EVENTS, get, seed

RANGE = {"business_id": "demo", "start_date": "2024-06-01", "end_date": "2024-06-30"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request, tmp_path_factory):
    """The seeded data set on SQLite or PostgreSQL, shared by the module's tests (they only read)."""
    import uuid

    from conftest import Cortex, drop_schema, reachable_postgres_url

    data_dir = tmp_path_factory.mktemp(f"analytics-{request.param}") / "data"
    if request.param == "sqlite":
        cortex = Cortex(data_dir)
        yield cortex, seed(cortex)
        return
    url = reachable_postgres_url()
    schema = f"cortex_test_{uuid.uuid4().hex[:12]}"
    try:
        cortex = Cortex(data_dir, {"sinks": {"sql": {"type": "sql", "url": url, "schema": schema}}})
        yield cortex, seed(cortex)
    finally:
        drop_schema(url, schema)


def query(world, name, role="analyst", **params):
    cortex, tokens = world
    answer = get(cortex, f"/api/v1/analytics/{name}", tokens[role], **{**RANGE, **params})
    assert answer.status_code == 200, answer.data
    return answer.json


def test_events_endpoint_of_the_interactions_design(world):
    # GET /api/v1/analytics/events?business_id=…&start_date=…&end_date=…&event_type=…
    answer = query(world, "events", "viewer", event_type="economy")
    assert answer["business_id"] == "demo" and answer["event_type"] == ["economy"]
    assert answer["start_date"] == "2024-06-01T00:00:00Z" and answer["end_date"] == "2024-07-01T00:00:00Z"
    assert answer["total"] == 2 and answer["unique_users"] == 2 and answer["revenue_usd"] == 5.99
    assert answer["series"] == [{"period": "2024-06-01", "count": 1, "users": 1},
                                {"period": "2024-06-02", "count": 1, "users": 1}]
    everything = query(world, "events", "viewer")
    assert everything["total"] == DEMO_EVENTS + 1  # and d9's valid dau


def test_events_filters_and_buckets(world):
    assert query(world, "events", os="android")["total"] == 4
    assert query(world, "events", platform="ios", country="US")["total"] == 10
    assert query(world, "events", app_ver="1.1", event_type="install")["total"] == 2
    assert query(world, "events", start_date="2024-06-02", end_date="2024-06-02")["total"] == 5
    assert query(world, "events", start_date="2024-06-01T10:00:00Z", end_date="2024-06-01T10:10:00Z")["total"] == 3
    weeks = query(world, "events", bucket="week")["series"]
    assert [(p["period"], p["count"]) for p in weeks] == [("2024-05-27", 13), ("2024-06-03", 2)]
    hours = query(world, "events", bucket="hour", start_date="2024-06-01", end_date="2024-06-01")["series"]
    assert [(p["period"], p["count"]) for p in hours] == [("2024-06-01T10:00:00Z", 5), ("2024-06-01T11:00:00Z", 3)]
    month = query(world, "events", bucket="month")["series"]
    assert month == [{"period": "2024-06-01", "count": 15, "users": 4}]


def test_counts_by_type_and_taxonomy(world):
    by_type = query(world, "counts", "viewer")
    totals = {g["value"]: g["total"] for g in by_type["groups"]}
    assert totals == {"install": 3, "experiment": 3, "event": 3, "economy": 2, "dau": 4}
    by_kingdom = query(world, "counts", "viewer", by="kingdom", event_type="event")
    assert {g["value"]: g["total"] for g in by_kingdom["groups"]} == {"level_start": 2, "level_complete": 1}


def test_active_users_new_and_returning(world):
    series = query(world, "active-users", "viewer")["series"]
    assert series == [
        {"period": "2024-06-01", "active": 2, "new": 2, "returning": 0},
        {"period": "2024-06-02", "active": 3, "new": 1, "returning": 2},
        {"period": "2024-06-03", "active": 1, "new": 1, "returning": 0},
        {"period": "2024-06-08", "active": 1, "new": 0, "returning": 1},
    ]
    # returning stays returning when the range starts later
    later = query(world, "active-users", "viewer", start_date="2024-06-03", bucket="week")["series"]
    assert later == [{"period": "2024-06-03", "active": 2, "new": 1, "returning": 1}]


def test_retention_cohorts(world):
    cohorts = query(world, "retention", days="1,7")["cohorts"]
    assert cohorts == [
        {"cohort": "2024-06-01", "size": 2, "retained": {"1": {"users": 2, "rate": 1.0}, "7": {"users": 1, "rate": 0.5}}},
        {"cohort": "2024-06-02", "size": 1, "retained": {"1": {"users": 0, "rate": 0.0}, "7": {"users": 0, "rate": 0.0}}},
    ]


def test_revenue_arpdau_and_conversion(world):
    answer = query(world, "revenue", "viewer")
    assert answer["revenue_usd"] == 5.99 and answer["paying_users"] == 2 and answer["active_users"] == 4
    assert answer["conversion_rate"] == 0.5
    assert answer["arpdau"] == round(5.99 / 7, 6)  # daily actives 2 + 3 + 1 + 1
    assert [(p["period"], p["revenue_usd"]) for p in answer["series"][:2]] == [("2024-06-01", 4.99), ("2024-06-02", 1.0)]


def test_funnel_in_order_within_window(world):
    steps = query(world, "funnel", steps="install,event:level_start,event:level_complete", window=3600)["steps"]
    assert [(s["step"], s["users"]) for s in steps] == [
        ("install", 3), ("event:level_start", 2), ("event:level_complete", 1)]
    assert steps[2]["conversion_from_previous"] == 0.5
    # d1 completes the level 20 minutes after installing: a 10-minute window loses it
    short = query(world, "funnel", steps="install,event:level_complete", window=600)["steps"]
    assert [s["users"] for s in short] == [3, 0]
    # order matters: nobody installs after paying
    assert [s["users"] for s in query(world, "funnel", steps="economy,install")["steps"]] == [2, 0]


def test_experiments_variants(world):
    experiments = query(world, "experiments")["experiments"]
    assert experiments == [{"experiment": "exp1", "variants": [
        {"variant": "A", "users": 2, "converted": 2, "conversion_rate": 1.0, "revenue_usd": 5.99, "revenue_per_user": 2.995},
        {"variant": "B", "users": 1, "converted": 0, "conversion_rate": 0.0, "revenue_usd": 0.0, "revenue_per_user": 0.0},
    ]}]


def test_breakdown_top_n(world):
    rows = query(world, "breakdown", dimension="country", limit=2)["rows"]
    assert rows == [{"value": "US", "events": 10, "users": 2, "revenue_usd": 5.99},
                    {"value": "DE", "events": 4, "users": 1, "revenue_usd": 0.0}]


def test_raw_listing_pages_through_everything_once(world):
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 4, **({"cursor": cursor} if cursor else {})}
        page = query(world, "raw-events", **params)
        seen += page["items"]
        pages += 1
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == DEMO_EVENTS + 1 == len({item["id"] for item in seen}) and pages == 4
    times = [item["time"] for item in seen]
    assert times == sorted(times, reverse=True)
    one = query(world, f"raw-events/{seen[0]['id']}")
    assert one["table"] == "events" and one["device_tag"] == "d1" and one["type"] == "dau"


def test_bad_arguments_are_400_with_reasons(world):
    cortex, tokens = world
    bad = get(cortex, "/api/v1/analytics/events", tokens["viewer"], business_id="demo", start_date="June", bucket="year")
    assert bad.status_code == 400 and set(bad.json["reasons"]) == {"start_date", "bucket"}
    cursor = get(cortex, "/api/v1/analytics/raw-events", tokens["analyst"], business_id="demo", cursor="nonsense")
    assert cursor.status_code == 400 and "cursor" in cursor.json["error"]
    missing = get(cortex, "/api/v1/analytics/events", tokens["viewer"])
    assert missing.status_code == 400 and "business_id" in missing.json["error"]


def test_ingest_error_log(world):
    cortex, tokens = world
    page = get(cortex, "/api/v1/analytics/errors", tokens["analyst"], business_id="demo").json
    assert len(page["items"]) == 1
    error = page["items"][0]
    assert error["reasons"] == {"spend_currency": ["Missing data for required field."]}
    assert error["payload"]["type"] == "economy" and "api_key" not in error["bundle"]


def test_export_csv_and_jsonl(world):
    cortex, tokens = world
    headers = {"Authorization": f"Bearer {tokens['analyst']}"}
    jsonl = cortex.client.get("/api/v1/analytics/export", query_string={**RANGE, "format": "jsonl"}, headers=headers)
    assert jsonl.status_code == 200 and jsonl.mimetype == "application/x-ndjson"
    rows = [orjson.loads(line) for line in jsonl.data.splitlines()]
    assert len(rows) == DEMO_EVENTS + 1 and rows[0]["time"] == "2024-06-01T10:00:00Z"
    table = cortex.client.get("/api/v1/analytics/export", headers=headers,
                              query_string={**RANGE, "format": "csv", "query": "breakdown", "dimension": "os"})
    assert table.status_code == 200 and table.mimetype == "text/csv"
    parsed = list(csv.DictReader(io.StringIO(table.data.decode())))
    assert [(r["value"], r["events"]) for r in parsed] == [("ios", "11"), ("android", "4")]
    unknown = cortex.client.get("/api/v1/analytics/export", headers=headers, query_string={**RANGE, "query": "nope"})
    assert unknown.status_code == 400


def test_cli_export_with_progress(world, tmp_path):
    cortex, _ = world
    out = tmp_path / "demo.csv"
    result = cortex.cli("export", "--org", "demo", "--format", "csv", "-o", str(out),
                        "-a", "start_date=2024-06-01", "-a", "end_date=2024-06-30", "--progress")
    assert result.exit_code == 0, result.output
    assert f"exported {DEMO_EVENTS + 1} rows" in result.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == DEMO_EVENTS + 1 and {r["device"] for r in rows} == {"d1", "d2", "d3", "d9"}
    refused = cortex.cli("export", "--org", "nowhere")
    assert refused.exit_code != 0 and "no org named" in refused.output


ROLLUP_CASES = [
    ("events", {}), ("events", {"event_type": "economy"}), ("events", {"bucket": "week", "os": "ios"}),
    ("events", {"event_type": "install,dau", "country": "US", "bucket": "month"}),
    ("counts", {}), ("counts", {"by": "kingdom", "event_type": "event"}), ("counts", {"by": "country", "bucket": "week"}),
    ("active-users", {}), ("active-users", {"bucket": "week"}), ("active-users", {"start_date": "2024-06-03"}),
    ("active-users", {"event_type": "economy"}), ("active-users", {"os": "android"}),
    ("revenue", {}), ("revenue", {"country": "US", "bucket": "month"}),
    ("breakdown", {"dimension": "os"}), ("breakdown", {"dimension": "country", "event_type": "economy"}),
    ("breakdown", {"dimension": "app", "os": "ios"}), ("counts", {"by": "os", "os": "ios,android"}),
    ("retention", {"days": "1,7"}), ("retention", {"days": "1", "os": "ios"}),
    ("retention", {"days": "1,7,30", "start_date": "2024-06-02"}),
    # distinct devices from the day bitmaps: intersections of slices, unions over days and apps
    ("active-users", {"os": "ios", "country": "US", "bucket": "month"}), ("active-users", {"app": "default"}),
    ("events", {"event_type": "economy", "os": "ios"}), ("revenue", {"os": "ios", "device_type": "ipad"}),
    ("breakdown", {"dimension": "device_type", "event_type": "install,economy"}),
    ("retention", {"days": "1", "app": "default"}), ("retention", {"days": "1,7", "country": "DE"}),
]


@pytest.mark.parametrize("name,params", ROLLUP_CASES)
def test_rollups_answer_as_the_raw_events_do(world, name, params):
    raw = query(world, name, use="raw", **params)
    rolled = query(world, name, use="rollups", **params)
    assert raw.pop("answered_from") == "raw" and rolled.pop("answered_from") == "rollups"
    assert rolled == raw


def test_auto_uses_rollups_when_it_can_and_says_why_not(world):
    assert query(world, "events", "viewer")["answered_from"] == "rollups"
    assert query(world, "events", "viewer", bucket="hour")["answered_from"] == "raw"
    assert query(world, "counts", "viewer", by="phylum")["answered_from"] == "raw"
    # event counts are sliced by one dimension at a time; distinct devices by any
    assert query(world, "events", "viewer", os="ios", country="US")["answered_from"] == "raw"
    assert query(world, "active-users", "viewer", os="ios", country="US")["answered_from"] == "rollups"
    cortex, tokens = world
    refused = get(cortex, "/api/v1/analytics/events", tokens["viewer"], **RANGE, bucket="hour", use="rollups")
    assert refused.status_code == 400 and "per day" in refused.json["reasons"]["use"][0]
