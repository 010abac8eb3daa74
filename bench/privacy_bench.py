"""What retention and data-subject requests cost the dispatcher, measured in one run.

1. Delivery to the ``sql`` sink (SQLite) of the same events with no tombstone (the
   baseline), and with tombstones of 1,000 other people (every record is then checked).
2. Retention deleting old rows in batches: rows/s and the longest single batch (how long
   the sink's write lock is held at a time), for several batch sizes.
3. A data-subject deletion among many rows: finding the rows (no lock) and deleting them
   (write lock).

    python bench/privacy_bench.py [--events 20000]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson

from cortex.app import create_app
from cortex.cli import initialise
from cortex.dispatcher import Dispatcher
from cortex.privacy import erase_subject
from cortex.privacy_store import PrivacyStore
from cortex.subjects import Subject


def make(data_dir: Path, **overrides):
    app = create_app(overrides={"data_dir": str(data_dir), "logging": {"level": "WARNING"}, **overrides})
    state = app.extensions["cortex"]
    return app, state, initialise(state)


def post(app, key: str, count: int, moment: datetime, people: int = 500) -> None:
    client = app.test_client()
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    for start in range(0, count, 100):
        person = (start // 100) % people
        events = [{"type": "event", "event_datetime": stamp, "event_index": start + i, "kingdom": "bench"}
                  for i in range(min(100, count - start))]
        body = {"api_key": key, "device_tag": f"device-{person}", "user_tag": f"user-{person}", "events": events}
        answer = client.post(f"/demo/1/track?current_time={now}", data=orjson.dumps(body), content_type="text/plain")
        assert answer.status_code == 200, answer.data


def deliver_seconds(state) -> float:
    started = time.perf_counter()
    Dispatcher(state).drain(timeout=3600)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20000)
    args = parser.parse_args()
    n = args.events
    root = Path(tempfile.mkdtemp(prefix="cortex-privacy-bench-"))
    print(f"events: {n}; data under {root}\n")

    # 1. delivery with and without tombstones: each three times, alternating; the best counts
    best: dict[str, float] = {}
    labels = (("no tombstone (baseline)", 0), ("1,000 tombstones of others", 1000))
    for attempt in range(3):
        for label, tombstones in labels:
            app, state, key = make(root / f"deliver-{tombstones}-{attempt}")
            store = PrivacyStore(state.queue)
            for i in range(tombstones):
                store.add_tombstone(Subject("demo", {"user_tag": (f"gone-{i}",), "device_tag": (f"gone-dev-{i}",)}))
            post(app, key, n, datetime.now(timezone.utc))
            seconds = deliver_seconds(state)
            best[label] = min(seconds, best.get(label, seconds))
    base = best[labels[0][0]]
    print(f"{'delivery to sql (SQLite), best of 3':34} {'seconds':>8} {'events/s':>10} {'ratio':>6}")
    for label, seconds in best.items():
        print(f"{label:34} {seconds:8.2f} {n / seconds:10.0f} {seconds / base:6.2f}")

    # 2. retention in batches
    print(f"\n{'retention (SQLite)':20} {'rows':>7} {'seconds':>8} {'rows/s':>9} {'longest batch ms':>17}")
    for batch in (500, 1000, 5000):
        app, state, key = make(root / f"retention-{batch}",
                               retention={"events_days": 30, "batch_size": batch, "max_seconds": 0})
        post(app, key, n, datetime.now(timezone.utc) - timedelta(days=100))
        dispatcher = Dispatcher(state)
        runner = dispatcher.runners[0]
        runner.open()
        while not runner.caught_up():
            runner.step()
        longest = 0.0
        started = time.perf_counter()
        total = 0
        policy = runner.retention.policy()
        while True:
            one = time.perf_counter()
            count = runner.sink.expire(policy, batch)
            longest = max(longest, time.perf_counter() - one)
            total += count
            if count < batch:
                break
        seconds = time.perf_counter() - started
        runner.close()
        print(f"batch_size {batch:<9} {total:7} {seconds:8.2f} {total / seconds:9.0f} {longest * 1000:17.1f}")

    # 3. one person among many
    app, state, key = make(root / "erase")
    post(app, key, n, datetime.now(timezone.utc))
    deliver_seconds(state)
    subject = Subject.build(state, "demo", {"user_tag": ["user-7"]})
    started = time.perf_counter()
    result = erase_subject(state, subject, tombstone=True)
    seconds = time.perf_counter() - started
    print(f"\ndelete one person among {n} rows: {result['sinks']['sql']['removed']} rows in {seconds * 1000:.0f} ms")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
