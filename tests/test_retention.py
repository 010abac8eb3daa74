"""Retention: old events, day files, dead letters and error-log rows go, in bounded batches."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from conftest import iso
from cortex.dispatcher import Dispatcher
from cortex.retention import RetentionPolicy

OLD = datetime.now(timezone.utc) - timedelta(days=100)


def test_policy_most_specific_setting_wins():
    now = datetime(2026, 1, 31, tzinfo=timezone.utc)
    policy = RetentionPolicy(
        {"events_days": 30, "tables": {"app_logs": 7, "economy": 0},
         "orgs": {"acme": {"events_days": 365, "tables": {"links": 1}}, "keep": {"events_days": 0}}},
        orgs=["demo"], now=now,
    )
    assert policy.orgs == ["acme", "demo", "keep"]
    assert policy.cutoff("demo", "events") == now - timedelta(days=30)
    assert policy.cutoff("demo", "app_logs") == now - timedelta(days=7)
    assert policy.cutoff("demo", "economy") is None
    assert policy.cutoff("acme", "events") == now - timedelta(days=365)
    assert policy.cutoff("acme", "app_logs") == now - timedelta(days=365)  # the org's default first
    assert policy.cutoff("acme", "links") == now - timedelta(days=1)
    assert policy.cutoff("keep", "events") is None
    assert RetentionPolicy({"events_days": 0}).any_cutoff() is False
    with pytest.raises(ValueError, match="retention.tables.events must be a number of days"):
        RetentionPolicy({"tables": {"events": "forever"}})


def post_events(cortex, moment: datetime, count: int, start_index: int = 0, org: str | None = None, key=None, **fields):
    """Post ``count`` events dated ``moment`` (sent with a correct client clock)."""
    events = [{"type": "event", "event_datetime": iso(moment), "event_index": start_index + i, "kingdom": "k"}
              for i in range(count)]
    body = cortex.bundle(events, **fields)
    if key:
        body["api_key"] = key
    assert cortex.post(body, org=org).status_code == 200


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_options(request):
    """The sql sink's options on SQLite, and on PostgreSQL in a fresh schema."""
    if request.param == "sqlite":
        return {"type": "sql"}
    url = request.getfixturevalue("postgres_url")
    return {"type": "sql", "url": url, "schema": request.getfixturevalue("pg_schema")}


def count_rows(cortex, options, table: str) -> int:
    url = options.get("url") or f"sqlite:///{cortex.data_dir / 'events.db'}"
    engine = sa.create_engine(url)
    try:
        name = f'{options["schema"]}.{table}' if options.get("schema") else table
        with engine.connect() as connection:
            return connection.exec_driver_sql(f"SELECT count(*) FROM {name}").scalar()
    finally:
        engine.dispose()


def test_a_big_delete_runs_in_several_bounded_batches(make_cortex, sql_options):
    cortex = make_cortex(sinks={"sql": sql_options},
                         retention={"events_days": 30, "batch_size": 10, "max_seconds": 0})
    post_events(cortex, OLD, 35)
    post_events(cortex, datetime.now(timezone.utc), 5, start_index=100)
    runner = Dispatcher(cortex.state).runners[0]
    runner.open()
    try:
        while not runner.caught_up():
            runner.step()
        assert count_rows(cortex, sql_options, "events") == 40
        runner.retention.next_run = 0
        totals = []
        for step in range(6):
            # each step expires one batch, then delivers as usual
            post_events(cortex, datetime.now(timezone.utc), 1, start_index=200 + step)
            runner.step()
            totals.append(count_rows(cortex, sql_options, "events"))
        # 35 old rows gone 10 at a time while one new row a step arrives
        assert totals == [31, 22, 13, 9, 10, 11]
        assert not runner.retention.due()  # the next run waits for the interval
    finally:
        runner.close()


