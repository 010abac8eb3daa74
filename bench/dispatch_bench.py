"""What the dispatcher costs per event, delivering into the SQL sink on SQLite.

    .venv/bin/python bench/dispatch_bench.py [--events 20000] [--sizes 1,10,100]

For bundles of 1, 10 and 100 events (the mix and times of ``bench/ingest.lua``: 6
``event``, 2 ``economy``, 1 ``dau``, 1 ``install`` in every ten, 3 s apart, one device per
bundle) it posts
``--events`` events through the ingest API (in-process, the dispatcher not running), then
drains the queue in this thread and measures CPU and wall time per event:

- ``sql``: the defaults (``sql`` sink with its rollups);
- ``sql, rollups off``: the same sink with ``rollups = false``;
- ``floor``: the same records (as the sink receives them) inserted with one
  ``executemany`` per batch into a one-table SQLite database of the same journal settings
  (each record one row: id and JSON text), one transaction per batch; the least a durable
  write of the batch can cost here.

The ratios are against the floor, measured in the same run.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cortex.app import create_app  # noqa: E402
from cortex.cli import initialise  # noqa: E402
from cortex.dispatcher import Dispatcher  # noqa: E402

MIX = ("event", "economy", "event", "dau", "event", "event", "economy", "event", "install", "event")


def event(kind: str, index: int, moment: str) -> dict:
    """One event of the benchmark mix."""
    common = {"event_index": index, "event_datetime": moment}
    if kind == "event":
        return {"type": "event", "kingdom": "progress", "phylum": "level", "class": "complete",
                "order": "world_3", "family": "stage_12", "genus": "boss", "species": "three_stars",
                "float1": 1.5, "online_status": "online-wifi", **common}
    if kind == "economy":
        return {"type": "economy", "kingdom": "store", "phylum": "gems", "class": "bundle", "order": "starter",
                "spend_amount": 4.99, "spend_currency": "USD", "spend_type": "iap", **common}
    if kind == "dau":
        return {"type": "dau", "online_status": "online-cellular", **common}
    return {"type": "install", "kingdom": "organic", "phylum": "app_store", **common}


def fill(directory: Path, size: int, total: int, rollups: bool):
    """A Cortex app in ``directory`` whose queue holds ``total`` events in bundles of ``size``."""
    config = {"data_dir": str(directory), "logging": {"level": "WARNING"},
              "dispatcher": {"embedded": False},
              # one client posts every bundle here; the default limits are for the network
              "rate_limits": {"per_key": "1000000/second", "per_ip": "1000000/second"},
              "sinks": {"sql": {"type": "sql", "rollups": rollups}}}
    app = create_app(overrides=config)
    state = app.extensions["cortex"]
    api_key = initialise(state)
    client = app.test_client()
    start = time.time()
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(start))
    # as bench/ingest.lua: a bundle's events 3 s apart, the last one 3 s ago
    moments = [time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(start - (size - i) * 3)) for i in range(size)]
    for bundle in range(total // size):
        body = {"api_key": api_key, "app_ver": "2.7.1", "device_tag": f"device-{bundle}", "os": "ios",
                "os_ver": "17.4.1", "device_type": "iphone", "language": "en",
                "events": [event(MIX[i % 10], bundle * 1000 + i, moments[i]) for i in range(size)]}
        answer = client.post(f"/demo/1/track?current_time={now}", data=orjson.dumps(body),
                             content_type="text/plain")
        assert answer.status_code == 200, answer.data
    return state


def drain(state) -> tuple[float, float]:
    """CPU and wall seconds to deliver the whole queue, as the running dispatcher does it
    (sinks opened beforehand; no housekeeping)."""
    dispatcher = Dispatcher(state)
    dispatcher.enriched.open()
    for runner in dispatcher.runners:
        runner.open()
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        for runner in dispatcher.runners:
            while not runner.caught_up():
                runner.step()
        return time.process_time() - cpu, time.perf_counter() - wall
    finally:
        for runner in dispatcher.runners:
            runner.close()
        dispatcher.enriched.close()


def floor(state, directory: Path) -> tuple[float, float]:
    """CPU and wall seconds to write the queue's records, batch by batch, into one table."""
    batch_size = state.config["dispatcher"]["batch_size"]
    entries = list(state.queue.iter_all())  # read and expanded before timing (the floor writes only)
    database = sqlite3.connect(directory / "floor.db", isolation_level=None)
    database.execute("PRAGMA journal_mode=WAL")
    database.execute("PRAGMA synchronous=NORMAL")
    database.execute("CREATE TABLE records (id TEXT PRIMARY KEY, body TEXT)")
    cpu, wall = time.process_time(), time.perf_counter()
    batch: list[tuple] = []

    def write() -> None:
        database.execute("BEGIN")
        database.executemany("INSERT INTO records VALUES (?, ?) ON CONFLICT (id) DO NOTHING", batch)
        database.execute("COMMIT")
        batch.clear()

    for entry in entries:
        for record in entry.records:
            batch.append((record["id"], orjson.dumps(record).decode()))
            if len(batch) >= batch_size:
                write()
    if batch:
        write()
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20000, help="events per case")
    parser.add_argument("--sizes", default="1,10,100", help="events per bundle")
    args = parser.parse_args()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        results = {}
        for label, rollups in (("sql", True), ("sql, rollups off", False)):
            with tempfile.TemporaryDirectory() as tmp:
                state = fill(Path(tmp), size, args.events, rollups)
                if label == "sql":  # before the dispatcher delivers (and prunes) the entries
                    results["floor"] = floor(state, Path(tmp))
                results[label] = drain(state)
                state.close() if hasattr(state, "close") else None
        base_cpu = results["floor"][0]
        for label, (cpu, wall) in results.items():
            rows.append((size, label, cpu / args.events * 1e6, wall / args.events * 1e6, cpu / base_cpu))
    print(f"{'events/bundle':>13}  {'case':<18} {'CPU µs/event':>12} {'wall µs/event':>13} {'CPU vs floor':>12}")
    for size, label, cpu, wall, ratio in rows:
        print(f"{size:>13}  {label:<18} {cpu:>12.1f} {wall:>13.1f} {ratio:>11.1f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
