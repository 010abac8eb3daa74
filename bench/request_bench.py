"""What one ingest request costs Cortex's app in CPU, against the floor app, in-process.

    .venv/bin/python bench/request_bench.py [--requests 3000] [--sizes 1,10,100] [--profile N]
                                            [--cold] [--log-lines] [--stages]

Both WSGI apps are called directly with a prepared environ (no server, no sockets), the
Cortex app on its defaults in a temporary data directory with the dispatcher off (its cost
is ``bench/dispatch_bench.py``'s).  Every request is a new bundle of the mix of
``bench/ingest.lua`` from a device of its own.  It prints CPU microseconds per request and
per event, best of three rounds, and the difference to the floor: what Cortex adds to a
request before gunicorn and the network have their share.

``--profile N`` prints the N costliest functions of one Cortex round (cProfile).

``--cold`` writes to a 2 MiB buffer before every request (not counted), as a served
request's neighbours do (gunicorn, the kernel's network stack, the load generator): the
caches and branch predictors then hold little of the request's code and data, as under
load.  Called back to back, the same code stays in the caches and costs about half.

``--log-lines`` writes the request log lines, as ``cortex serve`` does by default, to a
file in the temporary directory (without it the app logs warnings only).

``--stages`` adds a table of what the stages of a Cortex request cost (thread CPU per
request, each stage including the ones indented below it), measured around the functions
:data:`STAGES` names; each measurement adds about a microsecond.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import pstats
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dispatch_bench import MIX, event  # noqa: E402
from floor_app import app as floor_app  # noqa: E402

from cortex.app import create_app  # noqa: E402
from cortex.cli import initialise  # noqa: E402
from cortex.ingest import lane, views  # noqa: E402
from cortex.ingest.pipeline import Timing  # noqa: E402
from cortex.queue import GroupCommit, SQLiteQueue  # noqa: E402
from cortex.requestlog import RequestLog  # noqa: E402

#: bytes written before each request with ``--cold``: more than a core's L2 cache holds here
COLD_BYTES = 2 * 1024 * 1024
#: one write per 64-byte cache line
CACHE_LINE = 64

#: (label, owner, attribute) of the functions ``--stages`` measures, outermost first; the
#: label's indentation says which stage a stage is part of
STAGES = (
    ("answer_bundle: the whole request but the response", lane, "answer_bundle"),
    ("  read_json: read, parse and check the body", views, "read_json"),
    ("  Timing.parse: the request's times", Timing, "parse"),
    ("  build_records: validate and key the events", views, "build_records"),
    ("  submit: the queue's group commit", GroupCommit, "submit"),
    ("    _commit_locked: the SQLite transaction", SQLiteQueue, "_commit_locked"),
    ("request_log.finish: metrics and log line", RequestLog, "finish"),
)


def bodies(api_key: str, size: int, count: int, round_id: int) -> list[bytes]:
    """``count`` bundles of ``size`` events, each from a device of its own."""
    moment = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    return [orjson.dumps({
        "api_key": api_key, "app_ver": "2.7.1", "device_tag": f"d-{round_id}-{n}", "os": "ios",
        "os_ver": "17.4.1", "device_type": "iphone", "language": "en",
        "events": [event(MIX[i % 10], n * 1000 + i, moment) for i in range(size)],
    }) for n in range(count)]


def call(app, body: bytes, query: str) -> None:
    """One POST /demo/1/track through the WSGI interface; fails unless 200."""
    environ = {
        "REQUEST_METHOD": "POST", "PATH_INFO": "/demo/1/track", "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1", "CONTENT_TYPE": "text/plain", "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
        "wsgi.multithread": False, "wsgi.multiprocess": True, "wsgi.run_once": False, "wsgi.version": (1, 0),
        "HTTP_HOST": "127.0.0.1:8000", "HTTP_USER_AGENT": "request_bench",
    }
    status = []
    answer = app(environ, lambda s, headers, exc_info=None: status.append(s))
    b"".join(answer)
    if hasattr(answer, "close"):
        answer.close()
    if not status[0].startswith("200"):
        raise SystemExit(f"{status[0]}: {b''.join(answer)[:200]!r}")


def round_cpu(app, api_key: str, size: int, count: int, round_id: int, cold: bool = False) -> float:
    """CPU seconds of ``count`` requests (``cold``: see the module docstring)."""
    prepared = bodies(api_key, size, count, round_id)
    query = "current_time=" + time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    if not cold:
        start = time.process_time()
        for body in prepared:
            call(app, body, query)
        return time.process_time() - start
    buffer = bytearray(COLD_BYTES)
    lines = len(buffer[::CACHE_LINE])
    used = 0
    for number, body in enumerate(prepared):
        buffer[::CACHE_LINE] = bytes([number & 0xFF]) * lines
        start = time.thread_time_ns()
        call(app, body, query)
        used += time.thread_time_ns() - start
    return used / 1e9


def log_to_file(path: Path) -> None:
    """Send Cortex's log handler (stderr) to ``path`` instead."""
    handler = next(h for h in logging.getLogger().handlers if getattr(h, "cortex_handler", False))
    handler.setStream(open(path, "a", encoding="utf-8"))  # noqa: SIM115 - open until the process ends


