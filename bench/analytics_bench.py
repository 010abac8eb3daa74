"""Dashboard queries answered from the rollups and from the raw events, side by side.

    .venv/bin/python bench/analytics_bench.py                       # 10M events, 90 days, both databases
    .venv/bin/python bench/analytics_bench.py --events 1000000 --databases sqlite

For each database (SQLite, PostgreSQL) it fills the SQL sink's tables with ``--events``
synthetic events of one org over ``--days`` days (written by SQL, ``INSERT ... SELECT``,
not through the ingest API, which would take hours), builds the rollups from them with
the sink's own recompute function (timed: it is also what ``cortex rollups rebuild``
costs), and then asks each dashboard query through the HTTP API (Flask's test client, a
bearer token, JSON answers) ``--runs`` times from the rollups (``use=rollups``) and
``--raw-runs`` times from the raw events (``use=raw``).  It prints p50 and p95 in
milliseconds, and the ratio raw / rollups.

The data: ``--dau`` devices active per day, drawn from a pool of ``--pool`` devices; each
device has a fixed app (2), os (3), device type (5), country (10) and app version (5);
events are 2% installs, 9% ``dau``, the rest custom ``event`` with 20 kingdoms; 2% more
are ``economy`` events in USD.

Funnels and experiments (their own section below, ``--only funnels`` to time just them,
without building the rollups): every install starts a tutorial / level_1 path, and 2% of
the rows assign their device to an experiment; each query runs ``--funnel-runs`` times.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cortex.app import create_app  # noqa: E402
from cortex.cli import initialise  # noqa: E402

ORG = "bench"
FIRST_DAY = date(2024, 1, 1)


def queries(days: int) -> list[tuple[str, str, dict]]:
    """(label, endpoint, arguments) of the dashboard queries timed."""
    last = FIRST_DAY + timedelta(days=days - 1)
    month = {"start_date": (last - timedelta(days=29)).isoformat(), "end_date": last.isoformat()}
    everything = {"start_date": FIRST_DAY.isoformat(), "end_date": last.isoformat()}
    return [
        ("events, 30 days by day", "events", month),
        ("economy events, 30 days", "events", {**month, "event_type": "economy"}),
        ("counts by kingdom, 30 days", "counts", {**month, "by": "kingdom", "event_type": "event"}),
        ("counts by type, 90 days by week", "counts", {**everything, "bucket": "week"}),
        ("DAU new/returning, 30 days", "active-users", month),
        ("MAU, 90 days by month", "active-users", {**everything, "bucket": "month"}),
        ("DAU iOS in one country, 30 days", "active-users", {**month, "os": "ios", "country": "c1"}),
        ("revenue/ARPDAU, 30 days", "revenue", month),
        ("top countries, 30 days", "breakdown", {**month, "dimension": "country"}),
        ("retention d1/d7/d30, 30 cohorts", "retention",
         {"start_date": (last - timedelta(days=59)).isoformat(), "end_date": (last - timedelta(days=30)).isoformat(),
          "days": "1,7,30"}),
    ]


def _sqlite_fill(engine: sa.Engine, events: int, days: int, dau: int, pool: int) -> None:
    per_day = events // days
    start = _epoch(FIRST_DAY)
    common = f"""
        WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < :count - 1),
        e AS (SELECT i, i / {per_day} AS day, ((i / {per_day}) * 7919 + (i % {dau}) * 104729) % {pool} AS dev,
                     {start} + (i / {per_day}) * 86400 + (i % {per_day}) * 86400 / {per_day} AS t FROM n)
    """
    time_text = "strftime('%Y-%m-%d %H:%M:%S', t, 'unixepoch') || '.000000'"
    dims = ("'app-' || (dev % 2), 'dev-' || dev, CASE dev % 3 WHEN 0 THEN 'ios' WHEN 1 THEN 'android' ELSE 'web' END,"
            " 'dt' || (dev % 5), 'c' || (dev % 10), '1.' || (dev % 5)")
    with engine.begin() as conn:
        conn.execute(sa.text(common + f"""
            INSERT INTO events (id, seq, org, app, device_tag, os, device_type, country, app_ver, type, kingdom,
                                received_at, event_datetime, event_time)
            SELECT printf('%032x', i), i, '{ORG}', {dims},
                   CASE WHEN i % 50 = 0 THEN 'install' WHEN i % 11 = 0 THEN 'dau' ELSE 'event' END,
                   CASE WHEN i % 50 <> 0 AND i % 11 <> 0 THEN 'k' || (i % 20) END,
                   {time_text}, {time_text}, {time_text}
            FROM e"""), {"count": events})
        conn.execute(sa.text(common + f"""
            INSERT INTO economy (id, seq, org, app, device_tag, os, device_type, country, app_ver, spend_amount,
                                 spend_currency, received_at, event_datetime, event_time)
            SELECT printf('e%031x', i), i, '{ORG}', {dims}, 0.99 + (i % 10), 'USD', {time_text}, {time_text}, {time_text}
            FROM e WHERE i % 50 = 7"""), {"count": events})


def _pg_fill(engine: sa.Engine, schema: str, events: int, days: int, dau: int, pool: int) -> None:
    per_day = events // days
    start = _epoch(FIRST_DAY)
    common = f"""
        WITH e AS (SELECT i, i / {per_day} AS day, ((i / {per_day}) * 7919 + (i % {dau}) * 104729) % {pool} AS dev,
                          to_timestamp({start} + (i / {per_day}) * 86400 + (i % {per_day}) * 86400.0 / {per_day}) AS t
                   FROM generate_series(0, :count - 1) AS i)
    """
    dims = ("'app-' || (dev % 2), 'dev-' || dev, CASE dev % 3 WHEN 0 THEN 'ios' WHEN 1 THEN 'android' ELSE 'web' END,"
            " 'dt' || (dev % 5), 'c' || (dev % 10), '1.' || (dev % 5)")
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
        conn.execute(sa.text(common + f"""
            INSERT INTO "{schema}".events (id, seq, org, app, device_tag, os, device_type, country, app_ver, type,
                                           kingdom, received_at, event_datetime, event_time)
            SELECT lpad(to_hex(i), 32, '0'), i, '{ORG}', {dims},
                   CASE WHEN i % 50 = 0 THEN 'install' WHEN i % 11 = 0 THEN 'dau' ELSE 'event' END,
                   CASE WHEN i % 50 <> 0 AND i % 11 <> 0 THEN 'k' || (i % 20) END, t, t, t
            FROM e"""), {"count": events})
        conn.execute(sa.text(common + f"""
            INSERT INTO "{schema}".economy (id, seq, org, app, device_tag, os, device_type, country, app_ver,
                                            spend_amount, spend_currency, received_at, event_datetime, event_time)
            SELECT 'e' || lpad(to_hex(i), 31, '0'), i, '{ORG}', {dims}, 0.99 + (i % 10), 'USD', t, t, t
            FROM e WHERE i % 50 = 7"""), {"count": events})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f'VACUUM ANALYZE "{schema}".events')
        conn.exec_driver_sql(f'VACUUM ANALYZE "{schema}".economy')


# -- funnels and experiments ------------------------------------------------------------------
# Both read the raw events (no rollup holds the order of events within a day).  Their data is
# added beside the dashboard data above, without changing it: every install starts a path
# (tutorial a minute later for 60% of installs, level_1 ten minutes later for 30%), and 2% of
# the event rows assign their device to one of two experiments with two variants each (half of
# them 30 seconds before the device's purchase).

FUNNEL_STEPS = ((60, "tutorial", 3, 5), (600, "level_1", 3, 10))  # seconds after the install, kingdom, share


def funnel_queries(days: int) -> list[tuple[str, str, dict]]:
    """(label, endpoint, arguments) of the funnel and experiment queries timed."""
    last = FIRST_DAY + timedelta(days=days - 1)
    month = {"start_date": (last - timedelta(days=29)).isoformat(), "end_date": last.isoformat()}
    week = {"start_date": (last - timedelta(days=6)).isoformat(), "end_date": last.isoformat()}
    everything = {"start_date": FIRST_DAY.isoformat(), "end_date": last.isoformat()}
    return [
        ("funnel install>tutorial>level_1, 7 d", "funnel", {**week, "steps": "install,event:tutorial,event:level_1"}),
        ("funnel install>tutorial>level_1, 30 d", "funnel",
         {**month, "steps": "install,event:tutorial,event:level_1", "window": 3600}),
        ("funnel dau>economy, 30 d, 7-day window", "funnel", {**month, "steps": "dau,economy", "window": 7 * 86400}),
        ("funnel iOS in one country, 30 d", "funnel",
         {**month, "steps": "install,event:tutorial,event:level_1", "os": "ios", "country": "c1"}),
        ("funnel install>tutorial>level_1, 90 d", "funnel", {**everything, "steps": "install,event:tutorial,event:level_1"}),
        ("experiments, 30 d", "experiments", month),
        ("experiments, 90 d", "experiments", everything),
        ("one experiment to level_1 events, 30 d", "experiments",
         {**month, "experiment": "exp0", "conversion_event": "event"}),
    ]


def _sqlite_fill_funnels(engine: sa.Engine, events: int, days: int, dau: int, pool: int) -> None:
    per_day = events // days
    start = _epoch(FIRST_DAY)
    common = f"""
        WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < :count - 1),
        e AS (SELECT i, ((i / {per_day}) * 7919 + (i % {dau}) * 104729) % {pool} AS dev,
                     {start} + (i / {per_day}) * 86400 + (i % {per_day}) * 86400 / {per_day} AS t FROM n)
    """
    dims = ("'app-' || (dev % 2), 'dev-' || dev, CASE dev % 3 WHEN 0 THEN 'ios' WHEN 1 THEN 'android' ELSE 'web' END,"
            " 'dt' || (dev % 5), 'c' || (dev % 10), '1.' || (dev % 5)")
    with engine.begin() as conn:
        for offset, kingdom, below, modulo in FUNNEL_STEPS:
            time_text = f"strftime('%Y-%m-%d %H:%M:%S', t + {offset}, 'unixepoch') || '.000000'"
            conn.execute(sa.text(common + f"""
                INSERT INTO events (id, seq, org, app, device_tag, os, device_type, country, app_ver, type, kingdom,
                                    received_at, event_datetime, event_time)
                SELECT printf('f{offset:03d}%029x', i), i, '{ORG}', {dims}, 'event', '{kingdom}',
                       {time_text}, {time_text}, {time_text}
                FROM e WHERE i % 50 = 0 AND (i / 50) % {modulo} < {below}"""), {"count": events})
        time_text = "strftime('%Y-%m-%d %H:%M:%S', t - 30 * (i % 100 = 7), 'unixepoch') || '.000000'"
        conn.execute(sa.text(common + f"""
            INSERT INTO experiments (id, seq, org, app, device_tag, os, device_type, country, app_ver,
                                     experiment_name, variant_name, received_at, event_datetime, event_time)
            SELECT printf('x%031x', i), i, '{ORG}', {dims}, 'exp' || (dev % 2),
                   CASE (dev / 2) % 2 WHEN 0 THEN 'control' ELSE 'treatment' END, {time_text}, {time_text}, {time_text}
            FROM e WHERE i % 100 IN (3, 7)"""), {"count": events})
        conn.exec_driver_sql("ANALYZE")


def _pg_fill_funnels(engine: sa.Engine, schema: str, events: int, days: int, dau: int, pool: int) -> None:
    per_day = events // days
    start = _epoch(FIRST_DAY)
    common = f"""
        WITH e AS (SELECT i, ((i / {per_day}) * 7919 + (i % {dau}) * 104729) % {pool} AS dev,
                          {start} + (i / {per_day}) * 86400 + (i % {per_day}) * 86400.0 / {per_day} AS t
                   FROM generate_series(0, :count - 1) AS i)
    """
    dims = ("'app-' || (dev % 2), 'dev-' || dev, CASE dev % 3 WHEN 0 THEN 'ios' WHEN 1 THEN 'android' ELSE 'web' END,"
            " 'dt' || (dev % 5), 'c' || (dev % 10), '1.' || (dev % 5)")
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
        for offset, kingdom, below, modulo in FUNNEL_STEPS:
            conn.execute(sa.text(common + f"""
                INSERT INTO "{schema}".events (id, seq, org, app, device_tag, os, device_type, country, app_ver, type,
                                               kingdom, received_at, event_datetime, event_time)
                SELECT 'f{offset:03d}' || lpad(to_hex(i), 28, '0'), i, '{ORG}', {dims}, 'event', '{kingdom}',
                       to_timestamp(t + {offset}), to_timestamp(t + {offset}), to_timestamp(t + {offset})
                FROM e WHERE i % 50 = 0 AND (i / 50) % {modulo} < {below}"""), {"count": events})
        conn.execute(sa.text(common + f"""
            INSERT INTO "{schema}".experiments (id, seq, org, app, device_tag, os, device_type, country, app_ver,
                                                experiment_name, variant_name, received_at, event_datetime, event_time)
            SELECT 'x' || lpad(to_hex(i), 31, '0'), i, '{ORG}', {dims}, 'exp' || (dev % 2),
                   CASE (dev / 2) % 2 WHEN 0 THEN 'control' ELSE 'treatment' END,
                   to_timestamp(t - 30 * (i % 100 / 7)), to_timestamp(t - 30 * (i % 100 / 7)),
                   to_timestamp(t - 30 * (i % 100 / 7))
            FROM e WHERE i % 100 IN (3, 7)"""), {"count": events})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for name in ("events", "economy", "experiments"):
            conn.exec_driver_sql(f'VACUUM ANALYZE "{schema}".{name}')


def fill_funnel_data(kind: str, engine: sa.Engine, schema: str, args) -> None:
    """Add the funnel paths and experiment assignments to the filled database."""
    if kind == "sqlite":
        _sqlite_fill_funnels(engine, args.events, args.days, args.dau, args.pool)
    else:
        _pg_fill_funnels(engine, schema, args.events, args.days, args.dau, args.pool)


def time_funnels_and_experiments(kind: str, client, headers: dict, args) -> list[dict]:
    """Time each funnel and experiment query (raw events only); returns the rows of their table."""
    print(f"| database   | {'funnel or experiment query':40} |  p50 ms   p95 ms | users per step; variant users/converted |")
    rows = []
    for label, endpoint, params in funnel_queries(args.days):
        spent = []
        for _ in range(args.funnel_runs):
            began = time.perf_counter()
            answer = client.get(f"/api/v1/analytics/{endpoint}", headers=headers,
                                query_string={"business_id": ORG, **params})
            spent.append((time.perf_counter() - began) * 1000)
            if answer.status_code != 200:
                raise RuntimeError(f"{label}: {answer.status_code} {answer.data[:300]!r}")
        row = {"database": kind, "query": label, "p50": statistics.median(spent), "p95": _percentile(spent, 0.95),
               "answer": _funnel_summary(answer.json)}
        rows.append(row)
        print(f"| {kind:10} | {label:40} | {row['p50']:8.1f} {row['p95']:8.1f} | {row['answer']} |", flush=True)
    return rows


def _funnel_summary(answer: dict) -> str:
    if "steps" in answer:
        return " > ".join(str(step["users"]) for step in answer["steps"])
    return "; ".join(f"{v['variant']} {v['users']}/{v['converted']}" for e in answer["experiments"] for v in e["variants"])


def _epoch(day: date) -> int:
    return (day - date(1970, 1, 1)).days * 86400


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def run_database(kind: str, args) -> list[dict]:
    """Fill one database, build its rollups, time every query; returns the rows of the table."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"cortex-analytics-bench-{kind}-"))
    schema = f"cortex_bench_{uuid.uuid4().hex[:8]}"
    sink = {"type": "sql"}
    if kind == "postgresql":
        sink.update(url=args.pg_url, schema=schema)
    app = create_app(overrides={"data_dir": str(data_dir), "logging": {"level": "WARNING"}, "sinks": {"sql": sink}})
    state = app.extensions["cortex"]
    initialise(state, org=ORG)
    from cortex.analytics.setup import accounts_of

    accounts = accounts_of(state)
    accounts.create_user("bench@example.com", "bench password")
    accounts.set_role("bench@example.com", ORG, "analyst")
    token, _ = accounts.create_token("bench@example.com")
    sql_sink = state.make_sinks()[0]
    sql_sink.open()
    try:
        started = time.perf_counter()
        if kind == "sqlite":
            _sqlite_fill(sql_sink.engine, args.events, args.days, args.dau, args.pool)
        else:
            _pg_fill(sql_sink.engine, schema, args.events, args.days, args.dau, args.pool)
        fill_funnel_data(kind, sql_sink.engine, schema, args)
        fill_seconds = time.perf_counter() - started
        client = app.test_client()
        headers = {"Authorization": f"Bearer {token}"}
        if args.only == "funnels":
            print(f"\n{kind}: filled in {fill_seconds:.0f} s", flush=True)
            return time_funnels_and_experiments(kind, client, headers, args)
        started = time.perf_counter()
        sql_sink.recompute_rollups(ORG, FIRST_DAY, FIRST_DAY + timedelta(days=args.days - 1))
        rollup_seconds = time.perf_counter() - started
        with sql_sink.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            prefix = f'"{schema}".' if kind == "postgresql" else ""
            sizes = {name: conn.exec_driver_sql(f"SELECT count(*) FROM {prefix}{name}").scalar_one()
                     for name in ("events", "economy", "rollup_events", "rollup_device_days", "rollup_devices")}
            # the steady state autovacuum keeps: statistics, and a visibility map that lets
            # index-only scans skip the table
            for name in ("rollup_events", "rollup_device_days", "rollup_devices"):
                conn.exec_driver_sql(f"{'VACUUM ANALYZE' if kind == 'postgresql' else 'ANALYZE'} {prefix}{name}")
        # the day bitmaps: built by the first query that needs a day (here all at once, timed)
        from cortex.analytics import bitmaps
        from cortex.analytics.scope import operator_scope
        from cortex.analytics.setup import analytics_store_of

        started = time.perf_counter()
        bitmaps.prepare(operator_scope(ORG, analytics_store_of(state)), FIRST_DAY,
                        FIRST_DAY + timedelta(days=args.days - 1))
        bitmap_seconds = time.perf_counter() - started
        if kind == "postgresql":
            with sql_sink.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                for name in ("rollup_bitmaps", "rollup_device_ids"):
                    conn.exec_driver_sql(f'VACUUM ANALYZE "{schema}".{name}')
        print(f"\n{kind}: filled {sizes['events'] + sizes['economy']:,} events in {fill_seconds:.0f} s; rollups built in "
              f"{rollup_seconds:.0f} s ({sizes['rollup_events']:,} event rows, {sizes['rollup_device_days']:,} "
              f"device-days, {sizes['rollup_devices']:,} devices); day bitmaps built in {bitmap_seconds:.0f} s", flush=True)
        client = app.test_client()
        headers = {"Authorization": f"Bearer {token}"}
        rows = []
        for label, endpoint, params in queries(args.days):
            timings = {}
            for use, runs in (("rollups", args.runs), ("raw", args.raw_runs)):
                if runs == 0:
                    continue
                spent = []
                for _ in range(runs):
                    began = time.perf_counter()
                    answer = client.get(f"/api/v1/analytics/{endpoint}", headers=headers,
                                        query_string={"business_id": ORG, "use": use, **params})
                    spent.append((time.perf_counter() - began) * 1000)
                    if answer.status_code != 200:
                        raise RuntimeError(f"{label} ({use}): {answer.status_code} {answer.data[:300]!r}")
                timings[use] = spent
            row = {"database": kind, "query": label,
                   "rollups_p50": statistics.median(timings["rollups"]), "rollups_p95": _percentile(timings["rollups"], 0.95)}
            if "raw" in timings:
                row["raw_p50"] = statistics.median(timings["raw"])
                row["raw_p95"] = _percentile(timings["raw"], 0.95)
            rows.append(row)
            _print_row(row)
        if args.only != "dashboard":
            rows += time_funnels_and_experiments(kind, client, headers, args)
        return rows
    finally:
        sql_sink.close()
        state.extras.get("analytics_store") and state.extras["analytics_store"].dispose()
        remove_database(kind, args.pg_url, schema, data_dir)


