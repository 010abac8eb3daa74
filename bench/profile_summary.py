"""Summarise ``py-spy record --format raw --threads`` output (``ingest_bench.py --profile``).

    .venv/bin/python bench/profile_summary.py /tmp/prof/cortex-100-worker*.txt [--top 25]

For each file (one gunicorn worker), prints the share of samples per thread (``MainThread``
serves requests; ``cortex-sink-sql`` and ``cortex-housekeeping`` are the embedded
dispatcher), then, over the request-serving thread only, the inclusive share of the
functions that make up a request (``--focus`` picks them) and the top self-time frames.
Shares are of all samples in the file; py-spy without ``--idle`` only samples threads that
are running (or waiting for the GIL), so they approximate CPU time.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

#: frames that mark the stages of one ingest request (function name, file suffix)
DEFAULT_FOCUS = [
    "SyncWorker.accept", "SyncWorker.handle_request", "IngestLane.serve", "answer_bundle", "RequestLog.finish",
    "read_body", "parse_json", "check_bundle_shape", "KeyCache.owner", "Timing.parse",
    "build_records", "CompiledSchema.load", "Timing.event_time", "dedupe_key", "SQLiteQueue.submit",
    "SQLiteQueue._commit_group", "SQLiteQueue._claim_keys",
    "SinkRunner.step", "SQLiteQueue.read", "SqlSink.write", "TableRows.row", "Connection.execute",
    "SQLiteQueue.advance", "Dispatcher.housekeep",
]

_LINE = re.compile(r"^(.*) (\d+)$")
_THREAD = re.compile(r"^thread \((\d+)\): ?(.*)$")


def read_stacks(path: Path) -> list[tuple[str, list[str], int]]:
    """(thread name, frames outermost first, samples) for every line of a raw profile."""
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        frames = match.group(1).split(";")
        thread = "?"
        head = _THREAD.match(frames[0])
        if head:
            thread = head.group(2) or head.group(1)
            frames = frames[1:]
        stacks.append((thread, frames, int(match.group(2))))
    return stacks


def summarise(path: Path, focus: list[str], top: int) -> None:
    """Print the per-thread, per-stage and self-time tables of one profile file."""
    stacks = read_stacks(path)
    total = sum(n for _, _, n in stacks) or 1
    print(f"\n### {path.name}: {total} samples")
    threads = Counter()
    for thread, _, n in stacks:
        threads[thread] += n
    for thread, n in threads.most_common():
        print(f"  thread {thread:<28} {100 * n / total:5.1f}%")

    inclusive = Counter()
    self_time = Counter()
    for thread, frames, n in stacks:
        seen = set()
        for frame in frames:
            for name in focus:
                if name in frame and name not in seen:
                    seen.add(name)
                    inclusive[name] += n
        if frames:
            self_time[f"[{thread}] {frames[-1]}"] += n
    print("  inclusive (all threads), % of samples:")
    for name in focus:
        if inclusive[name]:
            print(f"    {100 * inclusive[name] / total:5.1f}%  {name}")
    print(f"  top {top} self frames:")
    for frame, n in self_time.most_common(top):
        print(f"    {100 * n / total:5.1f}%  {frame}")


def main() -> None:
    """Command line: one summary per profile file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=20, help="self-time frames to show (default 20)")
    parser.add_argument("--focus", help="comma-separated frame substrings to report inclusively")
    args = parser.parse_args()
    focus = [f.strip() for f in args.focus.split(",")] if args.focus else DEFAULT_FOCUS
    for path in args.files:
        summarise(path, focus, args.top)


if __name__ == "__main__":
    main()
