"""What one request's queue commit costs, in isolation, against a bare SQLite write.

    .venv/bin/python bench/queue_commit_bench.py [--requests 2000] [--warm 200000]

For bundles of 1, 10 and 100 events it measures, in one process with no other load on the
queue:

- ``SQLiteQueue.submit``: the real commit of a request (dedupe keys claimed, the entry with
  its records, the per-org counters, one transaction, WAL, ``synchronous=NORMAL``), on a
  queue already holding ``--warm`` dedupe keys;
- ``LMDBIngest.submit``: the same commit into the LMDB ingest store (``queue.ingest =
  "lmdb"``), holding as many keys;
- the baseline: the same serialised entry inserted into a one-table SQLite database with
  the same journal settings, one transaction per request (the least a durable queue write
  can cost here).

It prints CPU and wall time per request and the ratio to the baseline.  Compare the
figures with ``ingest_bench.py``'s profile: what a commit costs under load beyond this is
contention (the workers' writer lock, the dispatcher's reads and cursor updates).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cortex.queue import SQLiteQueue, Submission  # noqa: E402
from cortex.queue_lmdb import LMDBIngest  # noqa: E402

SHARED = {"device_tag": "bench-device", "app_ver": "1.0", "os": "ios", "os_ver": "17.1", "language": "en"}


def keyed_records(count: int, first_index: int) -> list[tuple[bytes, dict]]:
    """``count`` records shaped as the ingest pipeline makes them, with fresh keys."""
    now_ms = int(time.time() * 1000).to_bytes(6, "big")
    records = []
    for index in range(first_index, first_index + count):
        key = now_ms + os.urandom(10)
        records.append((key, {
            "id": key.hex(), "kind": "track", "type": "event", "event_index": index,
            "event_datetime": "2026-11-23T10:00:00.000Z", "event_time": "2026-11-23T10:00:00.000Z",
            "received_at": "2026-11-23T10:00:00.100Z", "kingdom": "shop", "phylum": "tap",
            "class": "button", "order": "buy", "family": "checkout", "genus": "basket",
            "species": "confirm", "float1": 1.5,
        }))
    return records


def measure(function, requests: int) -> tuple[float, float]:
    """CPU and wall microseconds per call of ``function(i)``."""
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(requests):
        function(i)
    return ((time.process_time() - cpu) / requests * 1e6, (time.perf_counter() - wall) / requests * 1e6)


def bench_size(size: int, requests: int, warm: int, workdir: Path) -> dict[str, float]:
    """The queue's and the baseline's cost per request for ``size``-event bundles."""
    queue = SQLiteQueue(str(workdir / f"queue-{size}.db"))
    queue.create_schema()
    for start in range(0, warm, 1000):
        queue.submit(Submission("demo", 1, keyed_records(1000, start), [], shared=SHARED))
    batches = [keyed_records(size, 10**8 + i * size) for i in range(requests)]
    queue_cpu, queue_wall = measure(
        lambda i: queue.submit(Submission("demo", 1, batches[i], [], shared=SHARED)), requests)

    store = LMDBIngest(str(workdir / f"queue-{size}.ingest.mdb"))
    for start in range(0, warm, 1000):
        store.submit(Submission("demo", 1, keyed_records(1000, start), [], shared=SHARED))
    batches = [keyed_records(size, 10**8 + i * size) for i in range(requests)]
    lmdb_cpu, lmdb_wall = measure(
        lambda i: store.submit(Submission("demo", 1, batches[i], [], shared=SHARED)), requests)
    store.close()

    bare = sqlite3.connect(workdir / f"bare-{size}.db", isolation_level=None)
    bare.execute("PRAGMA journal_mode=WAL")
    bare.execute("PRAGMA synchronous=NORMAL")
    bare.execute("CREATE TABLE entries (seq INTEGER PRIMARY KEY, records BLOB NOT NULL)")
    blobs = [keyed_records(size, 10**9 + i * size) for i in range(requests)]

    def bare_write(i: int) -> None:
        blob = orjson.dumps({"shared": SHARED, "records": [record for _, record in blobs[i]], "rejected": []})
        bare.execute("BEGIN IMMEDIATE")
        bare.execute("INSERT INTO entries (records) VALUES (?)", (blob,))
        bare.execute("COMMIT")

    bare_cpu, bare_wall = measure(bare_write, requests)
    bare.close()
    return {"queue_cpu": queue_cpu, "queue_wall": queue_wall, "lmdb_cpu": lmdb_cpu, "lmdb_wall": lmdb_wall,
            "bare_cpu": bare_cpu, "bare_wall": bare_wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests measured per bundle size")
    parser.add_argument("--warm", type=int, default=200_000, help="dedupe keys in the queue before measuring")
    parser.add_argument("--sizes", default="1,10,100", help="events per bundle, comma-separated")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="cortex-commit-bench-") as tmp:
        rows = [(size, bench_size(size, args.requests, args.warm, Path(tmp))) for size in sizes]
    print(f"{'events':>6}  {'queue cpu µs':>12}  {'queue wall µs':>13}  {'lmdb cpu µs':>11}  {'lmdb wall µs':>12}  "
          f"{'bare cpu µs':>11}  {'bare wall µs':>12}  {'queue/bare':>10}  {'lmdb/bare':>9}")
    for size, r in rows:
        print(f"{size:>6}  {r['queue_cpu']:>12.1f}  {r['queue_wall']:>13.1f}  {r['lmdb_cpu']:>11.1f}  "
              f"{r['lmdb_wall']:>12.1f}  {r['bare_cpu']:>11.1f}  {r['bare_wall']:>12.1f}  "
              f"{r['queue_cpu'] / r['bare_cpu']:>10.2f}  {r['lmdb_cpu'] / r['bare_cpu']:>9.2f}")


if __name__ == "__main__":
    main()