def remove_database(kind: str, pg_url: str, schema: str, data_dir) -> None:
    """Drop a run's PostgreSQL schema (``kind`` "postgresql") and its data directory."""
    if kind == "postgresql":
        engine = sa.create_engine(pg_url)
        with engine.begin() as conn:
            conn.execute(sa.schema.DropSchema(schema, cascade=True, if_exists=True))
        engine.dispose()
    shutil.rmtree(data_dir, ignore_errors=True)


def _print_row(row: dict) -> None:
    raw = f"{row['raw_p50']:9.0f} {row['raw_p95']:9.0f} {row['raw_p50'] / row['rollups_p50']:8.0f}x" if "raw_p50" in row else ""
    print(f"| {row['database']:10} | {row['query']:34} | {row['rollups_p50']:7.1f} {row['rollups_p95']:7.1f} | {raw} |",
          flush=True)


def main() -> None:
    """Parse the options, run each database, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--dau", type=int, default=10_000, help="devices active per day")
    parser.add_argument("--pool", type=int, default=100_000, help="devices in all")
    parser.add_argument("--runs", type=int, default=20, help="runs of each query from the rollups")
    parser.add_argument("--raw-runs", type=int, default=3, help="runs of each query from the raw events (0: skip)")
    parser.add_argument("--funnel-runs", type=int, default=5, help="runs of each funnel and experiment query")
    parser.add_argument("--only", choices=("all", "dashboard", "funnels"), default="all",
                        help="time only the dashboard queries, or only the funnels and experiments (no rollups)")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--pg-url", default=os.environ.get("CORTEX_TEST_POSTGRES",
                                                           "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    args = parser.parse_args()
    print(f"{args.events:,} events over {args.days} days, {args.dau:,} devices a day out of {args.pool:,}")
    print("| database   | query                              | rollups p50 / p95 ms | raw p50 / p95 ms, raw/rollups p50 |")
    everything = []
    for kind in args.databases.split(","):
        everything += run_database(kind.strip(), args)
    worst = max((row["rollups_p95"] for row in everything if "rollups_p95" in row), default=0)
    print(f"\nslowest p95 from the rollups: {worst:.0f} ms (target: under 200 ms)")


if __name__ == "__main__":
    main()