class StageClock:
    """Thread CPU spent in each of :data:`STAGES` while installed (``with``)."""

    def __init__(self):
        self.spent = {label: 0 for label, _, _ in STAGES}
        self._originals: list[tuple[object, str, object]] = []

    def __enter__(self) -> "StageClock":
        for label, owner, name in STAGES:
            original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
            self._originals.append((owner, name, original))
            setattr(owner, name, self._timed(label, original))
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, original in reversed(self._originals):
            setattr(owner, name, original)
        self._originals.clear()

    def _timed(self, label: str, original):
        function = original.__func__ if isinstance(original, (classmethod, staticmethod)) else original
        spent = self.spent

        def timed(*args, **kwargs):
            start = time.thread_time_ns()
            try:
                return function(*args, **kwargs)
            finally:
                spent[label] += time.thread_time_ns() - start

        if isinstance(original, classmethod):
            return classmethod(timed)
        return staticmethod(timed) if isinstance(original, staticmethod) else timed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000, help="requests per round (3 rounds per case)")
    parser.add_argument("--sizes", default="1,10,100")
    parser.add_argument("--profile", type=int, default=0, metavar="N")
    parser.add_argument("--cold", action="store_true", help="evict the caches before every request")
    parser.add_argument("--log-lines", action="store_true", help="write request log lines (to a file)")
    parser.add_argument("--stages", action="store_true", help="also time the stages of a Cortex request")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # the limits are counted as on the defaults, but set high enough that a fast machine
        # does not outrun them in-process (5000/second would answer 429 here)
        level = "INFO" if args.log_lines else "WARNING"
        logging.getLogger("alembic").setLevel(logging.WARNING)  # its migration lines, at INFO
        cortex = create_app(overrides={"data_dir": tmp, "logging": {"level": level},
                                       "dispatcher": {"embedded": False},
                                       "rate_limits": {"per_key": "1000000/second", "per_ip": "1000000/second"}})
        api_key = initialise(cortex.extensions["cortex"])
        if args.log_lines:
            log_to_file(Path(tmp) / "cortex.log")
        rows = []
        stage_rows = []
        round_id = 0
        for size in (int(s) for s in args.sizes.split(",")):
            count = max(50, args.requests // max(1, size // 10))
            best = {}
            for label, app in (("floor", floor_app), ("cortex", cortex)):
                times = []
                for _ in range(3):
                    round_id += 1
                    times.append(round_cpu(app, api_key, size, count, round_id, args.cold) / count * 1e6)
                best[label] = min(times)
            rows.append((size, best["floor"], best["cortex"]))
            if args.stages:
                round_id += 1
                with StageClock() as clock:
                    round_cpu(cortex, api_key, size, count, round_id, args.cold)
                stage_rows.append((size, {label: ns / count / 1000 for label, ns in clock.spent.items()}))
            if args.profile:
                profiler = cProfile.Profile()
                round_id += 1
                prepared = bodies(api_key, size, count, round_id)
                profiler.enable()
                for body in prepared:
                    call(cortex, body, "current_time=" + time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()))
                profiler.disable()
                print(f"--- profile, {size}-event bundles, {count} requests")
                pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)
    print(f"{'events/bundle':>13} {'floor µs/req':>12} {'cortex µs/req':>13} {'added µs/req':>12}"
          f" {'added µs/event':>14} {'ratio':>6}")
    for size, floor, cortex in rows:
        print(f"{size:>13} {floor:>12.1f} {cortex:>13.1f} {cortex - floor:>12.1f} {(cortex - floor) / size:>14.2f}"
              f" {cortex / floor:>5.1f}×")
    for size, spent in stage_rows:
        print(f"\nStages of a {size}-event request{' (cold caches)' if args.cold else ''}, µs of CPU per request")
        for label, micros in spent.items():
            print(f"{label:<55} {micros:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
