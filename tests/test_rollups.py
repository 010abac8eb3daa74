"""The SQL sink's rollups: kept as events are written, idempotent, and recomputable."""

from __future__ import annotations

from datetime import date

import pytest
import sqlalchemy as sa

from analytics_data import get, seed
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
    sink.close()  # the deletion is done by the dispatcher's own sink
    result = cortex.cli("privacy", "delete", "--org", "demo", "--device-tag", "d1", "--no-tombstone", "--wait", "30")
    assert result.exit_code == 0, result.output
    rolled = get(cortex, "/api/v1/analytics/revenue", tokens["viewer"], **RANGE, use="rollups").json
    assert rolled["revenue_usd"] == 1.0 and rolled["paying_users"] == 1
    sink.open()
    assert all(row[3] != "d1" for row in snapshot(sink)["rollup_device_days"])
    assert all(row[2] != "d1" for row in snapshot(sink)["rollup_devices"])
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
