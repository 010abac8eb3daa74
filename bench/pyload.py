"""Bundles for the benchmark, and a Python load generator for hosts without ``wrk``.

:func:`make_bundle` builds the same bundles as ``ingest.lua`` (same fields, same mix of
event types, a unique device_tag and event_index per request); ``ingest_bench.py`` uses it
for its readiness probe.

Run as a script, this module is the fallback load generator: ``--connections`` threads,
each sending one request at a time for ``--duration`` seconds, and prints one line
``WRK_JSON {...}`` in the format of ``ingest.lua``'s ``done()``.  It is limited by the GIL
of its own process to a few thousand requests per second, so against a fast server it
measures itself as much as the server: prefer ``wrk``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
from datetime import datetime, timedelta, timezone

import orjson

#: the mix of event types, cycled through (as in ingest.lua)
MIX = ["event", "economy", "event", "dau", "event", "event", "economy", "event", "install", "event"]


def iso(moment: datetime) -> str:
    """``moment`` as ISO 8601 UTC with second precision (``2024-05-01T10:42:00Z``)."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_event(kind: str, index: int, position: int, when: str) -> dict:
    """One event of type ``kind`` with event_index ``index``."""
    if kind == "event":
        return {"type": "event", "kingdom": "progress", "phylum": "level", "class": "complete",
                "order": "world_3", "family": "stage_12", "genus": "boss", "species": "three_stars",
                "float1": 1 + (position * 7 % 50) / 4, "online_status": "online-wifi",
                "event_index": index, "event_datetime": when}
    if kind == "economy":
        return {"type": "economy", "kingdom": "store", "phylum": "gems", "class": "bundle",
                "order": "starter", "spend_amount": (0.99, 4.99, 19.99)[position % 3],
                "spend_currency": "USD", "spend_type": "iap", "event_index": index, "event_datetime": when}
    if kind == "dau":
        return {"type": "dau", "online_status": "online-cellular", "event_index": index, "event_datetime": when}
    return {"type": "install", "kingdom": "organic", "phylum": "app_store", "event_index": index,
            "event_datetime": when}


def make_bundle(api_key: str, device_tag: str, size: int, counter: int, now: datetime | None = None) -> bytes:
    """A bundle of ``size`` events for ``device_tag``; event_index = counter * 1000 + position."""
    now = now or datetime.now(timezone.utc)
    events = [
        make_event(MIX[(counter * size + i) % len(MIX)], counter * 1000 + i, i,
                   iso(now - timedelta(seconds=(size - i) * 3)))
        for i in range(size)
    ]
    bundle = {"api_key": api_key, "app_ver": "2.7.1", "device_tag": device_tag, "os": "ios",
              "os_ver": "17.4.1", "device_type": "iphone", "language": "en", "events": events}
    return orjson.dumps(bundle)


def percentile(sorted_values: list[float], p: float) -> float:
    """The ``p``-th percentile (0-100) of already sorted values; 0 for none."""
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def run_load(host: str, port: int, org: str, api_key: str, size: int, run_id: str,
             duration: float, connections: int) -> dict:
    """Send bundles from ``connections`` threads for ``duration`` seconds; wrk-like summary."""
    deadline = time.monotonic() + duration
    lock = threading.Lock()
    latencies: list[float] = []
    totals = {"ok": 0, "bad": 0, "connect": 0, "read": 0, "bytes": 0}
    statuses: dict[str, int] = {}

    def worker(thread_id: int) -> None:
        counter = 0
        local_lat, local = [], {"ok": 0, "bad": 0, "connect": 0, "read": 0, "bytes": 0}
        local_status: dict[str, int] = {}
        while time.monotonic() < deadline:
            counter += 1
            body = make_bundle(api_key, f"{run_id}-{thread_id}-{counter}", size, counter)
            path = f"/{org}/1/track?current_time={iso(datetime.now(timezone.utc))}"
            started = time.perf_counter()
            # gunicorn's sync workers close every connection: one connection per request
            conn = http.client.HTTPConnection(host, port, timeout=30)
            try:
                conn.request("POST", path, body, {"Content-Type": "text/plain"})
                response = conn.getresponse()
                data = response.read()
            except OSError:
                local["connect" if counter == 1 else "read"] += 1
                continue
            finally:
                conn.close()
            local_lat.append((time.perf_counter() - started) * 1e6)
            local["bytes"] += len(data)
            if response.status == 200:
                local["ok"] += 1
            else:
                local["bad"] += 1
                local_status[str(response.status)] = local_status.get(str(response.status), 0) + 1
        with lock:
            latencies.extend(local_lat)
            for key, value in local.items():
                totals[key] += value
            for key, value in local_status.items():
                statuses[key] = statuses.get(key, 0) + value

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i + 1,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    latencies.sort()
    return {
        "requests": totals["ok"] + totals["bad"],
        "duration_us": int(elapsed * 1e6),
        "bytes": totals["bytes"],
        "ok": totals["ok"],
        "bad": totals["bad"],
        "statuses": statuses,
        "errors": {"connect": totals["connect"], "read": totals["read"], "write": 0,
                   "status": totals["bad"], "timeout": 0},
        "latency_us": {
            "p50": percentile(latencies, 50), "p90": percentile(latencies, 90),
            "p99": percentile(latencies, 99), "max": latencies[-1] if latencies else 0.0,
            "mean": sum(latencies) / len(latencies) if latencies else 0.0,
        },
    }


def main() -> None:
    """Command line of the fallback load generator."""
    parser = argparse.ArgumentParser(description="Python fallback load generator (see module doc).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--org", default="demo")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--size", type=int, default=1)
    parser.add_argument("--run-id", default="py")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    result = run_load(args.host, args.port, args.org, args.api_key, args.size, args.run_id,
                      args.duration, args.connections)
    print("WRK_JSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
