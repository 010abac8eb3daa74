"""The SQL sink's rollups: kept as events are written, idempotent, and recomputable."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from analytics_data import get, post_bundle, seed
from cortex.analytics import bitmaps
from cortex_sql.day_bitmaps import define_bitmap_tables
from cortex_sql.rollups import ROLLUP_TABLES, define_rollup_tables
from cortex_sql.tables import build_tables

RANGE = {"business_id": "demo", "start_date": "2024-06-01", "end_date": "2024-06-30"}


@pytest.fixture(params=["sqlite", "postgresql"])
def world(request, make_cortex):
    # small batches: the rollups are built over many transactions
    overrides = {"dispatcher": {"batch_size": 3}}
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        overrides["sinks"] = {"sql": {"type": "sql", "url": url, "schema": request.getfixturevalue("pg_schema")}}
    cortex = make_cortex(**overrides)
    tokens = seed(cortex)
    sink = cortex.state.make_sinks()[0]
    sink.open()
    yield cortex, tokens, sink
    sink.close()


def snapshot(sink) -> dict[str, list[tuple]]:
    tables = define_rollup_tables(sa.MetaData(), sink.table_prefix, sink.schema)
    with sink.engine.connect() as conn:
        return {name: sorted(tuple(str(v) for v in row) for row in conn.execute(sa.select(tables[name])))
                for name in ROLLUP_TABLES}


def test_rollups_follow_the_writes_and_ignore_resent_batches(world):
    cortex, _, sink = world
    before = snapshot(sink)
    demo_days = [row for row in before["rollup_device_days"] if row[0] == "demo"]
    assert len(demo_days) == 7  # d1: 3 days, d2: 2, d3: 1, d9: 1
    assert any(row[0] == "rival" for row in before["rollup_events"])
    # the dispatcher sends a batch again after a crash: the rollups count it once
    sink.write([r for r in sink.read_records() if r["kind"] != "rejected"])
    assert snapshot(sink) == before


def test_a_batch_partly_stored_before_adds_only_its_new_records(world):
    _, _, sink = world
    built = snapshot(sink)
    records = [r for r in sink.read_records() if r["kind"] != "rejected"]
    gone = {r["id"] for r in records[::2]}
    raw = build_tables(sa.MetaData(), sink.table_prefix, sink.schema)
    with sink.engine.begin() as conn:
        for name in ("events", "economy", "links", "messages", "experiments", "interactions"):
            conn.execute(raw[name].delete().where(raw[name].c.id.in_(gone)))
    sink.recompute_rollups("demo", date(2024, 6, 1), date(2024, 6, 30))
    sink.recompute_rollups("rival", date(2024, 5, 1), date(2024, 7, 31))
    assert snapshot(sink) != built
    # one batch holding the records stored before and the deleted ones: only the latter count
    sink.write(records)
    assert snapshot(sink) == built


def test_recompute_gives_what_the_writes_built(world):
    _, _, sink = world
    built = snapshot(sink)
    sink.recompute_rollups("demo", date(2024, 6, 1), date(2024, 6, 30))
    sink.recompute_rollups("rival", date(2024, 5, 1), date(2024, 7, 31))
    assert snapshot(sink) == built


def test_recompute_after_deleting_a_device(world):
    cortex, tokens, sink = world
    raw = build_tables(sa.MetaData(), sink.table_prefix, sink.schema)
    with sink.engine.begin() as conn:
        for name in ("events", "economy", "experiments"):
            conn.execute(raw[name].delete().where(raw[name].c.org == "demo", raw[name].c.device_tag == "d1"))
    stale = get(cortex, "/api/v1/analytics/revenue", tokens["viewer"], **RANGE, use="rollups").json
    assert stale["revenue_usd"] == 5.99  # the rollups still hold d1 until recomputed
    sink.recompute_rollups("demo", date(2024, 6, 1), date(2024, 6, 30))
    for name, params in (("revenue", {}), ("active-users", {}), ("events", {}), ("retention", {"days": "1,7"})):
        raw_answer = get(cortex, f"/api/v1/analytics/{name}", tokens["analyst"], **RANGE, **params, use="raw").json
        rolled = get(cortex, f"/api/v1/analytics/{name}", tokens["analyst"], **RANGE, **params, use="rollups").json
        raw_answer.pop("answered_from"), rolled.pop("answered_from")
        assert rolled == raw_answer, name
    assert get(cortex, "/api/v1/analytics/revenue", tokens["viewer"], **RANGE).json["revenue_usd"] == 1.0


def test_rollups_can_be_turned_off(make_cortex):
    cortex = make_cortex(sinks={"sql": {"type": "sql", "rollups": False}})
    tokens = seed(cortex)
    answer = get(cortex, "/api/v1/analytics/events", tokens["viewer"], **RANGE)
    assert answer.json["answered_from"] == "raw" and answer.json["revenue_usd"] == 5.99
    refused = get(cortex, "/api/v1/analytics/events", tokens["viewer"], **RANGE, use="rollups")
    assert refused.status_code == 400 and "keeps no rollups" in refused.json["reasons"]["use"][0]


def test_rebuild_command(world):
    cortex, tokens, sink = world
    built = snapshot(sink)
    with sink.engine.begin() as conn:
        for table in define_rollup_tables(sa.MetaData(), sink.table_prefix, sink.schema).values():
            conn.execute(table.delete())
    result = cortex.cli("rollups", "rebuild", "--from", "2024-06-01", "--to", "2024-06-30")
    assert result.exit_code == 0, result.output
    assert "rebuilt the rollups of demo" in result.output and "rival" in result.output
    assert snapshot(sink) == built
    bad = cortex.cli("rollups", "rebuild", "--from", "2024-06-30", "--to", "2024-06-01")
    assert bad.exit_code != 0 and "--to comes before --from" in bad.output


def test_data_subject_deletion_recomputes_the_rollups(world):
    cortex, tokens, sink = world
    assert get(cortex, "/api/v1/analytics/active-users", tokens["viewer"], **RANGE, use="rollups").status_code == 200
    assert built_days(sink) and "d1" in device_numbers(sink)
    sink.close()  # the deletion is done by the dispatcher's own sink
    result = cortex.cli("privacy", "delete", "--org", "demo", "--device-tag", "d1", "--no-tombstone", "--wait", "30")
    assert result.exit_code == 0, result.output
    rolled = get(cortex, "/api/v1/analytics/revenue", tokens["viewer"], **RANGE, use="rollups").json
    assert rolled["revenue_usd"] == 1.0 and rolled["paying_users"] == 1
    sink.open()
    assert all(row[3] != "d1" for row in snapshot(sink)["rollup_device_days"])
    assert all(row[2] != "d1" for row in snapshot(sink)["rollup_devices"])
    assert "d1" not in device_numbers(sink) and "d2" in device_numbers(sink)
    for name in ("events", "active-users", "retention", "breakdown"):
        params = {"dimension": "os"} if name == "breakdown" else {}
        raw_answer = get(cortex, f"/api/v1/analytics/{name}", tokens["analyst"], **RANGE, **params, use="raw").json
        rolled = get(cortex, f"/api/v1/analytics/{name}", tokens["analyst"], **RANGE, **params, use="rollups").json
        raw_answer.pop("answered_from"), rolled.pop("answered_from")
        assert rolled == raw_answer, name


def test_retention_takes_the_rollups_of_expired_days_along(make_cortex):
    cortex = make_cortex(retention={"events_days": 1})  # everything of June 2024 is older
    tokens = seed(cortex)
    result = cortex.cli("retention")
    assert result.exit_code == 0, result.output
    answer = get(cortex, "/api/v1/analytics/events", tokens["viewer"], **RANGE, use="rollups").json
    assert answer["total"] == 0 and answer["unique_users"] == 0


# -- the day bitmaps of the daily active sets -------------------------------------------------------
BITMAP_CASES = [
    ("events", {}), ("events", {"event_type": "economy,install"}), ("active-users", {}),
    ("active-users", {"bucket": "month"}), ("active-users", {"app": "second", "os": "ios"}),
    ("revenue", {}), ("revenue", {"os": "ios", "country": "US"}), ("revenue", {"app": "second", "bucket": "week"}),
    ("breakdown", {"dimension": "app"}), ("breakdown", {"dimension": "os", "event_type": "dau"}),
    ("retention", {"days": "1,7"}), ("retention", {"days": "1,7", "app": "second"}),
    ("retention", {"days": "1", "app": "default,second"}), ("retention", {"days": "1", "os": "android"}),
]


def assert_rollups_answer_as_raw(cortex, token, **dates):
    for name, params in BITMAP_CASES:
        arguments = {**RANGE, **dates, **params}
        raw_answer = get(cortex, f"/api/v1/analytics/{name}", token, **arguments, use="raw").json
        rolled = get(cortex, f"/api/v1/analytics/{name}", token, **arguments, use="rollups").json
        assert raw_answer.pop("answered_from") == "raw" and rolled.pop("answered_from") == "rollups", (name, params)
        assert rolled == raw_answer, (name, params)


def built_days(sink) -> list[str]:
    """The days whose bitmaps are stored (their mark row)."""
    bitmaps = define_bitmap_tables(sa.MetaData(), sink.table_prefix, sink.schema)["rollup_bitmaps"]
    with sink.engine.connect() as conn:
        return sorted(str(d) for d in conn.scalars(sa.select(bitmaps.c.day).where(bitmaps.c.slice == "day")))


def second_app_key(cortex) -> str:
    cortex.state.control.create_app("demo", "second")
    key, _ = cortex.state.control.create_key("demo", "second")
    return key


def test_day_bitmaps_are_stored_and_dropped_when_a_past_day_changes(world):
    cortex, tokens, sink = world
    assert_rollups_answer_as_raw(cortex, tokens["analyst"])
    assert built_days(sink)[:30] == [f"2024-06-{d:02}" for d in range(1, 31)]  # and July's, for retention
    key = second_app_key(cortex)
    # late events of a past day: that day and the later ones are built again
    post_bundle(cortex, key, "demo", "d4", {"os": "ios", "country": "FR"}, [
        {"type": "install", "event_datetime": "2024-06-05T10:00:00Z"},
        {"type": "economy", "event_datetime": "2024-06-06T10:00:00Z", "spend_amount": 2, "spend_currency": "USD"},
    ])
    post_bundle(cortex, key, "demo", "d1", {"os": "android", "country": "US"}, [
        {"type": "dau", "event_datetime": "2024-06-09T10:00:00Z"}])
    cortex.deliver()
    assert built_days(sink) == [f"2024-06-{d:02}" for d in range(1, 5)]
    assert_rollups_answer_as_raw(cortex, tokens["analyst"])
    # an install in the second app before the first one: d2's cohort moves to May
    post_bundle(cortex, key, "demo", "d2", {"os": "android", "country": "DE"}, [
        {"type": "install", "event_datetime": "2024-05-31T10:00:00Z"},
        {"type": "dau", "event_datetime": "2024-06-02T10:00:00Z"}])
    post_bundle(cortex, key, "demo", "d3", {"os": "ios", "country": "US"}, [
        {"type": "install", "event_datetime": "2024-06-01T10:00:00Z"}])
    cortex.deliver()
    assert built_days(sink) == []
    assert_rollups_answer_as_raw(cortex, tokens["analyst"], start_date="2024-05-31")
    # a batch the dispatcher sends again changes nothing, and drops nothing it need not
    stored = built_days(sink)
    sink.write([r for r in sink.read_records() if r["kind"] != "rejected"])
    assert built_days(sink) == stored


def test_todays_devices_are_counted_live_and_not_stored(world):
    cortex, tokens, sink = world
    today = datetime.now(timezone.utc).date()
    moment = lambda day, hour: f"{day.isoformat()}T{hour:02}:00:00Z"  # noqa: E731
    key = second_app_key(cortex)
    yesterday = today - timedelta(days=1)
    post_bundle(cortex, cortex.api_key, "demo", "t1", {"os": "ios", "country": "US"}, [
        {"type": "install", "event_datetime": moment(yesterday, 1)},
        {"type": "dau", "event_datetime": moment(today, 0)}])
    post_bundle(cortex, key, "demo", "t2", {"os": "android", "country": "DE"}, [
        {"type": "install", "event_datetime": moment(today, 0)},
        {"type": "economy", "event_datetime": moment(today, 0), "spend_amount": 3, "spend_currency": "USD"}])
    cortex.deliver()
    dates = {"start_date": (today - timedelta(days=3)).isoformat(), "end_date": today.isoformat()}
    assert_rollups_answer_as_raw(cortex, tokens["analyst"], **dates)
    active = get(cortex, "/api/v1/analytics/active-users", tokens["analyst"], **{**RANGE, **dates}, use="rollups").json
    assert [(p["period"], p["active"], p["new"]) for p in active["series"]] == [
        (yesterday.isoformat(), 1, 1), (today.isoformat(), 2, 1)]
    # yesterday's are stored from 01:00 UTC on
    assert built_days(sink) == [(today - timedelta(days=n)).isoformat() for n in (3, 2, 1)
                                if today - timedelta(days=n) < bitmaps.first_live_day()]
    # another device today: the next query counts it
    post_bundle(cortex, cortex.api_key, "demo", "t3", {"os": "ios"}, [{"type": "dau", "event_datetime": moment(today, 0)}])
    cortex.deliver()
    active = get(cortex, "/api/v1/analytics/active-users", tokens["analyst"], **{**RANGE, **dates}, use="rollups").json
    assert active["series"][-1]["active"] == 3


def device_numbers(sink) -> set[str]:
    """The devices that have a number in the bitmaps."""
    ids = define_bitmap_tables(sa.MetaData(), sink.table_prefix, sink.schema)["rollup_device_ids"]
    with sink.engine.connect() as conn:
        return set(conn.scalars(sa.select(ids.c.device)))


def test_a_batch_of_a_day_being_built_waits_for_it_on_postgresql(make_cortex, postgres_url, pg_schema):
    import threading
    import time

    cortex = make_cortex(sinks={"sql": {"type": "sql", "url": postgres_url, "schema": pg_schema}})
    tokens = seed(cortex)
    assert get(cortex, "/api/v1/analytics/active-users", tokens["viewer"], **RANGE, use="rollups").status_code == 200
    sink = cortex.state.make_sinks()[0]
    sink.open()
    late = next(dict(r) for r in sink.read_records("track") if r["device_tag"] == "d2")
    late.update(id="late-event", device_tag="late", event_time=datetime(2024, 6, 5, 12, tzinfo=timezone.utc))
    bitmaps_table = define_bitmap_tables(sa.MetaData(), sink.table_prefix, sink.schema)["rollup_bitmaps"]
    from cortex_sql.day_bitmaps import lock_for_building

    writer = threading.Thread(target=sink.write, args=([late],))
    with sink.engine.connect() as builder:
        lock_for_building(builder, bitmaps_table, "demo")  # as a query building days does
        writer.start()
        with sink.engine.connect() as watcher:
            waiting = 0
            for _ in range(200):
                waiting = watcher.scalar(sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"))
                if waiting:
                    break
                time.sleep(0.05)
        assert waiting == 1 and writer.is_alive()
        builder.commit()
    writer.join(30)
    assert not writer.is_alive()
    assert "2024-06-05" not in built_days(sink) and "2024-06-04" in built_days(sink)
    answer = get(cortex, "/api/v1/analytics/active-users", tokens["viewer"], **RANGE, use="rollups").json
    assert {p["period"]: p["active"] for p in answer["series"]}["2024-06-05"] == 1
    sink.close()