def test_retention_per_org_and_per_table(make_cortex):
    cortex = make_cortex(retention={"events_days": 30, "tables": {"economy": 0},
                                    "orgs": {"keeper": {"events_days": 0}}})
    control = cortex.state.control
    control.create_org("keeper")
    control.create_app("keeper", "game")
    keeper_key, _ = control.create_key("keeper", "game")
    post_events(cortex, OLD, 3)
    post_events(cortex, OLD, 3, org="keeper", key=keeper_key)
    economy = [{"type": "economy", "event_datetime": iso(OLD), "event_index": 50, "spend_amount": 1,
                "spend_currency": "USD"}]
    assert cortex.post(cortex.bundle(economy)).status_code == 200
    cortex.deliver()  # delivers, then applies retention until done
    assert cortex.sql("SELECT org, count(*) FROM events GROUP BY org") == [("keeper", 3)]
    assert cortex.sql("SELECT count(*) FROM economy") == [(1,)]


def test_file_sink_removes_whole_day_files_past_the_age(make_cortex):
    cortex = make_cortex(sinks={"archive": {"type": "file"}}, retention={"tables": {"files": 30}})
    post_events(cortex, datetime.now(timezone.utc), 2)
    cortex.deliver()
    org_dir = cortex.data_dir / "events" / "demo"
    today = sorted(p.name for p in org_dir.iterdir())
    old_day = (datetime.now(timezone.utc) - timedelta(days=31)).strftime("%Y-%m-%d")
    recent_day = (datetime.now(timezone.utc) - timedelta(days=29)).strftime("%Y-%m-%d")
    for name in (f"{old_day}.ndjson", f"{old_day}.1.ndjson", f"{old_day}.errors.ndjson", f"{recent_day}.ndjson"):
        (org_dir / name).write_text('{"seq": 1, "id": "x", "org": "demo"}\n')
    result = cortex.cli("retention")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["archive"] == 3
    assert sorted(p.name for p in org_dir.iterdir()) == sorted([*today, f"{recent_day}.ndjson"])
    # the sink goes on writing today's file
    post_events(cortex, datetime.now(timezone.utc), 1, start_index=10)
    cortex.deliver()
    assert sum(len(p.read_text().splitlines()) for p in org_dir.glob(f"{today[0][:10]}*.ndjson")) == 3


def test_dead_letters_and_ingest_errors_expire(make_cortex):
    second = 1 / 86400
    cortex = make_cortex(retention={"dead_letter_days": 2 * second, "ingest_error_days": 2 * second})
    bad = [{"type": "economy", "event_datetime": iso(), "event_index": 1}]  # no spend_amount
    good = [{"type": "event", "event_datetime": iso(), "event_index": 2}]
    assert cortex.post(cortex.bundle(bad + good)).status_code == 200
    cortex.state.queue.dead_letter("sql", [{"id": "a" * 32, "seq": 1}], "refused")
    time.sleep(2.5)
    assert cortex.post(cortex.bundle(bad + good, device_tag="device-2")).status_code == 200
    cortex.state.queue.dead_letter("sql", [{"id": "b" * 32, "seq": 2}], "refused")
    result = cortex.cli("retention")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["dead_letters"], report["ingest_errors"]) == (1, 1)
    assert [row["record_id"] for row in cortex.state.queue.dead_letters()] == ["b" * 32]
    assert len(cortex.state.queue.ingest_errors()) == 1


def test_retention_cli_refuses_while_a_dispatcher_runs(cortex):
    from cortex.dispatcher import DispatcherLock

    lock = DispatcherLock(str(cortex.data_dir))
    assert lock.acquire(blocking=False)
    try:
        result = cortex.cli("retention")
        assert result.exit_code == 1 and "applies retention itself" in result.output
    finally:
        lock.release()


def test_bad_retention_settings_are_refused_at_start(make_cortex):
    from cortex.config import ConfigError

    with pytest.raises(ConfigError, match="retention.events_days must be a number"):
        make_cortex(retention={"events_days": "a year"})
    with pytest.raises(ConfigError, match="retention.orgs.acme.tables.links must be a number of days"):
        make_cortex(retention={"orgs": {"acme": {"tables": {"links": -1}}}})
