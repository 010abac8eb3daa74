"""Exports stream: memory stays flat however many rows go out."""

from __future__ import annotations

import tracemalloc
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from analytics_data import make_user

EVENTS = 60_000


def _post_many(cortex, count: int) -> None:
    start = datetime(2024, 6, 1, tzinfo=timezone.utc)
    for bundle in range(count // 100):
        events = [{"type": "event", "kingdom": "tap", "event_index": i,
                   "event_datetime": (start + timedelta(seconds=bundle * 100 + i)).strftime("%Y-%m-%dT%H:%M:%SZ")}
                  for i in range(100)]
        body = {"api_key": cortex.api_key, "device_tag": f"device-{bundle % 500}", "os": "ios", "events": events}
        answer = cortex.client.post("/demo/1/track", data=orjson.dumps(body), content_type="text/plain")
        assert answer.status_code == 200


@pytest.mark.slow
def test_large_export_streams_in_constant_memory(cortex):
    _post_many(cortex, EVENTS)
    cortex.deliver()
    token = make_user(cortex, "ann@example.com", "demo", "analyst")
    response = cortex.client.get(
        "/api/v1/analytics/export", buffered=False,
        query_string={"business_id": "demo", "start_date": "2024-06-01", "end_date": "2024-06-30", "format": "csv"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200
    tracemalloc.start()
    try:
        lines = size = 0
        for chunk in response.response:
            lines += chunk.count(b"\n")
            size += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        response.close()
    assert lines == EVENTS + 1  # and the header
    # the export is several megabytes; what it held at once is a small fraction of that
    assert size > 4_000_000
    assert peak < size / 4, f"peak {peak} bytes for an export of {size} bytes"
