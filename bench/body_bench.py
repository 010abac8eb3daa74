"""Cost of the hardened body path against plain ``orjson.loads``, per bundle.

    .venv/bin/python bench/body_bench.py [--rounds 2000]

The edge (``cortex.ingest.body.load_body``) decodes ``Content-Encoding``, parses, and checks
nesting depth and string sizes.  The table gives microseconds per bundle for the parse
alone (the floor), the edge as the ingest views run it, the shape walk alone (which the edge
skips when a body has fewer brackets than the depth limit and is shorter than the string
limit), and the edge on a gzip body; each ratio is against the floor measured in the same run.
"""

from __future__ import annotations

import argparse

import gzip
import sys
import time
from pathlib import Path

import orjson


sys.path.insert(0, str(Path(__file__).resolve().parent))

from pyload import make_bundle  # noqa: E402  (bench/ is not a package)

from cortex.ingest.body import BodyLimits, check_shape, load_body, parse_json  # noqa: E402

LIMITS = BodyLimits()


def per_call_us(function, rounds: int) -> float:
    """Microseconds per call of ``function()``, best of three runs."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(rounds):
            function()
        best = min(best, (time.perf_counter() - start) / rounds * 1e6)
    return best


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    print(f"{'events':>6} {'bytes':>7} {'orjson µs':>10} {'edge µs':>8} {'ratio':>6} "
          f"{'walk µs':>8} {'ratio':>6} {'gzip edge µs':>13} {'ratio':>6}")
    for events in (1, 10, 100):
        data = make_bundle("k" * 32, "device-1", events, 0)
        packed = gzip.compress(data)
        floor = per_call_us(lambda: orjson.loads(data), args.rounds)
        edge = per_call_us(lambda: load_body(data, None, LIMITS), args.rounds)
        document = parse_json(data)
        walk = per_call_us(lambda: check_shape(document, len(data), LIMITS), args.rounds)
        zipped = per_call_us(lambda: load_body(packed, "gzip", LIMITS), args.rounds)
        print(f"{events:>6} {len(data):>7} {floor:>10.1f} {edge:>8.1f} {edge / floor:>6.2f} "
              f"{walk:>8.1f} {walk / floor:>6.2f} {zipped:>13.1f} {zipped / floor:>6.2f}")


if __name__ == "__main__":
    main()
