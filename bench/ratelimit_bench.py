"""What the rate limits cost a Data Cortex request: CPU per request, limits on and off.

    .venv/bin/python bench/ratelimit_bench.py [--requests 3000] [--rounds 5]

Two in-process Cortex apps on fresh data directories, one on the default configuration
(rate limits on, memory storage) and one with ``rate_limits.enabled = false``, are called
through WSGI directly (no HTTP, no load generator), each request a unique 1-event bundle
that is validated and durably queued.  They take turns, ``--requests`` requests per turn,
and the CPU time of this process (``time.process_time``, which other processes on the
machine disturb far less than wall-clock rates do) is measured per turn.  The table shows
the median CPU µs per request of each and their ratio; ``--storage redis://...`` measures
a Redis storage instead of memory.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cortex.app import create_app  # noqa: E402
from cortex.cli import initialise  # noqa: E402


def make(data_dir: Path, rate_limits: dict):
    app = create_app(overrides={"data_dir": str(data_dir), "logging": {"level": "WARNING"},
                                "dispatcher": {"embedded": False}, "rate_limits": rate_limits})
    key = initialise(app.extensions["cortex"])
    return app, key


def run_turn(app, key: str, start: int, count: int) -> float:
    """CPU seconds for ``count`` requests."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    bodies = [orjson.dumps({"api_key": key, "device_tag": f"d{start + i}", "app_ver": "1.0", "os": "ios",
                            "events": [{"type": "event", "event_datetime": now, "event_index": start + i,
                                        "kingdom": "k", "float1": 1.5}]}) for i in range(count)]
    statuses = []

    def start_response(status, headers, exc_info=None):
        statuses.append(status)

    cpu = time.process_time()
    for body in bodies:
        environ = {
            "REQUEST_METHOD": "POST", "PATH_INFO": "/demo/1/track", "QUERY_STRING": f"current_time={now}",
            "SERVER_NAME": "bench", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1", "CONTENT_TYPE": "text/plain", "CONTENT_LENGTH": str(len(body)),
            "wsgi.input": io.BytesIO(body), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
            "wsgi.multithread": False, "wsgi.multiprocess": True, "wsgi.run_once": False,
            "wsgi.version": (1, 0),
        }
        b"".join(app.wsgi_app(environ, start_response))
    elapsed = time.process_time() - cpu
    bad = [s for s in statuses if not s.startswith("200")]
    if bad:
        raise SystemExit(f"requests were not answered 200: {bad[:3]}")
    return elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per turn (default 3000)")
    parser.add_argument("--rounds", type=int, default=5, help="turns of each app (default 5)")
    parser.add_argument("--storage", default="memory://", help="rate_limits.storage_uri (default memory://)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cortex-ratelimit-bench-") as tmp:
        # counted as on the defaults, with limits high enough that a fast machine does not
        # outrun them in-process (the default 5000/second would answer 429 here)
        on, on_key = make(Path(tmp) / "on", {"enabled": True, "storage_uri": args.storage,
                                             "per_key": "1000000/second", "per_ip": "1000000/second"})
        off, off_key = make(Path(tmp) / "off", {"enabled": False})
        run_turn(on, on_key, 0, 300)  # warm up both
        run_turn(off, off_key, 0, 300)
        times = {"on": [], "off": []}
        for turn in range(args.rounds):
            start = (turn + 1) * args.requests
            # alternate which goes first, so that neither always runs on a warmer cache
            order = [("off", off, off_key), ("on", on, on_key)]
            for name, app, key in order if turn % 2 == 0 else reversed(order):
                times[name].append(run_turn(app, key, start, args.requests) / args.requests)
    off_us = statistics.median(times["off"]) * 1e6
    on_us = statistics.median(times["on"]) * 1e6
    print(f"\nData Cortex 1-event bundles, WSGI in-process, {args.rounds} x {args.requests} requests each, "
          f"median CPU per request")
    print(f"{'rate limits':<28} {'CPU µs/request':>15} {'ratio':>6}")
    print(f"{'off (enabled = false)':<28} {off_us:>15.1f} {1.0:>6.3f}")
    print(f"{'on (' + args.storage + ')':<28} {on_us:>15.1f} {on_us / off_us:>6.3f}")
    print(f"\ncost of the limits: {on_us - off_us:+.1f} µs per request")


if __name__ == "__main__":
    main()
