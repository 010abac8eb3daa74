"""What a day's device bitmaps cost to build: live (today's, for each query) and to store.

    .venv/bin/python bench/bitmaps_bench.py                      # 10,000 devices a day, both databases
    .venv/bin/python bench/bitmaps_bench.py --databases sqlite --dau 50000 --pool 500000

Fills ``--days`` days of events the way ``bench/analytics_bench.py`` does (its data, its
``INSERT ... SELECT``), builds the rollups, numbers the devices once (as the first query
of a day does), then builds one day's bitmaps ``--runs`` times each way: live for the
slices a query needs (all devices; new devices; os and country), and every slice, as a
day that is over is built once and stored.  Prints the median and worst in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import analytics_bench as data  # noqa: E402
from cortex.analytics import bitmaps  # noqa: E402
from cortex.analytics.scope import operator_scope  # noqa: E402
from cortex.analytics.setup import analytics_store_of  # noqa: E402
from cortex.app import create_app  # noqa: E402
from cortex.cli import initialise  # noqa: E402

#: (label, slices built; None: every slice)
CASES = [("live: all devices", {bitmaps.ALL}), ("live: new devices", {bitmaps.ALL, bitmaps.NEW}),
         ("live: os and country", {bitmaps.ALL, "os", "country"}), ("every slice (stored)", None)]


def run_database(kind: str, args) -> None:
    """Fill one database, then time the builds of one day's bitmaps."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"cortex-bitmaps-bench-{kind}-"))
    schema = f"cortex_bench_{uuid.uuid4().hex[:8]}"
    sink_options = {"type": "sql"}
    if kind == "postgresql":
        sink_options.update(url=args.pg_url, schema=schema)
    app = create_app(overrides={"data_dir": str(data_dir), "logging": {"level": "WARNING"},
                                "sinks": {"sql": sink_options}})
    state = app.extensions["cortex"]
    initialise(state, org=data.ORG)
    sink = state.make_sinks()[0]
    sink.open()
    store = analytics_store_of(state)
    try:
        events = args.dau * 11 * args.days  # about 11 events per device and day, as in the analytics data
        if kind == "sqlite":
            data._sqlite_fill(sink.engine, events, args.days, args.dau, args.pool)
        else:
            data._pg_fill(sink.engine, schema, events, args.days, args.dau, args.pool)
        last = data.FIRST_DAY + timedelta(days=args.days - 1)
        sink.recompute_rollups(data.ORG, data.FIRST_DAY, last)
        scope = operator_scope(data.ORG, store)
        days = bitmaps.day_range(data.FIRST_DAY, last)
        with store.engine.connect() as conn:  # number every device once, as the first queries do
            bitmaps._build(conn, scope, days, {bitmaps.ALL})
            conn.commit()
        if kind == "postgresql":
            with sink.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                for name in ("rollup_device_days", "rollup_devices", "rollup_device_ids"):
                    conn.exec_driver_sql(f'VACUUM ANALYZE "{schema}".{name}')
        for label, slices in CASES:
            spent = []
            for run in range(args.runs):
                with store.engine.connect() as conn:
                    started = time.perf_counter()
                    bitmaps._build(conn, scope, [days[run % len(days)]], slices)
                    spent.append((time.perf_counter() - started) * 1000)
            print(f"| {kind:10} | {label:22} | {statistics.median(spent):7.0f} | {max(spent):7.0f} |", flush=True)
    finally:
        sink.close()
        store.dispose()
        data.remove_database(kind, args.pg_url, schema, data_dir)


def main() -> None:
    """Parse the options and run each database."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--dau", type=int, default=10_000, help="devices active per day")
    parser.add_argument("--pool", type=int, default=100_000, help="devices in all")
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--pg-url", default=os.environ.get("CORTEX_TEST_POSTGRES",
                                                           "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    args = parser.parse_args()
    print(f"one day of {args.dau:,} active devices (out of {args.pool:,})")
    print("| database   | build                  | median ms | worst ms |")
    for kind in args.databases.split(","):
        run_database(kind.strip(), args)


if __name__ == "__main__":
    main()
