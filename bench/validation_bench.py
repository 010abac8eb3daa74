"""Per-event validation cost: marshmallow's ``Schema.load`` against the compiled validators.

    .venv/bin/python bench/validation_bench.py [--events 20000]

Both validate the same realistic events with the same field definitions
(``cortex/ingest/schemas.py``); the table gives microseconds per event and the ratio.
"""

from __future__ import annotations

import argparse
import time

from cortex.ingest.pipeline import BUNDLE, EVENTS

SAMPLES = {
    "event": {"type": "event", "event_datetime": "2024-06-01T13:45:30.123Z", "event_index": 7, "kingdom": "level",
              "phylum": "world1", "class": "stage", "order": "boss", "family": "f", "genus": "g",
              "species": "s", "float1": 1.5, "float2": 3},
    "economy": {"type": "economy", "event_datetime": "2024-06-01T13:45:30Z", "event_index": 8,
                "spend_amount": "4.99", "spend_currency": "USD", "spend_type": "iap", "kingdom": "store"},
    "dau": {"type": "dau", "event_datetime": "2024-06-01T13:45:30Z", "event_index": 9},
    "bundle": {"api_key": "0123456789abcdef", "app_ver": "1.2.3", "device_tag": "abc123", "os": "ios",
               "os_ver": "17.1", "device_type": "iphone", "user_tag": 12345, "language": "en"},
}


def per_event_us(function, document, count: int) -> float:
    """Microseconds per call of ``function(document)``, best of three runs."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(count):
            function(document)
        best = min(best, (time.perf_counter() - start) / count * 1e6)
    return best


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    args = parser.parse_args()
    print(f"{'document':<10} {'Schema.load µs':>15} {'compiled µs':>12} {'speed-up':>9}")
    for name, document in SAMPLES.items():
        schema = BUNDLE if name == "bundle" else EVENTS[name]
        slow = per_event_us(schema.load_with_marshmallow, document, max(1000, args.events // 10))
        fast = per_event_us(schema.load, document, args.events)
        print(f"{name:<10} {slow:>15.1f} {fast:>12.2f} {slow / fast:>8.1f}x")


if __name__ == "__main__":
    main()
